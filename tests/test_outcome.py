"""One outcome vocabulary: the probe's standard-library copy equals the host's, one severity order
serves the probe, the cell and the bot, and the typed records survive the store's round trip."""

from __future__ import annotations

import importlib.util
from dataclasses import FrozenInstanceError

import pytest
from hypothesis import given
from hypothesis import strategies as st

from matrix.cell.run import PROBE_DIR, overall
from matrix.outcome import STAGES, WORST_FIRST, Bisection, Finding, Outcome, Stage, worst


def _probe_module():
    """probe.py loaded from its file, as a module of its own (it is no part of the matrix package)."""
    spec = importlib.util.spec_from_file_location("llmcompat_probe_copy", PROBE_DIR / "probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_probes_copy_of_the_vocabulary_matches_the_hosts():
    probe = _probe_module()
    assert probe.STAGES == tuple(s.value for s in STAGES) == tuple(s.value for s in Stage)
    assert probe.OUTCOMES == tuple(o.value for o in Outcome)
    assert probe.WORST_FIRST == tuple(o.value for o in WORST_FIRST)
    assert sorted(WORST_FIRST) == sorted(Outcome)  # every outcome has one rank


def test_pass_is_never_hidden_by_an_expected_failure():
    """Only pass -> fail is a regression: a stage whose checks passed and xfailed reads pass."""
    probe = _probe_module()
    rec = probe.Recorder("check")
    rec.add("c", "template", "a", "xfail")
    rec.add("c", "template", "b", "pass")
    rec.add("c", "tokenize", "a", "skipped")
    rec.add("c", "tokenize", "b", "flaky")
    summary = rec.stage_summary(["template", "tokenize"])
    assert summary["template"]["outcome"] == "pass" and summary["tokenize"]["outcome"] == "flaky"
    assert overall({"template": {"outcome": "xfail"}, "tokenize": {"outcome": "pass"}}) is Outcome.PASS


outcomes = st.lists(st.sampled_from([o.value for o in Outcome]), min_size=1, max_size=8)


@given(outcomes)
def test_the_probe_the_cell_and_the_bot_combine_alike(values):
    from bot.regress import outcomes_from_records

    probe = _probe_module()
    rec = probe.Recorder("check")
    for i, v in enumerate(values):
        rec.add("c", "inference", f"check{i}", v)
    by_probe = rec.stage_summary(["inference"])["inference"]["outcome"]
    by_cell = overall({f"s{i}": {"outcome": v} for i, v in enumerate(values)})
    by_bot = outcomes_from_records([{"case": "c", "stage": "inference", "outcome": v} for v in values])
    assert by_probe == by_cell.value == by_bot[("c", "inference")] == worst(values)
    assert worst(values) == next(o for o in WORST_FIRST if o in values)


def test_an_unknown_outcome_is_never_hidden():
    assert worst(["pass", "exploded"]) == "exploded" and worst([]) is Outcome.SKIPPED


def test_records_round_trip_through_their_row_form():
    f = Finding(
        fingerprint="fp",
        case_id="c",
        stage="template",
        component="jinja2",
        axis="template",
        cases=("c", "d"),
        versions=("3.1.5", "3.1.6"),
        cells=2,
        kind="difference",
    )
    row = f.as_row()
    assert row["cases"] == '["c", "d"]' and Finding.from_row(row) == f
    assert f.as_dict()["versions"] == ["3.1.5", "3.1.6"]
    b = Bisection(component="jinja2", versions=("1", "2"), probes=(("2", "bad"),), status="found", started="t")
    assert Bisection.from_row(b.as_row()) == b and b.as_dict()["probes"] == [["2", "bad"]]
    # extra keys are left out; None takes the field's default where that is not None
    assert Finding.from_row({**f.as_dict(), "guilty_axes": ["engine"], "good_key": None}) == f
    with pytest.raises(FrozenInstanceError):
        f.status = "fixed"  # type: ignore[misc]


def test_the_store_returns_records(tmp_path):
    from reports.store import Store

    f = Finding(
        fingerprint="fp",
        case_id="c",
        stage="template",
        component="eng",
        axis="engine",
        last_good="1.1",
        first_bad="1.2",
        first_seen="2026-01-01T00:00:00+00:00",
    )
    b = Bisection(
        component="eng",
        versions=("1.1", "1.2"),
        probes=(("1.2", "bad"),),
        status="found",
        started="2026-01-01T00:00:00+00:00",
        compare_url="u",
    )
    with Store(tmp_path / "s.sqlite") as s:
        s.save_finding(f, b, [{"event": "detected", "time": f.first_seen}])
        got = s.finding("fp")
        assert isinstance(got, Finding) and got.last_seen == f.first_seen
        assert got == Finding.from_row({**f.as_dict(), "last_seen": f.first_seen})
        (stored,) = s.bisections("fp")
        assert stored.id is not None and stored.fingerprint == "fp"
        assert Bisection.from_row({**stored.as_dict(), "id": None, "fingerprint": None}) == b
        export = s.export()
        assert export["findings"][0]["versions"] == [] and export["bisections"][0]["probes"] == [["1.2", "bad"]]
