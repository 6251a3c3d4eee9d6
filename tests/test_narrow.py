"""Narrowing a llama-cpp-python release range to the llama.cpp build tag that broke it, for real:
a git repository of llama.cpp whose first commit is the tree vendored by the cached 0.3.8 sdist,
then four tagged commits, one of which breaks greedy decoding (top-k keeps the lowest logits);
a llama-cpp-python-like repository whose tags point their ``vendor/llama.cpp`` gitlink at them.
Each probe builds ``llama-server`` at the commit (content-keyed; one full compile in a persistent
worktree, then incremental rebuilds) and runs the inference stage's ``single-user`` case through
it. A second narrowing compiles nothing. The pipeline wiring is checked over a real store."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot import narrow
from bot.search import Verdict
from matrix.env import builds, gitsrc
from tests import narrow_demo

ROOT = Path(__file__).resolve().parent.parent
T1, T2, NOW = "2026-01-01T00:00:00+00:00", "2026-01-08T00:00:00+00:00", "2026-01-08T12:00:00+00:00"


# --------------------------------------------------------------------------- the pipeline's wiring


def _cell(engine: str) -> str:
    return f"cpu/tiny-qwen2/llama-cpp-python@{engine}/tokenizers@0.1/tpl@1.0/cli@2.0"


def _result(key, cid, outcome):
    parts = cid.split("/")
    choices = {
        axis: {"component": p.partition("@")[0], "version": p.partition("@")[2]}
        for axis, p in zip(("engine", "tokenizer", "template", "client"), parts[2:])
    }
    return {
        "key": key,
        "outcome": outcome,
        "finished": T1,
        "reason": "",
        "cell": {"id": cid, "runner": parts[0], "model": parts[1], "choices": choices},
        "stages": {"inference": {"outcome": outcome}},
        "records": [
            {
                "case": "single-user",
                "stage": "inference",
                "check": "llama-server",
                "outcome": outcome,
                "detail": "" if outcome == "pass" else "ids differ at step 0",
            }
        ],
    }


@pytest.fixture
def store(tmp_path):
    from reports.store import Store

    s = Store(tmp_path / "store.sqlite")
    s.ingest_run({"id": "r1", "started": T1, "finished": T1}, [_result("k-good", _cell("0.3.7"), "pass")], [])
    s.ingest_run({"id": "r2", "started": T2, "finished": T2}, [_result("k-bad", _cell("0.3.9"), "fail")], ["k-good"])
    yield s
    s.close()


def _rerun(cid):
    bad = cid.split("/")[2].endswith(("0.3.8", "0.3.9"))
    return {("single-user", "inference"): "fail" if bad else "pass"}


def test_the_pipeline_stores_why_a_llama_cpp_finding_was_not_narrowed(store, monkeypatch, capsys):
    from bot.regress import regress

    monkeypatch.delenv(gitsrc.ENV_GIT, raising=False)
    # the application layer hands the narrower in (bot.regress does not import bot.narrow)
    report = regress(
        store,
        "r2",
        rerun=_rerun,
        releases=lambda a, c: ["0.3.7", "0.3.8", "0.3.9"],
        now=NOW,
        narrow=narrow.pipeline_narrower,
    )
    (finding,) = report.findings
    assert (finding["last_good"], finding["first_bad"]) == ("0.3.7", "0.3.8")
    rows = store.bisections(finding["fingerprint"])
    assert [r.component for r in rows] == ["llama-cpp-python", "llama.cpp"]
    assert rows[1].status == f"not narrowed: {narrow.NOT_CONFIGURED}"
    assert "llama.cpp narrowing of llama-cpp-python 0.3.7 -> 0.3.8" in capsys.readouterr().err


def test_the_pipeline_stores_the_narrowed_range_beside_the_release_bisection(store):
    from bot.regress import regress

    seen = []

    def narrower(finding, bisection):
        seen.append((finding["case_id"], bisection["last_good"], bisection["first_bad"]))
        return {
            "component": "llama.cpp",
            "versions": ["b1", "b2"],
            "compare_url": "u",
            "repro": "r",
            "probes": [("b1", "good"), ("b2", "bad")],
            "last_good": "b1",
            "first_bad": "b2",
            "status": "found",
            "started": NOW,
            "finished": NOW,
        }

    report = regress(
        store, "r2", rerun=_rerun, releases=lambda a, c: ["0.3.7", "0.3.8", "0.3.9"], now=NOW, narrow=narrower
    )
    assert seen == [("single-user", "0.3.7", "0.3.8")]
    (row,) = [r for r in store.bisections() if r.component == "llama.cpp"]
    assert (row.last_good, row.first_bad, row.compare_url, row.repro) == ("b1", "b2", "u", "r")
    assert report.narrowed[0]["first_bad"] == "b2"
    assert len(store.findings()) == 1


# --------------------------------------------------------------------------- for real: compile and probe


def _tools_or_skip():
    for tool in ("git", "cmake", "cc", "c++"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: cannot build llama-server at llama.cpp commits")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    _tools_or_skip()
    try:
        sdist = builds.sdist("llama-cpp-python", "0.3.8")
    except builds.BuildError as exc:
        pytest.skip(f"no llama-cpp-python 0.3.8 source distribution: {str(exc).splitlines()[0]}")
    base = tmp_path_factory.mktemp("narrow")
    made = narrow_demo.make_demo_repo(base / "llama.cpp", sdist, python_repo=base / "llama-cpp-python")
    return {**made, "git": base / "llama.cpp", "python_git": base / "llama-cpp-python", "sdist": sdist}


def _narrow_once(demo) -> tuple[narrow.NarrowResult, float]:
    repo = gitsrc.open_repo(str(demo["git"]))
    py_repo = gitsrc.open_repo(str(demo["python_git"]))
    probe = narrow.CommitTest(repo, narrow.case_check("single-user", "inference"))
    t = time.perf_counter()
    res = narrow.narrow_releases(repo, "0.3.8", "0.3.9", probe, py_repo=py_repo)
    return res, time.perf_counter() - t


@pytest.mark.slow
def test_narrowing_finds_the_guilty_build_tag_and_a_second_run_compiles_nothing(demo):
    res, seconds = _narrow_once(demo)
    print(narrow.format_result(res))
    for c, v in res.probes:
        n = res.notes[c.commit]
        print(f"  {c}: {v.value} {n.reason!r} build={n.build} probe {n.seconds:.1f}s")
    print(f"first narrowing: {seconds:.1f}s")
    assert res.found, narrow.format_result(res)
    assert (res.last_good.tag, res.first_bad.tag) == ("b5002", "b5003")
    assert res.first_bad.commit == demo["commits"]["b5003"]
    assert [r.how for r in res.releases] == ["submodule", "submodule"]
    assert len(res.probes) <= res.bound == 5
    assert res.compare_url == "https://github.com/ggml-org/llama.cpp/compare/b5002...b5003"
    assert {c.tag: v for c, v in res.probes}["b5000"] is Verdict.GOOD
    assert res.notes[demo["commits"]["b5003"]].reason.startswith("fail")
    if builds.server_built("0.3.8") is not None:  # the vendored tree's sdist build lends its binary
        assert res.notes[demo["commits"]["b5000"]].build["reused"] == "sdist"
    full = [n.build for n in res.notes.values() if n.build.get("reused") is False and not n.build.get("incremental")]
    assert len(full) <= 1, "at most one full compile; the others are incremental"

    again, seconds = _narrow_once(demo)
    print(f"second narrowing: {seconds:.1f}s")
    assert (again.last_good, again.first_bad) == (res.last_good, res.first_bad)
    assert [n.build.get("compiled") for n in again.notes.values()] == [0] * len(again.probes)
    assert all(n.build.get("reused") for n in again.notes.values())


CHECK = r'''
"""Greedy decoding picks the most probable token: run llama-server, compare tokens and top-1."""
import json, os, socket, subprocess, sys, time, urllib.request
exe, gguf = os.environ["LLMCOMPAT_LLAMA_SERVER"], sys.argv[1]
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
srv = subprocess.Popen([exe, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-t", "2", "-c", "256"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if urllib.request.urlopen(url + "/health", timeout=1).status == 200:
                break
        except Exception:
            time.sleep(0.1)
    else:
        sys.exit(125)
    body = {"prompt": [1, 2, 3], "n_predict": 4, "temperature": 0, "top_k": 1, "n_probs": 1, "return_tokens": True,
            "post_sampling_probs": False}
    req = urllib.request.Request(url + "/completion", json.dumps(body).encode(), {"Content-Type": "application/json"})
    resp = json.load(urllib.request.urlopen(req, timeout=60))
    steps = resp.get("completion_probabilities") or []
    if not steps:
        sys.exit(125)
    # each step's sampled token must be its most probable one (steps that are not whole UTF-8 are left out)
    sys.exit(0 if all(p["id"] == p["top_logprobs"][0]["id"] for p in steps) else 1)
finally:
    srv.kill()
'''


@pytest.mark.slow
def test_the_bisect_command_narrows_llama_cpp_with_a_check_script(demo, tmp_path):
    """Runs after the narrowing above: every binary is in the cache, so this costs no compile."""
    from matrix import tinymodel
    from matrix.declare import loader

    model = tinymodel.ensure(arch="qwen2", parts=("tokenizer", "gguf"), reference=loader.load_default().reference)
    check = tmp_path / "check.py"
    check.write_text(CHECK.replace("sys.argv[1]", repr(str(model.path / "model.gguf"))))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "matrix.app.cli",
            "bisect",
            "llama.cpp",
            "b5000..b5004",
            str(check),
            "--git",
            str(demo["git"]),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=3000,
        check=False,
    )
    print(proc.stdout, proc.stderr[-3000:])
    assert proc.returncode == 0
    assert "last good:  b5002" in proc.stdout and "first bad:  b5003" in proc.stdout
    assert "compare:    https://github.com/ggml-org/llama.cpp/compare/b5002...b5003" in proc.stdout
    assert f"reproduce:  llmcompat bisect llama.cpp b5000..b5004 {check} --git {demo['git']}" in proc.stdout
    # no git source: said plainly, exit 2
    proc = subprocess.run(
        [sys.executable, "-m", "matrix.app.cli", "bisect", "llama.cpp", "b5000..b5004", str(check)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        check=False,
    )
    assert proc.returncode == 2 and "no llama.cpp git source configured" in proc.stderr


@pytest.mark.slow
def test_the_pipeline_narrows_through_the_configured_source(demo, monkeypatch):
    """The sdist route maps 0.3.8 to b5000 (its vendored tree, exactly); the regression pipeline's
    step then narrows with LLMCOMPAT_LLAMACPP_GIT and the llama-cpp-python repository (the demo's
    0.3.9 has no sdist, so only its submodule pointer names its commit)."""
    monkeypatch.setenv(gitsrc.ENV_GIT, str(demo["git"]))
    monkeypatch.delenv(gitsrc.ENV_PYTHON_GIT, raising=False)
    repo = gitsrc.open_repo(str(demo["git"]))
    got = gitsrc.release_commit(repo, "0.3.8", "good", sdist=demo["sdist"])
    assert (got.commit, got.how) == (demo["commits"]["b5000"], "sdist tree")
    finding = {
        "component": "llama-cpp-python",
        "case_id": "single-user",
        "stage": "inference",
        "first_bad_cell": _cell("0.3.9"),
        "last_good": "0.3.8",
        "first_bad": "0.3.9",
    }
    bisection = {"status": "found", "last_good": "0.3.8", "first_bad": "0.3.9"}
    row = narrow.pipeline_narrower(finding, bisection, python_source=str(demo["python_git"]))
    assert (row["status"], row["last_good"], row["first_bad"]) == ("found", "b5002", "b5003"), row
    assert all(isinstance(v, str) for v in row["versions"])
    assert row["compare_url"].endswith("/compare/b5002...b5003")
    assert row["repro"] == (
        f"llmcompat bisect llama.cpp b5002..b5003 --case single-user --stage inference "
        f"--model tiny-qwen2 --git {demo['git']} --python-git {demo['python_git']}"
    )
