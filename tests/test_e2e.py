"""End to end, for real: uv environments with two jinja2 versions, the probe, the store, the page."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from matrix.app.job import Options, build_model, load_matrix, suite_for
from matrix.cell.run import CellRunner
from matrix.outcome import Outcome
from matrix.plan.cells import Cell, Choice

ROOT = Path(__file__).resolve().parent.parent
PINS = {
    "engine": Choice("transformers", "5.24.0"),
    "tokenizer": Choice("tokenizers", "0.23.3"),
    "client": Choice("openai", "3.57.0"),
}


def cell(jinja2: str) -> Cell:
    return Cell.make("cpu", "tiny-qwen2", {**PINS, "template": Choice("hf-jinja2", jinja2)})


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    matrix = load_matrix(Options())
    model = build_model(matrix, "tiny-qwen2")
    return CellRunner(
        matrix,
        {"tiny-qwen2": suite_for("core", model)},
        {"tiny-qwen2": model},
        results_dir=tmp_path_factory.mktemp("results"),
    )


@pytest.fixture(scope="module")
def reports(runner):
    return {v: runner.execute(cell(v)) for v in ("3.1.5", "3.1.6")}


def result(report) -> dict:
    return json.loads(Path(report.path).read_text())


def test_each_jinja2_version_gets_its_own_environment(reports):
    new = result(reports["3.1.6"])
    assert new["lock"]["pins"]["jinja2"] == "3.1.6" and new["versions"]["jinja2"] == "3.1.6"  # seen by the probe
    assert new["facts"]["requirements"][0] == "transformers[chat-template]==5.24.0"  # what the cell asked uv for
    assert reports["3.1.6"].key != reports["3.1.5"].key


def test_reference_versions_pass_except_where_transformers_normalizes(reports):
    """Template and inference pass; ``tokenizers`` reproduces every golden id. transformers 5 loads
    a qwen2 checkpoint's tokenizer as Qwen2Tokenizer, which adds NFC normalization that the
    tokenizer.json does not have: decomposed text tokenizes differently (a real finding)."""
    r = result(reports["3.1.6"])
    assert r["stages"]["template"]["outcome"] == "pass" and r["stages"]["inference"]["outcome"] == "pass"
    assert r["facts"]["inference"]["transformers"]["level"] == "L0"
    tok = [x for x in r["records"] if x["stage"] == "tokenize"]
    assert {x["outcome"] for x in tok if x["check"] == "tokenizers"} == {"pass"}
    nfc = {x["case"] for x in tok if x["check"] == "transformers" and x["outcome"] == "fail"}
    assert "non-ascii" in nfc and "single-user" not in nfc  # only text with combining marks
    assert all(x.get("klass") == "mismatch" for x in tok if x["outcome"] == "fail")
    assert r["outcome"] == "fail"
    fp = r["facts"]["tokenizer_fingerprint"]
    assert fp["tokenizers"] != fp["transformers"]  # the probe text holds a combining mark


def test_older_jinja2_is_unresolvable_with_the_extra_transformers_declares(reports):
    """Installed without its chat-template extra, transformers 5.24.0 resolves with jinja2 3.1.5
    and then refuses it in apply_chat_template; it declares jinja2>=3.1.6 in that extra, so the
    matrix installs transformers[chat-template] and the pair is unresolvable, with the resolver's
    reason (#15 triage; the refusal itself is reproduced in tests/test_repro.py)."""
    r = result(reports["3.1.5"])
    assert r["outcome"] == "unresolvable" and reports["3.1.5"].outcome is Outcome.UNRESOLVABLE
    assert "transformers[chat-template]" in r["reason"] and "jinja2>=3.1.6" in r["reason"]
    assert r["repro"] == f'nox -s "cell({cell("3.1.5").id})"'


def test_same_key_is_reused_not_run(runner, reports):
    again = runner.execute(cell("3.1.6"))
    assert again.reused and again.key == reports["3.1.6"].key and again.outcome is Outcome.FAIL


def llmcompat(home, *args, timeout=900):
    env = dict(os.environ, LLMCOMPAT_HOME=str(home), PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "matrix.app.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=home,
        timeout=timeout,
    )


def test_command_line_runs_ingests_publishes_and_reuses(tmp_path):
    ids = [cell("3.1.5").id, cell("3.1.6").id]
    args = ["run", "--cell", ids[0], "--cell", ids[1]]
    first = llmcompat(tmp_path, *args)
    assert first.returncode == 0, first.stderr  # failing cells are results, not errors
    assert "pass 0, fail 1, unresolvable 1" in " ".join(first.stdout.split())
    site = tmp_path / "site"
    export = json.loads((site / "results.json").read_text())
    assert sorted(c["cell_id"] for c in export["cells"]) == sorted(ids)
    html = (site / "index.html").read_text()
    assert html.count('class="cell"') == 2 and "undeclared-requirement" not in html
    # what differs from the reference path is a finding with its stage, one per check and class
    diffs = {
        (f["component"], f["stage"], f["check_name"], f["klass"]): f
        for f in export["findings"]
        if f["kind"] == "difference"
    }
    assert not any(klass == "undeclared-requirement" for _, _, _, klass in diffs)
    nfc = diffs[("transformers", "tokenize", "transformers", "mismatch")]
    assert nfc["versions"] == ["5.24.0"] and nfc["cells"] == 1 and nfc["status"] == "open"
    assert nfc["triage"] == "component-bug" and nfc["repro_verified"] is True  # triaged and reproduced (#15)
    assert (site / "repro" / f"{nfc['fingerprint']}.py").is_file()
    assert 'id="differences"' in html and "differences from the reference path" in first.stdout
    second = llmcompat(tmp_path, *args)
    assert second.returncode == 0, second.stderr
    assert "reused 1, executed 0" in " ".join(second.stdout.split())  # an unresolvable cell is resolved again
    # the aggregator of a sharded run: result files made elsewhere, ingested as one run
    other = tmp_path / "aggregator"
    other.mkdir()
    agg = llmcompat(other, "ingest", str(tmp_path / "results"), "--run-id", "gha-1")
    assert agg.returncode == 0, agg.stderr
    assert "ingested 2 new cell results (0 already known) as run gha-1" in agg.stdout
    assert f"differences from the reference path: {len(diffs)} finding(s)" in agg.stdout
    again = llmcompat(other, "ingest", str(tmp_path / "results"), "--run-id", "gha-2")
    assert "ingested 0 new cell results (2 already known)" in again.stdout
