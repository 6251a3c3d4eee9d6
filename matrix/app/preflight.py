"""Before any work starts: the directories a command writes must take writes (issue 12).

A read-only or full state directory used to show up as a traceback from SQLite half-way
through a run (``unable to open database file``), after cells had already spent minutes. Each
directory is checked by doing what the run will do: create it, write a small file, fsync it,
remove it; and its free space is compared with a floor.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from matrix.errors import LlmcompatError

MIN_FREE_MB = 64
"""Free space a writing command needs at least (``LLMCOMPAT_MIN_FREE_MB`` overrides)."""
PROBE_BYTES = 64 * 1024


class NotWritable(LlmcompatError):
    """A directory llmcompat must write to refuses writes or is (nearly) full."""

    def __init__(self, directory: Path, what: str, problem: str):
        super().__init__(
            f"{directory}: the {what} is {problem}; nothing was started "
            f"(free some space, fix its permissions, or point {_ENV.get(what, 'it')} elsewhere)"
        )


_ENV = {"state directory": "LLMCOMPAT_HOME", "cache directory": "LLMCOMPAT_CACHE", "site directory": "LLMCOMPAT_SITE"}


def min_free_bytes() -> int:
    try:
        return int(float(os.environ.get("LLMCOMPAT_MIN_FREE_MB", MIN_FREE_MB)) * 1024 * 1024)
    except ValueError:
        raise LlmcompatError(
            f"LLMCOMPAT_MIN_FREE_MB: {os.environ['LLMCOMPAT_MIN_FREE_MB']!r}: not a number of megabytes"
        ) from None


def check_writable(directory: Path, what: str = "state directory") -> None:
    """Write, fsync and remove a small file in ``directory`` (in its nearest existing ancestor
    when it does not exist yet: bad input later must leave nothing behind, not even the
    directory), and check the free space there; :class:`NotWritable` names the directory."""
    directory = Path(directory).absolute()
    where = directory
    while not where.exists() and where.parent != where:
        where = where.parent
    if not where.is_dir():
        raise NotWritable(directory, what, f"not creatable ({where} is not a directory)")
    try:
        fd, tmp = tempfile.mkstemp(dir=where, prefix=".llmcompat-preflight-")
    except OSError as exc:
        raise NotWritable(directory, what, f"not writable ({_why(exc)})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise NotWritable(directory, what, f"not writable ({_why(exc)})") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    st = os.statvfs(where)
    free, floor = st.f_bavail * st.f_frsize, min_free_bytes()
    if free < floor:
        raise NotWritable(directory, what, f"full: {free // 2**20} MiB free, {floor // 2**20} MiB needed")


def _why(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "no space left on the device"
    if exc.errno == errno.EROFS:
        return "a read-only file system"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return exc.strerror or str(exc)


def check_state(*, cache: bool = False, site: Path | None = None) -> None:
    """The state directory (store, result files), and the cache and site directories when the
    command writes them."""
    from matrix import paths

    check_writable(paths.state_dir(), "state directory")
    if cache:
        check_writable(paths.cache_dir(), "cache directory")
    if site is not None:
        check_writable(site, "site directory")
