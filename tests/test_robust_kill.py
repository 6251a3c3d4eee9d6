"""A kill at a generated moment never damages the store (issue 12): real ``llmcompat run``,
``ingest`` and ``report`` subprocesses are SIGKILLed (their whole process group, probes included)
after a delay hypothesis picks within the command's measured duration; the store then opens,
passes ``PRAGMA integrity_check``, and a rerun completes with every cell. The scratch directory
the killed process left is gone after the rerun."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reports.store import Store
from tests.robust_matrix import cell_ids, write_axes
from tests.test_robust_store import result

ROOT = Path(__file__).resolve().parent.parent
KILLS = settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck), database=None)


FAST_PROBE = (
    f"{sys.executable} {ROOT / 'tests' / 'fault_probe.py'} --state {{state}} --cases single-user,system-prompt --"
)
"""The real probe on two cases of the suite (a fast real probe path), through the fault wrapper
with no faults."""


def start(argv: list[str], home: Path) -> subprocess.Popen:
    env = dict(
        os.environ,
        LLMCOMPAT_HOME=str(home),
        PYTHONPATH=str(ROOT),
        LLMCOMPAT_PROBE_WRAPPER=FAST_PROBE.format(state=home.parent / f"{home.name}-faults"),
    )
    return subprocess.Popen(
        [sys.executable, "-m", "matrix.app.cli", *argv],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(argv: list[str], home: Path, timeout: float = 600) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    proc = start(argv, home)
    out, err = proc.communicate(timeout=timeout)
    return time.perf_counter() - t, subprocess.CompletedProcess(argv, proc.returncode, out, err)


def kill_after(argv: list[str], home: Path, delay: float) -> int:
    proc = start(argv, home)
    time.sleep(delay)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    return proc.pid


def assert_sound(home: Path) -> None:
    """The store opens (a writer's open, migrations included) and SQLite finds nothing wrong."""
    with Store(home / "store.sqlite") as store:
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for run in store.runs():
            assert run["finished"]  # a run is in whole or not at all


def latest_cells(home: Path) -> set[str]:
    with Store(home / "store.sqlite", readonly=True) as store:
        run = max(store.runs(), key=lambda r: r["started"])
        return {c["cell_id"] for c in store.cells(run["id"])}


# ---- run -------------------------------------------------------------------------------------------

CELLS = 3


@pytest.fixture(scope="module")
def light(tmp_path_factory):
    """The light matrix, and how long a full run of its cells takes here (the kill window)."""
    d = tmp_path_factory.mktemp("light")
    axes = write_axes(d, runners=CELLS)
    argv = [
        "run",
        "--axes",
        str(axes),
        "--offline",
        "--no-regress",
        "--no-page",
        "--jobs",
        "2",
        *[a for c in cell_ids(CELLS) for a in ("--cell", c)],
    ]
    seconds, proc = finish(argv, d / "warm")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return argv, seconds


@KILLS
@given(fraction=st.floats(0.05, 1.0))
def test_a_killed_run_leaves_a_sound_store_and_a_rerun_completes(light, tmp_path_factory, fraction):
    argv, seconds = light
    home = tmp_path_factory.mktemp("run-kill")
    pid = kill_after(argv, home, seconds * fraction)
    assert_sound(home)
    _, rerun = finish(argv, home)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_sound(home)
    assert latest_cells(home) == set(cell_ids(CELLS))
    leftovers = Path(os.environ.get("LLMCOMPAT_CACHE") or Path.home() / ".cache" / "llmcompat") / "tmp"
    assert not (leftovers / f"{socket.gethostname()}-{pid}").exists()


# ---- ingest and report ---------------------------------------------------------------------------------

FILES = 200


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Many result files (so ingest and report take a while), and the time each command takes."""
    d = tmp_path_factory.mktemp("results")
    for i in range(FILES):
        data = result(f"k{i:04d}", outcome="fail" if i % 7 == 0 else "pass", engine_version=f"5.{i}.0", cases=40)
        (d / f"k{i:04d}.json").write_text(json.dumps(data))
    home = tmp_path_factory.mktemp("warm")
    ingest_s, proc = finish(["ingest", str(d)], home)
    assert proc.returncode == 0, proc.stderr
    report_s, proc = finish(["report"], home)
    assert proc.returncode == 0, proc.stderr
    return d, ingest_s, report_s


@KILLS
@given(fraction=st.floats(0.05, 1.0))
def test_a_killed_ingest_leaves_a_sound_store_and_a_rerun_completes(results, tmp_path_factory, fraction):
    d, seconds, _ = results
    home = tmp_path_factory.mktemp("ingest-kill")
    kill_after(["ingest", str(d)], home, seconds * fraction)
    if (home / "store.sqlite").exists():
        assert_sound(home)
        with Store(home / "store.sqlite", readonly=True) as store:
            assert len(store.keys()) in (0, FILES)  # all of the run or nothing
    _, rerun = finish(["ingest", str(d)], home)
    assert rerun.returncode == 0, rerun.stderr
    assert_sound(home)
    with Store(home / "store.sqlite", readonly=True) as store:
        assert len(store.keys()) == FILES


@KILLS
@given(fraction=st.floats(0.05, 1.0))
def test_a_killed_report_leaves_a_sound_store_and_a_rerun_completes(results, tmp_path_factory, fraction):
    d, _, seconds = results
    home = tmp_path_factory.mktemp("report-kill")
    assert finish(["ingest", str(d)], home)[1].returncode == 0
    kill_after(["report"], home, seconds * fraction)
    assert_sound(home)
    _, rerun = finish(["report"], home)
    assert rerun.returncode == 0, rerun.stderr
    export = json.loads((home / "site" / "results.json").read_text())
    assert len(export["cells"]) == FILES and (home / "site" / "index.html").stat().st_size > 0
