"""Scratch space that a killed process cannot leak into ``/tmp`` (issue 12).

Temporary directories (a resolution's requirement files, a probe's job and its HF home) live
under ``<cache>/tmp/<host>-<pid>``, not in ``/tmp``: each is removed in a ``finally`` block, and
what a SIGKILLed process left behind is removed by the next llmcompat process on that host,
which sees that the owning pid is gone. Never another live process's directory.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import threading
from pathlib import Path

_lock = threading.Lock()
_mine: Path | None = None


def root() -> Path:
    from matrix import paths

    return paths.cache_dir() / "tmp"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def clean_stale(base: Path | None = None) -> list[Path]:
    """Remove the scratch directories of this host's processes that no longer run; returns them."""
    base = base or root()
    host = socket.gethostname()
    removed = []
    for d in base.glob(f"{host}-*") if base.is_dir() else ():
        pid = d.name.rpartition("-")[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def directory() -> Path:
    """This process's scratch directory (made on first use, when stale ones are cleaned)."""
    global _mine
    with _lock:
        name = f"{socket.gethostname()}-{os.getpid()}"
        if _mine is None or _mine.name != name or not _mine.is_dir():
            base = root()
            clean_stale(base)
            _mine = base / name
            _mine.mkdir(parents=True, exist_ok=True)
            atexit.register(shutil.rmtree, _mine, True)  # a clean exit leaves nothing; a kill: the next start
        return _mine
