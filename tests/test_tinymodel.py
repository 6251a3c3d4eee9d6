"""The tiny model, built for real in the reference environment: determinism, tokens, template, GGUF.

Checks that need tokenizers, transformers, jinja2, torch or gguf run inside the reference
environment (a subprocess), as the project's own process does not install them.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from matrix import tinymodel
from tests.conftest import or_skip as _or_skip

REF = {"tokenizers": "0.23.3", "transformers": "5.23.0", "jinja2": "3.1.6", "gguf": "0.19.0"}
TEMPLATE = (Path(tinymodel.__file__).parent / "chat_template.jinja").read_text(encoding="utf-8")

IDS = {
    "<|begin_of_text|>": 1489,
    "<|end_of_text|>": 1490,
    "<|pad|>": 1491,
    "<|im_start|>": 1492,
    "<|im_end|>": 1493,
    "<think>": 1494,
    "</think>": 1495,
    "<tool_call>": 1496,
    "</tool_call>": 1497,
    "<tool_response>": 1498,
    "</tool_response>": 1499,
}
CONTROL = {"<|begin_of_text|>", "<|end_of_text|>", "<|pad|>", "<|im_start|>", "<|im_end|>"}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather now.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "reasoning_content": "Greet back.", "content": "Hello."},
    {"role": "user", "content": [{"type": "text", "text": "Weather in "}, {"type": "text", "text": "Paris?"}]},
    {
        "role": "assistant",
        "reasoning_content": "Use the tool.",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
            {
                "type": "function",  # arguments as a JSON string, as OpenAI clients send them
                "function": {"name": "get_weather", "arguments": '{"city": "東京"}'},
            },
        ],
    },
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "tool", "content": '{"temp": 18}'},
]
EXPECTED = (
    "<|im_start|>system\nBe brief.\n\n# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Weather now.", "parameters": '
    '{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}\n</tools>\n\n'
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n"
    '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\nHi<|im_end|>\n"
    "<|im_start|>assistant\nHello.<|im_end|>\n"  # reasoning before the last user turn is dropped
    "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
    "<|im_start|>assistant\n<think>\nUse the tool.\n</think>\n\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京"}}\n</tool_call><|im_end|>\n'
    '<|im_start|>user\n<tool_response>\n{"temp": 21}\n</tool_response>\n'
    '<tool_response>\n{"temp": 18}\n</tool_response><|im_end|>\n'
    "<|im_start|>assistant\n"
)


def run_in(python: Path, code: str, *args: str, env: dict | None = None) -> dict:
    """Run ``code`` in the reference environment; it prints one JSON document."""
    proc = subprocess.run(
        [str(python), "-I", "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tinymodel.BuiltModel:
    return _or_skip(tinymodel.ensure, "qwen2", ("tokenizer",), REF, root=tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def python(built) -> Path:
    return tinymodel.reference_python(("tokenizer",), REF)


# --------------------------------------------------------------------------- pure


def test_parts_always_include_the_tokenizer_and_gguf_needs_weights():
    assert tinymodel.normalize_parts(()) == ("tokenizer",)
    assert tinymodel.normalize_parts(["gguf"]) == ("tokenizer", "weights", "gguf")
    with pytest.raises(ValueError, match="onnx"):
        tinymodel.normalize_parts(["onnx"])


def test_pins_name_only_what_the_parts_import_and_the_callers_pins_win():
    assert tinymodel.reference_pins(("tokenizer",), REF) == {
        "jinja2": "3.1.6",
        "tokenizers": "0.23.3",
        "transformers": "5.23.0",
    }
    pins = tinymodel.reference_pins(("tokenizer", "weights"), {"transformers": "5.24.0"})
    assert pins["transformers"] == "5.24.0" and pins["torch"] == "2.13.0+cpu" and "gguf" not in pins


def test_cache_key_follows_every_input():
    pins = tinymodel.reference_pins(("tokenizer",), REF)
    base = tinymodel.cache_key("qwen2", ("tokenizer",), pins, "3.11")
    assert base == tinymodel.cache_key("qwen2", ("tokenizer",), dict(reversed(pins.items())), "3.11")
    others = {
        tinymodel.cache_key("llama", ("tokenizer",), pins, "3.11"),
        tinymodel.cache_key("qwen2", ("tokenizer", "weights"), pins, "3.11"),
        tinymodel.cache_key("qwen2", ("tokenizer",), {**pins, "tokenizers": "0.22.2"}, "3.11"),
        tinymodel.cache_key("qwen2", ("tokenizer",), pins, "3.12"),
    }
    assert base not in others and len(others) == 4


def test_model_hash_covers_names_and_contents_not_order():
    a = {"x.json": "1" * 64, "y.bin": "2" * 64}
    assert tinymodel.model_hash(a) == tinymodel.model_hash(dict(reversed(a.items())))
    assert tinymodel.model_hash(a) != tinymodel.model_hash({"x.json": "1" * 64, "z.bin": "2" * 64})
    assert tinymodel.model_hash(a) != tinymodel.model_hash({"x.json": "1" * 64, "y.bin": "3" * 64})


def test_bad_arch_and_hub_id_are_refused_before_any_work():
    with pytest.raises(ValueError, match="mistral"):
        tinymodel.ensure("mistral")
    with pytest.raises(ValueError, match="org/name"):
        tinymodel.ensure_hub("just-a-name")


# --------------------------------------------------------------------------- tokenizer build


def test_two_builds_give_the_same_model_hash(built, tmp_path):
    again = tinymodel.ensure("qwen2", ("tokenizer",), REF, root=tmp_path)
    assert again.created and again.path != built.path
    assert again.model_hash == built.model_hash and again.files == built.files
    assert (again.path / "tokenizer.json").read_bytes() == (built.path / "tokenizer.json").read_bytes()
    cached = tinymodel.ensure("qwen2", ("tokenizer",), REF, root=tmp_path)
    assert not cached.created and cached.path == again.path and cached.model_hash == again.model_hash
    assert [p.name for p in tmp_path.iterdir()] == [again.path.name]  # no temporary left behind


def test_tokenizer_files_and_special_tokens(built):
    assert set(built.files) == {
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
    }
    tok = json.loads((built.path / "tokenizer.json").read_text(encoding="utf-8"))
    added = {t["content"]: t for t in tok["added_tokens"]}
    assert {c: t["id"] for c, t in added.items()} == IDS
    assert {c for c, t in added.items() if t["special"]} == CONTROL  # think/tool tags stay visible
    assert len(tok["model"]["vocab"]) + len(added) == 1500
    config = json.loads((built.path / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert config["chat_template"] == TEMPLATE
    assert (built.path / "chat_template.jinja").read_text(encoding="utf-8") == TEMPLATE
    assert (config["bos_token"], config["eos_token"], config["pad_token"]) == (
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<|pad|>",
    )
    assert config["add_bos_token"] is False and config["add_eos_token"] is False


LOAD_AND_ENCODE = """
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
text = "Hello 世界 👋🏽 <tool_call>x</tool_call><|im_end|>"
ids = tok(text)["input_ids"]
print(json.dumps({"len": len(tok), "ids": ids, "roundtrip": tok.decode(ids),
                  "visible": tok.decode(ids, skip_special_tokens=True),
                  "special": {t: tok.convert_tokens_to_ids(t) for t in tok.all_special_tokens}}))
"""


def test_transformers_loads_the_tokenizer_without_adding_tokens(built, python):
    got = run_in(python, LOAD_AND_ENCODE, str(built.path))
    assert got["len"] == 1500
    assert got["ids"][-2:] == [IDS["</tool_call>"], IDS["<|im_end|>"]]
    assert IDS["<tool_call>"] in got["ids"] and got["ids"][0] != IDS["<|begin_of_text|>"]  # no BOS added
    assert got["roundtrip"] == "Hello 世界 👋🏽 <tool_call>x</tool_call><|im_end|>"
    assert got["visible"] == "Hello 世界 👋🏽 <tool_call>x</tool_call>"
    assert {t: IDS[t] for t in CONTROL} == {t: i for t, i in got["special"].items() if t in CONTROL}


RENDER = """
import json, sys
import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment
from transformers import AutoTokenizer

def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
env.filters["tojson"] = tojson
env.globals["raise_exception"] = raise_exception
template = env.from_string(open(sys.argv[1] + "/chat_template.jinja", encoding="utf-8").read())
case = json.loads(sys.argv[2])
out = {"jinja2": template.render(**case)}
tok = AutoTokenizer.from_pretrained(sys.argv[1])
out["transformers"] = tok.apply_chat_template(case["messages"], tools=case["tools"], tokenize=False,
                                              add_generation_prompt=case["add_generation_prompt"])
out["ids"] = tok(out["jinja2"])["input_ids"]
try:
    template.render(messages=[{"role": "robot", "content": "x"}])
    out["error"] = None
except jinja2.exceptions.TemplateError as exc:
    out["error"] = str(exc)
print(json.dumps(out))
"""


def test_chat_template_renders_tools_tool_calls_and_reasoning(built, python):
    case = {"messages": MESSAGES, "tools": TOOLS, "add_generation_prompt": True}
    got = run_in(python, RENDER, str(built.path), json.dumps(case))
    assert got["jinja2"] == EXPECTED
    assert got["transformers"] == EXPECTED
    assert got["error"] == "Unknown message role: robot"
    # every added token in the text is one token, never split into pieces
    assert {t: got["ids"].count(i) for t, i in IDS.items()} == {t: EXPECTED.count(t) for t in IDS}


# --------------------------------------------------------------------------- hub


def test_hub_model_that_cannot_be_reached_is_unavailable_with_the_reason(tmp_path, monkeypatch):
    # A closed port on loopback: the hub client fails at once, whatever the machine's network.
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(tinymodel.ModelUnavailable) as info:
        tinymodel.ensure_hub("llmcompat/no-such-model", reference=REF, root=tmp_path)
    assert info.value.reason and "llmcompat/no-such-model" in str(info.value)
    assert not (tmp_path / "hub").exists() or list((tmp_path / "hub").iterdir()) == []


HUB_ID = "hf-internal-testing/tiny-random-gpt2"  # a few MB, so a networked runner downloads little


def test_hub_model_downloads_where_the_network_allows(tmp_path):
    try:
        got = _or_skip(tinymodel.ensure_hub, HUB_ID, reference=REF, root=tmp_path)
    except tinymodel.ModelUnavailable as exc:
        pytest.skip(exc.reason)
    assert "config.json" in got.files and len(got.model_hash) == 64
    assert tinymodel.ensure_hub(HUB_ID, reference=REF, root=tmp_path) == got


# --------------------------------------------------------------------------- weights and GGUF

CHECK_WEIGHTS = """
import json, sys
import numpy as np, torch, gguf
from safetensors.numpy import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

path, arch = sys.argv[1], sys.argv[2]
out = {"cuda": torch.version.cuda}
tok = AutoTokenizer.from_pretrained(path)
model = AutoModelForCausalLM.from_pretrained(path)
prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                 return_dict=True, return_tensors="pt")
start = prompt["input_ids"].shape[1]
out["generated"] = [model.generate(**prompt, max_new_tokens=6)[0, start:].tolist() for _ in range(2)]
out["generation_config"] = model.generation_config.to_dict()

r = gguf.GGUFReader(path + "/model.gguf")
field = lambda k: r.fields[k].contents()
out["gguf"] = {k: field(k) for k in ("general.architecture", "tokenizer.ggml.model", "tokenizer.ggml.pre",
                                     "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                     "tokenizer.ggml.add_bos_token", "tokenizer.chat_template")}
tokens = field("tokenizer.ggml.tokens")
vocab = tok.get_vocab()
out["tokens_match"] = len(tokens) == len(vocab) and all(vocab[t] == i for i, t in enumerate(tokens))
out["n_tokens"] = len(tokens)
types = field("tokenizer.ggml.token_type")
out["token_types"] = {t: int(types[vocab[t]]) for t in ("<|im_end|>", "<tool_call>", "a")}

def unpermute(w, n_head):  # inverse of build.py's HF -> llama.cpp Q/K row order
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
def gname(n):
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if n in fixed:
        return fixed[n]
    _, _, layer, rest = n.split(".", 3)
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{names[module]}.{kind}"

state = load_file(path + "/model.safetensors")
tensors = {t.name: np.array(t.data).reshape([int(d) for d in reversed(t.shape)]) for t in r.tensors}
same = {}
for n, w in state.items():
    g = tensors[gname(n)]
    if arch == "llama" and n.endswith(("q_proj.weight", "k_proj.weight")):
        g = unpermute(g, 4 if "q_proj" in n else 2)
    same[n] = bool(np.array_equal(g, w))
out["tensors_equal"] = all(same.values()) and len(tensors) == len(state)
q = state["model.layers.0.self_attn.q_proj.weight"]
out["permuted"] = not np.array_equal(tensors["blk.0.attn_q.weight"], q)
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_weights_and_gguf(arch, tmp_path):
    first = _or_skip(tinymodel.ensure, arch, ("gguf",), REF, root=tmp_path / "a")
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "model.gguf",
        "Modelfile",
        "tokenizer.json",
    } <= set(first.files)
    if arch == "llama":  # weights are deterministic too (counter-based values, not torch's RNG)
        second = tinymodel.ensure(arch, ("gguf",), REF, root=tmp_path / "b")
        assert second.model_hash == first.model_hash
    config = json.loads((first.path / "config.json").read_text())
    assert config["rope_theta"] == 10000.0 and config["vocab_size"] == 1500
    assert (
        config["hidden_size"],
        config["num_hidden_layers"],
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config["intermediate_size"],
    ) == (64, 2, 4, 2, 128)
    modelfile = (first.path / "Modelfile").read_text()
    assert modelfile.startswith('FROM ./model.gguf\nTEMPLATE """')
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    assert "$m.ToolCalls" in modelfile and ".Tools" in modelfile

    python = tinymodel.reference_python(("gguf",), REF)
    got = run_in(python, CHECK_WEIGHTS, str(first.path), arch)
    assert got["cuda"] is None
    assert got["generated"][0] == got["generated"][1] and len(got["generated"][0]) == 6  # greedy
    assert got["generation_config"]["do_sample"] is False
    assert got["gguf"] == {
        "general.architecture": arch,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.bos_token_id": IDS["<|begin_of_text|>"],
        "tokenizer.ggml.eos_token_id": IDS["<|end_of_text|>"],
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": TEMPLATE,
    }
    assert got["n_tokens"] == 1500 and got["tokens_match"]
    assert got["token_types"] == {"<|im_end|>": 3, "<tool_call>": 4, "a": 1}  # control, user-defined, normal
    assert got["tensors_equal"]
    assert got["permuted"] == (arch == "llama")
