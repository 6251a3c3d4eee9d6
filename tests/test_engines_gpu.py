"""vLLM, SGLang and Ollama adapters (matrix/probe/engines_gpu.py).

Here: what is pure (command lines from a job, request bodies, parsing of answers in the shapes
the projects document into Generations, the reasons an engine is unavailable, planning). Where
the runtime is present: each engine for real on the tiny model through the probe, against
transformers goldens made in golden mode (vLLM and SGLang need an NVIDIA GPU: marked ``gpu``,
skipped with the reason elsewhere; Ollama needs its binary: skipped with the reason without one).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import or_skip

PROBE_DIR = Path(__file__).resolve().parent.parent / "matrix" / "probe"
sys.path.insert(0, str(PROBE_DIR))

import engine_registry  # noqa: E402
import engines  # noqa: E402  (probe-side modules: standard library only)
import engines_gpu as eg  # noqa: E402
import servers  # noqa: E402
import stage_inference as si  # noqa: E402
from probe import Recorder  # noqa: E402

CASE_IDS = ("single-user", "system-prompt", "multi-turn")
VERSIONS = {"vllm": "0.33.0", "sglang": "0.5.23"}
JOB = {"model_dir": "/models/tiny", "_n_ctx": 512, "gguf_path": "/models/tiny/model.gguf"}
CASE = {
    "id": "c1",
    "prompt_ids": [11, 12, 13, 14],
    "prompt_text": "<|im_start|>user\nhi<|im_end|>\n",
    "max_new_tokens": 3,
    "sampling": dict(engines.DEFAULT_SAMPLING),
}


def _flag(cmd: list[str], name: str) -> str:
    assert name in cmd, f"{name} missing from {cmd}"
    return cmd[cmd.index(name) + 1]


# --------------------------------------------------------------------------- registry


def test_the_three_adapters_are_registered_servers_without_clashes():
    assert set(eg.ADAPTERS) == {"vllm", "sglang", "ollama"}
    for name, cls in eg.ADAPTERS.items():
        assert engine_registry.ENGINES[name] is cls and cls.name == name
        assert issubclass(cls, engines.ServerEngine) and cls.server
        assert isinstance(engine_registry.make(name, dict(JOB)), cls)
    with pytest.raises(ValueError, match="'vllm' is registered twice"):  # never replaces a registered name
        engine_registry.build(eg.ADAPTERS, {"vllm": engines.Engine})
    assert {"vllm", "sglang", "ollama"} <= set(
        __import__("matrix.cell.run", fromlist=["SERVER_ENGINES"]).SERVER_ENGINES
    )


# --------------------------------------------------------------------------- vLLM


def test_vllm_command_pins_precision_seed_eager_generation_config_and_logprobs():
    eng = engine_registry.make({"name": "vllm", "seed": 7}, dict(JOB))
    cmd = eng.command()
    assert cmd[:3] == [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    assert _flag(cmd, "--model") == "/models/tiny"
    assert (_flag(cmd, "--host"), _flag(cmd, "--port")) == ("{host}", "{port}")
    assert _flag(cmd, "--dtype") == "float32" and _flag(cmd, "--seed") == "7"
    assert _flag(cmd, "--generation-config") == "vllm"  # the model's generation_config.json sets no defaults
    assert _flag(cmd, "--logprobs-mode") == "raw_logprobs" and int(_flag(cmd, "--max-logprobs")) >= 5
    assert _flag(cmd, "--max-model-len") == "512"  # the stage's context
    assert {"--enforce-eager", "--return-tokens-as-token-ids"} <= set(cmd)
    # the server fills in a free loopback port
    srv = servers.Server(cmd, name="vllm")
    assert _flag(srv.cmd, "--host") == "127.0.0.1" and int(_flag(srv.cmd, "--port")) == srv.port > 0
    older = engine_registry.make(
        {"name": "vllm", "logprobs_mode": None, "dtype": "bfloat16", "extra_args": ["--x", 1]}, dict(JOB)
    ).command()
    assert "--logprobs-mode" not in older and _flag(older, "--dtype") == "bfloat16" and older[-2:] == ["--x", "1"]


def test_vllm_request_gives_the_golden_ids_greedy_with_top_k_logprobs():
    eng = engine_registry.make("vllm", dict(JOB))
    eng.model_name = eg.SERVED_NAME
    body = eng.body(CASE, "ids")
    assert body["prompt"] == [11, 12, 13, 14] and body["model"] == eg.SERVED_NAME
    assert body["logprobs"] == 5 and body["max_tokens"] == 3
    assert (body["temperature"], body["top_k"], body["top_p"], body["min_p"]) == (0.0, 1, 1.0, 0.0)
    assert body["repetition_penalty"] == 1.0 and body["seed"] == 0
    assert body["ignore_eos"] is True and body["skip_special_tokens"] is False
    assert body["return_tokens_as_token_ids"] is True and body["stream"] is False
    assert eng.prompt_mode == "ids"  # never retried as text: the comparison starts from the same ids


# The completions answer as vLLM's OpenAI-compatible server documents it (OpenAI Completions shape:
# choices[].logprobs = {tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}),
# with --return-tokens-as-token-ids: tokens are spelled "token_id:N".
VLLM_ANSWER = {
    "id": "cmpl-3f1c",
    "object": "text_completion",
    "created": 1767000000,
    "model": "llmcompat-tiny",
    "choices": [
        {
            "index": 0,
            "text": "abc",
            "finish_reason": "length",
            "stop_reason": None,
            "logprobs": {
                "text_offset": [0, 1, 2],
                "token_logprobs": [-0.1, -0.25, -0.5],
                "tokens": ["token_id:5", "token_id:6", "token_id:7"],
                "top_logprobs": [
                    {
                        "token_id:5": -0.1,
                        "token_id:9": -2.5,
                        "token_id:3": -3.0,
                        "token_id:1": -4.0,
                        "token_id:2": -4.5,
                        "token_id:4": -5.0,
                    },
                    {"token_id:6": -0.25, "token_id:8": -1.9},
                    {"token_id:1": -3.0, "token_id:7": -0.5},
                ],
            },
        }
    ],
    "usage": {"prompt_tokens": 4, "total_tokens": 7, "completion_tokens": 3},
}


def test_vllm_answer_parses_into_ids_with_top_k_best_first():
    gen = engine_registry.make("vllm", dict(JOB))._parse(json.loads(json.dumps(VLLM_ANSWER)), "ids")
    assert (gen.by, gen.tokens, gen.text, gen.finish_reason) == ("ids", [5, 6, 7], "abc", "length")
    assert gen.topk[0] == [[5, -0.1], [9, -2.5], [3, -3.0], [1, -4.0], [2, -4.5]]  # k = 5 of 6
    assert gen.topk[2] == [[7, -0.5], [1, -3.0]]  # sorted, not in answer order
    # and the stage judges it against a golden like any other engine
    ref = {"ids": [5, 6, 7], "text": "abc", "topk": gen.topk}
    assert si.judge(ref, gen)["level"] == "L0"
    # without the flag the server spells tokens as text: compared as pieces
    plain = json.loads(json.dumps(VLLM_ANSWER))
    plain["choices"][0]["logprobs"]["tokens"] = ["a", "b", "c"]
    plain["choices"][0]["logprobs"]["top_logprobs"] = [{"a": -0.1}, {"b": -0.2}, {"c": -0.3}]
    assert engine_registry.make("vllm", dict(JOB))._parse(plain, "ids").by == "pieces"


# --------------------------------------------------------------------------- SGLang


def test_sglang_command_pins_precision_seed_and_disables_graphs_and_prefix_cache():
    cmd = engine_registry.make("sglang", dict(JOB)).command()
    assert cmd[:3] == [sys.executable, "-m", "sglang.launch_server"]
    assert _flag(cmd, "--model-path") == "/models/tiny" and _flag(cmd, "--host") == "{host}"
    assert _flag(cmd, "--port") == "{port}" and _flag(cmd, "--dtype") == "float32"
    assert _flag(cmd, "--random-seed") == "0" and _flag(cmd, "--context-length") == "512"
    assert _flag(cmd, "--attention-backend") == "torch_native" and _flag(cmd, "--sampling-backend") == "pytorch"
    assert {"--disable-cuda-graph", "--disable-radix-cache"} <= set(cmd)
    kept = engine_registry.make(
        {"name": "sglang", "radix_cache": True, "deterministic_inference": True}, dict(JOB)
    ).command()
    assert "--disable-radix-cache" not in kept and "--enable-deterministic-inference" in kept


def test_sglang_request_is_native_generate_from_ids_with_top_logprobs():
    body = engine_registry.make("sglang", dict(JOB)).body(CASE)
    assert body["input_ids"] == [11, 12, 13, 14] and "text" not in body
    assert body["return_logprob"] is True and body["top_logprobs_num"] == 5 and body["logprob_start_len"] == -1
    p = body["sampling_params"]
    assert (p["temperature"], p["top_k"], p["top_p"], p["min_p"], p["repetition_penalty"]) == (0.0, 1, 1.0, 0.0, 1.0)
    assert p["max_new_tokens"] == 3 and p["ignore_eos"] is True and p["skip_special_tokens"] is False
    assert "sampling_seed" not in p  # greedy: no seed needed (and older servers reject the field)
    sampled = dict(CASE, sampling=dict(CASE["sampling"], temperature=0.7, top_k=40, seed=3))
    assert engine_registry.make("sglang", dict(JOB)).body(sampled)["sampling_params"]["sampling_seed"] == 3


# /generate with return_logprob, as SGLang's native API docs show it: meta_info carries
# output_token_logprobs as [logprob, token_id, text|null] per token and output_top_logprobs as a
# list of such triples per step; finish_reason is an object with a type.
SGLANG_ANSWER = {
    "text": "abc",
    "output_ids": [5, 6, 7],
    "meta_info": {
        "id": "9d2e",
        "finish_reason": {"type": "length", "length": 3},
        "prompt_tokens": 4,
        "completion_tokens": 3,
        "cached_tokens": 0,
        "e2e_latency": 0.02,
        "output_token_logprobs": [[-0.1, 5, None], [-0.25, 6, None], [-0.5, 7, None]],
        "output_top_logprobs": [
            [[-0.1, 5, None], [-2.5, 9, None]],
            [[-1.9, 8, None], [-0.25, 6, None]],
            [[-0.5, 7, None], [-3.0, 1, None]],
        ],
    },
}


def test_sglang_answer_parses_into_ids_and_top_k():
    eng = engine_registry.make("sglang", dict(JOB))
    gen = eng.parse(json.loads(json.dumps(SGLANG_ANSWER)), 4)
    assert (gen.by, gen.tokens, gen.text, gen.finish_reason) == ("ids", [5, 6, 7], "abc", "length")
    assert gen.topk[1] == [[6, -0.25], [8, -1.9]]
    with pytest.raises(engines.ProtocolError, match="prompt of 4 tokens"):
        eng.parse(SGLANG_ANSWER, 5)
    ids_only = {"text": "abc", "output_ids": [5, 6, 7], "meta_info": {"finish_reason": {"type": "stop"}}}
    assert (g := eng.parse(ids_only)).tokens == [5, 6, 7] and g.topk == [] and g.finish_reason == "stop"
    with pytest.raises(engines.ProtocolError, match="triples"):
        eng.parse({"text": "", "meta_info": {"output_token_logprobs": [[-0.1]]}})
    with pytest.raises(engines.ProtocolError, match="meta_info"):
        eng.parse({"text": "abc"})


# --------------------------------------------------------------------------- Ollama


def test_ollama_request_is_raw_text_with_every_option_pinned():
    eng = engine_registry.make("ollama", dict(JOB))
    eng.model_name = eg.SERVED_NAME
    body = eng.body(CASE)
    assert body["prompt"] == CASE["prompt_text"] and body["raw"] is True and body["stream"] is False
    assert body["model"] == eg.SERVED_NAME and body["logprobs"] is True and body["top_logprobs"] == 5
    o = body["options"]
    assert (o["temperature"], o["top_k"], o["top_p"], o["min_p"], o["seed"]) == (0.0, 1, 1.0, 0.0, 0)
    assert (o["num_predict"], o["repeat_penalty"], o["num_ctx"]) == (3, 1.0, 512)
    assert o["stop"] == []  # the Modelfile's stop strings do not end the comparison early
    stops = dict(CASE, sampling=dict(CASE["sampling"], stop_at_eos=True))
    assert "stop" not in eng.body(stops)["options"]
    with pytest.raises(engines.ProtocolError, match="text prompts only"):
        eng.body(dict(CASE, prompt_text=None))


# /api/generate with stream false as Ollama's API docs show it; logprobs (0.12.11+): one
# {token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]} per generated token.
OLLAMA_ANSWER = {
    "model": "llmcompat-tiny",
    "created_at": "2026-01-10T10:00:00.000000Z",
    "response": "abc",
    "done": True,
    "done_reason": "length",
    "total_duration": 5043500667,
    "load_duration": 5025959,
    "prompt_eval_count": 4,
    "prompt_eval_duration": 325953000,
    "eval_count": 3,
    "eval_duration": 4709213000,
    "logprobs": [
        {
            "token": "a",
            "logprob": -0.1,
            "bytes": [97],
            "top_logprobs": [
                {"token": "x", "logprob": -2.5, "bytes": [120]},
                {"token": "a", "logprob": -0.1, "bytes": [97]},
            ],
        },
        {
            "token": "b",
            "logprob": -0.2,
            "bytes": [98],
            "top_logprobs": [{"token": "b", "logprob": -0.2, "bytes": [98]}],
        },
        {
            "token": "c",
            "logprob": -0.3,
            "bytes": [99],
            "top_logprobs": [{"token": "c", "logprob": -0.3, "bytes": [99]}],
        },
    ],
}


def test_ollama_answer_parses_into_pieces_or_text_only():
    eng = engine_registry.make("ollama", dict(JOB))
    gen = eng.parse(json.loads(json.dumps(OLLAMA_ANSWER)), 4)
    assert (gen.by, gen.tokens, gen.text, gen.finish_reason, gen.prompt_kind) == (
        "pieces",
        ["a", "b", "c"],
        "abc",
        "length",
        "text",
    )
    assert gen.topk[0] == [["a", -0.1], ["x", -2.5]]
    ref = {
        "ids": [5, 6, 7],
        "text": "abc",
        "pieces": ["a", "b", "c"],
        "topk": [[[5, -0.1]], [[6, -0.2]], [[7, -0.3]]],
        "topk_pieces": [["a"], ["b"], ["c"]],
    }
    assert si.judge(ref, gen)["level"] == "L0" and si.judge(ref, gen)["compared_by"] == "pieces"
    diverged = dict(
        OLLAMA_ANSWER,
        logprobs=[OLLAMA_ANSWER["logprobs"][0]]
        + [{"token": "q", "logprob": -0.2, "top_logprobs": [{"token": "q", "logprob": -0.2}]}] * 2,
    )
    assert si.judge(ref, eng.parse(diverged, 4))["outcome"] == "fail"  # "q" is not in the reference top-k
    older = {k: v for k, v in OLLAMA_ANSWER.items() if k != "logprobs"}  # before 0.12.11
    g = eng.parse(older, 4)
    assert g.by == "text" and g.text == "abc" and si.judge(ref, g)["level"] == "L0"
    with pytest.raises(engines.ProtocolError, match="added tokens"):
        eng.parse(dict(OLLAMA_ANSWER, prompt_eval_count=5), 4)  # e.g. a BOS put before the raw prompt
    with pytest.raises(engines.ProtocolError, match="without response"):
        eng.parse({"error": "model not found"}, 4)


def test_modelfile_from_points_at_the_jobs_gguf_and_keeps_the_rest(tmp_path):
    text = 'FROM ./model.gguf\nTEMPLATE """{{ .Prompt }}"""\nPARAMETER stop "<|im_end|>"\n'
    out = eg.modelfile_for(text, str(tmp_path / "m.gguf"))
    assert out.splitlines()[0] == f"FROM {tmp_path / 'm.gguf'}"
    assert out.splitlines()[1:] == text.splitlines()[1:]
    assert eg.modelfile_for("PARAMETER seed 1\n", "/x.gguf").splitlines() == ["FROM /x.gguf", "PARAMETER seed 1"]


# --------------------------------------------------------------------------- unavailable: with the reason


def test_vllm_and_sglang_without_their_package_or_a_gpu_are_unavailable_with_the_reason(monkeypatch, tmp_path):
    for name in ("vllm", "sglang"):
        if not engines.have(name):
            with pytest.raises(engines.EngineUnavailable, match=f"{name} is not installed in this cell"):
                engine_registry.make(name, dict(JOB)).start()
    monkeypatch.setattr(eg, "have", lambda mod: True)
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    for name in ("vllm", "sglang"):
        with pytest.raises(
            engines.EngineUnavailable, match=r"needs a GPU runner: no NVIDIA GPU \(nvidia-smi not found\)"
        ):
            engine_registry.make(name, dict(JOB)).start()
    smi = tmp_path / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the driver' >&2\nexit 9\n"
    )
    smi.chmod(0o755)
    assert "could not communicate" in eg.gpu_reason()


def test_ollama_without_its_binary_or_model_files_is_unavailable_with_the_reason(monkeypatch, tmp_path):
    monkeypatch.delenv("OLLAMA_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    job = {"model_dir": str(tmp_path)}
    with pytest.raises(engines.EngineUnavailable, match="no ollama binary on PATH"):
        engine_registry.make("ollama", job).start()
    with pytest.raises(engines.EngineUnavailable, match="does not exist"):
        engine_registry.make({"name": "ollama", "bin": str(tmp_path / "nope")}, job).start()
    exe = tmp_path / "ollama"
    exe.write_text("#!/bin/sh\nexit 1\n")
    exe.chmod(0o755)
    with pytest.raises(engines.EngineUnavailable, match="no Ollama Modelfile"):
        engine_registry.make("ollama", job).start()
    (tmp_path / "Modelfile").write_text("FROM ./model.gguf\n")
    with pytest.raises(engines.EngineUnavailable, match="no GGUF file"):
        engine_registry.make("ollama", job).start()


def test_a_start_that_fails_is_infra_with_the_log_and_leaves_nothing_behind(tmp_path):
    """A real process that exits at once stands in for a broken ``ollama serve``: the stage gets
    infra with the server's own words, the temporary model store is removed."""
    exe = tmp_path / "ollama"
    exe.write_text('#!/bin/sh\necho "Error: listen tcp $OLLAMA_HOST: bind: address already in use"\nexit 1\n')
    exe.chmod(0o755)
    (tmp_path / "Modelfile").write_text("FROM ./model.gguf\n")
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    rec = Recorder("check")
    job = {
        "mode": "check",
        "model_dir": str(tmp_path),
        "engines": [{"name": "ollama", "bin": str(exe)}],
        "gen_cases": [{"id": "c1", "prompt_ids": [1, 2], "prompt_text": "hi"}],
        "limits": {"server_start_seconds": 20},
    }
    si.run(job, rec)
    (r,) = rec.records
    assert (r["outcome"], r["klass"]) == ("infra", "engine-start")
    assert "exited with 1" in r["detail"] and "bind: address already in use" in r["detail"]
    assert "127.0.0.1:" in r["detail"]  # OLLAMA_HOST: a loopback port of its own
    eng = engine_registry.make(job["engines"][0], job)
    with pytest.raises(engines.EngineInfra, match="exited with 1"):
        eng.start()
    store = eng._tmp
    assert store and os.path.isdir(store) and eng.srv.proc is None  # the server is already stopped
    eng.close()
    assert not os.path.exists(store)


def test_missing_engines_are_skipped_in_the_stage_with_their_reasons(tmp_path, monkeypatch):
    monkeypatch.delenv("OLLAMA_BIN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    absent = [n for n in ("vllm", "sglang") if not engines.have(n)] + ["ollama"]
    rec = Recorder("check")
    si.run(
        {
            "mode": "check",
            "model_dir": str(tmp_path),
            "engines": absent,
            "gen_cases": [{"id": "c1", "prompt_ids": [1, 2]}],
        },
        rec,
    )
    assert {r["outcome"] for r in rec.records} == {"skipped"}
    assert "no ollama binary" in rec.facts["inference"]["ollama"]["skipped"]


# --------------------------------------------------------------------------- planning


def test_gpu_engines_plan_only_on_the_gpu_runner_and_cpu_cells_keep_cpu_torch():
    from matrix.cell.run import requirements
    from matrix.declare import loader
    from matrix.plan import planner as plan

    m = loader.load_default()
    comps = {(a, c.name) for a, cs in m.axes.items() for c in cs if c.default}
    comps |= {("engine", "vllm"), ("engine", "sglang"), ("engine", "ollama")}
    versions = {(a, n): ["1.0", "2.0"] for a, n in comps}
    cells = plan.plan(m, versions, components=comps, runners=["cpu", "gpu"])
    runners = {r.name: r for r in m.runners}
    assert "torch==2.13.0+cpu" in runners["cpu"].pins
    heavy = {"vllm", "sglang", "ollama"}
    on_cpu = [c for c in cells if c.runner == "cpu"]
    assert on_cpu and all(ch.component not in heavy for c in on_cpu for _, ch in c.choices)
    on_gpu = {ch.component for c in cells if c.runner == "gpu" for _, ch in c.choices}
    assert heavy <= on_gpu
    for c in on_cpu:  # every cpu cell resolves with the CPU torch override
        assert all("vllm" not in r and "sglang" not in r for r in requirements(m, c))
    # nothing new in the default selection
    assert not any(c.default for c in m.axes["engine"] if c.name in heavy)
    assert not runners["gpu"].default


# --------------------------------------------------------------------------- for real


def run_probe(python: Path, job: dict) -> dict:
    from tests.conftest import probe_result

    return probe_result(python, job, timeout=1500)


@pytest.fixture(scope="module")
def goldens(model, reference_python):
    from tests.conftest import fresh_goldens

    return fresh_goldens(model, reference_python, CASE_IDS)


def check(python: Path, model, cases: list, engine_specs: list) -> dict:
    job = {
        "mode": "check",
        "model_dir": str(model.path),
        "stages": ["inference"],
        "cases": cases,
        "gen_cases": [{"id": i} for i in CASE_IDS],
        "engines": engine_specs,
        "concurrency": 4,
        "concurrency_cases": 1,
        "limits": {"server_start_seconds": 600, "request_seconds": 120},
    }
    t = time.perf_counter()
    result = run_probe(python, job)
    print(f"probe {engine_specs}: {time.perf_counter() - t:.1f}s")
    print(json.dumps(result["facts"]["inference"], indent=1, sort_keys=True, default=str))
    for r in result["records"]:
        if r["outcome"] != "pass" or r.get("level") not in (None, "L0"):
            print("RECORD", json.dumps(r)[:600])
    return result


def assert_engine(result, name: str, levels, compared_by) -> dict:
    facts = result["facts"]["inference"][name]
    for key in ("skipped", "infra", "crash"):
        assert key not in facts, f"{name}: {key}: {facts[key]}"
    assert result["stages"]["inference"]["outcome"] == "pass", [r for r in result["records"] if r["outcome"] != "pass"]
    assert facts["level"] in levels, facts
    checks = {(r["case"], r["check"]): r for r in result["records"]}
    for i in CASE_IDS:
        assert checks[(i, name)]["compared_by"] in compared_by
        assert checks[(i, f"{name}:determinism")]["outcome"] == "pass"
    assert checks[(CASE_IDS[0], f"{name}:concurrency")]["outcome"] == "pass"
    return facts


def gpu_engine_python(name: str) -> Path:
    """An environment with the engine at its pinned version; no CPU-torch override: the engine pins
    the CUDA torch it was built for (this test runs only where a GPU is)."""
    from matrix.env import uv as envs

    lock = or_skip(envs.resolve, [f"{name}=={VERSIONS[name]}"], python="3.11")
    if isinstance(lock, envs.Unresolvable):
        pytest.skip(f"{name}=={VERSIONS[name]} cannot be installed here: {lock.reason[:300]}")
    return or_skip(envs.ensure, lock).python


@pytest.mark.gpu
@pytest.mark.slow
def test_vllm_on_the_tiny_model_against_the_transformers_goldens(goldens, model):
    result = check(gpu_engine_python("vllm"), model, goldens, ["vllm"])
    facts = assert_engine(result, "vllm", ("L0", "L1", "L2"), {"ids"})
    assert facts["dtype"] == "float32" and facts["prompt_kind"] == "ids" and "--enforce-eager" in facts["command"]


@pytest.mark.gpu
@pytest.mark.slow
def test_sglang_on_the_tiny_model_against_the_transformers_goldens(goldens, model):
    result = check(gpu_engine_python("sglang"), model, goldens, ["sglang"])
    facts = assert_engine(result, "sglang", ("L0", "L1", "L2"), {"ids"})
    assert facts["dtype"] == "float32" and facts["api"] == "native /generate"


def _ollama_missing() -> str | None:
    if os.environ.get("OLLAMA_BIN") or shutil.which("ollama"):
        return None
    return "no ollama binary on PATH (nor $OLLAMA_BIN): the Ollama engine test needs its runtime"


@pytest.mark.skipif(_ollama_missing() is not None, reason=_ollama_missing() or "")
def test_ollama_on_the_tiny_models_gguf_and_modelfile_against_the_transformers_goldens(
    goldens, model, reference_python
):
    # the adapter is standard library: any cell interpreter runs it; the runtime comes from the runner
    result = check(
        reference_python,
        model,
        goldens,
        [{"name": "ollama", "bin": os.environ.get("OLLAMA_BIN") or shutil.which("ollama")}],
    )
    facts = assert_engine(result, "ollama", ("L0", "L1", "L2"), {"pieces", "text"})
    assert facts["ollama"] and facts["prompt_kind"] == "text"
