"""The main job's terminal summary, for a non-interactive 80-column log: pure text.

One line per cell with a short label (only what varies between the run's cells; what all
share is said once above), the outcome and one letter per stage, so no column wraps or
hides; then the counts, and a last line with where the page is and how many findings are
new, fixed and open.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from matrix.outcome import STAGES

AXES = ("engine", "tokenizer", "template", "client")
STAGE_LETTER = {"pass": ".", "fail": "F", "flaky": "~", "infra": "!", "skipped": "-", "unresolvable": "U", "xfail": "x"}
STAGE_HEAD = {"template": "T", "tokenize": "K", "inference": "I", "postprocess": "P", "client": "C"}
LABEL = 44
WIDTH = 80


def short_labels(cells: Sequence[Mapping]) -> tuple[list[str], str, dict[str, str]]:
    """(a label per cell, what every cell shares, abbreviations used) for cells given as
    ``{"runner", "model", "engine": (name, version), ...}``; labels fit ``budget`` columns."""
    parts = ("runner", "model", *AXES)
    varying = [p for p in parts if len({_show(c[p]) for c in cells}) > 1]
    shared = " · ".join(_show(cells[0][p]) for p in parts if p not in varying) if cells else ""
    budget = LABEL
    for k in (None, 10, 8, 6, 4):
        abbrev = _abbreviations(cells, varying, k)
        labels = [" ".join(_show(c[p], abbrev) for p in varying) or "(one cell)" for c in cells]
        if max(map(len, labels), default=0) <= budget:
            break
    labels = [lab if len(lab) <= budget else lab[: budget - 1] + "…" for lab in labels]
    used = {short: full for full, short in abbrev.items() if short != full}
    return labels, shared, used


def _show(value, abbrev: Mapping[str, str] | None = None) -> str:
    if isinstance(value, (tuple, list)):
        name, version = value
        return f"{(abbrev or {}).get(name, name)} {version}"
    return str(value)


def _abbreviations(cells, varying, k: int | None) -> dict[str, str]:
    names = sorted({c[p][0] for c in cells for p in varying if isinstance(c[p], (tuple, list))})
    if k is None:
        return {n: n for n in names}
    out = {}
    for n in names:
        length = k
        while length < len(n) and any(o != n and o[:length] == n[:length] for o in names):
            length += 1
        out[n] = n[:length]
    return out


def cell_lines(rows: Sequence[Mapping]) -> list[str]:
    """The table: ``rows`` have the cell's axes (as for :func:`short_labels`), ``outcome``,
    ``reused``, ``stages`` ({stage: outcome}) and ``seconds``."""
    labels, shared, used = short_labels(rows)
    stage_head = " ".join(STAGE_HEAD[s.value] for s in STAGES)
    lines = []
    if shared:
        lines += _wrap("every cell: ", shared.split(" · "))
    if used:
        lines.append(_fit("names: " + ", ".join(f"{s}={f}" for s, f in sorted(used.items()))))
    lines.append(f"{'#':>3} {'cell':<{LABEL}} {'outcome':<13} {stage_head}  {'secs':>6}")
    for i, (row, label) in enumerate(zip(rows, labels), start=1):
        outcome = str(row["outcome"]) + ("*" if row.get("reused") else "")
        stages = row.get("stages") or {}
        letters = " ".join(STAGE_LETTER.get(str(stages.get(s.value, "skipped")), "?") for s in STAGES)
        lines.append(f"{i:>3} {label:<{LABEL}} {outcome:<13} {letters}  {row.get('seconds', 0.0):>6.1f}")
    lines.append(_fit("stages: " + ", ".join(f"{STAGE_HEAD[s.value]} {s.value}" for s in STAGES)))
    lines.append(_fit(", ".join(f"{v} {k}" for k, v in STAGE_LETTER.items()) + ", * reused"))
    return lines


def finding_counts(findings: Iterable, since: str) -> dict[str, int]:
    """New (first seen in this run), fixed (fixed in this run) and open findings."""
    counts = {"new": 0, "fixed": 0, "open": 0}
    for f in findings:
        get = f.get if isinstance(f, Mapping) else (lambda k, _f=f: getattr(_f, k, None))
        status, first, last = get("status"), get("first_seen") or "", get("last_seen") or ""
        if status == "open":
            counts["open"] += 1
            if first >= since:
                counts["new"] += 1
        elif status == "fixed" and last >= since:
            counts["fixed"] += 1
    return counts


def final_line(index: str | None, counts: Mapping[str, int]) -> str:
    """Findings first (they always fit), then the page's path (whole, to copy; relative to the
    working directory when it is below it)."""
    where = f"page {_relative(index)}" if index else "page not published (--no-page)"
    return f"findings: {counts['new']} new, {counts['fixed']} fixed, {counts['open']} open · {where}"


def _relative(path: str) -> str:
    import os

    rel = os.path.relpath(path)
    return rel if not rel.startswith("..") else path


def _wrap(head: str, items: list[str]) -> list[str]:
    """``head`` then the items joined by " · ", broken between items to fit the width."""
    lines, line = [], head
    for item in items:
        piece = item if line in (head, "  ") else " · " + item
        if len(line) + len(piece) > WIDTH and line not in (head, "  "):
            lines.append(line)
            line, piece = "  ", item
        line += piece
    lines.append(_fit(line))
    return lines


def _fit(text: str) -> str:
    return text if len(text) <= WIDTH else text[: WIDTH - 1] + "…"
