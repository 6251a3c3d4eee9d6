"""A real OpenAI-compatible server for the client stage of cells that bring none of their own.

Most cells' engines are in-process libraries (transformers, mistralrs, onnxruntime-genai), so
their client SDKs would have no wire to talk to. This runs ``transformers serve`` (no compile:
the reference transformers version with its ``serving`` extra and accelerate, CPU torch, in an
environment of its own) on the cell's model, once per process and model, and every such cell's
client stage talks to it through the probe's recording proxy in ``once`` and ``stream`` modes.
The client stage compares each SDK against what this server really sent, so sharing one server
between cells changes nothing about a cell's verdict; its environment's lock digest is part of
the key of every cell that uses it. Started lazily (only a cell that runs needs it), stopped when
the process exits; a server that does not come up makes those cells' client stage ``infra``.
"""

from __future__ import annotations

import atexit
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from matrix.declare.config import Matrix
from matrix.env import uv as envs

if TYPE_CHECKING:
    from matrix.probe.servers import Server

ENGINE = "transformers-serve"
START_SECONDS = 300.0
"""``transformers serve`` imports torch and FastAPI: about 12 s idle, 40 s on a loaded 2-core machine."""


def requirements(matrix: Matrix) -> list[str]:
    """The server's environment: the reference transformers with its serving extra."""
    ref = matrix.reference
    return [
        f"transformers[serving]=={ref.get('transformers', '5.24.0')}",
        "accelerate",
        "torch",
        *(f"{name}=={ref[name]}" for name in ("jinja2", "tokenizers") if name in ref),
    ]


class ClientServer:
    """One ``transformers serve`` per model directory, shared by the cells of this process."""

    def __init__(self, matrix: Matrix):
        self.matrix = matrix
        self._lock = threading.Lock()
        self._resolved: envs.Lock | envs.Unresolvable | None = None
        self._servers: dict[str, Server] = {}
        self._errors: dict[str, str] = {}

    def lock(self) -> envs.Lock | envs.Unresolvable:
        with self._lock:
            if self._resolved is None:
                runner = next(r for r in self.matrix.runners if r.default)
                self._resolved = envs.resolve(
                    requirements(self.matrix), python=runner.python, overrides=list(runner.pins)
                )
            return self._resolved

    def key_part(self) -> str:
        """What enters the key of a cell that uses the server: its engine and its lock."""
        lock = self.lock()
        if isinstance(lock, envs.Unresolvable):
            return f"{ENGINE}:unresolvable"
        return f"{ENGINE}@{lock.version('transformers')}:{lock.digest}"

    def target(self, model_dir: Path) -> dict:
        """The probe's ``client_target`` for a cell of ``model_dir``: the running server, or
        ``{"unavailable": why}`` (the stage reports it as infra)."""
        key = str(model_dir)
        with self._lock:
            if key in self._errors:
                return {"unavailable": self._errors[key]}
            srv = self._servers.get(key)
        if srv is None:
            try:
                srv = self._start(model_dir)
            except Exception as exc:  # noqa: BLE001 - a server that cannot start is infra for the stage
                with self._lock:
                    self._errors[key] = f"{ENGINE} (shared client server) did not start: {exc}"[:4000]
                return {"unavailable": self._errors[key]}
        return {"base_url": srv.base_url, "model": key, "shared": ENGINE}

    def _start(self, model_dir: Path) -> Server:
        from matrix.probe import servers

        lock = self.lock()
        if isinstance(lock, envs.Unresolvable):
            raise RuntimeError(f"its environment cannot be installed: {lock.reason[:1000]}")
        with self._lock:  # one start per model, even when two cells ask at once
            if str(model_dir) in self._servers:
                return self._servers[str(model_dir)]
            env = envs.ensure(lock)
            exe = Path(env.python).with_name("transformers")
            cmd = servers.transformers_serve_command(str(exe), str(model_dir))
            child_env = {
                k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR", "SSL_CERT_FILE")
            }
            child_env.update(
                {
                    "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1",
                    "HF_HUB_DISABLE_TELEMETRY": "1",
                    "TOKENIZERS_PARALLELISM": "false",
                }
            )
            srv = servers.Server(cmd, name="client-server", env=child_env, start_timeout=START_SECONDS)
            srv.start()
            self._servers[str(model_dir)] = srv
            if len(self._servers) == 1:
                atexit.register(self.close)
            return srv

    def close(self) -> None:
        with self._lock:
            while self._servers:
                _, srv = self._servers.popitem()
                srv.stop()
