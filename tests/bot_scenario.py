"""Store scenarios for the bot's tests and soak benchmark: real runs ingested into a real store,
and the bot's command line that both run against the local GitHub.

A scenario is a sequence of scheduled runs, each a few cells whose tokenizer (the ``tokenizers``
component) is at some version and whose incremental-detokenization check passes or fails; the
differences pipeline of the main job (:func:`matrix.app.job.record_differences`) turns them into
findings, exactly as after a real run.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

from matrix.app.job import record_differences
from matrix.declare.loader import load_default
from reports.store import Store

MATRIX = load_default()
CHECKS = {  # check -> (stage, klass, detail when failing)
    "tokenizers:incremental": (
        "postprocess",
        "mismatch",
        "16 ids fed one at a time: first divergence at char 42 (expected 43 chars, got 42): "
        "expected 'on\u00e9 @everyone #1', got 'on'; 3 bytes lost",
    ),
    "tokenizers": (
        "tokenize",
        "mismatch",
        "first divergence at token 0 (expected 24 ids, got 22): expected [68, 702, 220], got [438, 220]",
    ),
}
_SEQ = itertools.count(1)


def cell(tok_version: str, outcomes: dict[str, str], n: int = 0, cases=("non-ascii", "cjk")) -> dict:
    """One cell's result: transformers engine, tokenizers at ``tok_version``; per check an outcome."""
    cid = f"cpu/tiny-qwen2/transformers@5.24.0/tokenizers@{tok_version}/hf-jinja2@3.1.6/openai@3.57.0/{n}"
    records = []
    for check, outcome in outcomes.items():
        stage, klass, detail = CHECKS.get(check, ("postprocess", "mismatch", f"{check}: expected 'a', got 'b'"))
        for case in cases:
            records.append(
                {
                    "case": case,
                    "stage": stage,
                    "check": check,
                    "outcome": outcome,
                    "klass": klass if outcome == "fail" else "",
                    "detail": detail if outcome == "fail" else "",
                }
            )
    choices = {
        "engine": {"component": "transformers", "version": "5.24.0"},
        "tokenizer": {"component": "tokenizers", "version": tok_version},
        "template": {"component": "hf-jinja2", "version": "3.1.6"},
        "client": {"component": "openai", "version": "3.57.0"},
    }
    return {
        "key": f"k{next(_SEQ):06d}-{tok_version}-{n}",
        "cell": {"id": cid, "runner": "cpu", "model": "tiny-qwen2", "choices": choices},
        "outcome": "fail" if "fail" in outcomes.values() else "pass",
        "finished": "2026-12-01T00:00:00Z",
        "records": records,
        "stages": {},
        "repro": f'nox -s "cell({cid})"',
    }


def scheduled_run(store: Store, cells: list[dict], day: int) -> str:
    """Ingest one scheduled run (day ``day`` of December 2026) and record its differences."""
    run_id = f"run-{day:02d}-{next(_SEQ)}"
    t = f"2026-12-{day:02d}T06:00:00Z"
    store.ingest_run({"id": run_id, "started": t, "finished": t, "kind": "matrix"}, cells, [])
    record_differences(MATRIX, store, run_id)
    return run_id


def broken_store(path: Path, checks=("tokenizers:incremental", "tokenizers"), cells: int = 2) -> Store:
    """A store whose one run shows tokenizers 0.23.3 failing ``checks`` in ``cells`` cells."""
    store = Store(path)
    scheduled_run(store, [cell("0.23.3", {c: "fail" for c in checks}, n) for n in range(cells)], 1)
    return store


def bot_command(home: Path, api_url: str, repo: str, token: str, secondary_wait: float) -> tuple[list[str], dict]:
    """(argv, environment) of ``llmcompat bot`` as a scheduled job runs it, against the local
    GitHub at ``api_url``, with fast retries: none of the caller's ``GITHUB_*`` variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    env.update(LLMCOMPAT_HOME=str(home), GITHUB_TOKEN=token)
    argv = [sys.executable, "-m", "matrix.app.cli", "bot", "--repo", repo, "--api-url", api_url, "--no-throttle"]
    return argv + ["--backoff", "0.01", "--secondary-wait", str(secondary_wait)], env
