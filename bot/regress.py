"""The regression pipeline over the store: history -> candidates -> confirmation -> bisection -> findings.

Everything that runs a cell is a callable handed in, so tests drive the pipeline with real cells or
with plain functions:

- ``rerun(cell_id) -> outcomes``: run one cell once more. ``outcomes`` is a mapping
  ``(case, stage) -> outcome`` or one outcome string for the whole cell (an ``infra`` or
  ``unresolvable`` cell that produced no per-case results). In production
  :func:`cell_rerunner` wraps ``CellRunner.execute(cell, force=True)`` writing into a temporary
  results directory, never the store's.
- ``probe(cell_id) -> outcomes``: run one cell for the bisection (default: ``rerun``).
- ``releases(axis, component) -> versions``: the known releases of a component (strings or
  :class:`matrix.releases.versions.Release`); in production :func:`index_releases`.

Steps (:func:`regress`):

1. history: every (run, cell, case, stage) in the store (:func:`history_records`, the worst check
   of a case/stage wins); current: the cells the run actually ran (not reused ones).
2. :func:`bot.detect.detect`: pass -> fail candidates; current ``infra`` is requeued.
3. quarantined cells/cases are skipped; each remaining candidate's bad and good cells are re-run
   (``of`` counted runs each, shared between candidates of the same cell; infra re-runs are
   repeated up to ``max_runs``) and judged by :func:`bot.confirm.confirm`. ``flaky`` quarantines
   the case on that cell, ``not-reproduced`` is dropped, ``infra`` is requeued.
4. a confirmed candidate with several changed axes is narrowed by :func:`bot.search.isolate_axis`;
   the guilty axis is bisected over its component's releases between last good and first bad,
   every other axis held at the good cell's version; a probe's verdict is the case/stage outcome
   (pass GOOD, fail BAD, anything else UNKNOWN). Known cells (the confirmed ends) are not re-run.
5. the finding gets :func:`bot.fingerprint.fingerprint`, a compare URL, a reproduction command and
   time-to-fix events (``released`` = the first bad release's upload time when known, ``detected``
   = now); all findings, bisections, events and new quarantine entries are saved in ONE
   transaction.
6. fixed-in: when the component has releases newer than the bad cell's, the newest is tested on
   the same cell; if it passes, the releases from the bad one to it are bisected in the other
   direction (:attr:`bot.search.Direction.FIXED`) to the first fixed release. The finding gets
   ``fixed_in`` and ``last_bad`` and is ``fixed`` (events ``fixed`` now and ``fix-released`` at the
   fix's upload time); the search is a second bisection row with ``direction`` ``fixed``.
7. a finding in a component that vendors llama.cpp (:data:`NARROWED`) is narrowed further to
   llama.cpp build tags or commits by ``narrow(finding, bisection) -> row``, handed in by the
   application layer (:func:`bot.narrow.pipeline_narrower`, which needs
   ``LLMCOMPAT_LLAMACPP_GIT``; without one, no narrowing is tried); its row is another bisection
   of the finding with component ``llama.cpp``: the narrowed range, or the status
   ``not narrowed: <why>``. Its ``versions`` are the candidates; ``compare_url`` and ``repro``
   are llama.cpp's own.

:func:`bisect_fixes` does step 6 for difference findings a run no longer shows: their first fixed
release, on the cell they failed in.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

from bot import links
from bot.confirm import Confirmation, Quarantine, confirm, release_if_passing
from bot.detect import Candidate, detect
from bot.fingerprint import fingerprint
from bot.search import BisectResult, Direction, Verdict, bisect, isolate_axis
from matrix import scratch
from matrix.declare.config import AXES
from matrix.outcome import Finding, Outcome, worst
from matrix.plan.cells import Cell, Choice
from matrix.releases.versions import Release

Outcomes = Mapping[tuple[str, str], str] | str
Rerun = Callable[[str], Outcomes]

NARROWED = frozenset({"llama-cpp-python"})
"""Components whose release range is narrowed to llama.cpp commits (they vendor llama.cpp)."""

# ----------------------------------------------------------------------------- history


def history_records(rows: Iterable[Mapping]) -> list[dict]:
    """:meth:`reports.store.Store.case_rows` rows -> :mod:`bot.detect` records, one per
    (run, cell, case, stage); the worst check outcome wins, failing details are kept in ``detail``.
    A cell without per-case results gives one record with case and stage ``""``."""
    grouped: dict[tuple, dict] = {}
    for row in rows:
        case = row.get("case_id")
        k = (row["run_id"], row["cell_id"], case or "", row.get("stage") or "")
        rec = grouped.get(k)
        if rec is None:
            rec = grouped[k] = {
                "cell": row["cell_id"],
                "key": row["key"],
                "axes": {a: [row[a], row[f"{a}_version"]] for a in AXES},
                "runner": row["runner"],
                "model": row["model"],
                "case": case or "",
                "stage": row.get("stage") or "",
                "run": row["run_id"],
                "time": row.get("run_started") or row.get("finished"),
                "reused": bool(row.get("reused")),
                "_outcomes": [],
                "_details": [],
            }
        outcome = row["outcome"] if case is not None else row["cell_outcome"]
        rec["_outcomes"].append(outcome)
        if outcome != "pass" and row.get("detail"):
            rec["_details"].append(str(row["detail"]))
        elif case is None and row.get("reason"):
            rec["_details"].append(str(row["reason"]))
    out = []
    for rec in grouped.values():
        outs = rec.pop("_outcomes")
        rec["outcome"] = worst(outs)
        rec["detail"] = "\n".join(dict.fromkeys(rec.pop("_details")))
        out.append(rec)
    return out


def outcomes_from_records(records: Iterable[Mapping]) -> dict[tuple[str, str], str]:
    """Probe result records (``{"case", "stage", "check", "outcome"}``) -> (case, stage) -> worst outcome."""
    seen: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in records:
        seen[(str(r["case"]), str(r["stage"]))].append(str(r["outcome"]))
    return {k: worst(v) for k, v in seen.items()}


def outcome_of(outcomes: Outcomes, case: str, stage: str) -> str:
    """One case/stage outcome from a re-run; a missing case says nothing about the code (infra)."""
    if isinstance(outcomes, str):
        return outcomes
    return str(outcomes.get((case, stage), Outcome.INFRA.value))


def verdict_of(outcome: str) -> Verdict:
    return {"pass": Verdict.GOOD, "fail": Verdict.BAD}.get(str(outcome), Verdict.UNKNOWN)


def with_version(cell_id: str, axis: str, version: str) -> str:
    cell = Cell.parse(cell_id)
    choices = cell.as_dict
    choices[axis] = Choice(choices[axis].component, version)
    return Cell.make(cell.runner, cell.model, choices).id


# ----------------------------------------------------------------------------- report


@dataclass
class RegressReport:
    findings: list[dict] = field(default_factory=list)
    bisections: list[dict] = field(default_factory=list)
    confirmations: list[tuple[Candidate, Confirmation]] = field(default_factory=list)
    flaky: list[Candidate] = field(default_factory=list)
    not_reproduced: list[Candidate] = field(default_factory=list)
    quarantined: list[Candidate] = field(default_factory=list)
    """Candidates skipped because their cell or case is in quarantine."""
    requeue: list[str] = field(default_factory=list)
    """Cell ids to run again: current infra results and candidates whose re-runs stayed infra."""
    new_quarantine: list[dict] = field(default_factory=list)
    narrowed: list[dict] = field(default_factory=list)
    """``bisections`` rows of component ``llama.cpp`` (narrowed ranges, or why not narrowed)."""
    reruns: int = 0
    probes: int = 0


# ----------------------------------------------------------------------------- pipeline


def regress(
    store,
    run_id: str,
    *,
    rerun: Rerun,
    releases: Callable[[str, str], Sequence[str | Release]],
    probe: Rerun | None = None,
    repos: Mapping[str, tuple[str, str]] | None = None,
    need: int = 2,
    of: int = 3,
    max_runs: int | None = None,
    now: str | datetime | None = None,
    quarantine_days: float = 14,
    narrow: Callable[[dict, dict], dict | None] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> RegressReport:
    """Run the pipeline for ``run_id`` (see the module docstring) and save its findings.

    ``repos`` maps a component name to ``(owner/name, tag_format)`` for compare links.
    ``max_runs``: re-runs of one cell at most (default ``2 * of``) before giving up as infra.
    ``shard``: ``(i, n)`` takes every n-th candidate from the i-th, so n jobs share the work.
    """
    now_dt = _now(now)
    now_s = now_dt.isoformat(timespec="seconds")
    records = history_records(store.case_rows())
    current = [r for r in records if r["run"] == run_id and not r["reused"]]
    detection = detect(records, current)
    report = RegressReport()
    report.requeue = list(dict.fromkeys(str(r["cell"]) for r in detection.requeue))
    by_cell_case = _latest_records(records)
    quarantined = store.quarantine(now_s)
    max_runs = max_runs or 2 * of
    probe = _once_per_cell(probe or rerun)  # one run of a cell answers every case's bisection

    runs: dict[str, list[Outcomes]] = defaultdict(list)

    def rerun_cell(cell_id: str, times: int) -> None:
        for _ in range(times):
            if len(runs[cell_id]) >= max_runs:
                return
            runs[cell_id].append(rerun(cell_id))
            report.reruns += 1

    saved: list[tuple[dict, dict | None, list[dict]]] = []
    for cand in detection.candidates[shard[0] :: shard[1]]:
        if cand.kind != "regression":
            continue
        subjects = _subjects(cand)
        if any(s in quarantined for s in subjects):
            report.quarantined.append(cand)
            continue
        # --- confirmation
        rerun_cell(cand.bad_cell, of - len(runs[cand.bad_cell]))
        rerun_cell(cand.good_cell, of - len(runs[cand.good_cell]))
        while True:
            bad = [outcome_of(o, cand.case, cand.stage) for o in runs[cand.bad_cell]]
            good = [outcome_of(o, cand.case, cand.stage) for o in runs[cand.good_cell]]
            conf = confirm(bad, good, need=need, of=of)
            if conf.verdict != "infra":
                break
            before = len(runs[cand.bad_cell]) + len(runs[cand.good_cell])
            rerun_cell(cand.bad_cell, conf.rerun_bad)
            rerun_cell(cand.good_cell, conf.rerun_good)
            if len(runs[cand.bad_cell]) + len(runs[cand.good_cell]) == before:
                break  # max_runs reached on the side that needs more
        report.confirmations.append((cand, conf))
        if conf.verdict == "flaky":
            report.flaky.append(cand)
            entry = {
                "subject": subjects[0],
                "until": (now_dt + timedelta(days=quarantine_days)).isoformat(),
                "reason": f"flaky: bad cell failed {conf.bad_failures}/{conf.bad_runs}, good cell failed "
                f"{conf.good_failures}/{conf.good_runs} re-runs",
            }
            report.new_quarantine.append(entry)
            quarantined[entry["subject"]] = entry
            continue
        if conf.verdict == "not-reproduced":
            report.not_reproduced.append(cand)
            continue
        if conf.verdict == "infra":
            report.requeue += [c for c in (cand.bad_cell, cand.good_cell) if c not in report.requeue]
            continue
        # --- bisection: introduced-in, then fixed-in when a newer release passes
        finding, bisection, fix = _bisect_candidate(cand, probe, releases, repos or {}, by_cell_case, report, now_s)
        finding["flake"] = flake_rate(conf)
        events = [{"event": "detected", "time": now_s, "version": finding["first_bad"]}]
        released = _upload_time(releases, finding["axis"], finding["component"], finding["first_bad"])
        if released:
            events.append({"event": "released", "time": released, "version": finding["first_bad"]})
        if finding["fixed_in"]:
            events.append({"event": "fixed", "time": now_s, "version": finding["fixed_in"]})
            fix_released = _upload_time(releases, finding["axis"], finding["component"], finding["fixed_in"])
            if fix_released:
                events.append({"event": "fix-released", "time": fix_released, "version": finding["fixed_in"]})
        report.findings.append(finding)
        report.bisections.append(bisection)
        saved.append((finding, bisection, events))
        if fix is not None:
            report.bisections.append(fix)
            saved.append((finding, fix, []))
        if finding["component"] in NARROWED:
            row = _narrow(narrow, finding, bisection)
            if row is not None:
                report.narrowed.append(row)
                saved.append((finding, row, []))

    if saved or report.new_quarantine:
        store.save_regressions(saved, report.new_quarantine)
    return report


def _narrow(narrow, finding: dict, bisection: dict) -> dict | None:
    """Narrow a release range to llama.cpp commits and say what came of it on stderr."""
    import sys

    if narrow is None:
        return None
    row = narrow(finding, bisection)
    if row is not None:
        print(
            f"llama.cpp narrowing of {finding['component']} {finding['last_good']} -> {finding['first_bad']} "
            f"({finding['case_id']}/{finding['stage']}): {row['status']}"
            + (
                f", {row['last_good']} -> {row['first_bad']} {row.get('compare_url', '')}"
                if row.get("first_bad") and row["status"] == "found"
                else ""
            ),
            file=sys.stderr,
        )
    return row


def _once_per_cell(probe: Rerun) -> Rerun:
    """A probe that runs each cell once per pipeline pass: bisections of the many cases that
    failed together share their cells' runs (noise is confirmation's business, not bisection's)."""
    seen: dict[str, Outcomes] = {}

    def run(cell_id: str) -> Outcomes:
        if cell_id not in seen:
            seen[cell_id] = probe(cell_id)
        return seen[cell_id]

    return run


def _bisect_candidate(
    cand: Candidate, probe: Rerun, releases, repos, by_cell_case, report: RegressReport, now_s: str
) -> tuple[dict, dict, dict | None]:
    case, stage = cand.case, cand.stage
    verdicts: dict[str, Verdict] = {cand.good_cell: Verdict.GOOD, cand.bad_cell: Verdict.BAD}

    def cell_verdict(cell_id: str) -> Verdict:
        if cell_id not in verdicts:
            verdicts[cell_id] = verdict_of(outcome_of(probe(cell_id), case, stage))
            report.probes += 1
        return verdicts[cell_id]

    def mixed(values: Mapping[str, str]) -> str:
        cell_id = cand.good_cell
        for axis, version in values.items():
            cell_id = with_version(cell_id, axis, version)
        return cell_id

    guilty = isolate_axis(cand.changed, lambda values: cell_verdict(mixed(values)))
    axis = guilty[0]
    component = cand.components[axis]
    good_v, bad_v = cand.changed[axis]
    # Other guilty axes (a failure that needs several together) are held at their bad versions.
    base = mixed({a: cand.changed[a][1] for a in guilty[1:]})
    known = [_version_str(r) for r in releases(axis, component)]
    versions = _between(known, good_v, bad_v)
    started = now_s

    def test(v: str) -> Verdict:
        return cell_verdict(with_version(base, axis, v))

    result: BisectResult = bisect(versions, test, old=0, new=len(versions) - 1)
    last_good: str
    first_bad: str
    if result.found:
        last_good, first_bad = result.pair()
    else:  # the range stays as detected; the bisection's status says why
        last_good, first_bad = good_v, bad_v
    good_rec = by_cell_case.get((cand.good_cell, case, stage), {})
    bad_rec = by_cell_case.get((cand.bad_cell, case, stage), {})
    fp = fingerprint(component, stage, case, bad_rec.get("detail", ""), versions=(good_v, bad_v, last_good, first_bad))
    repo = repos.get(component)
    first_bad_cell = with_version(base, axis, first_bad)
    finding = {
        "fingerprint": fp,
        "case_id": case,
        "stage": stage,
        "component": component,
        "axis": axis,
        "last_good": last_good,
        "first_bad": first_bad,
        "good_key": good_rec.get("key", ""),
        "bad_key": bad_rec.get("key", ""),
        "compare_url": links.compare_url(repo[0], repo[1], last_good, first_bad) if repo else "",
        "repro": links.cell_repro(first_bad_cell),
        "status": "open",
        "first_seen": now_s,
        "last_seen": now_s,
        "fixed_in": None,
        "last_bad": None,
        "guilty_axes": guilty,
        "first_bad_cell": first_bad_cell,
    }
    bisection = bisection_row(component, versions, result, started)
    fix = None
    newer = _newer(known, bad_v)
    if newer and test(newer[-1]) is Verdict.GOOD:
        fix_result = bisect(newer, test, old=0, new=len(newer) - 1, direction=Direction.FIXED)
        fix = bisection_row(component, newer, fix_result, _now(None).isoformat(timespec="seconds"))
        if fix_result.found:
            last_bad, fixed_in = fix_result.pair()
            finding.update(fixed_in=fixed_in, last_bad=last_bad, status="fixed")
            if repo:
                fix["compare_url"] = links.compare_url(repo[0], repo[1], last_bad, fixed_in)
            fix["repro"] = links.cell_repro(with_version(base, axis, fixed_in))
    return finding, bisection, fix


def bisection_row(component: str, versions: Sequence[str], result: BisectResult, started: str) -> dict:
    """The store's ``bisections`` row of one search, in either direction (see
    :attr:`matrix.outcome.Bisection.direction`: ``last_good``/``first_bad`` name a good and a bad
    release whichever way the search went)."""
    return {
        "component": component,
        "versions": list(versions),
        "probes": [(v, verdict.value) for v, verdict in result.probes],
        "last_good": result.last_good,
        "first_bad": result.first_bad,
        "status": result.status,
        "direction": result.direction.value,
        "started": started,
        "finished": _now(None).isoformat(timespec="seconds"),
    }


def _newer(versions: Iterable[str], bad: str) -> list[str]:
    """``bad`` and the final releases after it, ascending; empty when none is newer."""
    versions = list(versions)
    b = Version(bad)
    newer = [(v, s) for s in versions if (v := _parse(s)) is not None and v > b and not v.is_prerelease]
    return _between(versions, bad, max(newer)[1]) if newer else []


def _parse(s: str) -> Version | None:
    try:
        return Version(s)
    except InvalidVersion:
        return None


def _subjects(cand: Candidate) -> list[str]:
    """Quarantine subjects that cover a candidate, most specific first."""
    return [f"{cand.bad_cell}#{cand.case}/{cand.stage}", cand.bad_cell, f"{cand.case}/{cand.stage}", cand.case]


def _latest_records(records: Iterable[dict]) -> dict[tuple[str, str, str], dict]:
    latest: dict[tuple[str, str, str], dict] = {}
    for r in sorted(records, key=lambda r: str(r["time"])):
        latest[(r["cell"], r["case"], r["stage"])] = r
    return latest


def _version_str(r: str | Release) -> str:
    return r.version if isinstance(r, Release) else str(r)


def _between(versions: Iterable[str], good: str, bad: str) -> list[str]:
    """Known versions from ``good`` to ``bad`` inclusive, ascending (PEP 440); both ends always in."""
    g, b = Version(good), Version(bad)
    picked: dict[Version, str] = {g: good, b: bad}
    for s in versions:
        try:
            v = Version(s)
        except InvalidVersion:
            continue
        if g < v < b and not v.is_prerelease:
            picked.setdefault(v, s)
    return [picked[v] for v in sorted(picked)]


def _upload_time(releases, axis: str, component: str, version: str) -> str | None:
    for r in releases(axis, component):
        if isinstance(r, Release) and r.version == version and r.upload_time is not None:
            return r.upload_time.isoformat()
    return None


def _now(now: str | datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    t = now if isinstance(now, datetime) else datetime.fromisoformat(now)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


# ----------------------------------------------------------------------------- fixed differences

CheckOutcomes = Mapping[tuple[str, str, str], str] | str
"""A re-run's outcomes per (case, stage, check), or one outcome for a cell without results."""


def check_verdict(outcomes: CheckOutcomes, finding: Finding) -> Verdict:
    """A difference's test at one cell: BAD when its check fails in any of its cases, GOOD when it
    ran and passed in them, UNKNOWN when it did not run (infra, unresolvable, skipped)."""
    if isinstance(outcomes, str):
        return Verdict.UNKNOWN
    cases = set(finding.cases) or {finding.case_id}
    seen = [
        o
        for (case, stage, check), o in outcomes.items()
        if check == finding.check_name and stage == finding.stage and case in cases
    ]
    if "fail" in seen:
        return Verdict.BAD
    return Verdict.GOOD if "pass" in seen else Verdict.UNKNOWN


def bisect_fixes(
    store,
    *,
    rerun: Callable[[str], CheckOutcomes],
    releases: Callable[[str, str], Sequence],
    repos: Mapping[str, tuple[str, str]] | None = None,
    now: str | datetime | None = None,
) -> list[dict]:
    """Difference findings marked fixed (a run no longer showed them) whose fix is not bisected yet,
    bisected to their first fixed release. On the cell a difference was seen failing in (its
    ``bad_key``), the component's releases from that cell's version to ``fixed_in`` (the version
    that passed) are searched in the fixed direction with :func:`check_verdict`; the finding's
    ``fixed_in`` becomes the first fixed release and ``last_bad`` the last bad one (event
    ``fix-released`` at its upload time). Each search is stored as a bisection row with
    ``direction`` ``fixed`` (also when it found nothing, so it is not repeated). Returns the rows."""
    from dataclasses import replace

    now_s = _now(now).isoformat(timespec="seconds")
    cell_of = {c["key"]: c["cell_id"] for c in store.cells()}
    done = {b.fingerprint for b in store.bisections() if b.direction == "fixed"}
    rows: list[dict] = []
    saved = []
    for f in store.findings(status="fixed", kind="difference"):
        bad_cell = cell_of.get(f.bad_key)
        if f.fingerprint in done or not f.fixed_in or f.last_bad or bad_cell is None:
            continue
        bad_v = Cell.parse(bad_cell).as_dict[f.axis].version
        if _parse(bad_v) is None or _parse(f.fixed_in) is None or Version(f.fixed_in) <= Version(bad_v):
            continue
        versions = _between([_version_str(r) for r in releases(f.axis, f.component)], bad_v, f.fixed_in)
        verdicts = {bad_v: Verdict.BAD}  # seen failing there

        def test(v: str, f=f, bad_cell=bad_cell, verdicts=verdicts) -> Verdict:
            if v not in verdicts:
                verdicts[v] = check_verdict(rerun(with_version(bad_cell, f.axis, v)), f)
            return verdicts[v]

        result = bisect(versions, test, old=0, new=len(versions) - 1, direction=Direction.FIXED)
        row = bisection_row(f.component, versions, result, now_s)
        events = []
        if result.found:
            last_bad, fixed_in = result.pair()
            repo = (repos or {}).get(f.component)
            if repo:
                row["compare_url"] = links.compare_url(repo[0], repo[1], last_bad, fixed_in)
            row["repro"] = links.cell_repro(with_version(bad_cell, f.axis, fixed_in))
            f = replace(f, fixed_in=fixed_in, last_bad=last_bad)
            released = _upload_time(releases, f.axis, f.component, fixed_in)
            if released:
                events.append({"event": "fix-released", "time": released, "version": fixed_in})
        rows.append(row)
        saved.append((f, row, events))
    if saved:
        store.save_regressions(saved)
    return rows


# ----------------------------------------------------------------------------- production adapters


class CellRerun:
    """``rerun(cell_id)`` for a :class:`matrix.cell.run.CellRunner`: ``execute(cell, force=True)`` with a
    runner writing into a temporary results directory (never the store's), read back as outcomes:
    per (case, stage), or with ``checks`` per (case, stage, check) (what :func:`bisect_fixes` needs).
    ``cleanup()`` removes that directory."""

    def __init__(self, runner, results_dir: Path | None = None, *, checks: bool = False):
        from matrix.cell.run import CellRunner

        self.checks = checks
        self.results_dir = results_dir or Path(tempfile.mkdtemp(prefix="llmcompat-rerun-", dir=scratch.directory()))
        self._scratch = CellRunner(runner.matrix, runner.suites, runner.models, results_dir=self.results_dir)

    def __call__(self, cell_id: str) -> Any:  # Outcomes, or CheckOutcomes with ``checks``
        report = self._scratch.execute(Cell.parse(cell_id), force=True)
        records = []
        if report.path is not None and Path(report.path).is_file():
            data = json.loads(Path(report.path).read_text(encoding="utf-8"))
            records = data.get("records", [])
            Path(report.path).unlink(missing_ok=True)  # the next re-run of the same key must really run
        if not records:
            return report.outcome.value
        if self.checks:
            return {(str(r["case"]), str(r["stage"]), str(r["check"])): str(r["outcome"]) for r in records}
        return outcomes_from_records(records)

    def cleanup(self) -> None:
        shutil.rmtree(self.results_dir, ignore_errors=True)


def flake_rate(conf) -> str:
    """A confirmation's re-runs in words: how often each side failed (the issue body's flake rate)."""
    return (
        f"bad cell failed {conf.bad_failures}/{conf.bad_runs} re-runs, "
        f"good cell failed {conf.good_failures}/{conf.good_runs}"
    )


def cell_rerunner(runner, results_dir: Path | None = None, *, checks: bool = False) -> CellRerun:
    """A :class:`CellRerun` over ``runner`` (see there)."""
    return CellRerun(runner, results_dir, checks=checks)


def index_releases(matrix, index) -> Callable[[str, str], list[Release]]:
    """``releases(axis, component)`` from the package index: the component's primary package."""

    def releases(axis: str, component: str) -> list[Release]:
        return index.releases(matrix.component(axis, component).primary)

    return releases


def repo_links(matrix) -> dict[str, tuple[str, str]]:
    """Component name -> (repo, tag_format) for every component that names its repository."""
    return {c.name: (c.repo, c.tag_format) for comps in matrix.axes.values() for c in comps if c.repo}


# ----------------------------------------------------------------------------- quarantine


def retest_quarantine(
    store, rerun: Rerun, *, now: str | datetime | None = None, n: int = 3, days: float = 14
) -> dict[str, str]:
    """Re-test quarantined cell cases (a reused key never runs again by itself): re-run each
    quarantined ``cell#case/stage`` ``n`` times; all passing releases it, any failure extends it.
    Returns subject -> "released" | "extended"."""
    now_dt = _now(now)
    now_s = now_dt.isoformat(timespec="seconds")
    done: dict[str, str] = {}
    for subject, entry in store.quarantine(now_s).items():
        cell_id, sep, case_stage = subject.partition("#")
        if not sep:
            continue  # case-wide subjects are released by their cells' results, not re-run
        case, _, stage = case_stage.rpartition("/")
        try:
            outcomes = [outcome_of(rerun(cell_id), case, stage) for _ in range(n)]
        except KeyError:  # its model or component is not part of this run's selection
            continue
        q = Quarantine(entry["reason"], entry["until"], subject)
        released = release_if_passing(q, outcomes, now_dt, n=n)
        if released.until != q.until:
            store.set_quarantine(subject, f"{entry['reason']}; released: passed {n} re-runs", released.until)
            done[subject] = "released"
        else:
            until = (now_dt + timedelta(days=days)).isoformat()
            store.set_quarantine(subject, f"{entry['reason']}; still noisy: {outcomes}", until)
            done[subject] = "extended"
    return done
