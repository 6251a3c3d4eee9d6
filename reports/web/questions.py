"""The seed's five questions, answered from the store: pure functions over the site data.

Each answer carries its method (one paragraph, shown on the page) and its sample size, so a
reader can judge how far to trust it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import pairwise

from matrix.outcome import FailureClass
from reports.web.data import AXES, LEVELS, STAGE_NAMES, version_key

TOOL_STAGE = "tool wiring"


def axis_attribution(cells: list[dict], tested: dict[str, set]) -> dict:
    """Q1: share of outcome differences attributable to each axis."""
    diffs: Counter[str] = Counter()
    pairs: Counter[str] = Counter()
    comparisons = 0
    for axis in AXES:
        groups = defaultdict(list)
        for c in cells:
            if c["state"] in ("untested", "uninstallable"):
                continue
            rest = tuple(c["axes"][a] for a in AXES if a != axis)
            groups[(c["runner"], c["model"], rest)].append(c)
        for members in groups.values():
            members.sort(key=lambda c: (c["axes"][axis][0], version_key(c["axes"][axis][1])))
            for a, b in pairwise(members):
                both = tested[a["id"]] & tested[b["id"]]
                fa = {k for k in a["case_fails"] if k in both}
                fb = {k for k in b["case_fails"] if k in both}
                pairs[axis] += 1
                comparisons += len(both)
                diffs[axis] += len(fa ^ fb)
    total = sum(diffs.values())
    rows = [
        {"axis": a, "differences": diffs[a], "pairs": pairs[a], "share": diffs[a] / total if total else 0.0}
        for a in AXES
    ]
    return {"rows": rows, "total": total, "pairs": sum(pairs.values()), "comparisons": comparisons}


def silent_degradations(cells: list[dict], failures: dict[str, list[dict]]) -> dict:
    """Q2: per stage, the share of cells where that stage is the first to diverge without an
    error (a failing check whose class is not ``crash``); tool wiring counts tool cases."""
    ran: Counter[str] = Counter()
    silent: Counter[str] = Counter()
    for c in cells:
        if c["state"] in ("untested", "uninstallable"):
            continue
        for stage, outcome in c["stages"]:
            if outcome in ("pass", "fail", "flaky", "xfail"):
                ran[stage] += 1
        fails = [r for r in failures.get(c["id"], ()) if r.get("class") != FailureClass.CRASH.value]
        if fails:
            first = min(
                (r["stage"] for r in fails if r.get("stage") in STAGE_NAMES), key=STAGE_NAMES.index, default=None
            )
            if first:
                silent[first] += 1
        if any(_is_tool(r) for r in failures.get(c["id"], ())):
            ran[TOOL_STAGE] += 1
            if any(_is_tool(r) and r.get("class") != FailureClass.CRASH.value for r in failures[c["id"]]):
                silent[TOOL_STAGE] += 1
        elif c.get("has_tool_cases"):
            ran[TOOL_STAGE] += 1
    rows = [
        {"stage": s, "cells": ran[s], "silent": silent[s], "rate": silent[s] / ran[s] if ran[s] else 0.0}
        for s in (*STAGE_NAMES, TOOL_STAGE)
    ]
    return {"rows": rows, "cells": sum(1 for c in cells if c["state"] not in ("untested", "uninstallable"))}


def _is_tool(r: dict) -> bool:
    return "tool" in (r.get("case_id") or "") or "tool" in (r.get("check_name") or "")


def bug_classes(findings: list[dict]) -> dict:
    """Q3: engine findings by failure class."""
    engine = [f for f in findings if f.get("axis") == "engine"]
    counts = Counter(f["class"] for f in engine)
    rows = [
        {
            "class": c.value,
            "count": counts.get(c.value, 0),
            "open": sum(1 for f in engine if f["class"] == c.value and f.get("status") == "open"),
        }
        for c in FailureClass
    ]
    return {"rows": rows, "findings": len(engine)}


def upgrades(cells: list[dict], findings: list[dict], ttf_projects: dict) -> dict:
    """Q4: per component, upgrades seen (adjacent versions, everything else equal) and how many
    of them broke a (case, stage) that passed before; time-to-fix per project."""
    seen: Counter[str] = Counter()
    broke: Counter[str] = Counter()
    for axis in AXES:
        groups = defaultdict(list)
        for c in cells:
            if c["state"] in ("untested", "uninstallable"):
                continue
            rest = tuple(c["axes"][a] for a in AXES if a != axis)
            groups[(c["runner"], c["model"], c["axes"][axis][0], rest)].append(c)
        for (_r, _m, comp, _rest), members in groups.items():
            members.sort(key=lambda c: version_key(c["axes"][axis][1]))
            for a, b in pairwise(members):
                seen[comp] += 1
                if set(b["case_fails"]) - set(a["case_fails"]):
                    broke[comp] += 1
    regressions = Counter(
        name
        for f in findings  # the store's component is NOT NULL: a str
        if f.get("kind") == "regression" and isinstance(name := f.get("component"), str)
    )
    comps = sorted(set(seen) | set(regressions) | set(ttf_projects))
    rows = []
    for comp in comps:
        t = ttf_projects.get(comp) or {}
        rows.append(
            {
                "component": comp,
                "upgrades": seen[comp],
                "broke": broke[comp],
                "rate": broke[comp] / seen[comp] if seen[comp] else 0.0,
                "regressions": regressions[comp],
                "median": t.get("median"),
                "p90": t.get("p90"),
                "fixed": t.get("fixed", 0),
                "open": t.get("open", 0),
            }
        )
    return {"rows": rows, "upgrades": sum(seen.values())}


def golden_cases(findings: list[dict], cells: list[dict]) -> dict:
    """Q5: which golden cases detect the most findings, and the reproducibility level reached
    per engine and runner (the worst case of each cell, counted over cells)."""
    per_case: Counter[str] = Counter()
    for f in findings:
        cases = set(f.get("cases") or ()) or ({f["case_id"]} if f.get("case_id") else set())
        for case in cases:
            per_case[case] += 1
    top = [{"case": c, "findings": n} for c, n in sorted(per_case.items(), key=lambda kv: (-kv[1], kv[0]))[:15]]
    levels: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for c in cells:
        for engine, level in c["levels"].items():
            levels[(engine, c["runner"])][level] += 1
    level_rows = [
        {
            "engine": e,
            "runner": r,
            "counts": [n.get(lv, 0) for lv in LEVELS],
            "cells": sum(n.values()),
            "best": next((lv for lv in LEVELS if n.get(lv)), None),
        }
        for (e, r), n in sorted(levels.items())
    ]
    return {"top": top, "findings": len(findings), "levels": level_rows, "level_names": list(LEVELS)}


def answers(site: dict, export: dict) -> dict:
    """All five, from the site data and the raw export (records for tested cases)."""
    by_key = {c.get("key"): c for c in export.get("cells", [])}
    cells = site["cells"]
    tested, failures = {}, {}
    for v in cells:
        records = by_key.get(v["key"], {}).get("results") or ()
        tested[v["id"]] = {(r.get("case_id"), r.get("stage")) for r in records}
        failures[v["id"]] = [r for r in records if r.get("outcome") == "fail"]
        v["has_tool_cases"] = any(_is_tool(r) for r in records)
    return {
        "axes": axis_attribution(cells, tested),
        "stages": silent_degradations(cells, failures),
        "classes": bug_classes(site["findings"]),
        "upgrades": upgrades(cells, site["findings"], site["ttf_projects"]),
        "cases": golden_cases(site["findings"], cells),
    }
