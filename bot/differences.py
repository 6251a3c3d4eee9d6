"""Differences: where an implementation disagrees with the reference path now, as findings.

A regression is a change over time (pass -> fail between releases). A difference is a
disagreement at one point in time: the suite's goldens come from the reference path pinned in
axes.yaml, so a failing check of a renderer, tokenizer front end, engine or client in the latest
run says "this implementation, at these versions, does something else". Those are what users
choosing versions need to see, and what maintainers of that implementation need to hear.

One finding per (component, stage, check, failure class): the 57 cases one tokenizer change
breaks are one difference with 57 cases, not 57 findings. Its fingerprint hashes component,
stage, the check (in the case slot: a difference spans cases) and the class, so it is stable
across runs and versions. Pure functions over :meth:`reports.store.Store.case_rows` rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from packaging.version import InvalidVersion, Version

from bot.fingerprint import fingerprint
from matrix.declare.config import AXES
from matrix.outcome import Finding

STAGE_AXIS = {
    "template": "template",
    "tokenize": "tokenizer",
    "inference": "engine",
    "postprocess": "engine",
    "client": "client",
}
"""Whose a check is when its name names no implementation: the stage's own axis."""

DETAIL_CHARS = 600
MAX_CASES = 200

Owners = Mapping[str, Iterable[str]]
"""component name -> the implementation names it brings (its probe roles, every role)."""


def owners_of(matrix) -> dict[str, set[str]]:
    """Every component's implementation names (renderers, tokenizers, engines, clients)."""
    out: dict[str, set[str]] = {}
    for axis in matrix.axes.values():
        for comp in axis:
            out[comp.name] = {name for _, names in comp.probe for name in names}
    return out


def _tokens(check: str) -> list[str]:
    """``gguf/transformers:roundtrip`` -> [gguf, transformers, roundtrip]; a ``-stream`` suffix
    names the streamed variant of the same implementation."""
    out = []
    for t in re.split(r"[/:]", check):
        out.append(t)
        if t.endswith("-stream"):
            out.append(t[: -len("-stream")])
    return out


def owner(row: Mapping, owners: Owners) -> tuple[str, str]:
    """(axis, component) of the cell that a failing check belongs to: the cell's component that
    brings an implementation the check names, else the stage's own axis."""
    tokens = _tokens(row["check_name"])
    for token in tokens:
        for axis in AXES:
            comp = row[axis]
            if token in owners.get(comp, ()):
                return axis, comp
    axis = STAGE_AXIS.get(row["stage"], "engine")
    return axis, row[axis]


def _vkey(v: str):
    try:
        return (0, Version(v), v)
    except InvalidVersion:
        return (1, Version("0"), v)


def differences(rows: Iterable[Mapping], owners: Owners) -> list[Finding]:
    """The latest run's failing checks grouped into difference findings (no time fields)."""
    groups: dict[str, dict] = {}
    for row in rows:
        if row.get("case_id") is None or row.get("outcome") != "fail":
            continue
        axis, comp = owner(row, owners)
        klass = row.get("klass") or "fail"
        fp = fingerprint(comp, row["stage"], row["check_name"], klass)
        g = groups.get(fp)
        if g is None:
            g = groups[fp] = {
                "fingerprint": fp,
                "kind": "difference",
                "component": comp,
                "axis": axis,
                "stage": row["stage"],
                "check_name": row["check_name"],
                "klass": klass,
                "case_id": row["case_id"],
                "detail": str(row.get("detail") or "")[:DETAIL_CHARS],
                "bad_key": row["key"],
                "repro": row.get("repro") or "",
                "_cases": set(),
                "_versions": set(),
                "_cells": set(),
            }
        g["_cases"].add(row["case_id"])
        g["_versions"].add(row[f"{axis}_version"])
        g["_cells"].add(row["cell_id"])
    out = []
    for g in groups.values():
        cases = sorted(g.pop("_cases"))
        g["cases"] = cases[:MAX_CASES]
        g["case_id"] = cases[0]
        g["versions"] = sorted(g.pop("_versions"), key=_vkey)
        g["cells"] = len(g.pop("_cells"))
        out.append(Finding.from_row(g))
    return sorted(out, key=lambda f: (f.stage, f.component, f.check_name, f.klass))


def resolved(
    open_findings: Iterable[Finding], rows: Iterable[Mapping], current: Iterable[Finding], owners: Owners
) -> dict[str, str]:
    """Open differences the latest run no longer shows although it ran their check on their
    component: fingerprint -> the newest version of the component that now passes."""
    still = {f.fingerprint for f in current}
    ran: dict[tuple[str, str, str], set[str]] = {}
    for row in rows:
        if row.get("case_id") is None or row.get("outcome") not in ("pass", "fail", "xfail"):
            continue
        axis, comp = owner(row, owners)
        ran.setdefault((comp, row["stage"], row["check_name"]), set()).add(row[f"{axis}_version"])
    out = {}
    for f in open_findings:
        if f.kind != "difference" or f.fingerprint in still:
            continue
        versions = ran.get((f.component, f.stage, f.check_name))
        if versions:
            out[f.fingerprint] = max(versions, key=_vkey)
    return out
