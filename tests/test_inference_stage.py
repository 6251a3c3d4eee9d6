"""The inference stage: the comparison rule in-process; servers against a stdlib stub; and the probe
for real on the tiny model (transformers golden then check; llama.cpp in-process and server, slow).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

PROBE_DIR = Path(__file__).resolve().parent.parent / "matrix" / "probe"
sys.path.insert(0, str(PROBE_DIR))

import engine_registry  # noqa: E402
import engines  # noqa: E402  (probe-side modules: standard library only)
import servers  # noqa: E402
import stage_inference as si  # noqa: E402
from probe import Recorder  # noqa: E402

CASE_IDS = ("single-user", "system-prompt", "multi-turn")


def topk(*pairs):
    return [list(p) for p in pairs]


def gen(tokens, steps, text=None, by="ids", finish=None):
    return engines.Generation(list(tokens), steps, text=text, by=by, finish_reason=finish)


REF = {
    "ids": [5, 6, 7],
    "text": "abc",
    "pieces": ["a", "b", "c"],
    "topk": [topk((5, -0.1), (9, -2.5)), topk((6, -0.2), (8, -1.9)), topk((7, -0.3), (1, -3.0))],
    "topk_pieces": [["a", "x"], ["b", "y"], ["c", "z"]],
}


# --------------------------------------------------------------------------- comparison (pure)


def test_identical_tokens_and_text_are_L0_identical_tokens_only_L1():
    j = si.judge(REF, gen([5, 6, 7], REF["topk"], text="abc"))
    assert (j["outcome"], j["level"], j["step"]) == ("pass", "L0", None)
    j = si.judge(REF, gen([5, 6, 7], REF["topk"], text="ab"))
    assert (j["outcome"], j["level"]) == ("pass", "L1") and "text differs" in j["detail"]
    assert si.judge(REF, gen([5, 6, 7], REF["topk"]))["level"] == "L1"  # text unobserved


def test_divergence_inside_both_top_k_is_L2_and_names_the_step():
    j = si.judge(REF, gen([5, 8, 4], [REF["topk"][0], topk((8, -0.15), (6, -0.3)), []]))
    assert (j["outcome"], j["level"], j["step"]) == ("pass", "L2", 1)
    assert "first divergence at step 1" in j["detail"]


def test_divergence_beyond_top_k_fails_numerical():
    # the engine's token is not in the reference top-k
    j = si.judge(REF, gen([5, 3, 7], [REF["topk"][0], topk((3, -0.1), (6, -0.4)), []]))
    assert (j["outcome"], j["klass"], j["level"], j["step"]) == ("fail", "numerical", None, 1)
    assert "NOT in the reference top-2" in j["detail"]
    # the reference token is not in the engine's top-k
    j = si.judge(REF, gen([5, 8, 7], [REF["topk"][0], topk((8, -0.1), (2, -0.4)), []]))
    assert j["klass"] == "numerical" and "reference token NOT in the engine top-2" in j["detail"]


def test_a_required_level_turns_L2_into_a_failure():
    j = si.judge(REF, gen([5, 8, 4], [REF["topk"][0], topk((8, -0.15), (6, -0.3)), []]), min_level="L1")
    assert (j["outcome"], j["klass"], j["level"]) == ("fail", "numerical", "L2")


def test_pieces_compare_where_ids_are_unobservable_and_partial_utf8_matches_anything():
    j = si.judge(REF, gen(["a", "", "c"], [topk(("a", -0.1)), [], []], by="pieces", text="ac"))
    assert (j["outcome"], j["level"], j["compared_by"]) == ("pass", "L1", "pieces")
    j = si.judge(REF, gen(["a", "y", "q"], [topk(("a", -0.1)), topk(("y", -0.1), ("b", -0.2)), []], by="pieces"))
    assert (j["level"], j["step"]) == ("L2", 1)


def test_stopping_at_eos_is_a_pass_stopping_elsewhere_is_backend_specific():
    ref = dict(REF, ids=[5, 6, 99])
    ok = si.judge(ref, gen([5, 6], REF["topk"][:2], finish="stop"), eos_ids=[99])
    assert (ok["outcome"], ok["level"]) == ("pass", "L1")
    bad = si.judge(REF, gen([5, 6], REF["topk"][:2], finish="stop"), eos_ids=[99])
    assert (bad["outcome"], bad["klass"]) == ("fail", "backend-specific")
    longer = si.judge(REF, gen([5, 6, 7, 8], REF["topk"] + [[]]))
    assert longer["klass"] == "protocol"


def test_without_logprobs_only_the_text_compares():
    assert si.judge(REF, gen([], [], text="abc", by="text"))["level"] == "L0"
    stripped = si.judge(dict(REF, text=" abc"), gen([], [], text="abc", by="text"))
    assert (stripped["outcome"], stripped["klass"]) == ("fail", "backend-specific")
    assert si.judge(REF, gen([], [], text="abd", by="text"))["klass"] == "numerical"


def test_worst_level():
    assert si.worst_level(["L0", "L2", "L1"]) == "L2"
    assert si.worst_level(["L0", None]) is None and si.worst_level([]) is None


# --------------------------------------------------------------------------- servers (stdlib stub)

STUB = r"""
import json, sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
calls = {"n": 0}
lock = threading.Lock()
class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        sys.stderr.write("stub: " + (a[0] % a[1:]) + "\n")
    def _send(self, code, doc):
        body = json.dumps(doc).encode()
        self.send_response(code); self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def do_GET(self):
        self._send(200, {"data": [{"id": "stub-model"}]})
    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if not isinstance(req["prompt"], str):
            return self._send(422, {"error": "prompt must be text"})
        with lock:
            calls["n"] += 1
            n = calls["n"]
        ids = [5, 6, 7] if (MODE != "flaky" or n % 3) else [5, 6, 9]
        toks = ["token_id:%d" % i for i in ids]
        tops = [{"token_id:%d" % i: -0.1, "token_id:8": -2.0} for i in ids]
        self._send(200, {"choices": [{"text": "abc", "finish_reason": "length",
                                      "logprobs": {"tokens": toks, "top_logprobs": tops}}]})
MODE = sys.argv[2]
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def stub_cmd(tmp_path, mode="steady"):
    script = tmp_path / "stub.py"
    script.write_text(STUB)
    return [sys.executable, str(script), "{port}", mode]


def test_server_start_failure_carries_the_log_tail(tmp_path):
    srv = servers.Server(
        [sys.executable, "-c", "print('no model here', flush=True); raise SystemExit(3)"],
        name="broken",
        start_timeout=10,
    )
    with pytest.raises(servers.ServerStartError) as err:
        srv.start()
    assert "exited with 3" in str(err.value) and "no model here" in err.value.log_tail
    assert srv.proc is None  # torn down


def test_server_not_ready_in_time_is_torn_down(tmp_path):
    srv = servers.Server([sys.executable, "-c", "import time; time.sleep(60)"], name="silent", start_timeout=1)
    t = time.monotonic()
    with pytest.raises(servers.ServerStartError, match="not ready after"):
        srv.start()
    assert time.monotonic() - t < 15 and srv.proc is None


class _StubEngine(engines.ServerEngine):
    name = "stub-server"

    def __init__(self, job, options=None, cmd=None):
        super().__init__(job, options)
        self._cmd = cmd

    def command(self):
        return self._cmd


def _stub_run(tmp_path, mode):
    job = {"mode": "check", "model_dir": str(tmp_path), "concurrency": 4, "concurrency_cases": 1}
    eng = _StubEngine(job, {}, stub_cmd(tmp_path, mode))
    case = {
        "id": "c1",
        "prompt_ids": [1, 2],
        "prompt_text": "hi",
        "max_new_tokens": 3,
        "sampling": dict(engines.DEFAULT_SAMPLING),
        "expect": {"gen": REF},
    }
    rec = Recorder("check")
    facts: dict = {}
    orig = engine_registry.make
    engine_registry.make = lambda spec, job: eng
    try:
        si.run_engine("stub-server", job, [case], rec, facts)
    finally:
        engine_registry.make = orig
    assert eng.srv.proc is None  # stopped in `finally`
    return {r["check"]: r for r in rec.records}, facts["stub-server"]


def test_server_engine_falls_back_to_text_and_checks_concurrency(tmp_path):
    recs, facts = _stub_run(tmp_path, "steady")
    assert recs["stub-server"]["outcome"] == "pass" and recs["stub-server"]["level"] == "L0"
    assert recs["stub-server"]["prompt_kind"] == "text" and "HTTP 422" in facts["prompt_ids_refused"]
    assert recs["stub-server:determinism"]["outcome"] == "pass"
    assert recs["stub-server:concurrency"]["outcome"] == "pass"


def test_a_server_that_answers_differently_under_load_fails_concurrency_or_determinism(tmp_path):
    recs, _ = _stub_run(tmp_path, "flaky")  # every third request differs at its last token
    klasses = {r["klass"] for r in recs.values() if r["outcome"] == "fail"}
    assert klasses & {"determinism", "concurrency"}, recs


def test_unknown_and_missing_engines_are_skipped_without_hiding_other_results(tmp_path):
    rec = Recorder("check")
    job = {
        "mode": "check",
        "model_dir": str(tmp_path),
        "engines": ["no-such-engine"],
        "gen_cases": [{"id": "c1", "prompt_ids": [1]}],
    }
    si.run(job, rec)
    (r,) = rec.records
    assert r["outcome"] == "skipped" and "unknown engine" in r["detail"]
    assert "no-such-engine" in rec.facts["inference"]


# --------------------------------------------------------------------------- the probe for real


def run_probe(python: Path, job: dict, tmp_path: Path) -> dict:
    from tests.conftest import probe_result

    return probe_result(python, job)


@pytest.fixture(scope="module")
def goldens(model, reference_python, tmp_path_factory):
    """Golden mode as the reference path runs it: template and tokenize produce the prompt,
    inference (transformers) the generation from it."""
    from tests.conftest import golden_job

    cases, job = golden_job(model, CASE_IDS)
    result = run_probe(reference_python, job, tmp_path_factory.mktemp("golden"))
    cases = [dict(c, expect=result["produced"][c["id"]]) for c in cases]
    return result, cases


def test_golden_mode_records_ids_and_top_k_per_step(goldens):
    result, cases = goldens
    assert result["stages"]["inference"]["outcome"] == "pass", result["records"]
    for c in cases:
        g = c["expect"]["gen"]
        assert g["engine"] == "transformers" and len(g["ids"]) == 16 and len(g["topk"]) == 16
        assert all(len(step) == 5 and step[0][0] == tok for step, tok in zip(g["topk"], g["ids"]))
        assert g["sampling"]["temperature"] == 0 and g["max_new_tokens"] == 16
    facts = result["facts"]["inference"]["transformers"]
    assert facts["dtype"] == "float32" and facts["device"] == "cpu" and facts["deterministic_algorithms"]


def test_transformers_against_its_own_goldens_is_L1_or_better(goldens, reference_python, tmp_path, model):
    _, cases = goldens
    job = {
        "mode": "check",
        "model_dir": str(model.path),
        "stages": ["inference"],
        "cases": cases,
        "gen_cases": [{"id": i} for i in CASE_IDS],
        "engines": ["transformers", "llama-cpp-python"],
        "inference_min_level": "L1",
    }
    t = time.perf_counter()
    result = run_probe(reference_python, job, tmp_path)
    print(f"transformers check: {time.perf_counter() - t:.1f}s")
    assert result["stages"]["inference"]["outcome"] == "pass", result["records"]
    facts = result["facts"]["inference"]
    assert facts["transformers"]["level"] in ("L0", "L1") and facts["transformers"]["first_divergence"] == []
    assert "not installed" in facts["llama-cpp-python"]["skipped"]  # a fact; the stage still passes
    checks = {(r["case"], r["check"]): r["outcome"] for r in result["records"]}
    assert all(checks[(i, "transformers:determinism")] == "pass" for i in CASE_IDS)


@pytest.fixture(scope="module")
def llama_python():
    from tests.conftest import llama_env

    return llama_env()


@pytest.mark.slow
def test_llama_cpp_in_process_and_server_against_the_transformers_goldens(goldens, llama_python, tmp_path, model):
    _, cases = goldens
    job = {
        "mode": "check",
        "model_dir": str(model.path),
        "stages": ["inference"],
        "cases": cases,
        "gen_cases": [{"id": i} for i in CASE_IDS],
        "engines": ["llama-cpp-python", "llama-cpp-server"],
        "concurrency": 4,
        "concurrency_cases": 1,
    }
    result = run_probe(llama_python, job, tmp_path)
    assert result["stages"]["inference"]["outcome"] == "pass", result["records"]
    facts = result["facts"]["inference"]
    # the tiny model in float32: llama.cpp picks the same greedy tokens as transformers
    assert facts["llama-cpp-python"]["level"] in ("L0", "L1")
    assert facts["llama-cpp-server"]["level"] in ("L0", "L1", "L2")
    assert facts["llama-cpp-server"]["prompt_kind"] == "text"  # 0.2.x's server refuses token-id prompts
    checks = {(r["case"], r["check"]): r["outcome"] for r in result["records"]}
    assert checks[(CASE_IDS[0], "llama-cpp-server:concurrency")] == "pass"
