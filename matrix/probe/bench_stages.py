"""Benchmark helper (host side, for ``nox -s bench``): the template stage's throughput in-process.

Not part of the probe's run: it imports llmcompat (the suite loader, the tiny model) and is
never loaded by ``probe.py``. It runs ``stage_template.run`` in this process with the jinja2
renderer (the reference renderer) on the ``hf`` source over the core suite's cases with their
goldens, repeated to at least ``n_cases``, and returns renders per second (one render per case
here; goal: >= 10,000). :func:`bench_corpus` does the same over the template corpus (every
template of the run's corpus x the suite's cases, against the reference's renders).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

PROBE_DIR = Path(__file__).resolve().parent

LAST: dict[str, float] = {}
"""Figures of the latest :func:`bench_in_process` run: ``wall`` (renders per wall-clock second)."""


def _probe_modules():
    if str(PROBE_DIR) not in sys.path:
        sys.path.insert(0, str(PROBE_DIR))
    import probe
    import stage_template

    return probe, stage_template


def suite_cases(suite_name: str = "core", model: str = "tiny-qwen2") -> list[dict]:
    from matrix import suites

    suite = suites.load(suite_name)
    return suites.cases_with_goldens(suite, suites.load_goldens(suite, model))


def bench_in_process(n_cases: int = 500, model_dir: str | None = None, repeats: int = 3) -> float:
    """Template-stage renders per CPU second (best of ``repeats``; per wall-clock second in
    ``LAST["wall"]``), jinja2 renderer, ``hf`` source.

    Every rendered case must pass (render equal to its golden, needles, round trips): a
    benchmark of a broken stage would measure the wrong thing, so a failure raises.
    """
    probe, stage_template = _probe_modules()
    if model_dir is None:
        from matrix import tinymodel
        from matrix.declare import loader

        model_dir = str(
            tinymodel.ensure(arch="qwen2", parts=("tokenizer",), reference=loader.load_default().reference).path
        )
    base = [c for c in suite_cases() if "template" in c.get("stages", ["template"])]
    cases: list[dict] = []
    while len(cases) < n_cases:
        cases.extend(dict(c, id=f"{c['id']}#{len(cases) + i}") for i, c in enumerate(base))
    job = {
        "mode": "check",
        "model_dir": model_dir,
        "stages": ["template"],
        "renderers": ["jinja2"],
        "template_sources": ["hf"],
        "cases": cases,
        "limits": {"render_seconds": 10, "render_chars": 1_000_000},
    }
    best, best_wall = 0.0, 0.0
    for _ in range(max(1, repeats)):
        rec = probe.Recorder("check")
        started, cpu = time.perf_counter(), time.process_time()
        stage_template.run(job, rec)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        best_wall = max(best_wall, len(cases) / seconds)
        seconds = max(cpu, 1e-9)  # the stage is single-threaded: CPU time is its cost on a shared machine
        bad = [r for r in rec.records if r["outcome"] not in ("pass",)]
        if bad:
            r = bad[0]
            raise AssertionError(
                f"{len(bad)} template checks did not pass, first: {r['case']} {r['check']} "
                f"{r['outcome']}: {r['detail'][:300]}"
            )
        best = max(best, len(cases) / seconds)
    LAST["wall"] = best_wall
    return best


def bench_corpus(corpus: dict, cases: list[dict], model_dir: str, repeats: int = 3) -> tuple[float, int]:
    """(renders per second, renders) of the template stage over ``corpus`` (a job's ``corpus``,
    with its reference goldens) with the reference renderer; every render must pass or be skipped."""
    probe, stage_template = _probe_modules()
    import corpus_render

    job = {
        "mode": "check",
        "model_dir": model_dir,
        "stages": ["template"],
        "renderers": ["jinja2"],
        "template_sources": [],
        "cases": cases,
        "corpus": corpus,
        "limits": {"render_seconds": 10, "render_chars": 1_000_000},
    }
    best, renders = 0.0, 0
    for _ in range(max(1, repeats)):
        rec = probe.Recorder("check")
        started = time.perf_counter()
        stage_template.run(job, rec)
        corpus_render.run(job, rec)
        seconds = time.perf_counter() - started
        bad = [r for r in rec.records if r["outcome"] not in ("pass", "skipped")]
        if bad:
            raise AssertionError(f"{len(bad)} corpus checks did not pass, first: {bad[0]}")
        renders = sum(r["outcome"] == "pass" for r in rec.records)
        best = max(best, renders / seconds)
    return best, renders


if __name__ == "__main__":
    root = PROBE_DIR.parent.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    print(f"template stage (jinja2, hf source): {bench_in_process():.0f} renders/s")
