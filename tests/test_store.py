"""The store: migrations, one transaction per run, a killed ingestion leaves nothing behind."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from matrix.errors import ConfigError
from reports.aggregate import ingest, read_result
from reports.store import MIGRATIONS, Store

ROOT = Path(__file__).resolve().parent.parent


def result(key="k1", outcome="pass", engine_version="5.0.0", cases=2):
    choices = {
        "engine": {"component": "transformers", "version": engine_version},
        "tokenizer": {"component": "tokenizers", "version": "0.23.3"},
        "template": {"component": "hf-jinja2", "version": "3.1.6"},
        "client": {"component": "openai", "version": "3.51.0"},
    }
    return {
        "key": key,
        "outcome": outcome,
        "finished": "2026-11-24T00:00:00+00:00",
        "cell": {
            "id": f"cpu/tiny-qwen2/transformers@{engine_version}/tokenizers@0.23.3/hf-jinja2@3.1.6/openai@3.51.0",
            "runner": "cpu",
            "model": "tiny-qwen2",
            "choices": choices,
        },
        "stages": {"template": {"outcome": outcome}, "tokenize": {"outcome": "pass"}},
        "records": [
            {"case": f"c{i}", "stage": "template", "check": "jinja2", "outcome": outcome, "detail": "d"}
            for i in range(cases)
        ],
        "lock": {"python": "3.11", "pins": {"jinja2": "3.1.6"}},
        "model_hash": "mh",
    }


def write(dirpath: Path, data: dict) -> Path:
    p = dirpath / f"{data['key']}.json"
    p.write_text(json.dumps(data))
    return p


def run(rid):
    return {"id": rid, "started": "2026-11-24T00:00:00+00:00", "finished": "2026-11-24T00:01:00+00:00"}


def test_migrations_set_user_version_and_are_idempotent(tmp_path):
    with Store(tmp_path / "s.sqlite") as s:
        assert s.version == len(MIGRATIONS)
    with Store(tmp_path / "s.sqlite") as s:  # reopening applies nothing twice
        assert s.version == len(MIGRATIONS)


def test_ingest_and_export_round_trip(tmp_path):
    files = [write(tmp_path, result("k1")), write(tmp_path, result("k2", "fail", "5.1.0"))]
    with Store(tmp_path / "s.sqlite") as s:
        assert ingest(s, run("r1"), files, reused=[]) == 2
        ingest(s, run("r2"), [], reused=["k1", "k2"])
        exp = s.export()
        assert {c["key"]: c["outcome"] for c in exp["cells"]} == {"k1": "pass", "k2": "fail"}
        assert [c["reused"] for c in s.cells("r2")] == [1, 1]
        assert s.seen_versions()[("engine", "transformers")] == {"5.0.0", "5.1.0"}
        assert len(s.results("k2")) == 2 and s.stage_outcomes("k2")["template"] == "fail"


def test_a_bad_file_stores_nothing_of_the_run(tmp_path):
    good = write(tmp_path, result("k1"))
    bad = tmp_path / "k2.json"
    data = result("k2")
    data["outcome"] = "exploded"
    bad.write_text(json.dumps(data))
    with Store(tmp_path / "s.sqlite") as s:
        with pytest.raises(ConfigError) as err:
            ingest(s, run("r1"), [good, bad], reused=[])
        assert err.value.field == "outcome" and err.value.value == "exploded" and "k2.json" in err.value.file
        assert s.runs() == [] and s.keys() == set()


def test_result_file_errors_name_the_field(tmp_path):
    p = tmp_path / "k9.json"
    p.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        read_result(p)
    data = result("other")
    p.write_text(json.dumps(data))
    with pytest.raises(ConfigError) as err:
        read_result(p)
    assert err.value.field == "key"


def test_killed_ingestion_leaves_no_partial_run(tmp_path):
    """A process killed inside the run's transaction: the store shows none of that run."""
    db = tmp_path / "s.sqlite"
    with Store(db) as s:
        ingest(s, run("r0"), [write(tmp_path, result("k0"))], reused=[])
    files = [str(write(tmp_path, result(f"k{i}", cases=200))) for i in range(1, 40)]
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from reports.store import Store, _insert_cell
        import reports.store as st
        from reports.aggregate import ingest
        slow = st._insert_cell
        def slow_insert(db, r):
            slow(db, r)
            print("inserted", flush=True)
            time.sleep(0.2)
        st._insert_cell = slow_insert
        with Store({str(db)!r}) as s:
            ingest(s, {{"id": "r1", "started": "x"}}, {files!r}, reused=[])
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    for _ in range(3):
        assert proc.stdout.readline().strip() == "inserted"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with Store(db) as s:
        assert [r["id"] for r in s.runs()] == ["r0"]
        assert s.keys() == {"k0"}
