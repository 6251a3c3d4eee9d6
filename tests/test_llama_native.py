"""llama.cpp's native server: the ``llama-server`` renderer (its C++ Jinja engine through
``/apply-template``) and the ``llama-server`` engine (``/completion`` from token ids), first
against a standard-library stub that behaves like the binary (old flags, no endpoint, errors),
then, slow, against the real binary built from llama-cpp-python's vendored llama.cpp."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import or_skip

ROOT = Path(__file__).resolve().parent.parent
PROBE_DIR = ROOT / "matrix" / "probe"
if str(PROBE_DIR) not in sys.path:
    sys.path.insert(0, str(PROBE_DIR))

import engine_registry  # noqa: E402
import engines  # noqa: E402
import probe  # noqa: E402
import stage_template  # noqa: E402

SERVER_VERSION = "0.3.8"
OLD_SERVER_VERSION = "0.2.90"
"""The first llama-cpp-python whose vendored llama.cpp has ``--jinja`` and ``/apply-template``."""

STUB = r"""#!PYTHON
import json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
MODE = "MODE_HERE"
argv = sys.argv[1:]
if MODE == "old-flags" and "--jinja" in argv:
    print("error: invalid argument: --jinja", flush=True)
    sys.exit(1)
opt = lambda name: argv[argv.index(name) + 1] if name in argv else None
template = open(opt("--chat-template-file"), encoding="utf-8").read() if opt("--chat-template-file") else None
with open(os.environ.get("STUB_ARGV", os.devnull), "w") as f:
    json.dump(argv, f)
class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def _send(self, code, doc):
        body = json.dumps(doc).encode()
        self.send_response(code); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_GET(self):
        if self.path == "/health":
            return self._send(200, {"status": "ok"})
        if self.path == "/props":
            return self._send(200, {"build_info": "b0000-stub"})
        self._send(404, {"error": {"code": 404, "message": "File Not Found"}})
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/apply-template" and MODE == "ok":
            if any(m.get("role") == "wizard" for m in req["messages"]):
                return self._send(500, {"error": {"code": 500, "message": "Unknown message role: wizard",
                                                  "type": "server_error"}})
            return self._send(200, {"prompt": template + "|" + json.dumps(req, sort_keys=True)})
        if self.path == "/completion":
            n = req["n_predict"]
            ids = [(req["prompt"][-1] + i) % 100 for i in range(1, n + 1)]
            probs = [{"id": t, "token": "t%d" % t, "logprob": -0.1,
                      "top_logprobs": [{"id": t, "token": "t%d" % t, "logprob": -0.1},
                                       {"id": 99, "token": "x", "logprob": -3.0}]} for t in ids]
            return self._send(200, {"content": "".join("t%d" % t for t in ids), "tokens": ids, "stop_type": "limit",
                                    "completion_probabilities": probs})
        self._send(404, {"error": {"code": 404, "message": "File Not Found"}})
HTTPServer((opt("--host"), int(opt("--port"))), H).serve_forever()
"""


def stub_server(tmp_path: Path, mode: str) -> Path:
    path = tmp_path / f"llama-server-{mode}"
    path.write_text(STUB.replace("PYTHON", sys.executable).replace("MODE_HERE", mode))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def model():
    from matrix import tinymodel
    from matrix.declare import loader

    return tinymodel.ensure(arch="qwen2", parts=("tokenizer", "gguf"), reference=loader.load_default().reference)


@pytest.fixture(scope="module")
def cases():
    from matrix import suites

    suite = suites.load("core")
    return suites.cases_with_goldens(suite, suites.load_goldens(suite, "tiny-qwen2"))


def run_template_stage(job: dict) -> probe.Recorder:
    rec = probe.Recorder("check")
    job = {
        "mode": "check",
        "stages": ["template"],
        "renderers": ["llama-server"],
        "limits": {"render_seconds": 10, "server_start_seconds": 20},
        **job,
    }
    try:
        stage_template.run(job, rec)
    finally:
        stage_template._stop_llama_servers()
    return rec


# --------------------------------------------------------------------------- renderer against the stub


def test_no_binary_no_gguf_old_flags_or_no_endpoint_are_skipped_with_the_reason(tmp_path, model, cases):
    base = {"model_dir": str(model.path), "cases": cases[:2]}
    skipped = {}
    for name, extra in [
        ("no-bin", {}),
        ("missing", {"llama_server_bin": str(tmp_path / "nope")}),
        ("no-gguf", {"llama_server_bin": str(stub_server(tmp_path, "ok")), "gguf_path": str(tmp_path / "none.gguf")}),
        ("old-flags", {"llama_server_bin": str(stub_server(tmp_path, "old-flags"))}),
        ("no-endpoint", {"llama_server_bin": str(stub_server(tmp_path, "no-endpoint"))}),
    ]:
        rec = run_template_stage({**base, **extra})
        assert [(r["case"], r["check"], r["outcome"]) for r in rec.records] == [("*", "llama-server", "skipped")], name
        skipped[name] = rec.records[0]["detail"]
    assert "job['llama_server_bin']" in skipped["no-bin"]
    assert "does not exist" in skipped["missing"]
    assert "GGUF" in skipped["no-gguf"]
    assert "predates --jinja" in skipped["old-flags"]
    assert "no /apply-template endpoint" in skipped["no-endpoint"]


def test_the_renderer_posts_the_case_and_maps_errors_and_unsupported_cases(tmp_path, model, cases, monkeypatch):
    monkeypatch.setenv("STUB_ARGV", str(tmp_path / "argv.json"))
    by_id = {c["id"]: c for c in cases}
    picked = [
        by_id[i]
        for i in (
            "single-user",
            "tools-defined",
            "no-generation-prompt",
            "unknown-role-raises",
            "continue-final-message",
        )
    ]
    rec = run_template_stage(
        {
            "model_dir": str(model.path),
            "cases": picked,
            "template_sources": ["hf", "override"],
            "template_override": str(tmp_path / "t.jinja"),
            "llama_server_bin": str(stub_server(tmp_path, "ok")),
        }
    )
    (tmp_path / "t.jinja").write_text("OVERRIDE")
    out = {(r["case"], r["check"]): r for r in rec.records}
    # hf source: the stub echoes the template it was started with and the body it got
    assert out[("single-user", "llama-server")]["outcome"] == "fail"  # not the golden: the stub's echo
    detail = out[("tools-defined", "llama-server")]["detail"]
    assert out[("tools-defined", "llama-server")]["klass"] == "mismatch" and "first divergence" in detail
    assert out[("unknown-role-raises", "llama-server")]["outcome"] == "pass"  # HTTP 500 carries 'role'
    assert out[("continue-final-message", "llama-server")]["outcome"] == "skipped"
    assert "continue_final_message" in out[("continue-final-message", "llama-server")]["detail"]
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert "--jinja" in argv and argv[argv.index("-m") + 1].endswith("model.gguf")
    # the override file did not exist when the stage ran: that source is skipped, the server never started
    assert out[("*", "override")]["outcome"] == "skipped"
    # no server is left running
    assert stage_template._LLAMA_SERVERS == []


def test_the_renderer_sends_messages_tools_and_generation_prompt(tmp_path, model, cases):
    job = {"model_dir": str(model.path), "llama_server_bin": str(stub_server(tmp_path, "ok")), "limits": {}}
    render = stage_template.llama_server_renderer("TEMPLATE", {}, {}, job)
    try:
        case = next(c for c in cases if c["id"] == "no-generation-prompt")
        template, body = render(case).split("|", 1)
        body = json.loads(body)
        assert template == "TEMPLATE"
        assert body == {"messages": case["messages"], "add_generation_prompt": False}
        case = next(c for c in cases if c["id"] == "tools-defined")
        body = json.loads(render(case).split("|", 1)[1])
        assert body["tools"] == case["tools"] and body["add_generation_prompt"] is True
        with pytest.raises(stage_template.ServerTemplateError, match="Unknown message role"):
            render({"messages": [{"role": "wizard", "content": "x"}]})
        klass, _ = stage_template.classify(stage_template.ServerTemplateError("HTTP 500: x"))
        assert klass == "template-error"
    finally:
        srv = stage_template._LLAMA_SERVERS[0]
        stage_template._stop_llama_servers()
    assert not srv.alive()


def test_a_killed_probe_leaves_no_llama_server_behind(tmp_path, model):
    """The server is started through a parent-death wrapper: SIGKILL of the probe kills it too."""
    stub = stub_server(tmp_path, "ok")
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[1]); import stage_template as st\n"
        "st.llama_server_renderer('T', {}, {}, {'model_dir': sys.argv[2], 'llama_server_bin': sys.argv[3]})\n"
        "print(st._LLAMA_SERVERS[0].proc.pid, flush=True); time.sleep(60)\n"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(PROBE_DIR), str(model.path), str(stub)], stdout=subprocess.PIPE, text=True
    )
    pid = int(p.stdout.readline())
    os.kill(pid, 0)  # running
    p.kill()
    p.wait(10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        try:  # reap it if it became our grandchild's zombie (it is not our child: nothing to reap)
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                break
        except OSError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        pytest.fail("the llama-server outlived the killed probe")


# --------------------------------------------------------------------------- engine against the stub


def test_the_engine_generates_from_ids_with_top_k_and_is_skipped_without_a_binary(tmp_path, model):
    job = {"model_dir": str(model.path), "limits": {"server_start_seconds": 20}}
    with pytest.raises(engines.EngineUnavailable, match="llama_server_bin"):
        engine_registry.make("llama-server", job).start()
    eng = engine_registry.make(
        {"name": "llama-server", "parallel": 2}, {**job, "llama_server_bin": str(stub_server(tmp_path, "ok"))}
    )
    try:
        eng.start()
        gen = eng.generate({"id": "x", "prompt_ids": [1, 2, 3], "max_new_tokens": 3})
        assert (gen.tokens, gen.by, gen.finish_reason, gen.text) == ([4, 5, 6], "ids", "length", "t4t5t6")
        assert gen.topk[0] == [[4, -0.1], [99, -3.0]]
        many = eng.generate_many([{"id": "x", "prompt_ids": [1, 2, 3], "max_new_tokens": 3}] * 3)
        assert all(g.tokens == gen.tokens for g in many)
        facts = eng.facts()
        assert facts["build"] == "b0000-stub" and "-np 2" in facts["command"] and facts["prompt_kind"] == "ids"
    finally:
        eng.close()


def test_an_older_servers_probability_shape_compares_by_pieces():
    eng = engines.LlamaServerEngine({"model_dir": "/nonexistent"})
    gen = eng._parse_native(
        {
            "content": "ab",
            "stopped_limit": True,
            "completion_probabilities": [
                {"content": "a", "probs": [{"tok_str": "a", "prob": 0.5}, {"tok_str": "b", "prob": 0.25}]},
                {"content": "b", "probs": [{"tok_str": "b", "prob": 1.0}]},
            ],
        }
    )
    assert (gen.by, gen.tokens, gen.finish_reason) == ("pieces", ["a", "b"], "length")
    assert gen.topk[0] == [["a", -0.69315], ["b", -1.38629]]


def test_steps_an_older_server_leaves_out_are_put_back_only_where_the_reference_has_partial_utf8():
    from stage_inference import compare, piece_eq, realign_pieces

    # seen with the real 0.2.90-vendored server: 16 tokens predicted, 11 probability entries
    ref = [" an", "\ufffd", "\ufffd", "ent", "cl", "\ufffd", " I"]
    got, k = realign_pieces(ref, [" an", "ent", "cl", " I"], [[[" an", 0.0]], [], [], []], omitted=3)
    assert got == [" an", "", "", "ent", "cl", "", " I"] and k[0] == [[" an", 0.0]] and len(k) == len(got)
    assert compare(ref, [], got, k, piece_eq)["match"] == "exact"
    # a real divergence still shows at its step, and nothing is put back beyond ``omitted``
    got, _ = realign_pieces(ref, [" an", "XX", "cl", " I"], [], omitted=3)
    assert compare(ref, [], got, [], piece_eq)["step"] is not None
    assert realign_pieces(ref, [" an", "ent"], [], omitted=1)[0][:2] == [" an", "ent"]
    # the trailing run: the engine stopped right after its last whole piece
    assert realign_pieces(["a", "\ufffd"], ["a"], [], omitted=1)[0] == ["a", ""]


# --------------------------------------------------------------------------- the real binary (slow)


def _run_probe(job: dict, tmp_path: Path) -> dict:
    """The probe as run.py runs it (-I, offline), in this interpreter (the renderer and engine
    need only the standard library and the binary; jinja2 is here for the reference)."""
    from matrix.cell.run import OFFLINE_ENV, PASSED_ENV

    job_path, out = tmp_path / "job.json", tmp_path / "out.json"
    job_path.write_text(json.dumps(job, ensure_ascii=False), encoding="utf-8")
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import probe; "
        "probe.STAGE_MODULES.setdefault('inference', 'stage_inference'); sys.exit(probe.main(sys.argv[2:]))"
    )
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ} | OFFLINE_ENV
    proc = subprocess.run(
        [sys.executable, "-I", "-c", code, str(PROBE_DIR), str(job_path), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0 and out.is_file(), proc.stderr[-3000:]
    return json.loads(out.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def llama_server_bin():
    from matrix.env import builds

    t = time.perf_counter()
    exe = or_skip(builds.llama_server, SERVER_VERSION)
    print(
        f"builds.llama_server({SERVER_VERSION}): {time.perf_counter() - t:.1f}s "
        f"(build recorded {builds.info(exe.parent)['seconds']}s)"
    )
    return exe


LLAMA_SERVER_DISAGREES = {
    # tool-call arguments as a JSON object (not OpenAI's JSON-encoded string): the server refuses
    # the conversation, HTTP 500 "type must be string, but is object"
    "cap-object-arguments",
    "cap-parallel-tool-calls",
    "cap-tool-calls",
    "cap-tool-results",
    "parallel-tool-calls",
    "parallel-tool-calls-mixed-arguments",
    "reasoning-kept-across-tool-turns",
    "tool-call-and-result",
    "tool-call-content-null",
    "tool-call-nested-arguments",
    "tool-results-then-answer",
    # a tool call without {"type": "function", "function": ...}: "Missing tool call type"
    "tool-call-without-function-wrapper",
    # typed content parts reach the template as one string, parts joined with "\n"
    "cap-typed-content",
    "system-typed-content",
    "typed-content-multi-part",
    # no reasoning aliasing (reasoning / thinking -> reasoning_content): the thought is dropped
    "reasoning-field-alias",
}
"""Cases where llama.cpp 0.3.8-vendored's server (its message parsing, then its C++ Jinja engine)
renders the tiny model's template differently from the reference: real findings."""


@pytest.mark.slow
def test_llama_server_renders_through_apply_template_and_generates_from_ids(llama_server_bin, tmp_path, cases):
    from matrix import tinymodel
    from matrix.declare import loader

    model = tinymodel.ensure(
        arch="qwen2", parts=("tokenizer", "weights", "gguf"), reference=loader.load_default().reference
    )
    job = {
        "mode": "check",
        "model_dir": str(model.path),
        "stages": ["template", "inference"],
        "template_sources": ["hf", "gguf"],
        "renderers": ["llama-server"],
        "cases": cases,
        "llama_server_bin": str(llama_server_bin),
        "engines": ["llama-server"],
        "gen_cases": [{"id": "single-user"}],
        "concurrency": 2,
        "concurrency_cases": 1,
        "limits": {"render_seconds": 10, "render_chars": 1_000_000},
    }
    result = _run_probe(job, tmp_path)
    tmpl = {(r["case"], r["check"]): r for r in result["records"] if r["stage"] == "template"}
    outcome = {c: r["outcome"] for (c, chk), r in tmpl.items() if chk == "llama-server"}
    assert len(outcome) == len(cases), sorted(tmpl)
    failed = {c for c, o in outcome.items() if o == "fail"}
    print("llama-server /apply-template disagrees with the reference on:", sorted(failed))
    for c in sorted(failed):
        print(
            f"  {c}: {tmpl[(c, 'llama-server')].get('klass')}: "
            f"{tmpl[(c, 'llama-server')]['detail'].split('; messages =')[0][:220]!r}"
        )
    assert {c for c, o in outcome.items() if o == "skipped"} == {
        c["id"] for c in cases if c.get("continue_final_message")
    }
    assert failed == LLAMA_SERVER_DISAGREES
    gguf = {c: r["outcome"] for (c, chk), r in tmpl.items() if chk == "gguf/llama-server"}
    assert gguf == outcome
    # inference: the native server from the golden ids, against the transformers goldens
    inf = {(r["case"], r["check"]): r for r in result["records"] if r["stage"] == "inference"}
    one = inf[("single-user", "llama-server")]
    facts = result["facts"]["inference"]["llama-server"]
    print("llama-server inference:", one["outcome"], one.get("level"), one["detail"][:200], facts.get("build"))
    assert one["outcome"] == "pass" and one["level"] in ("L0", "L1", "L2") and one["compared_by"] == "ids"
    assert inf[("single-user", "llama-server:determinism")]["outcome"] == "pass"
    assert inf[("single-user", "llama-server:concurrency")]["outcome"] == "pass"


def test_steps_the_server_leaves_out_of_completion_probabilities_align_to_the_tokens():
    """Seen with the real 0.3.8-vendored server: a token whose text is not whole UTF-8 has no
    entry in ``completion_probabilities``; ``tokens`` is the generation, such a step has no top-k."""
    eng = engines.LlamaServerEngine({"model_dir": "/nonexistent"})
    entry = lambda t: {"id": t, "token": "x", "logprob": -0.5, "top_logprobs": [{"id": t, "logprob": -0.5}]}  # noqa: E731
    gen = eng._parse_native(
        {"content": "..", "tokens": [7, 8, 9], "stop_type": "limit", "completion_probabilities": [entry(7), entry(9)]}
    )
    assert (gen.tokens, gen.topk) == ([7, 8, 9], [[[7, -0.5]], [], [[9, -0.5]]])
    assert eng.facts()["steps_without_probs"] == 1
    with pytest.raises(engines.ProtocolError, match="not a subsequence"):
        eng._parse_native({"tokens": [7, 8], "completion_probabilities": [entry(8), entry(7)]})


@pytest.mark.slow
def test_an_older_server_generates_the_reference_tokens_through_its_piece_shape(tmp_path, cases):
    """llama.cpp vendored by llama-cpp-python 0.2.90: its /completion gives pieces with
    post-sampling probabilities and no entry for a token that is not whole UTF-8. Aligned, the
    tiny model's greedy generations are the reference's (L0), not a divergence at step 3."""
    from matrix import tinymodel
    from matrix.declare import loader
    from matrix.env import builds

    exe = or_skip(builds.llama_server, OLD_SERVER_VERSION)
    model = tinymodel.ensure(
        arch="qwen2", parts=("tokenizer", "weights", "gguf"), reference=loader.load_default().reference
    )
    gen = ["single-user", "multi-turn", "non-ascii"]
    job = {
        "mode": "check",
        "model_dir": str(model.path),
        "stages": ["inference"],
        "cases": cases,
        "llama_server_bin": str(exe),
        "engines": ["llama-server"],
        "gen_cases": [{"id": i} for i in gen],
        "concurrency": 1,
        "concurrency_cases": 0,
    }
    result = _run_probe(job, tmp_path)
    facts = result["facts"]["inference"]["llama-server"]
    assert facts["logprobs"].startswith("older server") and facts["steps_without_probs"] > 0
    inf = {r["case"]: r for r in result["records"] if r["check"] == "llama-server"}
    assert {c: (r["outcome"], r["level"], r["compared_by"]) for c, r in inf.items()} == {
        c: ("pass", "L0", "pieces") for c in gen
    }
