"""Stores for the page tests and the page benchmark, made with the real Store API.

``sample_store`` starts from two real result files (the default cell with jinja2 3.1.5 and
3.1.6, as the probe wrote them) and derives real-shaped variants from them: a cell that
works, a broken engine, a flaky one, versions that cannot be installed together, a cell whose
model output, template, package metadata and log carry hostile text; then the differences
pipeline (bot.differences, as the main job runs it), a bisected regression with an issue and
time-to-fix events. ``synthetic_store`` is the benchmark's: many cells, many findings.
"""

from __future__ import annotations

import copy
import gzip
import json
import random
from pathlib import Path

from reports.aggregate import ingest
from reports.store import Store

DATA = Path(__file__).resolve().parent / "data" / "page"
HOSTILE = '<script>document.title="pwned"</script><img src=x onerror="document.title=\'pwned\'">'
HOSTILE_LINK = "javascript:document.title='pwned'"
AXES = ("engine", "tokenizer", "template", "client")
OWNERS = {
    "transformers": {"transformers", "transformers-slow"},
    "mistralrs": {"mistralrs"},
    "onnxruntime-genai": {"onnxruntime-genai"},
    "tokenizers": {"tokenizers"},
    "hf-jinja2": {"jinja2"},
    "openai": {"openai", "raw-http"},
}
"""The implementations each component brings (their probe roles in matrix/axes.yaml)."""


def real_results() -> list[dict]:
    return [json.loads(gzip.open(p, "rt").read()) for p in sorted(DATA.glob("real-*.json.gz"))]


def variant(base: dict, key: str, outcome: str | None = None, **choices: str) -> dict:
    """A result like ``base`` for other component versions (``engine="mistralrs@0.8.1"``)."""
    r = copy.deepcopy(base)
    r["key"] = key
    ch = r["cell"]["choices"]
    for axis, value in choices.items():
        name, _, version = value.partition("@")
        ch[axis] = {"component": name, "version": version}
    cell = r["cell"]
    cell["id"] = "/".join([cell["runner"], cell["model"], *(f"{ch[a]['component']}@{ch[a]['version']}" for a in AXES)])
    if outcome is not None:
        r["outcome"] = outcome
    r["repro"] = f'nox -s "cell({cell["id"]})"'
    return r


def all_pass(r: dict) -> dict:
    for rec in r["records"]:
        if rec["outcome"] == "fail":
            rec.update(outcome="pass", detail="", klass="")
    for s in r["stages"].values():
        if s["outcome"] == "fail":
            s["outcome"] = "pass"
    r["outcome"] = "pass"
    return r


def write(dirpath: Path, data: dict) -> Path:
    dirpath.mkdir(parents=True, exist_ok=True)
    p = dirpath / f"{data['key']}.json"
    p.write_text(json.dumps(data))
    return p


def sample_cells() -> list[dict]:
    j5, j6 = real_results()
    works = all_pass(variant(j6, "k-works", engine="transformers@5.23.0"))
    broken = variant(j6, "k-broken", "fail", engine="mistralrs@0.8.1")
    for rec in broken["records"]:
        if rec["stage"] == "inference":
            rec.update(outcome="fail", klass="engine-start", detail="RuntimeError: engine failed to start")
    broken["stages"]["inference"] = {"outcome": "fail"}
    flaky = variant(j6, "k-flaky", "flaky", engine="onnxruntime-genai@0.9.2")
    flaky["stages"]["inference"] = {"outcome": "flaky"}
    uninstallable = {
        **variant(j6, "k-unres", "unresolvable", client="openai@1.0.0"),
        "records": [],
        "stages": {},
        "facts": {},
        "reason": "No solution found: openai==1.0.0 and httpx>=0.28 are incompatible",
    }
    hostile = variant(j6, "k-hostile", "fail", client="openai@3.55.0")
    for rec in hostile["records"]:
        if rec["outcome"] == "fail":
            rec["detail"] = f"first divergence at char 0: expected 'Hello', got '{HOSTILE}'"
            break
    hostile["records"].append(
        {
            "case": HOSTILE,
            "stage": "template",
            "check": "jinja2",
            "outcome": "fail",
            "klass": "mismatch",
            "detail": f"expected 'Hello', got '{HOSTILE}'",
        }
    )
    hostile["lock"]["pins"][HOSTILE] = "1.0" + HOSTILE
    hostile["reason"] = "@someone see #123 " + HOSTILE
    hostile["log"] = "Traceback ... " + HOSTILE
    return [j5, j6, works, broken, flaky, uninstallable, hostile]


def sample_store(tmp_path: Path) -> tuple[Store, Path]:
    """(store, results dir) with two runs, differences, a regression, an issue, time to fix."""
    from bot.differences import differences

    results = tmp_path / "results"
    cells = sample_cells()
    store = Store(tmp_path / "store.sqlite")
    ingest(
        store,
        {"id": "r1", "started": "2026-11-20T00:00:00+00:00", "finished": "2026-11-20T00:10:00+00:00"},
        [write(results, c) for c in cells[:3]],
        reused=[],
    )
    again = variant(cells[1], "k-j6-second")
    again["finished"] = "2026-11-24T00:05:00+00:00"
    ingest(
        store,
        {"id": "r2", "started": "2026-11-24T00:00:00+00:00", "finished": "2026-11-24T00:10:00+00:00"},
        [write(results, c) for c in (*cells[3:], again)],
        reused=["k-works", cells[0]["key"]],
    )
    owners = OWNERS
    found = differences(store.case_rows("r2"), owners) + differences(store.case_rows("r1"), owners)
    seen, current = set(), []
    for f in found:
        fp = f["fingerprint"] if isinstance(f, dict) else f.fingerprint
        if fp not in seen:
            seen.add(fp)
            current.append(f)
    store.save_differences(current, {}, "2026-11-24T00:10:00+00:00")
    regression = {
        "fingerprint": "reg-jinja2-3.1.5",
        "kind": "regression",
        "case_id": "single-user",
        "stage": "template",
        "component": "transformers",
        "axis": "engine",
        "check_name": "transformers",
        "klass": "undeclared-requirement",
        "detail": "ImportError: apply_chat_template requires jinja2>=3.1.6",
        "versions": ["5.24.0"],
        "last_good": "5.23.0",
        "first_bad": "5.24.0",
        "good_key": "k-works",
        "bad_key": cells[0]["key"],
        "compare_url": "https://github.com/huggingface/transformers/compare/v5.23.0...v5.24.0",
        "repro": 'nox -s "cell(' + cells[0]["cell"]["id"] + ')"',
        "status": "open",
        "first_seen": "2026-11-20T00:10:00+00:00",
        "last_seen": "2026-11-24T00:10:00+00:00",
    }
    store.save_finding(
        regression,
        {
            "component": "transformers",
            "versions": ["5.23.0", "5.24.0"],
            "probes": [["5.24.0", "bad"], ["5.23.0", "good"]],
            "last_good": "5.23.0",
            "first_bad": "5.24.0",
            "status": "found",
            "started": "2026-11-20T00:10:00+00:00",
            "finished": "2026-11-20T00:20:00+00:00",
        },
        [
            {"event": "released", "time": "2026-11-10T00:00:00+00:00", "version": "5.24.0"},
            {"event": "detected", "time": "2026-11-20T00:10:00+00:00"},
        ],
    )
    store.add_issue(
        "reg-jinja2-3.1.5",
        "huggingface/transformers",
        4242,
        "https://github.com/huggingface/transformers/issues/4242",
        "2026-11-20T01:00:00+00:00",
    )
    evil = {
        **regression,
        "fingerprint": "reg-evil",
        "component": "mistralrs",
        "case_id": HOSTILE,
        "stage": "inference",
        "klass": "engine-start",
        "first_bad": "0.8.1",
        "last_good": "0.8.0",
        "versions": ["0.8.1"],
        "compare_url": HOSTILE_LINK,
        "detail": HOSTILE,
        "repro": HOSTILE,
        "status": "fixed",
        "fixed_in": "0.8.2",
    }
    store.save_finding(
        evil,
        None,
        [
            {"event": "released", "time": "2026-11-01T00:00:00+00:00"},
            {"event": "fix-released", "time": "2026-11-05T12:00:00+00:00"},
        ],
    )
    store.add_issue("reg-evil", "EricLBuehler/mistral.rs", 7, HOSTILE_LINK, "2026-11-02T00:00:00+00:00")
    store.mark_fixed("reg-evil", "0.8.2", "2026-11-06T00:00:00+00:00")
    return store, results


def synthetic_store(path: Path, cells: int = 10_000, findings: int = 500, seed: int = 0) -> Store:
    """The benchmark's store: ``cells`` cells over 5 engines x 20 versions, 10 tokenizer, 5
    template and 10 client versions, one run, ``findings`` differences and regressions."""
    rng = random.Random(seed)
    stages = ("template", "tokenize", "inference", "postprocess", "client")
    engines = [
        (e, f"1.{v}.0")
        for e in ("transformers", "mistralrs", "onnxruntime-genai", "llama-cpp-python", "vllm")
        for v in range(20)
    ]
    toks = [("tokenizers", f"0.{v}.0") for v in range(10)]
    tmpls = [("hf-jinja2", f"3.1.{v}") for v in range(5)]
    clients = [("openai", f"3.{v}.0") for v in range(10)]
    combos: set[tuple[tuple[str, str], ...]] = set()
    while len(combos) < cells:
        combos.add((rng.choice(engines), rng.choice(toks), rng.choice(tmpls), rng.choice(clients)))
    out = []
    for i, (e, t, tp, c) in enumerate(sorted(combos)):
        roll = rng.random()
        outcome = "pass" if roll < 0.6 else "fail" if roll < 0.9 else "unresolvable" if roll < 0.95 else "flaky"
        records = []
        if outcome != "unresolvable":
            for case in ("single-user", "tools-defined", "multi-turn"):
                for s in stages:
                    bad = outcome == "fail" and rng.random() < 0.2
                    records.append(
                        {
                            "case": case,
                            "stage": s,
                            "check": e[0] if s == "inference" else "ref",
                            "outcome": "fail" if bad else "pass",
                            "klass": "mismatch" if bad else "",
                            "detail": "first divergence at char 3: expected 'abc', got 'abd'" if bad else "",
                        }
                    )
        st = {
            s: {
                "outcome": "fail"
                if any(r["stage"] == s and r["outcome"] == "fail" for r in records)
                else ("skipped" if outcome == "unresolvable" else "pass")
            }
            for s in stages
        }
        if outcome == "fail" and not any(r["outcome"] == "fail" for r in records):
            records[0].update(outcome="fail", klass="mismatch", detail="x")
            st[records[0]["stage"]] = {"outcome": "fail"}
        ch = {"engine": e, "tokenizer": t, "template": tp, "client": c}
        out.append(
            {
                "key": f"k{i:06d}",
                "outcome": outcome,
                "finished": "2026-11-24T00:00:00+00:00",
                "cell": {
                    "id": "cpu/tiny-qwen2/" + "/".join(f"{n}@{v}" for n, v in ch.values()),
                    "runner": "cpu",
                    "model": "tiny-qwen2",
                    "choices": {a: {"component": n, "version": v} for a, (n, v) in ch.items()},
                },
                "stages": st,
                "records": records,
                "lock": {"python": "3.11", "pins": {e[0]: e[1], c[0]: c[1]}},
                "facts": {"inference": {e[0]: {"level": rng.choice(["L0", "L1", "L2"])}}},
                "model_hash": "mh",
                "repro": "nox -s cell",
                "reason": "" if outcome != "unresolvable" else "No solution found",
            }
        )
    store = Store(path)
    store.ingest_run(
        {"id": "bench", "started": "2026-11-24T00:00:00+00:00", "finished": "2026-11-24T01:00:00+00:00"}, out, reused=[]
    )
    items = []
    for i in range(findings):
        e = engines[i % len(engines)]
        kind = "difference" if i % 2 else "regression"
        items.append(
            (
                {
                    "fingerprint": f"f{i:04d}",
                    "kind": kind,
                    "case_id": "single-user",
                    "stage": stages[i % 5],
                    "component": e[0],
                    "axis": "engine",
                    "check_name": "ref",
                    "klass": "mismatch",
                    "versions": [e[1]],
                    "last_good": None,
                    "first_bad": e[1],
                    "status": "open" if i % 3 else "fixed",
                    "fixed_in": None if i % 3 else "9.9.9",
                    "first_seen": f"2026-11-{1 + i % 28:02d}T00:00:00+00:00",
                    "cases": ["single-user"],
                    "cells": 3,
                },
                None,
                [
                    {"event": "released", "time": "2026-10-01T00:00:00+00:00"},
                    *([{"event": "fixed", "time": "2026-11-20T00:00:00+00:00"}] if i % 3 == 0 else []),
                ],
            )
        )
    store.save_regressions(items)
    return store
