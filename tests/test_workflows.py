"""The GitHub workflows: linted for real (actionlint, zizmor), hardened as documented, within
GitHub's limits, and their command sequence reproduced locally (shards of two jobs, then the
aggregator) with the same store and page as one machine."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from matrix.app.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
SCRIPTS = ROOT / ".github" / "scripts"
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert path, f"{name} is in the test extras (pip install -e '.[test]')"
    return path


def _load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as True
    return data


def _jobs():
    for wf in sorted(WORKFLOWS.glob("*.yml")):
        for name, job in _load(wf.name)["jobs"].items():
            yield wf.name, name, job


def test_actionlint_passes_with_nothing_ignored():
    assert not (ROOT / ".github" / "actionlint.yaml").exists() and not (ROOT / ".github" / "actionlint.yml").exists()
    proc = subprocess.run(
        [_tool("actionlint"), *sorted(map(str, WORKFLOWS.glob("*.yml")))], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_zizmor_strictest_persona_passes_with_nothing_ignored():
    texts = [p.read_text() for p in WORKFLOWS.glob("*.yml")]
    assert not any("zizmor: ignore" in t for t in texts) and not (ROOT / ".github" / "zizmor.yml").exists()
    proc = subprocess.run(
        [_tool("zizmor"), "--offline", "--persona=auditor", "--no-progress", str(WORKFLOWS)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No findings" in proc.stdout + proc.stderr


def test_hygiene_least_permissions_pins_timeouts_no_persisted_credentials():
    for wf in sorted(WORKFLOWS.glob("*.yml")):
        data = _load(wf.name)
        assert data["permissions"] == {}, f"{wf.name}: permissions: {{}} at the top"
        text = wf.read_text()
        for uses in re.findall(r"uses:\s*(\S+)(.*)", text):
            ref, comment = uses
            if ref.startswith(("./", "$/")):
                continue
            assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref), f"{wf.name}: {ref} is not pinned by commit"
            assert re.search(r"#\s*v\d", comment), f"{wf.name}: {ref} has no version comment"
    for wf, name, job in _jobs():
        assert "permissions" in job, f"{wf}:{name} states its permissions"
        if "uses" not in job:
            assert "timeout-minutes" in job, f"{wf}:{name} has a timeout"
        for step in job.get("steps", []):
            if step.get("uses", "").startswith("actions/checkout@"):
                assert step.get("with", {}).get("persist-credentials") is False, f"{wf}:{name}: checkout keeps no token"
            script = step.get("run", "")
            assert not re.search(r"\$\{\{\s*(inputs|matrix|github\.event|steps|needs)\.", script), (
                f"{wf}:{name}: an expression is interpolated into a script; pass it through env"
            )


def test_only_the_bot_writes_issues_and_code_from_the_matrix_holds_no_secret():
    writers = {(wf, name) for wf, name, job in _jobs() if job.get("permissions", {}).get("issues") == "write"}
    assert writers == {("matrix.yml", "bot")}
    matrix_code = {("cell.yml", "cell"), ("matrix.yml", "regress")}  # these run third-party packages
    for wf, name, job in _jobs():
        if (wf, name) in matrix_code:
            assert set(job["permissions"].values()) <= {"read"}, f"{wf}:{name} can write"
            assert "secrets." not in json.dumps(job), f"{wf}:{name} sees a secret"
            assert "github.token" not in json.dumps(job), f"{wf}:{name} sees a token"
    loop = _load("matrix.yml")
    assert loop["concurrency"]["cancel-in-progress"] is False
    assert {"schedule", "workflow_dispatch"} <= set(loop["on"])
    assert set(loop["on"]["workflow_dispatch"]["inputs"]) == {"only", "with", "dry-run"}
    jobs = loop["jobs"]
    assert jobs["keepalive"]["if"] == "github.event_name == 'schedule'"
    assert (
        "dry-run" in jobs["bot"]["steps"][-3]["env"]["DRY_RUN"] and "fork" in jobs["bot"]["steps"][-3]["env"]["DRY_RUN"]
    )
    order = ["plan", "cells-0", "aggregate", "regress", "record", "bot", "page"]
    for before, after in zip(order, order[1:]):
        needs = jobs[after]["needs"]
        assert before in ([needs] if isinstance(needs, str) else needs), f"{after} runs after {before}"


def _commands():
    """Every llmcompat/nox command line in the workflows and their scripts, variables filled."""
    texts = [p.read_text() for p in [*WORKFLOWS.glob("*.yml"), *SCRIPTS.iterdir()]]
    for text in texts:
        text = re.sub(r"\$\{\{[^}]*\}\}", "X", text)
        text = re.sub(r"\$\{\w+:\+[^}]*\}", "", text)
        text = text.replace('"${args[@]}"', "").replace('"${stores[@]}"', "s.sqlite")
        for line in re.findall(r"(?:^|[\s;])((?:llmcompat|nox -s [\w-]+ --) [^&\n|]*)", text):
            line = re.sub(r'"\$\w+"|\$\w+', "X", line.split(" #")[0])
            yield shlex.split(line.replace("--shard X", "--shard 0/1"))


def test_every_command_the_workflows_run_exists():
    parser = build_parser()
    seen = set()
    for words in _commands():
        if words[0] == "nox":
            continue
        parser.parse_args(words[1:])  # exits (fails the test) on an unknown command or option
        seen.add(words[1])
    assert {"gha-matrix", "ingest", "regress", "summary", "history", "report", "bot"} <= seen


def test_the_plan_fits_githubs_limits_and_the_workflows_shard_jobs(tmp_path):
    """256 jobs per matrix, 1 MB per job output, and no more matrices than cells-N jobs."""
    from matrix.app.actions import regress_matrix
    from tests.scale import realistic_plan

    shard_jobs = sum(1 for name in _load("matrix.yml")["jobs"] if name.startswith("cells-"))
    assert f"--shards {shard_jobs}" in (SCRIPTS / "plan").read_text()
    plan = realistic_plan(versions=5)
    assert all(len(m["include"]) <= 256 for m in plan.matrices)
    outputs = "".join(f"shard-{i}={json.dumps(m, separators=(',', ':'))}\n" for i, m in enumerate(plan.matrices))
    assert len(outputs.encode()) < 1024 * 1024
    assert len(regress_matrix(1000, 8)["include"]) == 8 and regress_matrix(0, 8) == {"include": []}


# ---- the loop, locally -------------------------------------------------------------------
def _small_axes(tmp_path) -> Path:
    """The default axes narrowed to three cheap cells: one engine and SDK, three jinja2 releases."""
    data = yaml.safe_load((ROOT / "matrix" / "axes.yaml").read_text())
    keep = {
        "engine": ("transformers", ["5.24.0"]),
        "tokenizer": ("tokenizers", ["0.23.3"]),
        "template": ("hf-jinja2", ["3.1.4", "3.1.5", "3.1.6"]),
        "client": ("openai", ["3.57.0"]),
    }
    for axis, comps in data["axes"].items():
        name, versions = keep[axis]
        data["axes"][axis] = {name: {**comps[name], "versions": {"explicit": versions}}}
    data.pop("constraints", None)  # they name components left out here
    path = tmp_path / "axes.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _env(home: Path, axes: Path, **extra) -> dict:
    env = {
        **os.environ,
        "LLMCOMPAT_HOME": str(home),
        "LLMCOMPAT_AXES": str(axes),
        "PYTHONPATH": str(ROOT),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("GITHUB_OUTPUT", None)
    env.pop("GITHUB_STEP_SUMMARY", None)
    return {**env, **extra}


def _llmcompat(home, axes, *args, **extra):
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "matrix.app.cli", *args],
        capture_output=True,
        text=True,
        env=_env(home, axes, **extra),
        cwd=home,
        timeout=1200,
    )
    assert proc.returncode == 0, f"llmcompat {' '.join(args)}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc


def _script(name, home, axes, **extra):
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["bash", str(SCRIPTS / name)],
        capture_output=True,
        text=True,
        cwd=home,
        env=_env(home, axes, **extra),
        timeout=1200,
    )
    assert proc.returncode == 0, f"{name}: {proc.stdout[-2000:]}{proc.stderr[-3000:]}"
    return proc


def _outputs(path: Path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def _normal(export: dict) -> dict:
    """A store's export less what names the run (ids, times, durations)."""
    cells = sorted((c["key"], c["cell_id"], c["outcome"]) for c in export["cells"])
    findings = sorted(
        (f["fingerprint"], f["kind"], f["status"], tuple(f["cases"]), f["cells"]) for f in export["findings"]
    )
    return {"cells": cells, "findings": findings}


@pytest.mark.slow
def test_the_workflow_sequence_locally_gives_the_single_machine_store_and_page(tmp_path):
    axes = _small_axes(tmp_path)
    one = tmp_path / "one-machine"
    _llmcompat(one, axes, "run", "--no-regress")
    # plan job: sharded matrices of at most two jobs
    plan_home, out = tmp_path / "plan", tmp_path / "plan.out"
    plan_home.mkdir()
    out.write_text("")
    _llmcompat(plan_home, axes, "gha-matrix", "--max-jobs", "2", "--shards", "4", GITHUB_OUTPUT=str(out))
    shards = [json.loads(v) for k, v in sorted(_outputs(out).items()) if k.startswith("shard-")]
    jobs = [j for s in shards for j in s["include"]]
    assert [len(s["include"]) for s in shards if s["include"]] == [2, 1]
    # cell jobs: each on a machine of its own (a fresh state dir), as .github/scripts/run-cell runs it
    incoming = tmp_path / "aggregate" / "incoming"
    incoming.mkdir(parents=True)
    for i, job in enumerate(jobs):
        home = tmp_path / f"cell-{i}"
        _llmcompat(home, axes, "run", "--cell", job["cell"], "--no-page", "--no-regress")
        for f in (home / "results").glob("*.json"):
            shutil.copy(f, incoming / f.name)  # upload-artifact / download-artifact merge-multiple
    # aggregate job, then the page job
    agg = tmp_path / "aggregate"
    out.write_text("")
    _script(
        "aggregate",
        agg,
        axes,
        RUN_ID="gha-1-1",
        GITHUB_OUTPUT=str(out),
        GITHUB_STEP_SUMMARY=str(tmp_path / "summary.md"),
    )
    assert json.loads(_outputs(out)["regress"]) == {"include": []}  # no history: no candidates
    summary = (tmp_path / "summary.md").read_text()
    assert "**3 cells: 3 run, 0 reused**" in summary
    # record (no regress shards to merge), the bot as a dry run, then the page job's script
    _script("record", agg, axes, RUN_ID="gha-1-1")
    bot = _script("bot", agg, axes, DRY_RUN="true", GITHUB_REPOSITORY="llmcompat/llmcompat", GITHUB_TOKEN="")
    assert "Traceback" not in bot.stderr
    final = agg / "stores" / "store-final"
    final.mkdir(parents=True)
    shutil.copy(agg / "store.sqlite", final / "store.sqlite")
    _script("page", agg, axes, LLMCOMPAT_HOME=str(agg / ".llmcompat"))  # builds agg/site
    from reports.store import Store

    with Store(one / "store.sqlite", readonly=True) as a, Store(agg / "store.sqlite", readonly=True) as b:
        single, sharded = _normal(a.export()), _normal(b.export())
        locks = {
            (i, c["cell_id"]): (c["key"][:12], c["lock"], c["facts"][:300])
            for i, s in enumerate((a, b))
            for c in s.cells()
            if (c["key"], c["cell_id"], c["outcome"]) not in set(single["cells"]) & set(sharded["cells"])
        }
    assert single == sharded, locks  # same keys: same locks, probe, suite and model on both sides
    assert len(single["cells"]) == 3
    pages = []
    for site in (one / "site", agg / "site"):
        text = " ".join(
            p.read_text(errors="replace")
            for p in sorted(site.rglob("*"))
            if p.is_file() and p.suffix in {".html", ".json"}
        )
        pages.append(
            ({c for _, c, _ in single["cells"] if c in text}, {f[0] for f in single["findings"] if f[0][:12] in text})
        )
    assert pages[0] == pages[1] and len(pages[0][0]) == 3
