"""Cells heal themselves and never take the run down (issue 12): an ``infra`` result is retried on
the next run, never reused; a cached environment whose interpreter is gone or cannot start is
removed and rebuilt once; one cell's unexpected error makes that cell ``infra`` with the reason,
and the run (with every other cell) is stored. Real uv environments, the real probe (a light
matrix: tests/robust_matrix.py), the real store."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest

from matrix.app.job import Options, run_cells
from matrix.cell.run import CellRunner, env_problem, reusable
from matrix.outcome import Outcome
from matrix.plan.cells import Cell
from reports.store import Store
from tests.robust_matrix import prepared, write_axes

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def prep(tmp_path_factory):
    return prepared(write_axes(tmp_path_factory.mktemp("axes"), runners=3))


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCOMPAT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LLMCOMPAT_PROBE_WRAPPER", raising=False)
    return tmp_path / "home"


def wrapper(state: Path, *options: str) -> str:
    return shlex.join([sys.executable, str(ROOT / "tests" / "fault_probe.py"), "--state", str(state), *options, "--"])


def one_run(prep, cells=None):
    from dataclasses import replace

    from matrix import paths

    p = replace(prep, cells=cells or prep.cells)
    with Store(paths.store_path()) as store:
        summary = run_cells(p, Options(jobs=2), store)
        return summary, store.cells(summary.run_id)


def test_an_infra_result_is_retried_on_the_next_run_never_reused(prep, home, tmp_path, monkeypatch):
    cells = prep.cells[:1]
    monkeypatch.setenv("LLMCOMPAT_PROBE_WRAPPER", wrapper(tmp_path / "faults", "--always"))
    first, stored = one_run(prep, cells)
    assert [r.outcome for r in first.reports] == [Outcome.INFRA]
    assert "injected infra failure" in first.reports[0].reason
    assert [c["outcome"] for c in stored] == ["infra"]  # stored, with its reason
    assert "injected infra failure" in stored[0]["reason"]
    attempts = (tmp_path / "faults" / "attempts.log").read_text().splitlines()
    assert len(attempts) == 2  # the run's own retry, once
    monkeypatch.delenv("LLMCOMPAT_PROBE_WRAPPER")
    second, stored = one_run(prep, cells)
    assert second.counts["infra"] == 0 and second.counts["reused"] == 0 and second.counts["pass"] == 1
    assert [(c["outcome"], c["reused"]) for c in stored] == [("pass", 0)]
    third, _ = one_run(prep, cells)  # a result that stands is reused
    assert third.counts["reused"] == 1 and third.counts["executed"] == 0


def test_reusable_refuses_infra_and_unreadable_files(tmp_path):
    p = tmp_path / "k.json"
    assert reusable(p, known=False) is None and reusable(p, known=True) == {}
    for text in ("{not json", json.dumps({"outcome": "infra"}), json.dumps({"outcome": "exploded"}), "[]"):
        p.write_text(text)
        assert reusable(p, known=True) is None, text
    p.write_text(json.dumps({"outcome": "fail", "stages": {}}))
    assert reusable(p, known=True)["outcome"] == "fail"


@pytest.mark.parametrize("damage", ["interpreter gone", "interpreter fails to start"])
def test_a_broken_cached_environment_is_rebuilt_once(prep, home, tmp_path, monkeypatch, damage):
    monkeypatch.setenv("LLMCOMPAT_CACHE", str(tmp_path / "cache"))  # a private envs root: others keep theirs
    runner = CellRunner(prep.matrix, prep.suites, prep.models, results_dir=tmp_path / "r1")
    first = runner.execute(prep.cells[0])
    assert first.outcome is Outcome.PASS, first.reason
    envs_root = tmp_path / "cache" / "envs"
    env = envs_root / runner.resolve(prep.cells[0]).digest[:24]  # the cell's own (others may be there too)
    python = env / "bin" / "python"
    python.unlink()
    if damage == "interpreter fails to start":
        python.write_text("#!/bin/sh\necho 'error while loading shared libraries' >&2\nexit 127\n")
        python.chmod(0o755)
    assert env_problem(python) is not None
    again = CellRunner(prep.matrix, prep.suites, prep.models, results_dir=tmp_path / "r2").execute(prep.cells[0])
    assert again.outcome is Outcome.PASS, again.reason  # rebuilt, then run: not infra
    assert env_problem(python) is None


def test_env_problem_names_what_is_wrong(tmp_path):
    missing = tmp_path / "bin" / "python"
    assert "is missing" in env_problem(missing)
    missing.parent.mkdir()
    missing.write_text("#!/bin/sh\nexit 3\n")
    missing.chmod(0o755)
    assert "exited 3 at start" in env_problem(missing)
    missing.chmod(0o644)
    assert "cannot start" in env_problem(missing)
    assert env_problem(Path(sys.executable)) is None


def test_one_cells_error_never_aborts_the_others(prep, home, tmp_path, monkeypatch):
    """A cell whose runner is not declared (an llmcompat error inside that cell: StopIteration in
    resolve): the run goes on, is stored, and that cell is ``infra`` with the error as its reason."""
    good = prep.cells[1:3]
    bad = Cell.make("no-such-runner", "tiny-qwen2", dict(prep.cells[0].choices))
    summary, stored = one_run(prep, [*good, bad])
    by_id = {c["cell_id"]: c for c in stored}
    assert {by_id[c.id]["outcome"] for c in good} == {"pass"}
    assert by_id[bad.id]["outcome"] == "infra" and "llmcompat error in this cell" in by_id[bad.id]["reason"]
    assert "StopIteration" in by_id[bad.id]["reason"]
    assert summary.counts["infra"] == 1 and summary.counts["pass"] == 2


def test_probe_temporary_directories_live_under_the_cache_and_go(prep, home, tmp_path, monkeypatch):
    """A killed run leaves no /tmp/llmcompat-* behind: scratch lives under the cache, per process,
    and the next process removes what a dead one left."""
    import subprocess

    from matrix import scratch

    monkeypatch.setenv("LLMCOMPAT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(scratch, "_mine", None)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    stale = tmp_path / "cache" / "tmp" / f"{socket.gethostname()}-{int(dead.stdout)}" / "resolve-x"
    stale.mkdir(parents=True)
    (stale / "requirements.in").write_text("jinja2\n")
    other_host = tmp_path / "cache" / "tmp" / "elsewhere-1" / "probe-y"
    other_host.mkdir(parents=True)
    runner = CellRunner(prep.matrix, prep.suites, prep.models, results_dir=tmp_path / "r")
    assert runner.execute(prep.cells[0]).outcome is Outcome.PASS
    mine = scratch.directory()
    assert mine.parent == tmp_path / "cache" / "tmp" and list(mine.iterdir()) == []  # removed in finally
    assert not stale.parent.exists() and other_host.exists()  # a dead pid's leftovers go; another host's stay
