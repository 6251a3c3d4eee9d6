"""Where llmcompat keeps things: state of this checkout, and caches shared by checkouts.

- state (``LLMCOMPAT_HOME``, default ``.llmcompat`` in the working directory): result files,
  the SQLite store, the published page's inputs. Derived from runs; safe to delete.
- cache (``LLMCOMPAT_CACHE``, default ``$XDG_CACHE_HOME/llmcompat``): environments by lock
  digest, the package index cache, built models and compiled wheels. Content-addressed.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def state_dir() -> Path:
    return Path(os.environ.get("LLMCOMPAT_HOME") or Path.cwd() / ".llmcompat")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get("LLMCOMPAT_CACHE") or Path(base) / "llmcompat")


def results_dir() -> Path:
    return state_dir() / "results"


def store_path() -> Path:
    return state_dir() / "store.sqlite"


def site_dir() -> Path:
    return Path(os.environ.get("LLMCOMPAT_SITE") or state_dir() / "site")
