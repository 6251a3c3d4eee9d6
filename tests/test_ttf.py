"""Time-to-fix (#15 item 6): exact statistics (hypothesis), timelines, open counts, and the real
store: events recorded, the JSON export carrying them, ``llmcompat ttf`` as a table and as JSON."""

from __future__ import annotations

import json
import math
import statistics
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from bot import ttf

numbers = st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=60)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@given(numbers)
def test_median_is_exact(xs):
    assert ttf.median(xs) == statistics.median(xs)


@given(numbers)
def test_p90_is_the_nearest_rank(xs):
    p = ttf.p90(xs)
    assert p in xs
    # the smallest value with at least 90% of the values at or below it
    at_or_below = sum(1 for x in xs if x <= p)
    assert at_or_below >= math.ceil(0.9 * len(xs))
    assert all(sum(1 for x in xs if x <= y) < math.ceil(0.9 * len(xs)) for y in xs if y < p)


def test_empty_statistics():
    assert ttf.median([]) is None and ttf.p90([]) is None
    assert ttf.Stat.of([None, None]) == ttf.Stat(0, None, None)
    assert ttf.p90([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) == 9 and ttf.p90([5]) == 5


timeline_st = st.builds(
    lambda project, fixed, filed, closed, bad, fix, det: ttf.Timeline(
        fingerprint="f",
        project=project,
        component=project,
        kind="regression",
        status="fixed" if fixed else "open",
        bad_released=T0 + timedelta(days=bad),
        fix_released=(T0 + timedelta(days=bad + fix)) if fixed else None,
        detected=T0 + timedelta(days=bad + det),
        filed=(T0 + timedelta(days=bad + det)) if filed else None,
        closed=(T0 + timedelta(days=bad + det + 3)) if filed and closed else None,
    ),
    st.sampled_from(["a/x", "b/y", "c/z"]),
    st.booleans(),
    st.booleans(),
    st.booleans(),
    st.integers(0, 400),
    st.integers(0, 300),
    st.integers(0, 100),
)


@given(st.lists(timeline_st, max_size=40))
def test_summary_counts_and_statistics_per_project(lines):
    stats = {s.project: s for s in ttf.summarize(lines)}
    assert sorted(stats) == sorted({t.project for t in lines})
    for project, s in stats.items():
        mine = [t for t in lines if t.project == project]
        assert s.findings == len(mine)
        assert s.open == sum(1 for t in mine if t.status != "fixed" or (t.filed is not None and t.closed is None))
        exposures = [t.exposure_days for t in mine if t.exposure_days is not None]
        assert s.exposure == ttf.Stat(len(exposures), ttf.median(exposures), ttf.p90(exposures))
        assert s.close.n == sum(1 for t in mine if t.closed is not None)


def test_timeline_of_a_regression_and_of_a_difference():
    times = {
        ("transformers", "5.1.0"): "2026-03-01T00:00:00Z",
        ("transformers", "5.3.0"): "2026-03-21T12:00:00+00:00",
        ("transformers", "5.0.0"): "2026-02-01T00:00:00Z",
    }
    reg = {
        "fingerprint": "r",
        "component": "transformers",
        "kind": "regression",
        "status": "fixed",
        "first_bad": "5.1.0",
        "fixed_in": "5.3.0",
        "versions": ["5.1.0"],
        "first_seen": "2026-03-11T00:00:00Z",
    }
    diff = {
        "fingerprint": "d",
        "component": "transformers",
        "kind": "difference",
        "status": "open",
        "first_bad": None,
        "fixed_in": None,
        "versions": ["5.1.0", "5.0.0"],
        "first_seen": "2026-03-02T00:00:00Z",
    }
    events = [{"fingerprint": "r", "event": "detected", "time": "2026-03-05T00:00:00Z", "version": None}]
    issues = [
        {
            "fingerprint": "r",
            "repo": "o/r",
            "number": 2,
            "created": "2026-03-06T00:00:00Z",
            "closed": "2026-03-26T00:00:00Z",
        },
        {"fingerprint": "r", "repo": "up/r", "number": 9, "created": "2026-03-07T00:00:00Z", "closed": None},
    ]
    r, d = ttf.timelines(
        [reg, diff],
        upload_time=lambda p, v: times.get((p, v)),
        events=events,
        issues=issues,
        projects={"transformers": "huggingface/transformers"},
    )
    assert r.project == "huggingface/transformers" and r.bad_basis == "first-bad"
    assert r.exposure_days == 20.5 and r.detection_delay_days == 4 and r.time_to_close_days == 20
    assert not r.open
    assert d.bad_version == "5.0.0" and d.bad_basis == "earliest-seen" and d.exposure_days is None
    assert d.detection_delay_days == 29 and d.open
    assert ttf.release_events(r) == [
        {"event": "released", "time": "2026-03-01T00:00:00+00:00", "version": "5.1.0"},
        {"event": "fix-released", "time": "2026-03-21T12:00:00+00:00", "version": "5.3.0"},
    ]


def test_bad_times_are_unknown_not_errors():
    assert ttf.parse_time("not a time") is None and ttf.parse_time(None) is None
    assert ttf.parse_time("2026-01-01T00:00:00") == T0


# ------------------------------------------------------------------------------------ a real store


def _store(tmp_path):
    from reports.store import Store

    store = Store(tmp_path / "store.sqlite")
    store.ingest_run(
        {"id": "r0", "started": "2026-03-01T00:00:00Z"},
        [],
        [],
        [
            ("transformers", "5.1.0", "2026-03-01T00:00:00+00:00"),
            ("transformers", "5.3.0", "2026-03-21T12:00:00+00:00"),
            ("tokenizers", "0.23.2", "2026-02-01T00:00:00+00:00"),
        ],
    )
    store.save_finding(
        {
            "fingerprint": "r1",
            "case_id": "c",
            "stage": "tokenize",
            "component": "transformers",
            "axis": "engine",
            "first_bad": "5.1.0",
            "last_good": "5.0.0",
            "first_seen": "2026-03-05T00:00:00Z",
            "last_seen": "2026-03-05T00:00:00Z",
        },
        events=[{"event": "detected", "time": "2026-03-05T00:00:00Z"}],
    )
    store.save_differences(
        [
            {
                "fingerprint": "d1",
                "case_id": "c",
                "stage": "postprocess",
                "component": "tokenizers",
                "axis": "tokenizer",
                "check_name": "tokenizers:incremental",
                "versions": ["0.23.2"],
            }
        ],
        {},
        "2026-03-03T00:00:00Z",
    )
    store.add_issue("r1", "o/r", 7, "https://example.invalid/7", "2026-03-06T00:00:00Z")
    store.mark_fixed("r1", "5.3.0", "2026-03-22T00:00:00Z")
    store.close_issue("o/r", 7, "2026-03-26T00:00:00Z")
    return store


def test_against_a_real_store(tmp_path):
    from matrix.declare import loader

    store = _store(tmp_path)
    lines = {t.fingerprint: t for t in ttf.record(store, loader.load_default())}
    r, d = lines["r1"], lines["d1"]
    assert (r.exposure_days, r.detection_delay_days, r.time_to_close_days) == (20.5, 4.0, 20.0)
    assert r.project == "huggingface/transformers" and not r.open
    assert d.project == "huggingface/tokenizers" and d.open and d.detection_delay_days == 30
    events = {(e["fingerprint"], e["event"]): e for e in store.export()["ttf_events"]}
    assert {k[1] for k in events if k[0] == "r1"} == {
        "detected",
        "filed",
        "fixed",
        "closed",
        "released",
        "fix-released",
    }
    assert events[("r1", "fix-released")]["version"] == "5.3.0"
    assert events[("d1", "released")]["version"] == "0.23.2"
    stats = {s.project: s for s in ttf.summarize(lines.values())}
    assert stats["huggingface/transformers"].open == 0 and stats["huggingface/tokenizers"].open == 1
    # reopened: the close is withdrawn, the finding counts as open again
    store.reopen_issue("o/r", 7)
    assert ttf.collect(store)[0].closed is None and ttf.collect(store)[0].open


def test_cli_prints_the_table_in_80_columns_and_json(tmp_path, monkeypatch, capsys):
    from matrix.app.cli import main

    _store(tmp_path).close()
    monkeypatch.setenv("LLMCOMPAT_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["ttf", "--offline"]) == 0
    out = capsys.readouterr().out
    assert "huggingface/transformers" in out and "20d/20d" in out and "2 finding(s)" in out
    assert max(len(line) for line in out.splitlines()) <= 80, out
    assert main(["ttf", "--json", "--offline"]) == 0
    data = json.loads(capsys.readouterr().out)
    by = {p["project"]: p for p in data["projects"]}
    assert by["huggingface/transformers"]["exposure"] == {"n": 1, "median": 20.5, "p90": 20.5}
    assert {f["fingerprint"] for f in data["findings"]} == {"r1", "d1"}


def test_cli_without_a_store_exits_2(tmp_path, monkeypatch):
    from matrix.app.cli import main

    monkeypatch.setenv("LLMCOMPAT_HOME", str(tmp_path / "none"))
    assert main(["ttf"]) == 2


def test_migration_5_keeps_the_events_of_an_older_store(tmp_path):
    """A store made before migration 5: its time-to-fix events survive the table's rebuild, and
    the new ``closed`` event and the triage/reproduction columns are there afterwards."""
    import sqlite3

    from reports.store import MIGRATIONS, Store

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:4], start=1):
        db.executescript(script)
        db.execute(f"PRAGMA user_version = {number}")
    db.execute(
        "INSERT INTO findings (fingerprint, case_id, stage, component, axis, first_seen, last_seen)"
        " VALUES ('f', 'c', 'template', 'transformers', 'engine', 't', 't')"
    )
    db.execute("INSERT INTO ttf_events VALUES ('f', 'detected', '2026-01-01T00:00:00Z', NULL)")
    db.commit()
    db.close()
    with Store(path) as store:
        assert store.version >= 5
        assert [e["event"] for e in store.ttf_events()] == ["detected"]
        store.add_ttf_event("f", "closed", "2026-01-02T00:00:00Z")
        f = store.finding("f")
        assert (f.triage, f.triage_reason, f.repro_verified, f.repro_detail) == ("", "", None, "")
        assert [e["event"] for e in store.ttf_events()] == ["detected", "closed"]
