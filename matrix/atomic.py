"""Writes that a kill cannot leave half-done: a temporary sibling, then one rename.

Files: written and fsynced beside their final name, then ``os.replace``d. Directories (an
environment, a build, a model): made under a temporary name and renamed into place; when an
equal build won the race, its result stands and ours is dropped. :func:`build_once` is the one
"build once under a key" mechanism (temporary directory, marker, atomic publish, file lock) that
environments, compiled engines, the tiny model, model exports, npm installs and git mirrors use.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path


def write_text(path: Path | str, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path | str, data, **dump_options) -> None:
    options = {"ensure_ascii": False, "indent": 1, "sort_keys": True, **dump_options}
    write_text(path, json.dumps(data, **options))


def read_json(path: Path | str, log) -> object | None:
    """A cache file's JSON, or None when it is missing or unreadable (unreadable: a warning)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable cache file %s: %s", path, exc)
        return None


@contextlib.contextmanager
def locked(lock_path: Path | str, wait: float | None = None) -> Iterator[None]:
    """An exclusive lock on ``lock_path`` (flock: the kernel releases it if the holder dies).
    ``wait``: seconds to wait for it at most (None: as long as it takes), then TimeoutError."""
    lock_path = Path(lock_path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as f:
        deadline = None if wait is None else time.monotonic() + wait
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (fcntl.LOCK_NB if deadline is not None else 0))
                break
            except BlockingIOError:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"waited {wait:.0f}s for another build holding {lock_path}") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_once(
    path: Path | str,
    build: Callable[[Path], dict | None],
    *,
    marker: str,
    done: Callable[[Path], bool] | None = None,
    lock_path: Path | str | None = None,
    wait: float | None = None,
) -> bool:
    """``path`` made once: unless it is already ``done`` (default: its ``marker`` file exists),
    ``build(tmp)`` fills a temporary sibling directory. What it returns is written as JSON to
    ``tmp/<marker>`` (None: it wrote the marker itself, as ``git clone`` writes ``HEAD``); then
    ``tmp`` is renamed to ``path`` (an equal build that got there first wins). A directory at
    ``path`` that is not done (never published by this) is removed first; a failed build leaves
    nothing. With ``lock_path`` (for builds that take minutes) it all happens under that file's
    exclusive lock: a second builder waits (at most ``wait`` seconds, then TimeoutError) and takes
    the first one's result instead of building again. Returns whether it was built now."""
    path = Path(path)
    is_done = done or (lambda p: (p / marker).is_file())
    if is_done(path):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(lock_path, wait) if lock_path is not None else contextlib.nullcontext():
        if is_done(path):  # another process built it while we waited
            return False
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
        try:
            doc = build(tmp)
            if doc is not None:
                (tmp / marker).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            publish_dir(tmp, path, marker)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return True


def publish_dir(tmp: Path, path: Path, marker: str) -> None:
    """Rename the finished directory ``tmp`` to ``path``; if an equal one (with its ``marker``
    file) got there first, keep it and remove ``tmp``."""
    try:
        os.rename(tmp, path)
    except OSError:
        if not (path / marker).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
