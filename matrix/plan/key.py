"""The cell key: a content hash of everything that can change a cell's result.

Same key, same result: a cell whose key has a result is reused, never run again. The key
covers the resolved lock (every installed package at its exact version, and the Python),
the suite (its version and the digest of its cases and goldens), the model's hash, the
runner, and the probe's own source (a changed harness can change a result).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping


def cell_key(
    *,
    pins: Mapping[str, str],
    python: str,
    suite: str,
    model_hash: str,
    runner: str,
    harness: str = "",
) -> str:
    """sha256 hex of a canonical JSON document; independent of the order of ``pins``."""
    doc = {
        "v": 1,
        "pins": sorted((str(k).lower(), str(v)) for k, v in pins.items()),
        "python": python,
        "suite": suite,
        "model": model_hash,
        "runner": runner,
        "harness": harness,
    }
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(raw.encode()).hexdigest()


def digest(*parts: bytes | str) -> str:
    """sha256 over length-prefixed parts, so ("ab", "c") and ("a", "bc") differ."""
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "big"))
        h.update(b)
    return h.hexdigest()
