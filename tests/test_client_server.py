"""The shared client server: every default cell's client stage gets a real OpenAI-compatible
wire (``transformers serve`` on the tiny model), and the cells that use it are keyed by it."""

import json
import sys
import urllib.request
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import or_skip

ROOT = Path(__file__).resolve().parent.parent
PROBE_DIR = ROOT / "matrix" / "probe"
if str(PROBE_DIR) not in sys.path:
    sys.path.insert(0, str(PROBE_DIR))


def _runner():
    from matrix.app.job import Options, prepare
    from matrix.cell.run import CellRunner

    prep = or_skip(prepare, Options())
    return prep, CellRunner(prep.matrix, prep.suites, prep.models)


def test_every_default_cell_wants_the_shared_server_and_is_keyed_by_it():
    from matrix.cell import client_server
    from matrix.env import uv as envs

    prep, runner = _runner()
    assert prep.cells and all(runner.wants_client_server(c) for c in prep.cells)
    assert (
        client_server.requirements(prep.matrix)[0] == f"transformers[serving]=={prep.matrix.reference['transformers']}"
    )
    part = runner.client_server.key_part()
    assert part.startswith("transformers-serve@") and not part.endswith("unresolvable")
    cell = prep.cells[0]
    lock = or_skip(runner.resolve, cell)
    assert isinstance(lock, envs.Lock)
    before = runner.key(cell, lock)
    runner.client_server._resolved = envs.Lock((("transformers", "0"),), "3.11")  # another server environment
    assert runner.key(cell, lock) != before


def test_a_real_server_answers_the_client_stage_in_once_and_stream_modes():
    """The server comes up on the tiny model; the stage's raw-http client (the control) agrees
    with the recorded wire in both modes, and the target facts name the shared server."""
    import probe
    import stage_client

    prep, runner = _runner()
    model = prep.models["tiny-qwen2"]
    try:
        target = runner.client_server.target(model.path)
        assert "base_url" in target, target
        with urllib.request.urlopen(target["base_url"] + "/v1/models", timeout=30) as resp:
            ids = [m["id"] for m in json.loads(resp.read())["data"]]
        assert str(model.path) in ids
        rec = probe.Recorder("check")
        job = {
            "model_dir": str(model.path),
            "client_target": target,
            "clients": ["raw-http"],
            "cases": list(prep.suites["tiny-qwen2"].cases),
            "limits": {"request_seconds": 120},
        }
        stage_client.run(job, rec)
    finally:
        runner.client_server.close()
    client = [r for r in rec.records if r["stage"] == "client"]
    assert {r["check"].split(":")[1] for r in client if r["case"] != "*"} == {"once", "stream"}
    bad = [r for r in client if r["outcome"] != "pass"]
    assert not bad, bad[:3]
    assert rec.facts["client"]["target"]["shared"] == "transformers-serve"
    # the user's path: messages in, the server's own prompt length against the reference prompt's
    assert not any(r["check"].startswith("server:") for r in rec.records)  # the shared server's: facts only
    checks = rec.facts["user_path"]["checks"]
    counted = [r for r in checks if r["check"] == "server:transformers-serve:prompt_tokens"]
    assert len(counted) > 20 and all(r["stage"] == "tokenize" for r in counted)
    assert sum(r["outcome"] == "pass" for r in counted) > len(counted) // 2
    for r in counted:
        if r["outcome"] == "fail":
            assert r["klass"] in ("configuration-default", "double-bos") and "prompt tokens" in r["detail"]
    # defaults as users send them: the greedy text against the reference's generation
    greedy = [r for r in checks if r["check"] == "server:transformers-serve:defaults"]
    assert greedy and all(r["stage"] == "inference" for r in greedy)
    assert any(r["outcome"] == "pass" for r in greedy)  # single-user: the reference's 16 tokens
    for r in greedy:
        if r["outcome"] == "fail":
            assert ("pinning" in r["detail"] and r["klass"] == "configuration-default") or (
                "every parameter it takes pinned" in r["detail"] and r["klass"] == "mismatch"
            )


def test_prompt_lengths_are_judged_by_what_can_be_known():
    import user_path

    assert user_path.judge_count("s", 10, 10, False)[0] == "pass"
    assert user_path.judge_count("s", 11, 10, True)[2] == "double-bos"
    assert user_path.judge_count("s", 11, 10, False)[2] == "configuration-default"  # no BOS in the template
    assert user_path.judge_count("s", 9, 10, True)[2] == "configuration-default"
    assert user_path.judge_count("s", 9, 10, True, ref_bos=True)[2] == "missing-bos"  # the reference ids start with it
    # the reference render sent raw counts as the reference: the server's own template differs
    outcome, detail, klass = user_path.judge_count("s", 11, 10, True, raw=10)
    assert (outcome, klass) == ("fail", "configuration-default") and "own template" in detail
    assert user_path.judge_count("s", 11, 10, True, raw=11)[2] == "double-bos"  # raw gets the extra BOS too
    # longer than the server's context and shorter on the server: cut without an error
    outcome, detail, klass = user_path.judge_count("s", 1696, 15008, False, raw=1696, context=2048)
    assert klass == "truncated" and "2048" in detail
    assert user_path.judge_count("s", 90, 100, False, context=2048)[2] == "configuration-default"  # it fits
    assert not user_path.expressible({"continue_final_message": True, "expect": {"ids": [], "render": ""}})
    assert not user_path.expressible({"add_generation_prompt": False, "expect": {"ids": [], "render": ""}})
    assert user_path.expressible({"expect": {"ids": [1], "render": "x"}})


def test_a_server_that_cannot_start_is_infra_for_the_stage():
    import probe
    import stage_client

    rec = probe.Recorder("check")
    stage_client.run(
        {
            "client_target": {"unavailable": "transformers-serve did not start: boom"},
            "clients": ["raw-http"],
            "cases": [],
        },
        rec,
    )
    assert [(r["outcome"], r["detail"]) for r in rec.records] == [("infra", "transformers-serve did not start: boom")]


def test_agent_checks_judge_the_servers_answer():
    import stage_client as sc

    req = sc.CONSTRAINED_CASES[0]
    assert (
        sc.agent_diffs(
            "tool-required", req, {"tool_calls": [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]}
        )
        == []
    )
    assert "no tool call" in sc.agent_diffs("tool-required", req, {"tool_calls": [], "content": "hi"})[0]
    assert (
        "lack the required ['city']"
        in sc.agent_diffs("tool-required", req, {"tool_calls": [{"name": "get_weather", "arguments": "{}"}]})[0]
    )
    assert "not among the tools offered" in sc.agent_diffs("tool-required", req, {"tool_calls": [{"name": "x"}]})[0]
    cases = {c["id"]: c for c in sc.CONSTRAINED_CASES}
    # the loop's second turn must not reuse the first call's id
    again = {
        "tool_calls": [{"id": sc.PREVIOUS_CALL_ID, "name": "get_time", "arguments": '{"city": "Rome", "h24": true}'}]
    }
    assert "reused" in sc.agent_diffs("tool-required", cases["client-tool-loop"], again)[0]
    # a stop sequence that ends the arguments, and one that ends the answer before any call
    cut = {"tool_calls": [{"name": "get_weather", "arguments": '{"city":"Paris"'}], "finish_reason": "stop"}
    assert "stop sequences ['}']" in sc.agent_diffs("tool-required", cases["client-tool-stop"], cut)[0]
    gone = {"tool_calls": [], "content": '{"name": "get_weather"', "finish_reason": "stop"}
    assert (
        "a stop sequence of ['}'] ended the answer"
        in sc.agent_diffs("tool-required", cases["client-tool-stop"], gone)[0]
    )
    assert (
        "max_tokens ran out" in sc.agent_diffs("tool-required", req, {"content": "...", "finish_reason": "length"})[0]
    )
    # reasoning never reaches content
    leak = {"content": '<think>x</think>{"city": "Rome", "temp_c": 20}'}
    assert "reasoning markup '<think>'" in sc.agent_diffs("json-schema", cases["client-json-schema"], leak)[0]
    # the streamed answer against the non-streamed one: arguments byte for byte
    one = {"tool_calls": [{"name": "get_weather", "arguments": '{"city": "Paris"}'}], "finish_reason": "tool_calls"}
    assert sc.stream_vs_once(one, json.loads(json.dumps(one))) == []
    spaced = {**one, "tool_calls": [{"name": "get_weather", "arguments": '{"city":"Paris"}'}]}
    assert sc.stream_vs_once(one, spaced) == [
        'tool call 0 arguments: answer \'{"city": "Paris"}\', streamed \'{"city":"Paris"}\''
    ]
    schema = next(c for c in sc.CONSTRAINED_CASES if c["agent"] == "json-schema")
    assert sc.agent_diffs("json-schema", schema, {"content": '{"city": "Rome", "temp_c": 20}'}) == []
    assert "not JSON" in sc.agent_diffs("json-schema", schema, {"content": '{"city": "Ro'})[0]
    assert sc.client_cases({"client_constrained": True})[-len(sc.CONSTRAINED_CASES) :] == sc.CONSTRAINED_CASES
    assert not any(c.get("agent") for c in sc.client_cases({}))


def _llama_server(version: str, model):
    """llama.cpp's native server of llama-cpp-python ``version``'s vendored sources (built once) on
    the tiny model's GGUF, with its Jinja templates."""
    import servers
    from matrix.env import builds

    exe = or_skip(builds.llama_server, version)
    cmd = [str(exe), "-m", str(model.path / "model.gguf"), "--jinja", "--host", "{host}", "--port", "{port}"]
    return servers.Server(cmd + ["-c", "2048"], name="llama-server", ready_path="/health", start_timeout=120)


def _stage_on_llama_server(version: str, names: list[str], **job):
    """The client stage against llama-server ``version`` on the tiny model, as the targets
    ``names`` (the first ``client_target``, the rest ``client_targets_more``): its recorder."""
    import probe
    import stage_client

    prep, _ = _runner()
    model = prep.models["tiny-qwen2"]
    rec = probe.Recorder("check")
    with _llama_server(version, model) as srv:
        first, *more = [{"base_url": srv.base_url, "name": n} for n in names]
        base = {"model_dir": str(model.path), "cases": [], "limits": {"request_seconds": 120}}
        stage_client.run({**base, "client_target": first, "client_targets_more": more, **job}, rec)
    return rec


def test_llama_server_grammar_forces_a_tool_call_and_schema_json_and_the_user_path_sees_its_prompt():
    """llama.cpp's native server (0.3.8's vendored sources, built once): tool_choice required and
    response_format json_schema come back as the agent needs them, in once and stream modes where
    the server streams; its /apply-template and /tokenize are compared with the reference prompt."""
    import probe
    import stage_client

    prep, _ = _runner()
    model = prep.models["tiny-qwen2"]
    srv = _llama_server("0.3.8", model)
    rec = probe.Recorder("check")
    with srv:
        job = {
            "model_dir": str(model.path),
            "client_target": {"base_url": srv.base_url, "name": "llama-server"},  # the user path's name for it
            "client_constrained": True,
            "clients": ["raw-http"],
            "cases": list(prep.suites["tiny-qwen2"].cases),
            "limits": {"request_seconds": 120},
        }
        stage_client.run(job, rec)
    agent = {(r["case"], r["check"]): r["outcome"] for r in rec.records if r["check"].endswith(":agent")}
    assert agent[("client-tool-required", "raw-http:once:agent")] == "pass"
    assert agent[("client-json-schema", "raw-http:once:agent")] == "pass"
    assert agent[("client-json-schema", "raw-http:stream:agent")] == "pass"
    applied = [r for r in rec.records if r["check"] == "server:llama-server:apply-template"]
    assert sum(r["outcome"] == "pass" for r in applied) > 10
    typed = next(r for r in applied if r["case"] == "system-typed-content")
    assert typed["outcome"] == "fail" and "first divergence" in typed["detail"]  # joins text parts with "\n"
    counted = {r["case"]: r for r in rec.records if r["check"] == "server:llama-server:prompt_tokens"}
    # the reference render sent raw (/v1/completions) counts as the reference: the template joined the parts
    got, want, raw = rec.facts["user_path"]["counts"]["system-typed-content"]
    assert got != want == raw and "own template" in counted["system-typed-content"]["detail"]
    # a prompt longer than -c 2048: this llama.cpp cuts it without an error (later ones answer HTTP 400)
    assert counted["long-message"]["outcome"] == "fail" and counted["long-message"]["klass"] == "truncated"


def test_forced_tool_call_streams_through_an_sdk_agree_with_the_wire():
    """llama.cpp of llama-cpp-python 0.3.16 streams tool calls: under its grammar the tiny model
    makes a required call, parallel calls and a loop's second call, and the openai SDK's chunks and
    accumulator must give back what the wire carried, byte for byte, as the non-streamed answer
    did. Its stop strings are applied inside the call: a "}" stop cuts the arguments."""
    rec = _stage_on_llama_server(
        "0.3.16", ["llama-server"], client_constrained=True, clients=["raw-http", "openai"], user_path=False
    )
    got = {(r["case"], r["check"]): r for r in rec.records}
    forced = ("client-tool-required", "client-tool-parallel", "client-tool-loop", "client-json-schema")
    for case in forced:
        for client in ("raw-http", "openai"):
            for check in ("once:agent", "stream:agent", "stream:deltas"):
                assert got[(case, f"{client}:{check}")]["outcome"] == "pass", got[(case, f"{client}:{check}")]
        assert got[(case, "openai:stream:accumulator")]["outcome"] == "pass"  # the SDK's own reassembly
        assert got[(case, "server:stream-vs-once")]["outcome"] == "pass"
        assert got[(case, "raw-http:stream:deltas")]["wire_chunks"] > 3  # the call came in pieces
    for mode in ("once", "stream"):
        cut = got[("client-tool-stop", f"openai:{mode}:agent")]
        assert cut["outcome"] == "fail" and "stop sequences ['}']" in cut["detail"], cut


class _Documented:
    """Answers in the shapes vLLM and Ollama document, for the user path's parsing (their servers
    need a GPU or a binary this machine lacks; their live tests are in test_engines_gpu.py)."""

    def __init__(self, answers: dict):
        self.answers = answers
        self.sent: list[tuple[str, dict]] = []

    def __call__(self, path: str, body: dict):
        self.sent.append((path, body))
        return self.answers.get(path, (404, "Not Found"))


def _endpoints(answers: dict, ollama: bool = False):
    import user_path

    ask = user_path.Endpoints("http://127.0.0.1:9", "m", "k", 1.0, ollama=ollama)
    ask.post = _Documented(answers)  # type: ignore[method-assign]
    return ask


def test_the_user_path_reads_vllms_tokenize_with_messages_and_ollamas_raw_prompt():
    import probe
    import user_path

    case = {"id": "c", "messages": [{"role": "user", "content": "hi"}], "expect": {"render": "<s>hi", "ids": [1, 7]}}
    vllm = {
        "/tokenize": (200, {"count": 3, "max_model_len": 2048, "tokens": [1, 1, 7]}),
        "/detokenize": (200, {"prompt": "<s><s>hi"}),
    }
    rec = probe.Recorder("check")
    ask = _endpoints(vllm)
    user_path._own_render(rec, case, ask, "vllm", bos_id=1)
    got = {r["check"]: r for r in rec.records}
    assert got["server:vllm:tokenize"]["klass"] == "double-bos" and got["server:vllm:tokenize"]["bos_count"] == 2
    assert (
        got["server:vllm:detokenize"]["outcome"] == "fail"
        and "first divergence" in got["server:vllm:detokenize"]["detail"]
    )
    assert [p for p, _ in ask.post.sent] == ["/apply-template", "/tokenize", "/detokenize"]
    # an EOS the server appends to its own prompt
    rec = probe.Recorder("check")
    eos = {**vllm, "/tokenize": (200, {"count": 3, "max_model_len": 2048, "tokens": [1, 7, 2]})}
    user_path._own_render(rec, case, _endpoints(eos), "vllm", bos_id=1, eos_id=2)
    assert {r["check"]: r.get("klass") for r in rec.records}["server:vllm:tokenize"] == "eos-added"
    assert ask.post.sent[1][1]["messages"] == case["messages"] and ask.post.sent[1][1]["add_generation_prompt"] is True
    # a /tokenize of plain text only (SGLang, llama-server): refused once, never asked again
    rec = probe.Recorder("check")
    ask = _endpoints({"/tokenize": (422, "prompt: field required")})
    user_path._own_render(rec, case, ask, "sglang", bos_id=1)
    user_path._own_render(rec, case, ask, "sglang", bos_id=1)
    assert rec.records == [] and [p for p, _ in ask.post.sent].count("/tokenize") == 1
    # Ollama's raw prompt: /api/generate with raw, its prompt_eval_count
    ask = _endpoints({"/api/generate": (200, {"prompt_eval_count": 12, "done": True})}, ollama=True)
    assert ask.raw_count("<s>hi") == 12
    assert ask.post.sent[0][1]["raw"] is True and ask.post.sent[0][1]["prompt"] == "<s>hi"
    # elsewhere /v1/completions; a server without it is not asked twice
    ask = _endpoints({})
    assert ask.raw_count("x") is None and ask.raw_count("y") is None
    assert [p for p, _ in ask.post.sent] == ["/v1/completions"]


def test_a_server_that_stops_answering_leaves_the_user_path_skipped_not_crashed():
    import socket

    import probe
    import user_path

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert user_path._post(dead + "/v1/chat/completions", {}, 2, "k")[0] == 0
    case = {"id": "c", "messages": [{"role": "user", "content": "hi"}], "expect": {"render": "hi", "ids": [7]}}
    rec = probe.Recorder("check")
    user_path.run({"cases": [case], "model_dir": "/nonexistent"}, rec, dead, None, "gone", "k", 2)
    assert [(r["check"], r["outcome"]) for r in rec.records] == [("server:gone:prompt_tokens", "skipped")]
    assert "no answer" in rec.records[0]["detail"]


def test_an_api_key_variable_that_is_not_set_is_infra_not_a_dummy_key(monkeypatch):
    import probe
    import stage_client

    monkeypatch.delenv("LLMCOMPAT_TEST_UNSET_KEY", raising=False)
    rec = probe.Recorder("check")
    target = {"base_url": "http://127.0.0.1:9", "api_key_env": "LLMCOMPAT_TEST_UNSET_KEY"}
    stage_client.run({"client_target": target, "clients": ["raw-http"], "cases": []}, rec)
    assert [(r["outcome"], r["detail"]) for r in rec.records] == [
        ("infra", "client_target.api_key_env names 'LLMCOMPAT_TEST_UNSET_KEY', which is not set")
    ]


def test_a_cell_with_two_servers_gives_the_client_stage_both():
    """llama-cpp-python brings its own server and native llama-server: the client stage talks to
    the first and then to the other, whose checks carry its name (only it constrains decoding)."""
    from matrix.app.job import Options, prepare
    from matrix.cell.run import probe_job

    prep = or_skip(prepare, Options(with_components=("engine/llama-cpp-python",), only=("engine/llama-cpp-python",)))
    cell = prep.cells[0]
    job = probe_job(prep.matrix, cell, prep.models[cell.model], prep.suites[cell.model])
    assert job["client_target"] == "llama-cpp-server" and job["client_targets_more"] == ["llama-server"]


def test_further_targets_run_after_the_first_under_their_own_names():
    text = [{"id": "client-text", "messages": [{"role": "user", "content": "Hello!"}]}]
    rec = _stage_on_llama_server("0.3.16", ["first", "native"], client_cases=text, clients=["raw-http"])
    checks = {r["check"] for r in rec.records}
    assert {"raw-http:once:response", "native/raw-http:once:response", "native/raw-http:stream:deltas"} <= checks
    assert all(r["outcome"] == "pass" for r in rec.records), [r for r in rec.records if r["outcome"] != "pass"]
    assert rec.facts["client"]["target"]["name"] == "first"
    assert rec.facts["client"]["targets"]["native"]["client"]["target"]["name"] == "native"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=8, unique=True), st.data())
def test_the_parameter_bisection_finds_exactly_the_pins_the_text_needs(pins, data):
    """Whatever subset of the pins the reference's text needs (all of them give it, none does
    not), :func:`user_path.responsible` names exactly that subset, in the given order, asking one
    question per pin."""
    import user_path

    needed = data.draw(st.sets(st.sampled_from(pins), min_size=1))
    asked = []

    def matches(subset):
        asked.append(subset)
        return needed <= set(subset)

    assert user_path.responsible(pins, matches) == [p for p in pins if p in needed]
    assert len(asked) == len(pins)
