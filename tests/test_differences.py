"""Differences from the reference path: grouping, ownership, fingerprints, the store's lifecycle."""

from __future__ import annotations

import sqlite3
from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from bot.differences import differences, owner, owners_of, resolved
from matrix.declare import loader
from reports import page
from reports.store import MIGRATIONS, Store

OWNERS = {
    "transformers": {"transformers", "transformers-slow"},
    "tokenizers": {"tokenizers"},
    "hf-jinja2": {"jinja2"},
    "llama-cpp-python": {"llama-cpp-python", "llama-cpp", "llama-server"},
    "openai": {"openai"},
}


def row(
    case="c1",
    stage="template",
    check="transformers",
    outcome="fail",
    klass="mismatch",
    tf="5.23.0",
    tok="0.23.2",
    jinja="3.1.6",
    engine="transformers",
    detail="first divergence at char 3",
    key="k1",
):
    cell = f"cpu/tiny-qwen2/{engine}@{tf}/tokenizers@{tok}/hf-jinja2@{jinja}/openai@3.57.0"
    return {
        "run_id": "r1",
        "key": key,
        "cell_id": cell,
        "runner": "cpu",
        "model": "tiny-qwen2",
        "engine": engine,
        "engine_version": tf,
        "tokenizer": "tokenizers",
        "tokenizer_version": tok,
        "template": "hf-jinja2",
        "template_version": jinja,
        "client": "openai",
        "client_version": "3.57.0",
        "case_id": case,
        "stage": stage,
        "check_name": check,
        "outcome": outcome,
        "klass": klass,
        "detail": detail,
        "repro": f"nox -s 'cell({cell})'",
    }


def test_owner_is_the_component_that_brings_the_named_implementation():
    assert owner(row(check="gguf/jinja2:roundtrip"), OWNERS) == ("template", "hf-jinja2")
    assert owner(row(stage="tokenize", check="tokenizers:bos"), OWNERS) == ("tokenizer", "tokenizers")
    assert owner(row(stage="postprocess", check="reasoning:transformers-stream"), OWNERS) == ("engine", "transformers")
    # a check naming no implementation belongs to the stage's own axis
    assert owner(row(stage="client", check="target"), OWNERS) == ("client", "openai")
    assert owner(row(stage="template", check="ollama"), OWNERS) == ("template", "hf-jinja2")


def test_one_finding_per_component_stage_check_and_class_with_its_cases_and_versions():
    rows = [row(case=f"c{i}", tf=v, key=v) for i in range(5) for v in ("5.23.0", "5.24.0")]
    rows += [row(case="c1", stage="tokenize", check="tokenizers", tok="0.23.3")]
    rows += [row(case="c9", check="jinja2", outcome="pass")]
    found = differences(rows, OWNERS)
    assert [(f.component, f.stage, f.check_name) for f in found] == [
        ("transformers", "template", "transformers"),
        ("tokenizers", "tokenize", "tokenizers"),
    ]
    tf = found[0]
    assert tf.cases == tuple(f"c{i}" for i in range(5)) and tf.versions == ("5.23.0", "5.24.0")
    assert tf.cells == 2 and tf.kind == "difference" and tf.axis == "engine"
    assert found[1].versions == ("0.23.3",) and found[1].axis == "tokenizer"


def test_classes_split_findings_and_passes_or_skips_make_none():
    rows = [
        row(klass="mismatch"),
        row(case="c2", klass="undeclared-requirement"),
        row(case="c3", outcome="skipped"),
        row(case="c4", outcome="infra"),
    ]
    assert sorted(f.klass for f in differences(rows, OWNERS)) == ["mismatch", "undeclared-requirement"]


versions = st.from_regex(r"[1-9]\.[0-9]{1,2}\.[0-9]{1,2}", fullmatch=True)


@given(versions, versions, st.text(min_size=1, max_size=40))
def test_fingerprint_is_stable_across_versions_and_details(a, b, detail):
    fa = differences([row(tf=a, detail="x")], OWNERS)[0].fingerprint
    fb = differences([row(tf=b, detail=detail, case="other")], OWNERS)[0].fingerprint
    assert fa == fb


def test_resolved_only_when_the_check_ran_on_the_component_and_passed():
    old = differences([row(tf="5.23.0")], OWNERS)
    open_ = [replace(f, status="open") for f in old]
    # the next run ran transformers' template check on 5.24.0 and it passed: fixed there
    now = [row(tf="5.24.0", outcome="pass"), row(tf="5.25.0", outcome="pass", key="k2")]
    assert resolved(open_, now, differences(now, OWNERS), OWNERS) == {old[0].fingerprint: "5.25.0"}
    # a run that did not run that check says nothing
    other = [row(check="jinja2", outcome="pass")]
    assert resolved(open_, other, differences(other, OWNERS), OWNERS) == {}
    # still failing on one version: still open
    mixed = now + [row(tf="5.23.0", key="k3")]
    assert resolved(open_, mixed, differences(mixed, OWNERS), OWNERS) == {}


def test_owners_come_from_the_probe_roles_in_axes_yaml():
    owners = owners_of(loader.load_default())
    assert "jinja2" in owners["hf-jinja2"] and "tokenizers" in owners["tokenizers"]
    assert "llama-server" in owners["llama-cpp-python"]


def test_store_keeps_first_seen_reopens_and_fixes(tmp_path):
    f = differences([row()], OWNERS)[0]
    with Store(tmp_path / "s.sqlite") as s:
        s.save_differences([f], {}, "2026-11-01T00:00:00+00:00")
        s.save_differences([f], {}, "2026-11-02T00:00:00+00:00")
        got = s.finding(f.fingerprint)
        assert got.first_seen.startswith("2026-11-01") and got.last_seen.startswith("2026-11-02")
        assert got.cases == ("c1",) and got.versions == ("5.23.0",) and got.kind == "difference"
        assert s.export()["findings"][0]["class"] == "backend-specific"  # klass "mismatch"
        s.save_differences([], {f.fingerprint: "5.24.0"}, "2026-11-03T00:00:00+00:00")
        assert s.finding(f.fingerprint).status == "fixed"
        assert [e["event"] for e in s.ttf_events(f.fingerprint)] == ["detected", "fixed"]
        s.save_differences([f], {}, "2026-11-04T00:00:00+00:00")  # seen again: reopened
        got = s.finding(f.fingerprint)
        assert got.status == "open" and got.fixed_in is None
        assert s.findings(kind="regression") == [] and len(s.findings(kind="difference")) == 1


def test_a_version_2_store_gains_the_columns_and_keeps_its_regressions(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 2")
    db.execute(
        "INSERT INTO findings (fingerprint, case_id, stage, component, axis, first_seen, last_seen)"
        " VALUES ('aa', 'c1', 'template', 'transformers', 'engine', 't', 't')"
    )
    db.commit()
    db.close()
    with Store(path) as s:
        assert s.version == len(MIGRATIONS)
        (old,) = s.findings()
        assert old.kind == "regression" and old.cases == () and old.check_name == ""


def test_page_lists_differences_escaped_and_apart_from_regressions():
    f = differences([row(case="<img src=x onerror=alert(1)>", detail="<script>alert(1)</script>")], OWNERS)[0]
    export = {
        "cells": [],
        "runs": [],
        "findings": [
            {**f.as_dict(), "status": "open", "first_seen": "t", "fixed_in": None},
            {
                "fingerprint": "r1",
                "kind": "regression",
                "status": "open",
                "component": "jinja2",
                "last_good": "1",
                "first_bad": "2",
                "stage": "template",
                "case_id": "c",
                "repro": "",
                "compare_url": "",
                "first_seen": "t",
            },
        ],
    }
    data = page.page_data(export)
    assert [d["fingerprint"] for d in data["differences"]] == [f.fingerprint]
    assert [r["fingerprint"] for r in data["findings"]] == ["r1"]
    html = page.render(data)
    assert 'id="differences"' in html and "<script>alert" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html
