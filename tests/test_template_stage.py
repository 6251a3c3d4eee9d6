"""The template stage: template sources (hf, GGUF, override), capability needles, the tool-call
round trip, and the standard-library GGUF metadata reader, on the real tiny model."""

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from matrix import suites, tinymodel
from matrix.declare import loader

ROOT = Path(__file__).resolve().parent.parent
PROBE_DIR = ROOT / "matrix" / "probe"
if str(PROBE_DIR) not in sys.path:
    sys.path.insert(0, str(PROBE_DIR))

import gguf_meta  # noqa: E402
import probe  # noqa: E402
import stage_template  # noqa: E402
import toolcalls  # noqa: E402

REFERENCE = loader.load_default().reference


@pytest.fixture(scope="module")
def gguf_model():
    """The tiny model with its GGUF (weights built with CPU torch once, then cached)."""
    return tinymodel.ensure(arch="qwen2", parts=("tokenizer", "gguf"), reference=REFERENCE)


@pytest.fixture(scope="module")
def cases():
    suite = suites.load("core")
    return suites.cases_with_goldens(suite, suites.load_goldens(suite, "tiny-qwen2"))


def run_stage(job: dict, mode: str = "check"):
    rec = probe.Recorder(mode)
    job = {"mode": mode, "stages": ["template"], "renderers": ["jinja2"], "limits": {"render_seconds": 10}, **job}
    stage_template.run(job, rec)
    return rec


def by_check(rec) -> dict:
    out: dict = {}
    for r in rec.records:
        out.setdefault(r["check"], {}).setdefault(r["outcome"], []).append(r)
    return out


# --------------------------------------------------------------------------- GGUF metadata

ALL_TYPES = {
    "general.architecture": "qwen2",
    "t.u8": 200,
    "t.i8": -100,
    "t.u16": 60000,
    "t.i16": -30000,
    "t.u32": 4_000_000_000,
    "t.i32": -2_000_000_000,
    "t.f32": 0.5,
    "t.bool": True,
    "t.u64": 2**63,
    "t.i64": -(2**62),
    "t.f64": 1e-300,
    "t.str": "Zürich 🙂 \u200b",
    "t.empty": "",
    "t.arr.u32": [1, 2, 3],
    "t.arr.f32": [0.25, -1.5],
    "t.arr.bool": [True, False],
    "t.arr.empty": [],
    "t.arr.nested": [["a", "b"], ["c"]],
    "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "<|im_end|>"],
    "tokenizer.ggml.bos_token_id": 1,
    "tokenizer.ggml.eos_token_id": 3,
    "tokenizer.chat_template": "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}",
    "tokenizer.chat_template.tool_use": "tools!",
}
TYPES = {
    "t.u8": "uint8",
    "t.i8": "int8",
    "t.u16": "uint16",
    "t.i16": "int16",
    "t.u32": "uint32",
    "t.i32": "int32",
    "t.f32": "float32",
    "t.u64": "uint64",
    "t.arr.u32": "array[uint32]",
    "t.arr.f32": "array[float32]",
    "t.arr.empty": "array[int16]",
    "tokenizer.ggml.bos_token_id": "uint32",
    "tokenizer.ggml.eos_token_id": "uint32",
}


@pytest.mark.parametrize("version", [1, 2, 3])
@pytest.mark.parametrize("byteorder", ["little", "big"])
def test_gguf_reader_reads_every_value_type(tmp_path, version, byteorder):
    path = tmp_path / "m.gguf"
    gguf_meta.write_metadata(path, ALL_TYPES, version=version, byteorder=byteorder, types=TYPES)
    meta = gguf_meta.read_metadata(path)
    assert (meta.version, meta.byteorder, meta.tensor_count) == (version, byteorder, 0)
    assert meta.kv == ALL_TYPES
    assert meta.types["t.arr.u32"] == "array[uint32]" and meta.types["t.arr.nested"] == "array[array]"
    assert meta.types["t.f32"] == "float32" and meta.types["t.bool"] == "bool"
    assert meta.chat_template == ALL_TYPES["tokenizer.chat_template"]
    assert meta.named_chat_templates() == {"tool_use": "tools!"}
    assert gguf_meta.special_tokens(meta) == {"bos_token": "<s>", "eos_token": "<|im_end|>"}
    assert meta.end_offset == path.stat().st_size


def test_gguf_reader_stops_after_the_kv_pairs(tmp_path):
    path = tmp_path / "m.gguf"
    gguf_meta.write_metadata(path, {"tokenizer.chat_template": "T"}, tensor_count=3)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\xff" * 4096)  # tensor infos and data: never parsed
    meta = gguf_meta.read_metadata(path)
    assert meta.tensor_count == 3 and meta.end_offset == size and meta.chat_template == "T"
    assert gguf_meta.read_metadata(path, keys=["nope"]).kv == {}


def test_gguf_reader_refuses_malformed_files_without_allocating(tmp_path):
    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGML" + b"\0" * 20)
    with pytest.raises(gguf_meta.GGUFError, match="magic"):
        gguf_meta.read_metadata(path)
    gguf_meta.write_metadata(path, {"k": "a long enough value"})
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with pytest.raises(gguf_meta.GGUFError, match="truncated"):
        gguf_meta.read_metadata(path)
    # a string claiming 2**60 bytes: refused from the header, not read
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IQ", 8, 2**60)
    path.write_bytes(head)
    with pytest.raises(gguf_meta.GGUFError):
        gguf_meta.read_metadata(path)
    head = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 4, 2**40)
    path.write_bytes(head)
    with pytest.raises(gguf_meta.GGUFError, match="elements"):
        gguf_meta.read_metadata(path)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 99))
    with pytest.raises(gguf_meta.GGUFError, match="unknown value type 99"):
        gguf_meta.read_metadata(path)


GGUF_DUMP = """
import json, sys, gguf
r = gguf.GGUFReader(sys.argv[1])
out = {}
for name, f in r.fields.items():
    if name.startswith("GGUF."):
        continue
    v = f.contents()
    out[name] = v.tolist() if hasattr(v, "tolist") else v
print(json.dumps(out))
"""


def test_gguf_reader_agrees_with_gguf_py_on_the_tiny_model(gguf_model):
    path = gguf_model.path / "model.gguf"
    meta = gguf_meta.read_metadata(path)
    assert meta.chat_template == (ROOT / "matrix" / "tinymodel" / "chat_template.jinja").read_text(encoding="utf-8")
    assert meta.tensor_count > 0 and meta.end_offset < path.stat().st_size
    python = tinymodel.reference_python(("tokenizer", "gguf"), REFERENCE)
    out = subprocess.run([str(python), "-I", "-c", GGUF_DUMP, str(path)], capture_output=True, text=True, check=True)
    theirs = json.loads(out.stdout)
    assert set(theirs) == set(meta.kv)
    for key, value in theirs.items():
        mine = meta.kv[key]
        if isinstance(value, float):
            assert mine == pytest.approx(value), key
        else:
            assert mine == value, key


# --------------------------------------------------------------------------- tool-call parsing

RENDER = (
    '<|im_start|>system\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    '<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nOK.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n'
    '</tool_call>\n<tool_call>\n{"name": "g", "arguments": {"b": [2]}}\n</tool_call><|im_end|>\n'
)
MESSAGES = [
    {"role": "user", "content": "hi"},
    {
        "role": "assistant",
        "content": "OK.",
        "tool_calls": [
            {"type": "function", "function": {"name": "f", "arguments": {"a": 1}}},
            {"type": "function", "function": {"name": "g", "arguments": '{"b": [2]}'}},
        ],
    },
]


def test_tool_calls_parse_from_assistant_turns_only():
    assert toolcalls.parse(RENDER) == [toolcalls.ToolCall("f", {"a": 1}), toolcalls.ToolCall("g", {"b": [2]})]
    assert toolcalls.roundtrip(MESSAGES, RENDER) == ""


@pytest.mark.parametrize(
    "render, words",
    [
        (RENDER.replace('"name": "g"', '"name": "h"'), ["tool call 2", "'g'", "'h'"]),
        (RENDER.replace('{"a": 1}', '{"a": 2}'), ["tool call 1 (f): arguments differ", '{"a": 1}', '{"a": 2}']),
        # arguments written as a JSON string inside the block (double encoding)
        (RENDER.replace('{"b": [2]}', '"{\\"b\\": [2]}"'), ["tool call 2 (g): arguments differ", '"{\\"b\\": [2]}"']),
        (
            RENDER.split('\n<tool_call>\n{"name": "g"')[0] + "<|im_end|>\n",
            ["expected 2 tool calls, parsed 1", "missing"],
        ),
        (RENDER.replace('{"name": "f", "arguments": {"a": 1}}', '{"name": "f", "arguments": {"a": 1}'), ["not JSON"]),
    ],
)
def test_tool_call_round_trip_names_the_first_divergence(render, words):
    detail = toolcalls.roundtrip(MESSAGES, render)
    assert detail and all(w in detail for w in words), detail


def test_tool_calls_accept_parameters_and_flat_calls():
    text = '<tool_call>{"name": "f", "parameters": {"x": "ü"}}</tool_call>'
    assert toolcalls.parse(text) == [toolcalls.ToolCall("f", {"x": "ü"})]
    assert (
        toolcalls.roundtrip([{"role": "assistant", "tool_calls": [{"name": "f", "arguments": {"x": "ü"}}]}], text) == ""
    )


# --------------------------------------------------------------------------- the stage, in process (jinja2)


def test_every_source_renders_the_goldens_with_needles_and_round_trips(gguf_model, cases, tmp_path):
    override = tmp_path / "chat_template.jinja"
    shutil.copy(gguf_model.path / "chat_template.jinja", override)
    rec = run_stage(
        {
            "model_dir": str(gguf_model.path),
            "cases": cases,
            "template_override": str(override),
            "template_sources": ["hf", "gguf", "override"],
        }
    )
    checks = by_check(rec)
    bad = [r for r in rec.records if r["outcome"] != "pass"]
    assert not bad, bad[:3]
    assert {"jinja2", "gguf/jinja2", "override/jinja2"} <= set(checks)
    n_template = sum("template" in c.get("stages", ["template"]) for c in cases)
    for check in ("jinja2", "gguf/jinja2", "override/jinja2"):
        assert len(checks[check]["pass"]) == n_template
        assert len(checks[f"{check}:needles"]["pass"]) == sum(bool(c.get("needles")) for c in cases)
        assert len(checks[f"{check}:roundtrip"]["pass"]) >= 8
        caps = rec.facts["capabilities"][check]
        assert {
            "system-role",
            "tools",
            "tool-calls",
            "parallel-tool-calls",
            "typed-content",
            "object-arguments",
            "reasoning",
        } <= set(caps) and all(caps.values())
    # (case, stage, check) is unique: the store's primary key
    assert len({(r["case"], r["stage"], r["check"]) for r in rec.records}) == len(rec.records)


def test_absent_sources_are_skipped_with_the_reason(cases, tmp_path):
    model = tinymodel.ensure(arch="qwen2", parts=("tokenizer",), reference=REFERENCE)
    rec = run_stage({"model_dir": str(model.path), "cases": cases[:2], "template_sources": ["hf", "gguf", "override"]})
    skipped = {r["check"]: r["detail"] for r in rec.records if r["outcome"] == "skipped"}
    assert set(skipped) == {"gguf", "override"}
    assert "no GGUF file" in skipped["gguf"] and "template override" in skipped["override"]
    rec = run_stage(
        {
            "model_dir": str(model.path),
            "cases": cases[:1],
            "template_sources": ["override"],
            "template_override": str(tmp_path / "missing.jinja"),
        }
    )
    (r,) = rec.records
    assert r["outcome"] == "skipped" and "does not exist" in r["detail"]


def test_a_broken_gguf_is_a_failure_of_that_source(cases, tmp_path):
    model = tinymodel.ensure(arch="qwen2", parts=("tokenizer",), reference=REFERENCE)
    broken = tmp_path / "model.gguf"
    broken.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1))
    rec = run_stage(
        {"model_dir": str(model.path), "cases": cases[:1], "template_sources": ["gguf", "hf"], "gguf_path": str(broken)}
    )
    first, second = rec.records
    assert (first["check"], first["outcome"], first["klass"]) == ("gguf", "fail", "template-source")
    assert "GGUFError" in first["detail"] and "truncated" in first["detail"]
    assert (second["check"], second["outcome"]) == ("jinja2", "pass")


LOSSY = (
    "{% for m in messages %}{% if m.role != 'system' %}<|im_start|>{{ m.role }}\n"
    "{% if m.content is string %}{{ m.content }}{% endif %}"
    '{% if m.tool_calls %}<tool_call>\n{"name": {{ m.tool_calls[0].function.name | tojson }}, '
    '"arguments": {{ m.tool_calls[0].function.arguments | tojson }}}\n</tool_call>{% endif %}'
    "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_lossy_template_fails_needles_and_round_trips(gguf_model, cases, tmp_path):
    """An override that drops the system prompt, typed content, reasoning and every tool call but
    the first, and encodes string arguments twice: each loss is named."""
    override = tmp_path / "lossy.jinja"
    override.write_text(LOSSY, encoding="utf-8")
    by_id = {c["id"]: c for c in cases}
    picked = [
        by_id[i]
        for i in (
            "cap-system-role",
            "cap-typed-content",
            "cap-reasoning",
            "cap-parallel-tool-calls",
            "cap-tools",
            "tool-call-string-arguments",
            "parallel-tool-calls",
            "single-user",
        )
    ]
    rec = run_stage(
        {
            "model_dir": str(gguf_model.path),
            "cases": picked,
            "template_override": str(override),
            "template_sources": ["override"],
        }
    )
    got = {(r["case"], r["check"]): r for r in rec.records}
    caps = rec.facts["capabilities"]["override/jinja2"]
    assert caps == {
        "system-role": False,
        "typed-content": False,
        "reasoning": False,
        "parallel-tool-calls": False,
        "tools": False,
    }
    r = got[("cap-system-role", "override/jinja2:needles")]
    assert (
        r["outcome"] == "fail"
        and r["klass"] == "capability"
        and "system-role" in r["detail"]
        and "NDL-sys-7c41" in r["detail"]
    )
    r = got[("tool-call-string-arguments", "override/jinja2:roundtrip")]
    assert r["outcome"] == "fail" and r["klass"] == "roundtrip" and "arguments differ" in r["detail"]
    r = got[("parallel-tool-calls", "override/jinja2:roundtrip")]
    assert r["outcome"] == "fail" and "expected 2 tool calls, parsed 1" in r["detail"]
    r = got[("single-user", "override/jinja2")]
    assert r["outcome"] == "pass"  # same text as the golden: only the losses fail
    r = got[("cap-system-role", "override/jinja2")]
    assert r["outcome"] == "fail" and r["klass"] == "mismatch" and "first divergence at char 12" in r["detail"]


def test_needles_and_round_trips_are_checked_in_golden_mode(gguf_model, cases, tmp_path):
    override = tmp_path / "lossy.jinja"
    override.write_text(LOSSY, encoding="utf-8")
    by_id = {c["id"]: c for c in cases}
    bare = [dict(by_id[i], expect={}) for i in ("cap-system-role", "parallel-tool-calls")]
    rec = run_stage(
        {
            "model_dir": str(gguf_model.path),
            "cases": bare,
            "template_override": str(override),
            "template_sources": ["hf", "override"],
        },
        mode="golden",
    )
    assert set(rec.produced) == {"cap-system-role", "parallel-tool-calls"}  # from hf only
    assert rec.produced["cap-system-role"]["render"] == by_id["cap-system-role"]["expect"]["render"]
    outcomes = {(r["case"], r["check"]): r["outcome"] for r in rec.records}
    assert outcomes == {
        ("cap-system-role", "jinja2:needles"): "pass",
        ("parallel-tool-calls", "jinja2:roundtrip"): "pass",
        ("cap-system-role", "override/jinja2:needles"): "fail",
        ("parallel-tool-calls", "override/jinja2:roundtrip"): "fail",
    }


def test_a_case_expected_to_raise_that_renders_fails(gguf_model):
    case = {"id": "c", "messages": [{"role": "user", "content": "x"}], "expect": {"error": "role"}}
    (r,) = run_stage({"model_dir": str(gguf_model.path), "cases": [case]}).records
    assert r["outcome"] == "fail" and "expects an error" in r["detail"]


def test_continue_final_message_matches_transformers_semantics():
    render = stage_template.jinja2_renderer(
        "{% for m in messages %}[{{ m.role }}]{{ m.content | trim }}[/]{% endfor %}"
        "{% if add_generation_prompt %}[assistant]{% endif %}",
        {},
        {},
    )
    case = {
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "Once upon "}],
        "continue_final_message": True,
    }
    assert render(case) == "[user]q[/][assistant]Once upon"  # trimmed by the template: cut at the text
    with pytest.raises(ValueError, match="not compatible"):
        render(dict(case, add_generation_prompt=True))


# --------------------------------------------------------------------------- through the real probe (transformers)


def test_transformers_renders_every_source_in_the_reference_env(gguf_model, cases, tmp_path):
    """The reference environment (jinja2 3.1.6, transformers 5.24): transformers renders the GGUF
    and override templates through ``chat_template=`` and agrees with the goldens."""
    from matrix.app.goldens import reference_env
    from matrix.app.job import Options, load_matrix
    from matrix.cell.run import run_probe

    env = reference_env(load_matrix(Options()))
    override = tmp_path / "chat_template.jinja"
    shutil.copy(gguf_model.path / "chat_template.jinja", override)
    job = {
        "mode": "check",
        "model_dir": str(gguf_model.path),
        "stages": ["template"],
        "renderers": ["jinja2", "transformers"],
        "template_sources": ["hf", "gguf", "override"],
        "template_override": str(override),
        "cases": cases,
        "limits": {"render_seconds": 10},
    }
    result, log = run_probe(env.python, job)
    assert result is not None, log
    bad = [r for r in result["records"] if r["outcome"] != "pass"]
    assert not bad, bad[:3]
    checks = {r["check"] for r in result["records"]}
    for source in ("", "gguf/", "override/"):
        for renderer in ("jinja2", "transformers"):
            assert {f"{source}{renderer}", f"{source}{renderer}:needles", f"{source}{renderer}:roundtrip"} <= checks
    assert result["stages"]["template"]["outcome"] == "pass"


def test_bench_helper_measures_the_stage(gguf_model):
    from matrix.probe.bench_stages import bench_in_process

    assert bench_in_process(n_cases=60, model_dir=str(gguf_model.path), repeats=1) > 0
