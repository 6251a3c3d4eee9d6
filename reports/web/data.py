"""What the site shows, as plain data: a pure function of the store's export.

Everything here is computed once at build time, so the site reads the same without
JavaScript. The states a combination of versions can be in are the page's own vocabulary,
derived from the glossary's outcomes:

- ``works``: every check passed (or was an expected failure);
- ``caveats``: works with caveats: some checks fail, none of them a crash and no stage with
  nothing passing; each failing check is a numbered note linking to its finding;
- ``broken``: a stage where nothing passed, or a crash;
- ``flaky``: an outcome that changed on re-runs;
- ``untested``: not tested (no cell, or the run could not run it: ``infra``, ``skipped``);
- ``uninstallable``: cannot be installed together (``unresolvable``).
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime
from functools import lru_cache
from typing import TypedDict

from packaging.version import InvalidVersion, Version

from matrix.outcome import STAGES, failure_class

AXES = ("engine", "tokenizer", "template", "client")
STAGE_NAMES = tuple(s.value for s in STAGES)
STATES = ("works", "caveats", "broken", "flaky", "untested", "uninstallable")
STATE_LABEL = {
    "works": "works",
    "caveats": "works with caveats",
    "broken": "broken",
    "flaky": "flaky",
    "untested": "not tested",
    "uninstallable": "cannot be installed together",
}
STATE_SYMBOL = {"works": "✓", "caveats": "!", "broken": "✗", "flaky": "~", "untested": "–", "uninstallable": "⊘"}
STAGE_SYMBOL = {"pass": "●", "fail": "✕", "flaky": "◐", "infra": "▲", "skipped": "○", "unresolvable": "⊘", "xfail": "◇"}
SEVERITY = {"broken": 4, "flaky": 3, "caveats": 2, "works": 1}
WHAT_TO_DO = {
    "works": "Nothing to do: use these versions. Run the cell yourself with the reproduction command to check "
    "it on your machine.",
    "caveats": "Usable, but some checks fail: read the numbered notes and their findings before relying on the "
    "affected feature. Reproduce with the command on the cell page; report a note that has no issue "
    "yet to the project that owns the component.",
    "broken": "Do not use these versions together. Pick a version marked works from the version view, or "
    "reproduce with the cell's command and report it to the owning project with the cell page's link.",
    "flaky": "Results changed between re-runs: the combination may fail intermittently. Re-run the cell with its "
    "command a few times; report it if it fails for you.",
    "untested": 'No result yet. Run it yourself: nox -s "cell(<cell id>)" (the cell id is on the cell page), '
    "or add the versions to matrix/axes.yaml so the next scheduled run covers them.",
    "uninstallable": "The package resolver cannot install these versions together (the cell page shows its "
    "reason). Choose another version of one component; report it only if the declared "
    "requirements are wrong.",
}
LEVELS = ("L0", "L1", "L2", "L3")
_SLUG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
_EXPECTED_GOT = re.compile(r"(?<!\()expected (.+?), got (.+?)(?:;|$)", re.DOTALL)
CASES_SHOWN = 8
DEFAULT_PAIRS = (("engine", "client"), ("engine", "tokenizer"))


# ---------------------------------------------------------------------------- small helpers
def slug(text: str) -> str:
    """A file name for untrusted text: the text itself when it is plainly safe, else a hash."""
    text = str(text)
    return text if _SLUG.match(text) and ".." not in text else hashlib.sha1(text.encode()).hexdigest()[:16]


def cell_slug(cell_id: str) -> str:
    return hashlib.sha1(cell_id.encode()).hexdigest()[:16]


def safe_link(url) -> str:
    """An href only for plain https URLs; anything else (``javascript:``, quotes) is no link."""
    if isinstance(url, str) and url.startswith("https://") and not any(c in url for c in "\"'<> \n\t\\"):
        return url
    return ""


@lru_cache(maxsize=65536)
def version_key(v: str):
    """A sort key for release strings (cached: the site sorts the same few hundred versions
    tens of thousands of times)."""
    try:
        return (0, Version(v), "")
    except (InvalidVersion, TypeError):
        return (1, Version("0"), str(v))


def _time(t: str | None) -> datetime | None:
    if not t:
        return None
    try:
        d = datetime.fromisoformat(t)
    except ValueError:
        return None
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def expected_actual(detail: str) -> tuple[str, str] | None:
    """The probe writes divergences as ``... expected X, got Y``: the two sides, when present."""
    m = _EXPECTED_GOT.search(detail or "")
    return (m.group(1), m.group(2)) if m else None


def quantile(values: list[float], q: float) -> float | None:
    """The q-quantile by linear interpolation (numpy's default), None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo, hi = int(pos), min(int(pos) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


# ---------------------------------------------------------------------------- one cell
def cell_state(cell: dict, tally: tuple | None = None) -> str:
    """The page state of one stored cell (see the module docstring)."""
    outcome = cell.get("outcome")
    if outcome == "unresolvable":
        return "uninstallable"
    if outcome in ("infra", "skipped") or outcome is None:
        return "untested"
    stages = cell.get("stages") or {}
    if outcome == "flaky" or "flaky" in stages.values():
        return "flaky"
    if outcome != "fail":
        return "works"
    passed, failed, crash = tally or _tally(cell)
    if crash:
        return "broken"
    if not failed:  # a failing cell without failing records: the stage outcomes tell
        return "broken" if any(v == "fail" for v in stages.values()) else "caveats"
    return "broken" if any(failed[s] and not passed[s] for s in failed) else "caveats"


def _tally(cell: dict) -> tuple[Counter, Counter, bool]:
    """Passing and failing checks per stage, and whether any failure is a crash."""
    passed: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    crash = False
    for r in cell.get("results") or ():
        o = r.get("outcome")
        if o == "pass":
            passed[r.get("stage")] += 1
        elif o == "fail":
            failed[r.get("stage")] += 1
            if not crash and (r.get("class") or failure_class(r.get("klass"), r.get("stage")).value) == "crash":
                crash = True
    return passed, failed, crash


def stage_state(cell: dict, stage: str, tally: tuple | None = None) -> str:
    """A stage's outcome as a page state (for the stage filter)."""
    o = (cell.get("stages") or {}).get(stage, "skipped")
    if o == "fail":
        passed, failed, _ = tally or _tally(cell)
        return "broken" if failed[stage] and not passed[stage] else "caveats"
    return {"pass": "works", "xfail": "works", "flaky": "flaky", "unresolvable": "uninstallable"}.get(o, "untested")


def combine(states: list[str]) -> str:
    """Several cells in one matrix square: the worst tested state, except that a square whose
    cells are partly broken reads ``caveats`` (it works with some versions of the other axes)."""
    tested = [s for s in states if s in SEVERITY]
    if not tested:
        return "uninstallable" if "uninstallable" in states else "untested"
    worst = max(tested, key=SEVERITY.__getitem__)
    if worst == "broken" and any(s != "broken" for s in tested):
        return "caveats"
    return worst


def latest_cells(export: dict) -> dict[str, dict]:
    """The latest stored result of every cell id."""
    latest: dict[str, dict] = {}
    for cell in export.get("cells", []):
        prev = latest.get(cell["cell_id"])
        if prev is None or (cell.get("finished") or "") >= (prev.get("finished") or ""):
            latest[cell["cell_id"]] = cell
    return latest


# ---------------------------------------------------------------------------- findings
def _finding_view(f: dict, issues: dict, ttf: dict, scripts=frozenset()) -> dict:
    fp = str(f.get("fingerprint"))
    script = re.sub(r"[^0-9A-Za-z_-]", "", fp) + ".py"
    issue_rows = issues.get(fp, [])
    cls = f.get("class") or failure_class(f.get("klass"), f.get("stage")).value
    return {
        **f,
        "fingerprint": fp,
        "slug": slug(fp),
        "class": cls,
        "kind": f.get("kind") or "regression",
        "compare_url": safe_link(f.get("compare_url")),
        "repro_url": safe_link(f.get("repro_url") or f.get("repro_link")),
        "repro_script": f"repro/{script}" if script in scripts else "",
        "triage_verdict": f.get("triage_verdict") or f.get("triage") or "",
        "issues": [{**i, "url": safe_link(i.get("url"))} for i in issue_rows],
        "ttf": ttf.get(fp),
        "versions": list(f.get("versions") or []),
        "cases": list(f.get("cases") or []),
        "shown_cases": list(f.get("cases") or [])[:CASES_SHOWN],
        "title": _finding_title(f),
    }


def _finding_title(f: dict) -> str:
    if (f.get("kind") or "regression") == "difference":
        return f"{f.get('component')}: {f.get('stage')} check {f.get('check_name') or '?'} ({f.get('klass') or '?'})"
    return (
        f"{f.get('component')} {f.get('last_good') or '?'} → {f.get('first_bad') or '?'}: "
        f"{f.get('stage')} case {f.get('case_id')}"
    )


class _Exposure(TypedDict):
    """One project's exposure windows while they are tallied: fixed (days), open count and ages."""

    fixed: list[float]
    open: int
    open_ages: list[float]


def time_to_fix(events: list[dict], findings: list[dict], now: datetime | None = None) -> tuple[dict, dict]:
    """Per finding (days) and per project (median, p90, still open), from the store's
    time-to-fix events: the exposure window runs from the first bad release's upload (else
    introduced, else detected) to the first fixed release's upload (else the fix seen)."""
    now = now or datetime.now(UTC)
    by_fp: dict[str, dict[str, datetime]] = defaultdict(dict)
    for e in events:
        t, event = _time(e.get("time")), e.get("event")
        if t is not None and isinstance(event, str):  # only named events are looked up below
            by_fp[str(e.get("fingerprint"))][event] = t
    per_finding: dict[str, dict] = {}
    per_project: defaultdict[str, _Exposure] = defaultdict(lambda: {"fixed": [], "open": 0, "open_ages": []})
    for f in findings:
        fp = str(f.get("fingerprint"))
        ev = by_fp.get(fp, {})
        start = ev.get("released") or ev.get("introduced") or ev.get("detected") or _time(f.get("first_seen"))
        end = ev.get("fix-released") or ev.get("fixed")
        if start is None:
            continue
        proj = per_project[f.get("component") or "?"]
        if end is not None and f.get("status") == "fixed":
            days = max(0.0, (end - start).total_seconds() / 86400)
            proj["fixed"].append(days)
            per_finding[fp] = {
                "days": days,
                "open": False,
                "detection_days": _days(ev.get("released"), ev.get("detected")),
            }
        else:
            age = max(0.0, (now - start).total_seconds() / 86400)
            proj["open"] += 1
            proj["open_ages"].append(age)
            per_finding[fp] = {
                "days": age,
                "open": True,
                "detection_days": _days(ev.get("released"), ev.get("detected")),
            }
    projects = {
        p: {
            "fixed": len(v["fixed"]),
            "median": quantile(v["fixed"], 0.5),
            "p90": quantile(v["fixed"], 0.9),
            "open": v["open"],
            "oldest_open": max(v["open_ages"], default=None),
        }
        for p, v in per_project.items()
    }
    return per_finding, projects


def _days(a: datetime | None, b: datetime | None) -> float | None:
    return None if a is None or b is None else max(0.0, (b - a).total_seconds() / 86400)


class _FindingIndex:
    """Which findings touch which cells: a difference by its component version and its failing
    (stage, check, klass); a regression by its component version and failing (stage, case)."""

    def __init__(self, findings: list[dict], cells: list[dict]):
        by_comp: dict[tuple[str | None, str | None], list[dict]] = defaultdict(list)
        for c in cells:
            for axis in AXES:
                by_comp[(c[axis], c[f"{axis}_version"])].append(c)
        self.of_cell: dict[str, list[str]] = defaultdict(list)
        self.cells_of: dict[str, list[str]] = defaultdict(list)
        fails = {c["cell_id"]: _fail_keys(c) for c in cells}
        for f in findings:
            versions = set(f.get("versions") or ()) | ({f["first_bad"]} if f.get("first_bad") else set())
            want: tuple[object, ...]
            if f.get("kind") == "difference":
                want = ("d", f.get("stage"), f.get("check_name"), f.get("klass"))
            else:
                want = ("r", f.get("stage"), f.get("case_id"))
            for v in versions:
                for c in by_comp.get((f.get("component"), v), ()):
                    if want in fails[c["cell_id"]]:
                        self.of_cell[c["cell_id"]].append(f["fingerprint"])
                        self.cells_of[f["fingerprint"]].append(c["cell_id"])


def _fail_keys(cell: dict) -> set[tuple[object, ...]]:
    keys: set[tuple[object, ...]] = set()
    for r in cell.get("results") or ():
        if r.get("outcome") == "fail":
            keys.add(("d", r.get("stage"), r.get("check_name"), r.get("klass") or ""))
            keys.add(("r", r.get("stage"), r.get("case_id")))
    return keys


# ---------------------------------------------------------------------------- the site
def site_data(
    export: dict,
    run_cells: list[dict] | None = None,
    ttf: list[dict] | None = None,
    now: datetime | None = None,
    scripts: set[str] | frozenset = frozenset(),
) -> dict:
    """Everything the site shows. ``run_cells``: (run_id, key, reused) rows for each cell's
    history; ``ttf``: time to fix per project as the bot computes it (``bot.ttf`` project stats
    as dicts, passed in by the application), shown beside the page's own per-component figures
    from the store's time-to-fix events; ``scripts``: file names of the standalone
    reproductions published under ``repro/``."""
    latest = latest_cells(export)
    cells = [latest[k] for k in sorted(latest)]
    issues: dict[str, list[dict]] = defaultdict(list)
    for i in export.get("issues", []):
        issues[str(i.get("fingerprint"))].append(i)
    raw_findings = export.get("findings", [])
    per_finding, projects = time_to_fix(export.get("ttf_events", []), raw_findings, now)
    findings = [_finding_view(f, issues, per_finding, scripts) for f in raw_findings]
    findings.sort(key=lambda f: (f["status"] != "open", f.get("first_seen") or "", f["fingerprint"]))
    index = _FindingIndex(findings, cells)
    by_fp = {f["fingerprint"]: f for f in findings}
    for f in findings:
        f["affected"] = sorted(set(index.cells_of.get(f["fingerprint"], ())))
        f["affected_slugs"] = [(c, cell_slug(c)) for c in f["affected"][:200]]
    views = [_cell_view(c, index.of_cell.get(c["cell_id"], []), by_fp) for c in cells]
    history = _history(export, run_cells or [])
    for v in views:
        v["history"] = history.get(v["id"], [])
    components = _components(views)
    runs = export.get("runs", [])
    return {
        "cells": views,
        "components": components,
        "findings": findings,
        "regressions": [f for f in findings if f["kind"] == "regression"],
        "differences": [f for f in findings if f["kind"] == "difference"],
        "counts": dict(Counter(v["state"] for v in views)),
        "outcome_counts": dict(Counter(v["outcome"] for v in views)),
        "last_run": runs[-1] if runs else None,
        "runs": runs,
        "stages": list(STAGE_NAMES),
        "states": [
            {"id": s, "label": STATE_LABEL[s], "symbol": STATE_SYMBOL[s], "todo": WHAT_TO_DO[s]} for s in STATES
        ],
        "runners": sorted({v["runner"] for v in views}),
        "models": sorted({v["model"] for v in views}),
        "ttf_projects": projects,
        "ttf_bot": list(ttf or []),
        "versions": {(a, n): version_rows(a, n, views, findings) for a, n in components},
    }


def _cell_view(c: dict, fps: list[str], by_fp: dict) -> dict:
    results = c.get("results") or []
    failures = [r for r in results if r.get("outcome") == "fail"]
    failures.sort(
        key=lambda r: (
            STAGE_NAMES.index(r["stage"]) if r.get("stage") in STAGE_NAMES else 9,
            r.get("case_id") or "",
            r.get("check_name") or "",
        )
    )
    first = failures[0] if failures else None
    checks: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for r in results:
        checks[(r.get("stage"), r.get("check_name"))][r.get("outcome")] += 1
    tally = _tally(c)
    state = cell_state(c, tally)
    lock = c.get("lock") or {}
    pins = lock.get("pins") if isinstance(lock, dict) else None
    facts = c.get("facts") or {}
    levels = {}
    inference = facts.get("inference") if isinstance(facts, dict) else None
    if isinstance(inference, dict):
        levels = {e: v.get("level") for e, v in inference.items() if isinstance(v, dict) and v.get("level")}
    return {
        "id": c["cell_id"],
        "slug": cell_slug(c["cell_id"]),
        "key": c.get("key", ""),
        "runner": c.get("runner", ""),
        "model": c.get("model", ""),
        "axes": {a: (c[a], c[f"{a}_version"]) for a in AXES},
        "outcome": c.get("outcome"),
        "state": state,
        "stages": [(s, (c.get("stages") or {}).get(s, "skipped")) for s in STAGE_NAMES],
        "stage_states": {s: stage_state(c, s, tally) for s in STAGE_NAMES},
        "findings": [by_fp[fp] for fp in dict.fromkeys(fps)],
        "failures": failures[:50],
        "more_failures": max(0, len(failures) - 50),
        "first": first,
        **_sides(failures),
        "checks": sorted(
            ((s or "", k or "", dict(n)) for (s, k), n in checks.items()),
            key=lambda t: (STAGE_NAMES.index(t[0]) if t[0] in STAGE_NAMES else 9, t[1]),
        ),
        "pins": sorted((pins or {}).items()) if isinstance(pins, dict) else [],
        "python": lock.get("python", "") if isinstance(lock, dict) else "",
        "reason": (c.get("reason") or "")[-4000:],
        "log": (c.get("log") or "")[-4000:],
        "repro": c.get("repro", ""),
        "finished": c.get("finished", ""),
        "duration_s": c.get("duration_s"),
        "levels": levels,
        "case_fails": sorted({(r.get("case_id"), r.get("stage")) for r in failures if r.get("case_id")}),
    }


def _sides(failures: list[dict]) -> dict:
    """The first failing check (in chain order) whose detail gives expected and actual."""
    for r in failures:
        sides = expected_actual(r.get("detail", ""))
        if sides:
            return {"first_sides": sides, "sides_record": r}
    return {"first_sides": None, "sides_record": None}


def _history(export: dict, run_cells: list[dict]) -> dict[str, list[dict]]:
    by_key = {c["key"]: c for c in export.get("cells", [])}
    started = {r["id"]: r.get("started", "") for r in export.get("runs", [])}
    out: dict[str, list[dict]] = defaultdict(list)
    for rc in run_cells:
        c = by_key.get(rc["key"])
        if c is not None:
            out[c["cell_id"]].append(
                {
                    "run": rc["run_id"],
                    "started": started.get(rc["run_id"], ""),
                    "key": rc["key"],
                    "outcome": c.get("outcome"),
                    "reused": bool(rc["reused"]),
                    "state": cell_state(c),
                }
            )
    for rows in out.values():
        rows.sort(key=lambda r: r["started"], reverse=True)
    return out


def _components(views: list[dict]) -> dict[tuple[str, str], list[str]]:
    comps: dict[tuple[str, str], set[str]] = defaultdict(set)
    for v in views:
        for a, (name, version) in v["axes"].items():
            comps[(a, name)].add(version)
    return {
        k: sorted(vs, key=version_key)
        for k, vs in sorted(comps.items(), key=lambda kv: (AXES.index(kv[0][0]), kv[0][1]))
    }


# ---------------------------------------------------------------------------- matrix view
def matrix_view(views: list[dict], rows_axis: str, cols_axis: str) -> dict:
    """The caniuse-like table: one square per (row value, column value), its state and stage
    dots combined over the cells in it, and its numbered caveat notes."""
    rows = sorted({v["axes"][rows_axis] for v in views}, key=lambda t: (t[0], version_key(t[1])))
    cols = sorted({v["axes"][cols_axis] for v in views}, key=lambda t: (t[0], version_key(t[1])))
    squares: dict[tuple, list[dict]] = defaultdict(list)
    for v in views:
        squares[(v["axes"][rows_axis], v["axes"][cols_axis])].append(v)
    notes: dict[str, int] = {}
    note_list: list[dict] = []
    grid = []
    for r in rows:
        line = []
        for col in cols:
            members = squares.get((r, col), [])
            line.append(_square(members, notes, note_list))
        grid.append((r, line))
    return {
        "rows_axis": rows_axis,
        "cols_axis": cols_axis,
        "rows": rows,
        "cols": cols,
        "grid": grid,
        "notes": note_list,
    }


def _square(members: list[dict], notes: dict, note_list: list) -> dict:
    if not members:
        return {"state": "untested", "n": 0, "stages": [], "notes": [], "more_notes": 0, "link": None}
    state = combine([m["state"] for m in members])
    if len(members) == 1:
        stages = members[0]["stages"]
    else:
        stages = [(s, _worst_outcome([m["stages"][i][1] for m in members])) for i, s in enumerate(STAGE_NAMES)]
    worst = max(members, key=lambda m: SEVERITY.get(m["state"], 0))
    nums = []
    if state in ("caveats", "broken", "flaky"):
        fps = list(dict.fromkeys(f["fingerprint"] for m in members for f in m["findings"]))
        for fp in fps:
            if fp not in notes:
                f = next(f for m in members for f in m["findings"] if f["fingerprint"] == fp)
                notes[fp] = len(note_list) + 1
                note_list.append({"n": notes[fp], "finding": f})
            nums.append(notes[fp])
    return {
        "state": state,
        "n": len(members),
        "stages": stages,
        "notes": nums[:3],
        "more_notes": max(0, len(nums) - 3),
        "link": worst["slug"],
        "cell": worst["id"],
    }


_OUTCOME_RANK = {o: i for i, o in enumerate(("fail", "infra", "flaky", "pass", "xfail", "skipped", "unresolvable"))}


def _worst_outcome(outs: list[str]) -> str:
    """The worst outcome (an unknown one ranks with fail: it is never hidden)."""
    return min(outs, key=lambda o: _OUTCOME_RANK.get(o, 0)) if outs else "skipped"


def axis_pairs(views: list[dict]) -> list[tuple[str, str]]:
    """Every ordered pair of axes, the default first (engine x client, or engine x tokenizer
    when only one client version was run)."""
    varied = {a: len({v["axes"][a] for v in views}) for a in AXES}
    cols = [b for _, b in DEFAULT_PAIRS if varied[b] > 1]
    col = cols[0] if cols else max(("client", "tokenizer", "template"), key=lambda a: (varied[a], a == "client"))
    first = ("engine", col)
    pairs = [(a, b) for a in AXES for b in AXES if a != b]
    pairs.remove(first)
    return [first, *pairs]


def js_data(views: list[dict]) -> dict:
    """The compact form the filter script recomputes squares from: per axis its values, per
    cell its value indexes, runner, model, state and one state per stage."""
    values = {a: sorted({v["axes"][a] for v in views}, key=lambda t: (t[0], version_key(t[1]))) for a in AXES}
    index = {a: {val: i for i, val in enumerate(vals)} for a, vals in values.items()}
    runners = sorted({v["runner"] for v in views})
    models = sorted({v["model"] for v in views})
    code = {s: i for i, s in enumerate(STATES)}
    return {
        "axes": list(AXES),
        "states": list(STATES),
        "stages": list(STAGE_NAMES),
        "symbols": [STATE_SYMBOL[s] for s in STATES],
        "labels": [STATE_LABEL[s] for s in STATES],
        "values": {a: [f"{n}@{ver}" for n, ver in vals] for a, vals in values.items()},
        "runners": runners,
        "models": models,
        "cells": [
            [
                runners.index(v["runner"]),
                models.index(v["model"]),
                *(index[a][v["axes"][a]] for a in AXES),
                code[v["state"]],
                "".join(str(code[v["stage_states"][s]]) for s in STAGE_NAMES),
            ]
            for v in views
        ],
    }


# ---------------------------------------------------------------------------- version view
def version_rows(axis: str, name: str, views: list[dict], findings: list[dict]) -> list[dict]:
    """Per release of one component: its cells' states, what works with it, what broke in it
    (findings whose first bad is this release) and what it fixed (fixed in this release)."""
    mine = defaultdict(list)
    for v in views:
        if v["axes"][axis][0] == name:
            mine[v["axes"][axis][1]].append(v)
    out = []
    for version in sorted(mine, key=version_key, reverse=True):
        cells = mine[version]
        works_with = defaultdict(set)
        for c in cells:
            if c["state"] in ("works", "caveats"):
                for a, (n, ver) in c["axes"].items():
                    if a != axis:
                        works_with[a].add(f"{n} {ver}")
        out.append(
            {
                "version": version,
                "counts": dict(Counter(c["state"] for c in cells)),
                "n": len(cells),
                "state": combine([c["state"] for c in cells]),
                "works_with": [(a, sorted(works_with[a])) for a in AXES if a in works_with],
                "broke": [f for f in findings if f.get("component") == name and f.get("first_bad") == version],
                "fixed": [f for f in findings if f.get("component") == name and f.get("fixed_in") == version],
                "cells": [(c["id"], c["slug"], c["state"]) for c in cells[:50]],
                "more_cells": max(0, len(cells) - 50),
            }
        )
    return out
