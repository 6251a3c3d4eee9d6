"""The issue body and title of a finding, from a Jinja2 template (pure).

Autoescape is off (this is Markdown, not HTML); instead every untrusted string goes through one
of :mod:`bot.github.escape`'s filters (``md``, ``code``, ``fence``). The first line is a hidden
marker holding the fingerprint and the state the body shows: listing the bot's issues and reading
markers is how the bot finds its issue again (the marker is the source of truth, the store a
cache), and the state is what a change is measured against.

GitHub refuses bodies over 65,536 characters. :func:`render` shortens step by step, as
issue-from-pytest-log does: all cases and details; cases summarised; details dropped; the cell
list dropped; last, every untrusted field clipped. Each step is a whole rendering, never a cut.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import jinja2

from bot.github import escape
from matrix.outcome import failure_class

__all__ = [
    "LIMIT",
    "IssueView",
    "Divergence",
    "divergence",
    "length",
    "marker",
    "parse_marker",
    "render",
    "summary",
    "title",
]

LIMIT = 65_536
"""GitHub's limit on an issue or comment body, in characters (counted here in UTF-16 units, the
stricter reading)."""
CASES_SUMMARY = 10
CLIP = 500
MARKER_RE = re.compile(r"<!-- llmcompat:(finding|comment) (\{.*?\}) -->")

_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=False,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_ENV.filters.update(md=escape.text, code=escape.code, fence=escape.fence)
_URL = re.compile(r"https?://[^\s()<>\[\]\"'`]+")


@dataclass(frozen=True)
class Divergence:
    """Where the output first differed: expected and actual (token ids or text), decoded text when known."""

    expected: str
    actual: str
    expected_text: str | None = None
    actual_text: str | None = None


@dataclass(frozen=True)
class IssueView:
    """Everything the body shows, as plain data: the finding and what the bot knows beside it."""

    finding: Any
    state: dict
    triage: Any = None
    cell_ids: tuple[str, ...] = ()
    flake: str | None = None
    repro_state: str = "not run"
    script: str | None = None
    page_url: str | None = None
    fixed_in: str | None = None
    decoded: dict = field(default_factory=dict)
    """Token-id list text -> decoded text, where the caller could decode (the tiny model's tokenizer)."""


_DIVERGENCE = re.compile(
    r"expected (?P<e>\[[^\]]*\]|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\S+), "
    r"got (?P<a>\[[^\]]*\]|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\S+?)(?=[;,]?\s|[;,]?$)"
)


def divergence(detail: str, decoded: dict | None = None) -> Divergence | None:
    """The first ``expected X, got Y`` of a probe's detail (ids as ``[..]`` or a quoted string)."""
    m = _DIVERGENCE.search(detail or "")
    if not m:
        return None
    decoded = decoded or {}
    return Divergence(m["e"], m["a"], decoded.get(m["e"]), decoded.get(m["a"]))


def summary(f) -> str:
    """The one-line summary (plain text; escaped by the caller)."""
    what = f.check_name or f.case_id
    if f.kind == "regression" and f.first_bad:
        return (
            f"{f.component} {f.first_bad} breaks {f.case_id} at the {f.stage} stage"
            f" (last good {f.last_good or 'unknown'})"
        )
    n = len(f.cases) or 1
    return (
        f"{f.component} disagrees with the reference at the {f.stage} stage: {what} ({f.klass or 'fail'}),"
        f" {n} case{'s' if n != 1 else ''} in {f.cells} cell{'s' if f.cells != 1 else ''}"
    )


def title(f) -> str:
    """The issue title: component, what fails, stage; references neutralised, at most 256 characters."""
    if f.kind == "regression" and f.first_bad:
        text = f"[llmcompat] {f.component} {f.last_good or '?'} → {f.first_bad}: {f.case_id} fails at {f.stage}"
    else:
        text = f"[llmcompat] {f.component}: {f.check_name or f.case_id} ({f.klass or 'fail'}) at {f.stage}"
    return escape.title(text)


def marker(kind: str, payload: dict) -> str:
    """A hidden HTML comment with JSON; ``-``, ``<`` and ``>`` are JSON-escaped so that no value
    (a version is untrusted) can close the comment."""
    text = json.dumps(payload, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    text = text.replace("-", "\\u002d").replace("<", "\\u003c").replace(">", "\\u003e")
    return f"<!-- llmcompat:{kind} {text} -->"


def parse_marker(body: str | None, kind: str = "finding") -> dict | None:
    """The payload of the first ``kind`` marker in ``body`` (None: not the bot's)."""
    for m in MARKER_RE.finditer(body or ""):
        if m.group(1) == kind:
            try:
                data = json.loads(m.group(2))
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
    return None


def length(body: str) -> int:
    """Length as GitHub may count it: UTF-16 code units (>= characters)."""
    return len(body.encode("utf-16-le")) // 2


def _clip(s: Any, n: int = CLIP) -> Any:
    if not isinstance(s, str) or len(s) <= n:
        return s
    return s[:n] + f"… ({len(s) - n} more characters)"


def _clipped(view: IssueView) -> IssueView:
    f = view.finding
    fields = {
        k: _clip(getattr(f, k))
        for k in (
            "case_id",
            "check_name",
            "klass",
            "detail",
            "component",
            "repro",
            "last_good",
            "first_bad",
            "stage",
            "axis",
        )
    }
    fields["cases"] = tuple(_clip(c, 100) for c in f.cases[:CASES_SUMMARY])
    fields["versions"] = tuple(_clip(v, 100) for v in f.versions[:CASES_SUMMARY])
    try:
        f = replace(f, **fields)
    except TypeError:  # not a dataclass: keep the fields readable by attribute
        f = _Obj({**{k: getattr(f, k) for k in _ATTRS}, **fields})
    triage = view.triage
    if triage is not None:
        triage = _Obj({"verdict": _clip(triage.verdict, 40), "reason": _clip(triage.reason)})
    return replace(
        view,
        finding=f,
        triage=triage,
        flake=_clip(view.flake),
        script=None,
        cell_ids=tuple(_clip(c, 200) for c in view.cell_ids[:CASES_SUMMARY]),
        decoded={},
        fixed_in=_clip(view.fixed_in, 100),
        repro_state=_clip(view.repro_state, 200),
    )


_ATTRS = (
    "fingerprint",
    "kind",
    "case_id",
    "stage",
    "component",
    "axis",
    "check_name",
    "klass",
    "detail",
    "cases",
    "versions",
    "cells",
    "last_good",
    "first_bad",
    "compare_url",
    "repro",
    "status",
    "fixed_in",
)


class _Obj:
    def __init__(self, d: dict):
        self.__dict__.update(d)


# (cases shown: None = all, details, cell list) per step
STEPS: tuple[tuple[int | None, bool, bool], ...] = (
    (None, True, True),
    (CASES_SUMMARY, True, True),
    (CASES_SUMMARY, False, True),
    (CASES_SUMMARY, False, False),
)


def _render(view: IssueView, cases: int | None, details: bool, cells: bool) -> str:
    f = view.finding
    all_cases = list(f.cases) or [f.case_id]
    url = lambda u: u if u and len(u) <= 2000 and _URL.fullmatch(u) else None  # noqa: E731
    return _ENV.get_template("issue.md.j2").render(
        marker=marker("finding", {"fp": f.fingerprint, "state": view.state}),
        summary=escape.text(summary(f)),
        f=f,
        klass_class=failure_class(f.klass, f.stage).value,
        versions=list(f.versions[:CASES_SUMMARY]),
        more_versions=max(0, len(f.versions) - CASES_SUMMARY),
        fixed_in=view.fixed_in,
        compare_url=url(f.compare_url),
        triage=view.triage,
        flake=view.flake,
        repro_state=view.repro_state,
        divergence=divergence(f.detail, view.decoded),
        details=details,
        cases=all_cases if cases is None else (all_cases[:cases] if cases else None),
        n_cases=len(all_cases),
        n_cells=max(f.cells, len(view.cell_ids)),
        cell_ids=list(view.cell_ids) if cells and view.cell_ids else None,
        script=view.script,
        page_url=url(view.page_url),
    )


def render(view: IssueView, limit: int = LIMIT) -> str:
    """The body of ``view`` within ``limit``: the first step of :data:`STEPS` that fits, else the
    clipped minimum (every untrusted field bounded, so it always fits)."""
    for cases, details, cells in STEPS:
        body = _render(view, cases, details, cells)
        if length(body) <= limit:
            return body
    return _render(_clipped(view), 0, False, False)
