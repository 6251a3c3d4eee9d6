"""Writes that a kill cannot leave half-done: a temporary sibling, then one rename.

Files: written and fsynced beside their final name, then ``os.replace``d. Directories (an
environment, a build, a model): made under a temporary name and renamed into place; when an
equal build won the race, its result stands and ours is dropped.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
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


def publish_dir(tmp: Path, path: Path, marker: str) -> None:
    """Rename the finished directory ``tmp`` to ``path``; if an equal one (with its ``marker``
    file) got there first, keep it and remove ``tmp``."""
    try:
        os.rename(tmp, path)
    except OSError:
        if not (path / marker).is_file():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
