"""The tokenize stage: for real in uv environments (two tokenizers, two transformers) on the tiny
model, and in-process with fake tokenizers for the failure classes (double BOS, id mismatch...)."""

from __future__ import annotations

import json
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

from matrix import suites, tinymodel
from matrix.cell.run import PROBE_DIR, run_probe
from matrix.declare.loader import load_default
from matrix.env import uv as envs

sys.path.insert(0, str(PROBE_DIR))
import stage_tokenize  # the probe's own module, standard library only
from probe import Recorder

CELLS = {  # two versions of each library; transformers 5.24 needs tokenizers >= 0.23.1
    "tokenizers-0.23.2+transformers-5.23.0": ["tokenizers==0.23.2", "transformers==5.23.0"],
    "tokenizers-0.23.3+transformers-5.24.0": ["tokenizers==0.23.3", "transformers==5.24.0"],
}
FRONT_ENDS = ["tokenizers", "transformers", "transformers-slow", "sentencepiece", "tiktoken"]
TRICKY = stage_tokenize.load_tricky()


# --------------------------------------------------------------------------- real environments


@pytest.fixture(scope="module")
def reference():
    return load_default().reference


@pytest.fixture(scope="module")
def model(reference):
    from matrix.app.job import MODEL_PARTS  # the model the goldens were made for

    return tinymodel.ensure(arch="qwen2", parts=MODEL_PARTS, reference=reference)


def nfc_changes(text: str) -> bool:
    """transformers 5 loads this qwen2 checkpoint's tokenizer as Qwen2Tokenizer, which adds an
    NFC normalizer that tokenizer.json lacks: exactly these texts tokenize differently."""
    return unicodedata.normalize("NFC", text) != text


@pytest.fixture(scope="module")
def golden_cases(model):
    """Cases with golden renders and ids made for this very model (the committed goldens)."""
    suite = suites.load("core")
    goldens = suites.load_goldens(suite, "tiny-qwen2")
    if goldens is None or goldens.model_hash != model.model_hash:
        pytest.fail("the committed goldens are not for this tiny model: run `python3 -m matrix.app.cli goldens`")
    cases = [
        c
        for c in suites.cases_with_goldens(suite, goldens)
        if "render" in c["expect"] and "ids" in c["expect"] and "tokenize" in c.get("stages", ["template", "tokenize"])
    ]
    assert len(cases) >= 5
    return cases, goldens


def env_python(pins: list[str]) -> Path:
    lock = envs.resolve(pins, python="3.11")
    assert isinstance(lock, envs.Lock), lock
    return envs.ensure(lock).python


def job(model, cases, mode="check", tricky=None, tokenizers=FRONT_ENDS) -> dict:
    return {
        "mode": mode,
        "model_dir": str(model.path),
        "stages": ["tokenize"],
        "tokenizers": list(tokenizers),
        "golden_tokenizer": "tokenizers",
        "cases": cases,
        "tricky": tricky or {},
        "report_versions": ["tokenizers", "transformers"],
    }


@pytest.fixture(scope="module")
def tricky_goldens(model, golden_cases, reference):
    """The goldens' ``tricky`` section when the committed file has one; else what the reference
    path produces in golden mode (``_tricky/<name>`` pseudo-cases)."""
    cases, goldens = golden_cases
    committed = json.loads(goldens.path.read_text(encoding="utf-8")).get("tricky")
    if committed:
        return committed
    pins = [f"{n}=={reference[n]}" for n in ("tokenizers", "transformers")]
    result, log = run_probe(env_python(pins), job(model, cases, mode="golden", tokenizers=["tokenizers"]))
    assert result is not None, log
    produced = result["produced"]
    assert all(c["id"] in produced for c in cases)
    return {k[len("_tricky/") :]: v for k, v in produced.items() if k.startswith("_tricky/")}


@pytest.fixture(scope="module", params=sorted(CELLS))
def cell_result(request, model, golden_cases, tricky_goldens):
    pins = CELLS[request.param]
    result, log = run_probe(env_python(pins), job(model, golden_cases[0], tricky=tricky_goldens))
    assert result is not None, log
    return pins, result


def test_each_cell_runs_the_pinned_versions(cell_result):
    pins, r = cell_result
    want = dict(p.split("==") for p in pins)
    assert r["versions"] == want


def test_every_check_passes_against_the_goldens_but_where_nfc_changes_the_text(
    cell_result, golden_cases, tricky_goldens
):
    _, r = cell_result
    by = {(x["case"], x["check"]): x for x in r["records"]}
    assert len(by) == len(r["records"])  # (case, stage, check) is the store's key: never twice
    failed = {(x["case"], x["check"]) for x in r["records"] if x["outcome"] != "pass"}
    expected = {(c["id"], "transformers") for c in golden_cases[0] if nfc_changes(c["expect"]["render"])}
    expected |= {("_tricky/" + t["name"], "transformers") for t in TRICKY if nfc_changes(t["text"])}
    assert expected and failed == expected
    assert all(by[k].get("klass") == "mismatch" for k in failed)
    for fe in ("tokenizers", "transformers"):
        for case in golden_cases[0]:
            assert by[(case["id"], fe + ":bos")]["bos_count"] == 0
        for item in TRICKY:
            rec = by[("_tricky/" + item["name"], fe)]
            if (rec["case"], fe) not in expected:
                assert rec["outcome"] == "pass" and rec["detail"] == ""  # compared with a golden, not a peer
            if item.get("special"):
                assert by[("_tricky/" + item["name"], fe + ":literal")]["outcome"] == "pass"
    assert set(tricky_goldens) == {t["name"] for t in TRICKY}


def test_bos_count_is_a_fact_and_no_bos_is_added(cell_result):
    _, r = cell_result
    assert r["facts"]["bos_count"] == {"tokenizers": 0, "transformers": 0}
    assert r["facts"]["adds_bos"] == {"tokenizers": False, "transformers": False}


def test_special_tokens_parse_to_one_id_and_split_when_literal(cell_result, model):
    _, r = cell_result
    added = json.loads((model.path / "tokenizer.json").read_text())["added_tokens"]
    im_end = next(t["id"] for t in added if t["content"] == "<|im_end|>")
    facts = r["facts"]["special_tokens"]
    for fe in ("tokenizers", "transformers"):
        seen = facts[fe]["<|im_end|>"]
        assert seen["parsed"] == [im_end]
        assert len(seen["literal"]) > 1 and im_end not in seen["literal"]
    assert facts["tokenizers"] == facts["transformers"]
    special = next(t for t in TRICKY if t["name"] == "special-token-text")
    by = {(x["case"], x["check"]): x for x in r["records"]}
    assert by[("_tricky/special-token-text", "transformers:literal")]["outcome"] == "pass"
    assert "<|im_end|>" in special["text"]


def test_fingerprints_differ_exactly_by_the_nfc_normalizer(cell_result):
    _, r = cell_result
    fps = r["facts"]["tokenizer_fingerprint"]
    assert set(fps) == {"tokenizers", "transformers"}
    assert nfc_changes(stage_tokenize.FINGERPRINT_TEXT) and fps["tokenizers"] != fps["transformers"]


def test_front_ends_the_model_cannot_use_are_named_not_recorded(cell_result):
    pins, r = cell_result
    skipped = r["facts"]["tokenizer_skipped"]
    version = dict(p.split("==") for p in pins)["transformers"]
    assert f"transformers {version} gives the fast" in skipped["transformers-slow"]
    assert "tokenizer.model" in skipped["sentencepiece"] and "tiktoken" in skipped["tiktoken"]
    checks = {x["check"].split(":")[0] for x in r["records"]}
    assert checks == {"tokenizers", "transformers"}


def test_fingerprints_agree_across_versions(model, golden_cases, tricky_goldens):
    fps: dict[str, set] = {}
    for pins in CELLS.values():
        result, log = run_probe(env_python(pins), job(model, [], tokenizers=["tokenizers", "transformers"]))
        assert result is not None, log
        for front_end, fp in result["facts"]["tokenizer_fingerprint"].items():
            fps.setdefault(front_end, set()).add(fp)
    assert {fe: len(v) for fe, v in fps.items()} == {"tokenizers": 1, "transformers": 1}


def test_bench_in_process_over_500_texts(model, reference):
    pins = [f"{n}=={reference[n]}" for n in ("tokenizers", "transformers")]
    proc = subprocess.run(
        [str(env_python(pins)), "-I", str(PROBE_DIR / "bench_tokenize.py"), str(model.path), "--n", "500"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"tokenize stage, tokenizers front end: {out['texts_per_s']} texts/s over {out['texts']} texts")
    assert out["outcome"] == "pass" and out["texts"] == 500 and out["texts_per_s"] > 0


# --------------------------------------------------------------------------- fake tokenizers, in-process

BOS, IM_END = "<|begin_of_text|>", "<|im_end|>"
SPECIALS = {BOS: 1000, IM_END: 1001}


def fake(
    name="fake",
    *,
    add_bos=False,
    parse_specials=True,
    literal=True,
    literal_ignored=False,
    shift_char=None,
    drop_on_decode=None,
    crash_on=None,
):
    """A character-level tokenizer: one id per character (its code point), specials parsed."""
    inverse = {v: k for k, v in SPECIALS.items()}

    def encode(text, add_special_tokens=False, parse=parse_specials):
        if crash_on and crash_on in text:
            raise RuntimeError("tokenizer panicked")
        ids, i = [], 0
        while i < len(text):
            tok = next((t for t in SPECIALS if parse and text.startswith(t, i)), None)
            if tok:
                ids.append(SPECIALS[tok])
                i += len(tok)
            else:
                ids.append(ord(text[i]) + (1 if text[i] == shift_char else 0))
                i += 1
        return ([SPECIALS[BOS]] if add_special_tokens and add_bos else []) + ids

    def decode(ids):
        text = "".join(inverse.get(i) or chr(i) for i in ids)
        return text.replace(drop_on_decode, "") if drop_on_decode else text

    lit = None
    if literal:

        def lit(text):
            return encode(text, parse=literal_ignored)

    return stage_tokenize.FrontEnd(
        name, encode, decode, encode_literal=lit, bos_id=SPECIALS[BOS], specials=SPECIALS, cls="Fake"
    )


def run_fake(tmp_path, fronts, cases=(), mode="check", tricky=(), tricky_goldens=None):
    rec = Recorder(mode)
    j = {
        "mode": mode,
        "model_dir": str(tmp_path),
        "tokenizers": [],
        "cases": list(cases),
        "tricky": tricky_goldens or {},
        "golden_tokenizer": next(iter(fronts)),
    }
    stage_tokenize.run(j, rec, front_ends=fronts, tricky=list(tricky))
    return rec, {(r["case"], r["check"]): r for r in rec.records}


def case(cid, render, ids=None):
    expect = {"render": render}
    if ids is not None:
        expect["ids"] = ids
    return {"id": cid, "messages": [], "expect": expect}


def ords(text):
    return [ord(c) for c in text]


def test_double_bos_is_caught_and_counted(tmp_path):
    render = BOS + "Hi" + IM_END
    rec, by = run_fake(tmp_path, {"fake": fake(add_bos=True)}, [case("c1", render, [1000, *ords("Hi"), 1001])])
    r = by[("c1", "fake:bos")]
    assert (r["stage"], r["outcome"], r["klass"], r["bos_count"]) == ("tokenize", "fail", "double-bos", 2)
    assert "2 BOS ids (1000)" in r["detail"] and "1 from the text itself, 1 added by the tokenizer" in r["detail"]
    assert "first divergence at token 1" in r["detail"]
    assert rec.facts["bos_count"] == {"fake": 2} and rec.facts["adds_bos"] == {"fake": True}
    assert by[("c1", "fake")]["outcome"] == "pass"  # the ids without special tokens are right
    assert rec.stage_summary(["tokenize"])["tokenize"]["outcome"] == "fail"


def test_one_bos_added_by_the_tokenizer_passes(tmp_path):
    rec, by = run_fake(tmp_path, {"fake": fake(add_bos=True)}, [case("c1", "Hi", ords("Hi"))])
    assert by[("c1", "fake:bos")]["outcome"] == "pass" and rec.facts["bos_count"] == {"fake": 1}


def test_id_mismatch_names_case_check_and_first_divergent_token(tmp_path):
    golden = ords("Hello")
    rec, by = run_fake(tmp_path, {"fake": fake(shift_char="l")}, [case("greeting", "Hello", golden)])
    r = by[("greeting", "fake")]
    assert (r["stage"], r["outcome"], r["klass"]) == ("tokenize", "fail", "mismatch")
    assert r["detail"].startswith("first divergence at token 2 (expected 5 ids, got 5)")
    assert str(golden[:6]) in r["detail"]


def test_round_trip_failure_names_the_first_divergent_character(tmp_path):
    rec, by = run_fake(tmp_path, {"fake": fake(drop_on_decode="\u200b")}, [case("zw", "a\u200bb", ords("a\u200bb"))])
    r = by[("zw", "fake")]
    assert (r["outcome"], r["klass"]) == ("fail", "round-trip")
    assert "decode round trip: first divergence at char 1" in r["detail"]


def test_special_token_not_parsed_is_caught(tmp_path):
    rec, by = run_fake(tmp_path, {"fake": fake(parse_specials=False)})
    r = by[("_special/" + IM_END, "fake:special")]
    assert (r["outcome"], r["klass"]) == ("fail", "special-parse")
    assert "first divergence at token 0" in r["detail"]


def test_literal_mode_that_still_parses_is_caught(tmp_path):
    rec, by = run_fake(tmp_path, {"fake": fake(literal_ignored=True)})
    r = by[("_special/" + IM_END, "fake:special")]
    assert (r["outcome"], r["klass"]) == ("fail", "special-literal")
    assert "still gives the special id 1001" in r["detail"]


def test_special_tokens_both_ways_are_facts(tmp_path):
    rec, by = run_fake(tmp_path, {"fake": fake()})
    assert rec.facts["special_tokens"]["fake"][IM_END] == {"parsed": [1001], "literal": ords(IM_END)}
    assert by[("_special/" + IM_END, "fake:special")]["outcome"] == "pass"


def test_no_literal_mode_still_checks_parsing(tmp_path):
    rec, by = run_fake(tmp_path, {"fake": fake(literal=False)})
    r = by[("_special/" + IM_END, "fake:special")]
    assert r["outcome"] == "pass" and "no literal mode" in r["detail"]


def test_tricky_texts_against_goldens_and_literal_goldens(tmp_path):
    items = [{"name": "st", "text": "a" + IM_END, "special": True}, {"name": "sp", "text": " x"}]
    goldens = {
        "st": {"text": "a" + IM_END, "ids": [97, 1001], "ids_literal": ords("a" + IM_END)},
        "sp": {"text": " x", "ids": [32, 121]},
    }
    rec, by = run_fake(tmp_path, {"fake": fake()}, tricky=items, tricky_goldens=goldens)
    assert by[("_tricky/st", "fake")]["outcome"] == "pass"
    assert by[("_tricky/st", "fake:literal")]["outcome"] == "pass"
    r = by[("_tricky/sp", "fake")]
    assert (r["outcome"], r["klass"]) == ("fail", "mismatch") and "first divergence at token 1" in r["detail"]


def test_stale_tricky_golden_is_named(tmp_path):
    rec, by = run_fake(
        tmp_path,
        {"fake": fake()},
        tricky=[{"name": "t", "text": "new"}],
        tricky_goldens={"t": {"text": "old", "ids": ords("old")}},
    )
    r = by[("_tricky/t", "fake")]
    assert (r["outcome"], r["klass"]) == ("fail", "stale-golden") and "regenerate goldens" in r["detail"]


def test_without_goldens_front_ends_are_compared_with_each_other(tmp_path):
    fronts = {"a": fake("a"), "b": fake("b", shift_char="y")}
    rec, by = run_fake(tmp_path, fronts, tricky=[{"name": "t", "text": "xyz"}])
    assert by[("_tricky/t", "a")]["detail"] == "no golden: round trip only"
    r = by[("_tricky/t", "b")]
    assert (r["outcome"], r["klass"]) == ("fail", "mismatch")
    assert r["detail"].startswith("(no golden: compared with a) first divergence at token 1")


def test_a_crashing_tokenizer_is_a_result(tmp_path):
    rec, by = run_fake(tmp_path, {"fake": fake(crash_on="boom")}, [case("c1", "boom", ords("boom"))])
    r = by[("c1", "fake")]
    assert (r["outcome"], r["klass"]) == ("fail", "crash") and "RuntimeError: tokenizer panicked" in r["detail"]


def test_golden_mode_produces_case_ids_and_tricky_pseudo_cases(tmp_path):
    items = [{"name": "st", "text": "a" + IM_END, "special": True}]
    rec, _ = run_fake(tmp_path, {"fake": fake()}, [case("c1", "Hi")], mode="golden", tricky=items)
    assert rec.produced["c1"] == {"ids": ords("Hi")}
    assert rec.produced["_tricky/st"] == {"text": "a" + IM_END, "ids": [97, 1001], "ids_literal": ords("a" + IM_END)}


def test_front_ends_the_model_does_not_use_skip_with_a_reason(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text("{}")
    rec = Recorder("check")
    stage_tokenize.run(
        {"model_dir": str(tmp_path), "tokenizers": ["sentencepiece", "tiktoken"], "cases": []}, rec, tricky=[]
    )
    assert rec.records == []
    assert "no tokenizer.model" in rec.facts["tokenizer_skipped"]["sentencepiece"]
    assert "no tiktoken BPE file" in rec.facts["tokenizer_skipped"]["tiktoken"]


def test_tricky_texts_file_is_well_formed():
    names = [t["name"] for t in TRICKY]
    assert len(names) == len(set(names)) >= 15
    for t in TRICKY:
        assert set(t) <= {"name", "text", "why", "special"} and t["why"]
        t["text"].encode("utf-8")  # no lone surrogates: every text is valid UTF-8
    texts = "".join(t["text"] for t in TRICKY)
    for needle in ("\u200d", "e\u0301", "\u00a0", "\u200b", "\r\n", "\t", IM_END, "  "):
        assert needle in texts
    assert any(t["text"].startswith(" ") for t in TRICKY) and max(len(t["text"]) for t in TRICKY) >= 1000


@pytest.mark.slow
def test_llama_cpp_own_tokenizer_matches_the_golden_ids(model, golden_cases, tricky_goldens):
    """The engine's own tokenizer (llama.cpp, from the GGUF) on the golden prompts: every id
    matches; llama-cpp-python 0.2.90's detokenize drops control tokens, which the round trip
    names (a real limitation of that release)."""
    from tests.conftest import llama_env

    cases, _ = golden_cases
    result, log = run_probe(llama_env(), job(model, cases, tricky=tricky_goldens, tokenizers=["llama-cpp"]))
    assert result is not None, log
    recs = [x for x in result["records"] if x["check"] == "llama-cpp" and not x["case"].startswith("_tricky/")]
    assert len(recs) == len(cases)
    assert all(x["outcome"] == "pass" or x.get("klass") == "round-trip" for x in recs)
    controls = ("<|im_start|>", "<|im_end|>")
    for case, rec in zip(sorted(cases, key=lambda c: c["id"]), sorted(recs, key=lambda r: r["case"])):
        assert (rec["outcome"] == "fail") == any(t in case["expect"]["render"] for t in controls), rec
    assert result["facts"]["tokenizer_fingerprint"]["llama-cpp"]
