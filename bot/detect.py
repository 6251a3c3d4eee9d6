"""Candidate regressions and fixes: the current run compared with history.

A record is plain data, one (case, stage) outcome of one cell in one run::

    {"cell": id, "axes": {axis: [component, version]}, "runner": r, "model": m,
     "case": c, "stage": s, "outcome": "pass" | "fail" | ..., "run": run_id, "time": iso}

**Nearest cell.** For a current record, the comparable earlier cells are those with the same
runner, model, case and stage, the same *component* on every axis (a switch of component is a
different product, not a release change) and a different version on at least one axis. Each
such cell is represented by its most recent result before the current one, ignoring ``infra``
(which says nothing about the code); only cells whose representative is ``pass`` or ``fail``
count. The nearest is the one differing on the fewest axes (one axis preferred); ties go to the
most recent result, then to the smaller cell id. A candidate is only ever a hint: confirmation
re-runs both cells and bisection looks at the versions in between.

Only earlier runs are history: cells of the same run are not compared with each other. The
direction comes from release order, not run order: the good side of a regression is the cell
with the older releases (every changed axis older), the bad side the newer; where some axes
moved forward and others back, there is no candidate.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from packaging.version import InvalidVersion, Version

from matrix.declare.config import AXES
from matrix.outcome import Outcome, is_regression

Record = Mapping[str, object]
DECISIVE = {Outcome.PASS.value, Outcome.FAIL.value}


@dataclass
class Candidate:
    """``changed`` maps each changed axis to (earlier version, current version)."""

    kind: str  # "regression" (pass -> fail) | "fix" (fail -> pass)
    case: str
    stage: str
    runner: str
    model: str
    good_cell: str
    bad_cell: str
    changed: dict[str, tuple[str, str]]
    components: dict[str, str] = field(default_factory=dict)
    """The component on each changed axis."""
    baseline_run: str = ""
    run: str = ""


@dataclass
class Detection:
    candidates: list[Candidate]
    requeue: list[Record]
    """Current ``infra`` results: run again, never compared."""


def detect(history: Iterable[Record], current: Iterable[Record]) -> Detection:
    current = list(current)
    return Detection(candidates(history, current), requeue(current))


def requeue(current: Iterable[Record]) -> list[Record]:
    return [r for r in current if r["outcome"] == Outcome.INFRA.value]


def candidates(history: Iterable[Record], current: Iterable[Record]) -> list[Candidate]:
    current = list(current)
    runs = {r["run"] for r in current}
    earlier: dict[tuple, list[tuple[datetime, Record]]] = defaultdict(list)
    for r in history:
        if r["run"] not in runs and r["outcome"] != Outcome.INFRA.value:
            earlier[_context(r)].append((_time(r), r))

    found = []
    for r in current:
        if r["outcome"] not in DECISIVE:
            continue  # infra is requeued; unresolvable/skipped/xfail/flaky never become candidates
        t = _time(r)
        latest: dict[str, tuple[datetime, Record]] = {}
        for te, e in earlier[_context(r)]:
            cell = str(e["cell"])
            if te < t and (cell not in latest or te > latest[cell][0]):
                latest[cell] = (te, e)
        best: tuple[tuple[int, float, str], Record, dict[str, tuple[str, str, str]]] | None = None
        for cell, (te, e) in latest.items():
            diff = _diff(_axes(e), _axes(r))
            if e["outcome"] in DECISIVE and diff:
                rank = (len(diff), -te.timestamp(), cell)
                if best is None or rank < best[0]:
                    best = (rank, e, diff)
        if best is None or best[1]["outcome"] == r["outcome"]:
            continue
        _, e, diff = best
        direction = _direction(diff)
        if direction == 0:
            continue  # some axes moved forward, others back: no release is to blame
        before, after = (e, r) if direction > 0 else (r, e)
        regression = is_regression(_outcome(before), _outcome(after))
        good, bad = (before, after) if regression else (after, before)
        found.append(
            Candidate(
                kind="regression" if regression else "fix",
                case=str(r["case"]),
                stage=str(r["stage"]),
                runner=str(r["runner"]),
                model=str(r["model"]),
                good_cell=str(good["cell"]),
                bad_cell=str(bad["cell"]),
                changed={a: (v[1], v[2]) if direction > 0 else (v[2], v[1]) for a, v in diff.items()},
                components={a: v[0] for a, v in diff.items()},
                baseline_run=str(e["run"]),
                run=str(r["run"]),
            )
        )
    return found


def _context(r: Record) -> tuple:
    """What must be equal to compare: runner, model, case, stage and the component on each axis."""
    components = tuple(sorted((str(a), str(v[0])) for a, v in _axes(r).items()))
    return (r["runner"], r["model"], r["case"], r["stage"], components)


def _axes(r: Record) -> Mapping[str, Sequence[object]]:
    """The record's ``axes``: axis -> [component, version]."""
    axes = r["axes"]
    if not isinstance(axes, Mapping):
        raise TypeError(f"record of cell {r.get('cell')!r}: axes is not a mapping: {axes!r}")
    return axes


def _outcome(r: Record) -> Outcome | str:
    """The record's ``outcome`` (an :class:`Outcome` value)."""
    outcome = r["outcome"]
    if not isinstance(outcome, str):
        raise TypeError(f"record of cell {r.get('cell')!r}: outcome is not a string: {outcome!r}")
    return outcome


def _diff(before: Mapping, after: Mapping) -> dict[str, tuple[str, str, str]] | None:
    """axis -> (component, from, to) for axes whose version changed; None if not comparable."""
    if set(before) != set(after):
        return None
    out = {}
    for axis in sorted(before, key=lambda a: (AXES.index(a) if a in AXES else len(AXES), a)):
        (comp_a, ver_a), (comp_b, ver_b) = before[axis], after[axis]
        if comp_a != comp_b:
            return None
        if ver_a != ver_b:
            out[axis] = (str(comp_a), str(ver_a), str(ver_b))
    return out


def _direction(diff: Mapping[str, tuple[str, str, str]]) -> int:
    """+1 when every changed axis moved to a newer release, -1 when every one moved back, else 0.

    Releases, not runs, are ordered: a run that tests an older release after a newer one
    passed has not found a regression; the older release failing is a fix in the newer one."""
    signs = {_cmp(v[1], v[2]) for v in diff.values()}
    return signs.pop() if len(signs) == 1 else 0


def _cmp(a: str, b: str) -> int:
    try:
        va, vb = Version(a), Version(b)
    except InvalidVersion:
        return (a < b) - (a > b)
    return (va < vb) - (va > vb)


def _time(r: Record) -> datetime:
    t = datetime.fromisoformat(str(r["time"]))
    return t if t.tzinfo else t.replace(tzinfo=UTC)
