"""Inference servers for the probe: start one on a free loopback port, wait until it answers,
keep its log, tear it down whatever happens; and a small OpenAI-compatible client over urllib.

Standard library only (it runs inside a cell's environment). A server is a child process in
its own session (process group), so teardown reaches everything it spawned::

    with Server([sys.executable, "-m", "llama_cpp.server", "--model", gguf,
                 "--host", "127.0.0.1", "--port", "{port}"], name="llama-cpp-server") as srv:
        client = OpenAIClient(srv.base_url)
        client.completions({"prompt": "Hi", "max_tokens": 4})

A server that exits or does not answer within the start timeout raises :class:`ServerStartError`
carrying the tail of its log (an ``infra`` outcome, never a ``fail``). HTTP errors raise
:class:`HTTPStatusError` with the status and the body; transport failures (connection refused,
reset, timeout) raise :class:`TransportError`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import IO

LOG_TAIL_CHARS = 4000


class ServerStartError(Exception):
    """The server exited or did not become ready in time; ``log_tail`` says why."""

    def __init__(self, message: str, log_tail: str = ""):
        super().__init__(message + (f"\n--- server log (tail) ---\n{log_tail}" if log_tail else ""))
        self.log_tail = log_tail


class HTTPStatusError(Exception):
    def __init__(self, status: int, body: str, url: str):
        super().__init__(f"HTTP {status} from {url}: {body[:1000]}")
        self.status = status
        self.body = body
        self.url = url


class TransportError(Exception):
    """No HTTP answer at all: refused, reset, timed out."""


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the OS picks it; a race is possible but rare)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class Server:
    """A server process on ``host:port``; ``{port}`` and ``{host}`` in ``cmd`` are filled in.

    ``ready_path``: polled with GET until it answers 2xx (default ``/v1/models``). The log
    (stdout and stderr together) is kept in ``log_path`` (a temporary directory unless
    ``log_dir`` is given); :meth:`log_tail` reads its end.
    """

    def __init__(
        self,
        cmd: list[str],
        *,
        name: str = "server",
        env: dict | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        ready_path: str = "/v1/models",
        start_timeout: float = 60.0,
        log_dir: str | None = None,
        cwd: str | None = None,
    ):
        self.name = name
        self.host = host
        self.port = port or free_port(host)
        self.cmd = [str(c).replace("{port}", str(self.port)).replace("{host}", host) for c in cmd]
        self.env = env
        self.ready_path = ready_path
        self.start_timeout = start_timeout
        self.log_dir = log_dir or tempfile.mkdtemp(prefix=f"llmcompat-{name}-")
        self.log_path = os.path.join(self.log_dir, f"{name}.log")
        self.cwd = cwd or self.log_dir
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None
        self.ready_seconds: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Server:
        started = time.monotonic()
        self._log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,
            )
        except OSError as exc:
            self.stop()
            raise ServerStartError(f"{self.name}: cannot start {self.cmd[0]}: {exc}") from None
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        self.ready_seconds = round(time.monotonic() - started, 3)
        return self

    def wait_ready(self) -> None:
        proc = self.proc
        if proc is None:
            raise ServerStartError(f"{self.name} was not started")
        deadline = time.monotonic() + self.start_timeout
        url = self.base_url + self.ready_path
        last = ""
        while True:
            code = proc.poll()
            if code is not None:
                raise ServerStartError(f"{self.name} exited with {code} before it was ready", self.log_tail())
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if 200 <= resp.status < 300:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (OSError, ValueError) as exc:
                last = str(exc)
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"{self.name} not ready after {self.start_timeout:.0f}s (GET {url}: {last})", self.log_tail()
                )
            time.sleep(0.2)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 5.0) -> int | None:
        """Terminate the whole process group: SIGTERM, then SIGKILL after ``grace`` seconds."""
        code = None
        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                if proc.poll() is None:
                    _signal_group(proc, signal.SIGTERM)
                    try:
                        proc.wait(grace)
                    except subprocess.TimeoutExpired:
                        _signal_group(proc, signal.SIGKILL)
                        proc.wait(grace)
                code = proc.returncode
            finally:
                _signal_group(proc, signal.SIGKILL)  # stragglers the server left in its group
        if self._log is not None:
            self._log.close()
            self._log = None
        return code

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - chars))
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # start_new_session: the group id is the child's pid
    except (ProcessLookupError, PermissionError):
        pass


class NotJSON(ValueError):
    """A 2xx answer whose body is not JSON (``raw`` holds it)."""

    def __init__(self, url: str, raw: bytes):
        super().__init__(f"not JSON from {url}: {raw[:300]!r}")
        self.raw = raw


def request_json(method: str, url: str, body: dict | None = None, *, timeout: float, headers: dict | None = None):
    """One JSON request over urllib: HTTP errors raise HTTPStatusError, transport failures
    TransportError, a body that is not JSON NotJSON."""
    data = None if body is None else json.dumps(body).encode("utf-8")
    all_headers = {"Accept": "application/json", **(headers or {})}
    if data is not None:
        all_headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=all_headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
    except urllib.error.HTTPError as exc:
        raise HTTPStatusError(exc.code, exc.read().decode("utf-8", errors="replace"), url) from None
    except (OSError, ValueError) as exc:
        raise TransportError(f"{method} {url}: {exc}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError:
        raise NotJSON(url, raw) from None


class OpenAIClient:
    """POST/GET JSON against an OpenAI-compatible base URL (``/v1`` is added to paths)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 120.0):
        self.base_url = base_url.rstrip("/")
        if not self.base_url.endswith("/v1"):
            self.base_url += "/v1"
        self.api_key = api_key
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        url = self.base_url + path
        try:
            return request_json(method, url, body, timeout=self.timeout, headers=headers)
        except NotJSON as exc:
            raise HTTPStatusError(200, "not JSON: " + exc.raw[:500].decode("utf-8", errors="replace"), url) from None

    def stream(self, path: str, body: dict) -> bytes:
        """POST ``body`` with ``stream: true``; the raw SSE body as it came (read it with
        :func:`wire.parse_sse`). HTTP errors raise HTTPStatusError, transport failures TransportError."""
        url = self.base_url + path
        headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(
            url, data=json.dumps(dict(body, stream=True)).encode("utf-8"), method="POST", headers=headers
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            raise HTTPStatusError(exc.code, exc.read().decode("utf-8", errors="replace"), url) from None
        except (OSError, ValueError) as exc:
            raise TransportError(f"POST {url}: {exc}") from None

    def models(self) -> dict:
        return self.request("GET", "/models")

    def completions(self, body: dict) -> dict:
        return self.request("POST", "/completions", body)

    def chat(self, body: dict) -> dict:
        return self.request("POST", "/chat/completions", body)


def transformers_serve_command(exe: str, model_dir: str) -> list[str]:
    """``transformers serve`` on CPU in float32, the model loaded at start and served under its
    directory: one command line for the probe's engine and the host's shared client server."""
    return [exe, "serve", "--host", "{host}", "--port", "{port}", "--device", "cpu", "--dtype", "float32", model_dir]
