"""Durable history (reports/history.py): the store on a real git data branch, with a real
concurrent push that is merged, never forced."""

import sqlite3
import subprocess

import pytest

from reports import history
from reports.store import Store
from tests.test_store import result, run


def _store(path, *runs):
    with Store(path) as s:
        for rid, key, version in runs:
            s.ingest_run(run(rid), [result(key, engine_version=version)], [])
    return path


def _rows(path, table):
    db = sqlite3.connect(path)
    try:
        return sorted(db.execute(f"SELECT * FROM {table}").fetchall())
    finally:
        db.close()


def _bare(tmp_path):
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    return str(remote)


def test_dump_rebuilds_the_store_exactly(tmp_path):
    src = _store(tmp_path / "a.sqlite", ("r1", "k1", "5.0.0"), ("r2", "k2", "5.1.0"))
    history.load(history.dump(src), tmp_path / "b.sqlite")
    for table in ("runs", "cells", "run_cells", "results"):
        assert _rows(tmp_path / "b.sqlite", table) == _rows(src, table)
    with Store(tmp_path / "b.sqlite") as s:  # same migration version: nothing re-applied
        assert s.version == Store(src).version
        assert {c["key"] for c in s.cells()} == {"k1", "k2"}


def test_merge_unions_runs_and_keeps_the_latest_finding(tmp_path):
    a = _store(tmp_path / "a.sqlite", ("r1", "k1", "5.0.0"))
    b = _store(tmp_path / "b.sqlite", ("r1", "k1", "5.0.0"), ("r2", "k2", "5.1.0"))
    for path, seen in ((a, "2026-11-25T00:00:00+00:00"), (b, "2026-11-26T00:00:00+00:00")):
        db = sqlite3.connect(path)
        db.execute(
            "INSERT INTO findings (fingerprint, case_id, stage, component, axis, first_seen, last_seen) "
            "VALUES ('f1', 'c0', 'template', 'jinja2', 'template', '2026-11-24', ?)",
            (seen,),
        )
        db.commit()
        db.close()
    added = history.merge(a, b)
    assert added["runs"] == 1 and added["cells"] == 1 and added["findings"] == 1
    assert {r[0] for r in _rows(a, "runs")} == {"r1", "r2"}
    with Store(a) as s:
        assert s.finding("f1").last_seen == "2026-11-26T00:00:00+00:00"
    assert history.merge(a, b) == {t: 0 for t in added}  # idempotent


def test_pull_of_a_new_branch_starts_empty_then_push_pull_round_trip(tmp_path):
    remote = _bare(tmp_path)
    assert history.pull(remote, "llmcompat-data", tmp_path / "x.sqlite") is False
    src = _store(tmp_path / "a.sqlite", ("r1", "k1", "5.0.0"))
    sha = history.push(remote, "llmcompat-data", src, "run r1")
    assert len(sha) == 40
    assert history.push(remote, "llmcompat-data", src, "run r1 again") == sha  # nothing new: no commit
    assert history.pull(remote, "llmcompat-data", tmp_path / "fresh.sqlite") is True
    assert _rows(tmp_path / "fresh.sqlite", "cells") == _rows(src, "cells")


def test_a_concurrent_push_is_merged_and_retried_never_forced(tmp_path, monkeypatch):
    """Machine B fetches the tip, machine A pushes before B does: B's push is rejected by git,
    B fetches A's commit, merges A's history into its store and pushes on top of it."""
    remote = _bare(tmp_path)
    base = _store(tmp_path / "base.sqlite", ("r0", "k0", "4.9.0"))
    history.push(remote, "data", base, "run r0")
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    for path, (rid, key, version) in ((a, ("ra", "ka", "5.0.0")), (b, ("rb", "kb", "5.1.0"))):
        assert history.pull(remote, "data", path)
        _store(path, (rid, key, version))
    real_fetch, calls = history._fetch, []

    def fetch_then_race(work, remote_, branch):
        tip = real_fetch(work, remote_, branch)
        calls.append(tip)
        if len(calls) == 1:  # A pushes between B's fetch and B's push
            monkeypatch.setattr(history, "_fetch", real_fetch)
            history.push(remote, "data", a, "run ra")
            monkeypatch.setattr(history, "_fetch", fetch_then_race)
        return tip

    monkeypatch.setattr(history, "_fetch", fetch_then_race)
    sha = history.push(remote, "data", b, "run rb")
    assert len(calls) == 2 and calls[0] != calls[1]  # the first attempt was rejected, then retried
    log = subprocess.run(
        ["git", "--git-dir", remote, "log", "--format=%s", "data"], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    assert log[:3] == ["run rb", "run ra", "run r0"]  # linear: nobody's commit was overwritten
    assert (
        subprocess.run(
            ["git", "--git-dir", remote, "rev-parse", "data"], capture_output=True, text=True, check=True
        ).stdout.strip()
        == sha
    )
    final = tmp_path / "final.sqlite"
    history.pull(remote, "data", final)
    assert {r[0] for r in _rows(final, "runs")} == {"r0", "ra", "rb"}
    assert {r[0] for r in _rows(final, "cells")} == {"k0", "ka", "kb"}


def test_schema_versions_must_agree(tmp_path):
    a = _store(tmp_path / "a.sqlite", ("r1", "k1", "5.0.0"))
    other = tmp_path / "old.sqlite"
    db = sqlite3.connect(other)
    db.execute("PRAGMA user_version = 1")
    db.close()
    with pytest.raises(history.HistoryError, match="schema versions"):
        history.merge(a, other)
