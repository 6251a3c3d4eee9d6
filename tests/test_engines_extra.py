"""mistralrs, onnxruntime-genai and openvino-genai adapters: the contract in-process (no engine
needed), the host-side exports' pure parts, and (slow) each engine for real in its own uv
environment on the tiny model, through the probe, against transformers goldens made in golden mode.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import or_skip as _or_skip

PROBE_DIR = Path(__file__).resolve().parent.parent / "matrix" / "probe"
sys.path.insert(0, str(PROBE_DIR))

import engine_registry  # noqa: E402
import engines  # noqa: E402  (probe-side modules: standard library only)
import engines_extra  # noqa: E402
import stage_inference as si  # noqa: E402
from matrix.env import model_exports as me  # noqa: E402
from probe import Recorder  # noqa: E402

CASE_IDS = ("single-user", "system-prompt", "multi-turn")
VERSIONS = {"mistralrs": "0.9.5", "onnxruntime-genai": "0.18.0", "openvino-genai": "2026.4.1.0"}
MODULES = {"mistralrs": "mistralrs", "onnxruntime-genai": "onnxruntime_genai", "openvino-genai": "openvino_genai"}


@pytest.fixture
def registry():
    """engine_registry.ENGINES holds the extra adapters (built explicitly, no registration step)."""
    assert set(engines_extra.ADAPTERS.items()) <= set(engine_registry.ENGINES.items())


# --------------------------------------------------------------------------- contract (no engine)


def test_adapters_are_named_engines_with_the_common_interface():
    assert set(engines_extra.ADAPTERS) == {"mistralrs", "onnxruntime-genai", "openvino-genai"}
    with pytest.raises(ValueError, match="'mistralrs' is registered twice"):  # never replaces
        engine_registry.build(engines_extra.ADAPTERS, {"mistralrs": engines.Engine})
    for name, cls in engines_extra.ADAPTERS.items():
        assert cls.name == name and issubclass(cls, engines.Engine) and not cls.server
        assert name not in engine_registry.ENGINES or engine_registry.ENGINES[name] is cls  # no clash with engines.py
    assert issubclass(engines_extra.PromptMismatch, engines.ProtocolError)


def test_an_engine_missing_from_the_cell_is_skipped_with_its_reason(registry, tmp_path):
    absent = [n for n, mod in MODULES.items() if not engines.have(mod)]
    if not absent:
        pytest.skip("every engine is installed in the test interpreter")
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
    for name in absent:
        assert "not installed" in rec.facts["inference"][name]["skipped"]
    assert {r["outcome"] for r in rec.records} == {"skipped"}


def test_export_engines_without_an_export_are_unavailable(tmp_path):
    for name in engines_extra.EXPORT_ENGINES:
        eng = engines_extra.ADAPTERS[name]({"model_dir": str(tmp_path), "exports": {}}, {})
        with pytest.raises(engines.EngineUnavailable, match="model_exports.ensure_export"):
            eng.export_dir  # noqa: B018
        eng = engines_extra.ADAPTERS[name]({"model_dir": str(tmp_path), "exports": {name: str(tmp_path)}}, {})
        assert eng.export_dir == str(tmp_path)
        eng = engines_extra.ADAPTERS[name]({"model_dir": str(tmp_path)}, {"export_dir": str(tmp_path)})
        assert eng.export_dir == str(tmp_path)


def test_top_k_from_raw_logits_is_a_log_softmax_best_first_ties_by_id():
    np = pytest.importorskip("numpy")
    row = np.array([0.0, 2.0, 1.0, 2.0, -1.0], dtype=np.float32)
    top = engines_extra._topk_from_logits(row, 3)
    assert [t for t, _ in top] == [1, 3, 2]
    assert abs(sum(np.exp([lp for _, lp in engines_extra._topk_from_logits(row, 5)])) - 1.0) < 1e-4


def test_prompt_divergence_names_the_first_differing_token():
    msg = engines_extra._first_diff([1, 2, 3, 4], [1, 2, 9, 4])
    assert "prompt token 2" in msg and "golden [1, 2, 3, 4]" in msg and "engine [1, 2, 9, 4]" in msg


# --------------------------------------------------------------------------- exports (pure parts)


def test_export_key_changes_with_every_input():
    base = dict(engine="onnxruntime-genai", model_hash="m", pins={"onnx": "1.0"}, python="3.11", command=("a", "b"))
    k = me.export_key(**base)
    assert k == me.export_key(**{**base, "pins": {"onnx": "1.0"}})
    for change in (
        {"engine": "openvino-genai"},
        {"model_hash": "n"},
        {"pins": {"onnx": "1.1"}},
        {"python": "3.12"},
        {"command": ("a", "c")},
    ):
        assert me.export_key(**{**base, **change}) != k


def test_rope_theta_is_added_only_where_transformers_5_left_it_out(tmp_path):
    assert me.patched_config({"rope_theta": 1.0}) is None
    assert me.patched_config({"hidden_size": 8}) is None
    assert me.patched_config({"rope_parameters": {"rope_theta": 5e5}})["rope_theta"] == 5e5
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"rope_parameters": {"rope_theta": 10.0}}))
    (src / "model.safetensors").write_bytes(b"w")
    work = tmp_path / "work"
    work.mkdir()
    staged = me._stage(src, work)
    assert staged != src and json.loads((staged / "config.json").read_text())["rope_theta"] == 10.0
    assert (staged / "model.safetensors").resolve() == (src / "model.safetensors").resolve()
    (src / "config.json").write_text(json.dumps({"rope_theta": 10.0}))
    assert me._stage(src, tmp_path / "work2") == src


def test_exporters_drop_torchvision_and_pin_the_engine_version():
    pins = (("torch", "2.13.0+cpu"), ("torchvision", "0.29.2"), ("openvino", "2026.4.1"))
    assert me.drop_pins(pins, me.EXPORTERS["openvino-genai"].drop) == (pins[0], pins[2])
    reqs = me.EXPORTERS["onnxruntime-genai"].requirements_for("0.18.0", "5.24.0")
    assert "onnxruntime-genai==0.18.0" in reqs and "transformers==5.24.0" in reqs
    assert "openvino-genai==2026.4.1.0" in me.EXPORTERS["openvino-genai"].requirements_for("2026.4.1.0", "5")
    with pytest.raises(ValueError, match="no exporter"):
        me.exporter("mistralrs")


# --------------------------------------------------------------------------- for real (slow)


def _engine_python(name: str) -> Path:
    """A uv environment with only the engine's wheel (and what it pulls)."""
    from matrix.env import uv as envs

    lock = _or_skip(envs.resolve, [f"{name}=={VERSIONS[name]}"], python="3.11", overrides=["torch==2.13.0+cpu"])
    if isinstance(lock, envs.Unresolvable):
        pytest.skip(f"{name}=={VERSIONS[name]} cannot be installed here: {lock.reason[:300]}")
    t = time.perf_counter()
    env = _or_skip(envs.ensure, lock)
    print(f"{name} environment: {time.perf_counter() - t:.1f}s (created={env.created})")
    return env.python


def run_probe(python: Path, job: dict, tmp_path: Path) -> dict:
    from tests.conftest import probe_result

    return probe_result(python, job)


@pytest.fixture(scope="module")
def goldens(model, reference_python):
    from tests.conftest import fresh_goldens

    return fresh_goldens(model, reference_python, CASE_IDS)


def check(
    python: Path,
    model,
    cases: list,
    engine_specs: list,
    tmp_path: Path,
    exports: dict | None = None,
    stages=("inference",),
) -> dict:
    job = {
        "mode": "check",
        "model_dir": str(model.path),
        "stages": list(stages),
        "cases": cases,
        "gen_cases": [{"id": i} for i in CASE_IDS],
        "engines": engine_specs,
        "exports": exports or {},
    }
    t = time.perf_counter()
    result = run_probe(python, job, tmp_path)
    facts = result["facts"]["inference"]
    print(f"probe {engine_specs}: {time.perf_counter() - t:.1f}s")
    print(json.dumps(facts, indent=1, sort_keys=True, default=str))
    for r in result["records"]:
        if r["outcome"] != "pass" or r.get("level") not in (None, "L0"):
            print("RECORD", json.dumps(r)[:600])
    return result


def _checks(result) -> dict:
    return {(r["case"], r["check"]): r for r in result["records"]}


def _assert_engine(result, name: str, levels=("L0", "L1")) -> dict:
    facts = result["facts"]["inference"][name]
    for key in ("skipped", "infra", "crash"):
        assert key not in facts, f"{name}: {key}: {facts[key]}"
    assert result["stages"]["inference"]["outcome"] == "pass", [r for r in result["records"] if r["outcome"] != "pass"]
    assert facts["level"] in levels, facts
    checks = _checks(result)
    assert all(checks[(i, f"{name}:determinism")]["outcome"] == "pass" for i in CASE_IDS)
    return facts


@pytest.mark.slow
@pytest.mark.parametrize("source", ["safetensors", "gguf"])
def test_mistralrs_against_the_transformers_goldens(goldens, model, tmp_path, source):
    python = _engine_python("mistralrs")
    result = check(python, model, goldens, [{"name": "mistralrs", "source": source}], tmp_path)
    facts = _assert_engine(result, "mistralrs")
    assert facts["source"] == source and facts["kv_cache"].startswith("f32")
    checks = _checks(result)
    assert all(checks[(i, "mistralrs")]["prompt_kind"] == "text" for i in CASE_IDS)


@pytest.mark.slow
def test_onnxruntime_genai_on_its_builder_export_against_the_transformers_goldens(goldens, model, tmp_path):
    from matrix.declare import loader

    python = _engine_python("onnxruntime-genai")
    t = time.perf_counter()
    export = _or_skip(
        me.ensure_export,
        model.path,
        "onnxruntime-genai",
        VERSIONS["onnxruntime-genai"],
        reference=loader.load_default().reference,
    )
    print(f"onnxruntime-genai export: {time.perf_counter() - t:.1f}s (created={export.created})")
    assert (export.path / "genai_config.json").is_file()
    # made once: the same model and exporter lock give the same directory
    assert (
        me.ensure_export(
            model.path, "onnxruntime-genai", VERSIONS["onnxruntime-genai"], reference=loader.load_default().reference
        ).path
        == export.path
    )
    result = check(
        python,
        model,
        goldens,
        ["onnxruntime-genai"],
        tmp_path,
        exports={"onnxruntime-genai": str(export.path)},
        stages=("inference", "postprocess"),
    )
    facts = _assert_engine(result, "onnxruntime-genai")
    assert facts["first_divergence"] == []
    # identical ids, but its decode stops at the first U+FFFD: each such case is a postprocess
    # failure of the engine's own detokenization (a difference the page lists as a finding)
    checks = _checks(result)
    texts = {i for i in CASE_IDS if checks[(i, "onnxruntime-genai")]["level"] == "L1"}
    assert texts, "the tiny model's generations end in partial UTF-8; the engine's text should differ"
    for i in CASE_IDS:
        rec = checks.get((i, "onnxruntime-genai:text"))
        assert (rec is not None) == (i in texts)
        if rec:
            assert rec["stage"] == "postprocess" and rec["outcome"] == "fail" and rec["klass"] == "backend-specific"
    # ids exact; top-k from the engine's own logits, close to the reference's
    assert all(_checks(result)[(i, "onnxruntime-genai")]["max_logprob_delta"] < 1e-3 for i in CASE_IDS)


@pytest.mark.slow
def test_openvino_genai_on_an_optimum_intel_export_against_the_transformers_goldens(goldens, model, tmp_path):
    from matrix.declare import loader

    python = _engine_python("openvino-genai")
    t = time.perf_counter()
    try:
        export = _or_skip(
            me.ensure_export,
            model.path,
            "openvino-genai",
            VERSIONS["openvino-genai"],
            reference=loader.load_default().reference,
        )
    except me.ExportError as exc:
        pytest.skip(f"finding: the optimum-intel export fails on the tiny model: {str(exc)[-600:]}")
    print(f"openvino-genai export: {time.perf_counter() - t:.1f}s (created={export.created})")
    result = check(python, model, goldens, ["openvino-genai"], tmp_path, exports={"openvino-genai": str(export.path)})
    facts = _assert_engine(result, "openvino-genai")
    assert facts["properties"]["KV_CACHE_PRECISION"] == "f32"
    checks = _checks(result)
    # no top-k to judge a divergence by (one-sided at best): on the tiny model every id is identical
    assert all(checks[(i, "openvino-genai")]["step"] is None for i in CASE_IDS)
