"""The probe: the harness that runs INSIDE a cell's environment.

Standard library only, so it never pins or perturbs the versions under test. It is run as a
script (``python probe.py JOB.json RESULT.json``); sibling ``stage_*.py`` modules hold the
stages. The job names the model directory, the cases with their goldens, the stages to run
and the limits; the result lists one record per (case, stage, check) and a summary per stage.

Modes: ``check`` compares with goldens; ``golden`` records what this environment produces
(the reference path runs it to make goldens).
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
import traceback

# The vocabulary, a standard-library copy of matrix/outcome.py's (the probe cannot import matrix;
# tests/test_outcome.py holds the two equal).
STAGES = ("template", "tokenize", "inference", "postprocess", "client")
OUTCOMES = ("pass", "fail", "flaky", "infra", "unresolvable", "skipped", "xfail")
WORST_FIRST = ("fail", "infra", "flaky", "pass", "xfail", "skipped", "unresolvable")
"""How check outcomes combine into a stage's, worst first (see ``matrix.outcome.WORST_FIRST``)."""
_RANK = {o: i for i, o in enumerate(WORST_FIRST)}


def severity(outcome: str) -> int:
    """Position in WORST_FIRST; an outcome nobody knows ranks with ``fail``."""
    return _RANK.get(outcome, 0)


STAGE_MODULES = {
    "template": "stage_template",
    "tokenize": "stage_tokenize",
    "inference": "stage_inference",
    "postprocess": "stage_postprocess",
    "client": "stage_client",
}
STAGE_EXTRAS = {"template": ("corpus_render",)}
"""Modules that add to a stage after its own (the real-template corpus is a source of its own)."""


def _first_difference(expected, actual) -> int | None:
    """Index of the first differing item of two sequences (their common length when one is a
    prefix of the other); None when they are equal."""
    if expected == actual:  # the common case, at C speed
        return None
    n = min(len(expected), len(actual))
    i = next((k for k in range(n) if expected[k] != actual[k]), n)
    return None if i == n and len(expected) == len(actual) else i


def first_divergence(expected: str, actual: str, context: int = 24) -> str:
    """Where two strings first differ, with escaped context on both sides."""
    i = _first_difference(expected, actual)
    if i is None:
        return ""
    lo = max(0, i - context)
    exp = expected[lo : i + context]
    act = actual[lo : i + context]
    return (
        f"first divergence at char {i} (expected {len(expected)} chars, got {len(actual)}): "
        f"expected {exp!r}, got {act!r}"
    )


def first_id_divergence(expected: list, actual: list, context: int = 4) -> str:
    """Where two id sequences first differ, with a few ids of context."""
    i = _first_difference(expected, actual)
    if i is None:
        return ""
    lo = max(0, i - context)
    return (
        f"first divergence at token {i} (expected {len(expected)} ids, got {len(actual)}): "
        f"expected {expected[lo : i + context]}, got {actual[lo : i + context]}"
    )


def versions(names) -> dict:
    """Installed versions of the given distributions (None when absent)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


class Recorder:
    """Collects check records; a stage's outcome is the worst of its checks (:data:`WORST_FIRST`:
    a stage is ``skipped`` only when every check of it was)."""

    def __init__(self, mode: str):
        self.mode = mode
        self.records: list = []
        self.produced: dict = {}
        self.facts: dict = {}

    def add(self, case: str, stage: str, check: str, outcome: str, detail: str = "", **extra):
        rec = {"case": case, "stage": stage, "check": check, "outcome": outcome, "detail": detail}
        rec.update(extra)
        self.records.append(rec)

    def produce(self, case: str, field: str, value):
        """Golden mode: remember what this environment produced."""
        self.produced.setdefault(case, {})[field] = value

    def stage_summary(self, stages) -> dict:
        summary: dict[str, dict] = {}
        for stage in STAGES:
            recs = [r for r in self.records if r["stage"] == stage]
            if stage not in stages:
                summary[stage] = {"outcome": "skipped", "detail": "not in this cell's stages"}
            elif not recs:
                summary[stage] = {"outcome": "skipped", "detail": "no applicable check"}
            else:
                worst = min(recs, key=lambda r: severity(r["outcome"]))
                counts: dict = {}
                for r in recs:
                    counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
                summary[stage] = {"outcome": worst["outcome"], "counts": counts}
        return summary


def run(job: dict) -> dict:
    started = time.time()
    rec = Recorder(job.get("mode", "check"))
    stages = [s for s in STAGES if s in job.get("stages", STAGES)]
    errors = {}
    for stage in stages:
        mod_name = STAGE_MODULES.get(stage)
        if mod_name is None:
            continue
        for name in (mod_name, *STAGE_EXTRAS.get(stage, ())):
            try:
                importlib.import_module(name).run(job, rec)
            except Exception:  # noqa: BLE001 - a stage crash is a result, not a probe crash
                errors[stage] = traceback.format_exc(limit=8)
                rec.add("*", stage, "stage", "fail", "stage crashed:\n" + errors[stage], klass="crash")
    summary = rec.stage_summary(stages)
    return {
        "schema": 1,
        "mode": rec.mode,
        "started": started,
        "duration_s": round(time.time() - started, 3),
        "python": platform.python_version(),
        "versions": versions(job.get("report_versions", [])),
        "stages": summary,
        "records": rec.records,
        "facts": rec.facts,
        "produced": rec.produced if rec.mode == "golden" else {},
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: probe.py JOB.json RESULT.json", file=sys.stderr)
        return 2
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    with open(argv[0], encoding="utf-8") as f:
        job = json.load(f)
    result = run(job)
    tmp = argv[1] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, ensure_ascii=False, indent=1, sort_keys=True)
    os.replace(tmp, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
