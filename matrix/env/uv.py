"""The uv adapter: resolve a cell's requirements into an exact lock, build its virtualenv once.

Resolution and installation go through uv (not pip): a warm environment costs well under a
second. Environments are content-addressed by their lock, built under a temporary name and
renamed into place, so a killed build never leaves a half-made environment that looks whole.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from matrix import atomic
from matrix.errors import LlmcompatError

MARKER = "llmcompat-env.json"


@dataclass(frozen=True)
class Lock:
    """Exact pins of every package a cell installs (canonical name -> version), sorted."""

    pins: tuple[tuple[str, str], ...]
    python: str

    @property
    def text(self) -> str:
        return "".join(f"{n}=={v}\n" for n, v in self.pins)

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"python={self.python}\n{self.text}".encode()).hexdigest()

    def version(self, name: str) -> str | None:
        return dict(self.pins).get(canonicalize_name(name))

    def to_json(self) -> dict:
        return {"python": self.python, "pins": dict(self.pins)}


@dataclass(frozen=True)
class Unresolvable:
    """The requirements cannot be installed together; ``reason`` is the resolver's own words."""

    requirements: tuple[str, ...]
    reason: str


class ResolveError(Exception):
    """uv failed for another reason than an unsatisfiable set (index down, timeout): infra."""

    def __init__(self, requirements: tuple[str, ...], reason: str):
        super().__init__(reason)
        self.requirements = requirements
        self.reason = reason


def uv_bin() -> str:
    """The uv executable: the one installed with llmcompat, else the one on PATH."""
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except Exception:  # noqa: BLE001 - the wheel may be missing; PATH is the fallback
        found = shutil.which("uv")
        if not found:
            raise RuntimeError("uv is not installed: pip install uv") from None
        return found


def _uv_env() -> dict[str, str]:
    from matrix.releases.index import tls_env

    env = dict(os.environ)
    env.update(tls_env())
    env.setdefault("UV_PYTHON_DOWNLOADS", "never")
    env.pop("VIRTUAL_ENV", None)
    return env


def _index_args() -> list[str]:
    from matrix.releases.index import uv_index_args

    return uv_index_args()


def interpreter(version: str) -> str:
    """An interpreter for ``version``: this one when it matches, else uv finds a system one."""
    if "{}.{}".format(*sys.version_info[:2]) == version:
        return sys.executable
    return version


def resolve(
    requirements: list[str],
    *,
    python: str,
    overrides: Sequence[str] = (),
    find_links: Sequence[Path] = (),
    timeout: float = 300,
) -> Lock | Unresolvable:
    """Resolve ``requirements`` with ``uv pip compile`` for ``python`` (a version like ``3.11``).

    ``overrides`` apply to the whole graph (a CPU runner pins ``torch==2.13.0+cpu`` here, so a
    cell that pulls torch can never resolve to CUDA wheels). ``find_links``: directories of
    wheels built by :mod:`matrix.env.builds`, offered beside the index.
    """
    reqs = tuple(requirements)
    from matrix import scratch  # a killed run's leftovers go at the next start, not into /tmp

    with tempfile.TemporaryDirectory(prefix="resolve-", dir=scratch.directory()) as tmp:
        req_file = Path(tmp, "requirements.in")
        req_file.write_text("".join(f"{r}\n" for r in reqs))
        cmd = [
            uv_bin(),
            "pip",
            "compile",
            str(req_file),
            "--quiet",
            "--no-header",
            "--no-annotate",
            "--python-version",
            python,
            "--python",
            interpreter(python),
            *_index_args(),
            *_find_links(find_links),
        ]
        if overrides:
            ov = Path(tmp, "overrides.txt")
            ov.write_text("".join(f"{o}\n" for o in overrides))
            cmd += ["--overrides", str(ov)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_uv_env())
        except subprocess.TimeoutExpired:
            raise ResolveError(reqs, f"uv pip compile timed out after {timeout:.0f}s") from None
    if proc.returncode == 0:
        return Lock(_parse_pins(proc.stdout), python)
    reason = _strip_ansi(proc.stderr).strip()
    if "No solution found" in reason or "unsatisfiable" in reason:
        return Unresolvable(reqs, reason)
    raise ResolveError(reqs, reason or f"uv pip compile exited {proc.returncode}")


def _find_links(dirs) -> list[str]:
    return [arg for d in dirs for arg in ("--find-links", str(d))]


def _parse_pins(text: str) -> tuple[tuple[str, str], ...]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        (spec,) = tuple(req.specifier)
        pins[canonicalize_name(req.name)] = spec.version
    return tuple(sorted(pins.items()))


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


@dataclass
class Environment:
    """A built virtualenv for one lock."""

    path: Path
    lock: Lock
    created: bool = field(default=False)
    seconds: float = 0.0

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


def reference_env(matrix) -> Environment:
    """The reference path's environment (goldens, the template corpus): the matrix's reference
    pins of jinja2, transformers and tokenizers on the default runner, with its pins."""
    pins = [
        f"{name}=={version}"
        for name, version in sorted(matrix.reference.items())
        if name in ("jinja2", "transformers", "tokenizers")
    ] + ["torch"]  # the runner pins its build
    runner = next(r for r in matrix.runners if r.default)
    lock = resolve(pins, python=runner.python, overrides=list(runner.pins))
    if isinstance(lock, Unresolvable):
        raise LlmcompatError(f"{matrix.source}: reference pins {pins} cannot be installed together:\n{lock.reason}")
    return ensure(lock)


def envs_root() -> Path:
    from matrix.paths import cache_dir

    return cache_dir() / "envs"


def ensure(lock: Lock, root: Path | None = None, *, built: dict[str, Path] | None = None) -> Environment:
    """The environment for ``lock``, built once: same lock, same directory, never rebuilt.

    ``built`` maps a package to the directory of its wheel built by :mod:`matrix.env.builds`: it
    is installed from there and never compiled here; its build key (the directory's name, a
    prefix of the key, as every build made once under a key is named) is part of the directory.
    """
    from matrix.plan.key import digest

    built = built or {}
    root = root or envs_root()
    keys = sorted(f"{name}={Path(d).name}" for name, d in built.items())
    path = root / (digest(lock.digest, *keys)[:24] if keys else lock.digest[:24])
    if (path / MARKER).is_file():
        return Environment(path, lock)
    started = time.perf_counter()

    def build(tmp: Path) -> dict:
        env = _uv_env()
        subprocess.run(
            [uv_bin(), "venv", "--quiet", "--relocatable", "--python", interpreter(lock.python), str(tmp)],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        lock_file = tmp / "llmcompat-lock.txt"
        lock_file.write_text(lock.text)
        proc = subprocess.run(
            [
                uv_bin(),
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--python",
                str(tmp / "bin" / "python"),
                *_index_args(),
                *_find_links(built.values()),
                *[a for name in sorted(built) for a in ("--only-binary", name)],
                "-r",
                str(lock_file),
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        if proc.returncode != 0:
            raise ResolveError(tuple(f"{n}=={v}" for n, v in lock.pins), _strip_ansi(proc.stderr).strip())
        return lock.to_json()

    created = atomic.build_once(path, build, marker=MARKER)
    return Environment(path, lock, created=created, seconds=time.perf_counter() - started if created else 0.0)
