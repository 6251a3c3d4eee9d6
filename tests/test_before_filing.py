"""The main job's step before the bot files (#15): triage, the standalone reproduction run in real
uv environments, time-to-fix events, the scripts beside the page; run twice, the second run
verifies nothing again (same cells)."""

from __future__ import annotations

import pytest

from tests.conftest import or_skip

CELL = "cpu/tiny-qwen2/transformers@5.24.0/tokenizers@0.23.3/hf-jinja2@3.1.5/openai@3.57.0"


def _result(key: str, lock, model_hash: str, reqs: list[str]) -> dict:
    choices = {
        "engine": {"component": "transformers", "version": "5.24.0"},
        "tokenizer": {"component": "tokenizers", "version": "0.23.3"},
        "template": {"component": "hf-jinja2", "version": "3.1.5"},
        "client": {"component": "openai", "version": "3.57.0"},
    }
    return {
        "key": key,
        "cell": {"id": CELL, "runner": "cpu", "model": "tiny-qwen2", "choices": choices},
        "outcome": "fail",
        "finished": "2026-12-01T00:01:00Z",
        "stages": {},
        "lock": lock.to_json(),
        "model_hash": model_hash,
        "facts": {"requirements": reqs},
    }


@pytest.mark.network
@pytest.mark.slow
def test_before_filing_on_a_real_store(model, tmp_path, monkeypatch):
    from matrix.app import job
    from matrix.declare import loader
    from matrix.env import uv as envs
    from reports.store import Store

    reqs = ["transformers==5.24.0", "tokenizers==0.23.3", "jinja2==3.1.5"]
    lock = or_skip(envs.resolve, reqs, python="3.11")
    or_skip(envs.ensure, lock)
    store = Store(tmp_path / "store.sqlite")
    store.ingest_run(
        {"id": "r1", "started": "2026-12-01T00:00:00Z"},
        [_result("k1", lock, model.model_hash, reqs)],
        [],
        [("transformers", "5.24.0", "2026-11-21T12:24:29+00:00")],
    )
    store.save_differences(
        [
            {
                "fingerprint": "f1",
                "case_id": "single-user",
                "stage": "template",
                "component": "transformers",
                "axis": "engine",
                "check_name": "transformers",
                "klass": "undeclared-requirement",
                "bad_key": "k1",
                "versions": ["5.24.0"],
                "detail": "ImportError: apply_chat_template requires jinja2>=3.1.6 to be installed. "
                "Your version is 3.1.5.",
            }
        ],
        {},
        "2026-12-01T00:02:00Z",
    )
    opts = job.Options(offline=True)
    verdicts = job.before_filing(loader.load_default(), opts, store)
    f = store.finding("f1")
    assert verdicts["f1"].verdict == f.triage == "matrix-configuration"
    assert f.repro_verified is True and "FAIL transformers: ImportError" in f.repro_detail
    events = {e["event"]: e for e in store.ttf_events("f1")}
    assert events["released"]["version"] == "5.24.0" and "detected" in events
    site = tmp_path / "site"
    written = job.write_repro_scripts(store, site)
    assert written["f1"] == site / "repro" / "f1.py" and "FAIL" in written["f1"].read_text()

    # a second run with the same cells runs no reproduction again
    from bot import repro

    calls = []
    monkeypatch.setattr(repro, "run_script", lambda *a, **k: calls.append(a) or repro.Run("x", 1, "FAIL"))
    job.before_filing(loader.load_default(), opts, store)
    assert calls == [] and store.finding("f1").repro_verified is True
