"""Error fingerprints: one finding per distinct failure, stable across runs and unrelated bumps.

The same failure must map to the same issue whether it ran in /tmp/tmpa1b2, at 0x7f3a..., on
another day or against the next patch release of the changed component; so everything that
varies between runs is replaced by a placeholder before hashing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

_RULES: list[tuple[re.Pattern[str], str]] = [
    # an environment's own prefix up to site-packages (venv names, python3.11 vs 3.12)
    (re.compile(r"(?:[A-Za-z]:)?[\w.~/\\-]*?[/\\](?:site|dist)-packages(?=[/\\])"), "<site>"),
    # temporary files and directories (Unix, macOS, Windows)
    (re.compile(r"(?:/private)?(?:/tmp|/var/tmp|/var/folders|/dev/shm)(?:/[\w.+-]+)+"), "<tmp>"),
    (re.compile(r"[A-Za-z]:\\[^\s\"']*?\\Temp(?:\\[\w.+-]+)+", re.IGNORECASE), "<tmp>"),
    # timestamps: ISO dates with optional time and zone, and bare clock times
    (re.compile(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?"), "<time>"),
    (re.compile(r"\b\d{1,2}:\d{2}:\d{2}(?:[.,]\d+)?\b"), "<time>"),
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "<uuid>"),
    (re.compile(r"0x[0-9a-fA-F]+"), "0x<addr>"),
    # release versions (three or more parts, optional pre/post/dev/local), and pins
    (
        re.compile(
            r"(?<![\w.])v?\d+\.\d+\.\d+(?:\.\d+)*(?:[-_.]?(?:a|b|rc|alpha|beta|dev|post)\d*)*(?:\+[\w.]+)?(?![\w.])"
        ),
        "<version>",
    ),
    (re.compile(r"(?<=[=~<>!]=)\s*\d+(?:\.\d+)+[\w.+]*"), "<version>"),
    # line and column numbers
    (re.compile(r"\b(line|lineno|col|column)(\s*[=:]?\s*)\d+", re.IGNORECASE), r"\1\2<n>"),
    (re.compile(r"(\.\w+|>|\)):\d+(?::\d+)?"), r"\1:<n>"),
    (re.compile(r"\d{5,}"), "<n>"),
    (re.compile(r"\s+"), " "),
]


def normalize_error(text: str, versions: Iterable[str] = ()) -> str:
    """Replace what varies between runs with placeholders.

    ``versions`` are the version strings of the changed component (from and to); they are
    removed even when short (``4.46``), which the generic version rule leaves alone because
    two-part numbers are often meaningful values.
    """
    for v in sorted({v for v in versions if v}, key=len, reverse=True):
        text = re.sub(rf"(?<![\w.]){re.escape(v)}(?![\w])", "<version>", text)
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    return text.strip()


def fingerprint(component: str, stage: str, case: str, error_text: str, versions: Iterable[str] = ()) -> str:
    """16 hex chars of sha256 over component, stage, case and the normalized error."""
    key = "\x1f".join([str(component), str(stage), str(case), normalize_error(error_text, versions)])
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
