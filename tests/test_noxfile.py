"""The front door: nox lists one readable session per planned cell; GitHub matrices from the plan."""

import json
import os
import subprocess
import sys
from pathlib import Path

from matrix.plan.cells import Cell

ROOT = Path(__file__).resolve().parent.parent


def run(tmp_path, *args):
    env = dict(os.environ, LLMCOMPAT_HOME=str(tmp_path), PYTHONPATH=str(ROOT), NOX_SCRIPT_MODE="none")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_nox_lists_a_session_per_planned_cell(tmp_path):
    listing = run(tmp_path, "-m", "nox", "-l")
    assert listing.returncode == 0, listing.stderr
    for name in ("matrix", "tests", "bench", "plan", "gha-matrix", "goldens", "bisect", "aa", "report"):
        assert f" {name} -> " in listing.stdout
    proc = run(tmp_path, "-m", "nox", "-l", "--json", "-k", "cell")
    assert proc.returncode == 0, proc.stderr
    cells = [s for s in json.loads(proc.stdout) if s["name"] == "cell"]
    assert len(cells) >= 4  # pairwise over the default axes
    for s in cells:
        cell_id = s["call_spec"]["cell"]
        assert s["session"] == f"cell({cell_id})"
        parsed = Cell.parse(cell_id)
        assert parsed.runner == "cpu" and parsed.model == "tiny-qwen2"
    assert (tmp_path / "plan.json").is_file()  # the next listing reads the cached plan


def test_github_matrices_carry_runner_labels(tmp_path):
    proc = run(tmp_path, "-m", "matrix.app.cli", "gha-matrix", "--max-jobs", "4")
    assert proc.returncode == 0, proc.stderr
    matrices = json.loads(proc.stdout)
    jobs = [j for m in matrices for j in m["include"]]
    assert all(len(m["include"]) <= 4 for m in matrices) and len(matrices) >= 2
    assert all(j["runs-on"] == ["ubuntu-latest"] and Cell.parse(j["cell"]).runner == j["runner"] for j in jobs)
    assert len({j["cell"] for j in jobs}) == len(jobs)
