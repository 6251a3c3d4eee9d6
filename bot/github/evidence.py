"""What the store's run history says about each finding, for closing and reopening (pure).

Close on evidence only: a release newer than the first bad one must pass the finding's check on
N consecutive scheduled runs. Old releases stay broken, so a run's failures at the first bad
version or older say nothing about a fix; only versions newer than it count, either way. A
pass of the same (or older) versions is no evidence at all: it neither counts nor breaks the
streak. Re-running the bot over the same store counts the same runs, so it changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from bot.differences import Owners, owner

__all__ = ["Evidence", "SCHEDULED", "evidence", "newer", "vkey"]

SCHEDULED = frozenset({"matrix", "ingest"})
"""Run kinds that are scheduled matrix runs (A/A runs and re-runs are not evidence)."""


@dataclass(frozen=True)
class Evidence:
    """One finding's history: the passing streak and the failures, newest run last."""

    passing_runs: int = 0
    """Consecutive latest scheduled runs in which a release newer than first bad passed the check
    and none newer than it failed."""
    passing_version: str | None = None
    """The newest release that passed in that streak (the fixing release once it closes)."""
    failures: tuple[tuple[str, str], ...] = ()
    """(run started, newest failing version) of every scheduled run that failed the check."""
    cell_ids: tuple[str, ...] = ()
    """Cells that failed the check in the latest run that ran it."""


def vkey(v: str | None):
    try:
        return (1, Version(v or ""), v or "")
    except InvalidVersion:
        return (0, Version("0"), v or "")


def newer(v: str, than: str | None) -> bool:
    return than is None or vkey(v) > vkey(than)


def _matches(f, row: Mapping, owners: Owners) -> bool:
    if row.get("case_id") is None or row.get("stage") != f.stage:
        return False
    if f.kind != "difference" and row.get("case_id") != f.case_id:
        return False
    if f.check_name:
        return row.get("check_name") == f.check_name and owner(row, owners)[1] == f.component
    return row.get(f.axis) == f.component


def evidence(
    findings: Iterable, rows: Iterable[Mapping], owners: Owners, kinds: Mapping[str, str] | None = None
) -> dict[str, Evidence]:
    """Evidence per fingerprint from :meth:`reports.store.Store.case_rows` rows; ``kinds`` maps
    run id -> kind (runs of other kinds than :data:`SCHEDULED` are left out)."""
    rows = [r for r in rows if kinds is None or kinds.get(r["run_id"], "matrix") in SCHEDULED]
    out = {}
    for f in findings:
        runs: dict[str, dict] = {}
        for r in rows:
            if not _matches(f, r, owners):
                continue
            run = runs.setdefault(
                r["run_id"], {"started": r["run_started"], "pass": set(), "fail": set(), "cells": set()}
            )
            version = r.get(f"{f.axis}_version") or ""
            if r["outcome"] == "pass":
                run["pass"].add(version)
            elif r["outcome"] == "fail":
                run["fail"].add(version)
                run["cells"].add(r["cell_id"])
        out[f.fingerprint] = _judge(f, sorted(runs.values(), key=lambda x: x["started"]))
    return out


def _judge(f, runs: list[dict]) -> Evidence:
    bar = f.first_bad or max(f.versions, key=vkey, default=None)
    streak, best = 0, None
    for run in reversed(runs):
        if any(newer(v, bar) for v in run["fail"]):
            break
        passed = [v for v in run["pass"] if newer(v, bar)]
        if passed:
            streak += 1
            top = max(passed, key=vkey)
            best = top if best is None or vkey(top) > vkey(best) else best
    failures = tuple((run["started"], max(run["fail"], key=vkey)) for run in runs if run["fail"])
    latest = next((run for run in reversed(runs) if run["pass"] or run["fail"]), None)
    return Evidence(streak, best, failures, tuple(sorted(latest["cells"])) if latest else ())
