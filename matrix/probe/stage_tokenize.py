"""Tokenize stage: each tokenizer of the cell on the golden prompts: ids, round trip, fingerprint."""

from __future__ import annotations

import hashlib
import os

from probe import first_divergence, first_id_divergence

FINGERPRINT_TEXT = (
    "Hello, world! 你好 🙂 e\u0301 \u00a0nbsp \u200bzw  two  spaces\r\nCRLF <|im_start|>user\n"
    "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\"}}"
)


def tokenizers_encoder(model_dir: str):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    return (lambda text: tok.encode(text, add_special_tokens=False).ids,
            lambda ids: tok.decode(ids, skip_special_tokens=False))


def transformers_encoder(model_dir: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return (lambda text: list(tok(text, add_special_tokens=False)["input_ids"]),
            lambda ids: tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))


TOKENIZERS = {"tokenizers": tokenizers_encoder, "transformers": transformers_encoder}


def fingerprint(ids) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]


def run(job: dict, rec) -> None:
    golden_mode = rec.mode == "golden"
    for name in job.get("tokenizers", ["tokenizers"]):
        try:
            encode, decode = TOKENIZERS[name](job["model_dir"])
        except ImportError as exc:
            rec.add("*", "tokenize", name, "skipped", f"{name} is not installed in this cell: {exc}")
            continue
        rec.facts.setdefault("tokenizer_fingerprint", {})[name] = fingerprint(encode(FINGERPRINT_TEXT))
        for case in job["cases"]:
            if "tokenize" not in case.get("stages", ["template", "tokenize"]):
                continue
            expect = case.get("expect", {})
            text = expect.get("render")
            if text is None and golden_mode:  # the render the template stage just produced
                text = rec.produced.get(case["id"], {}).get("render")
            if text is None:
                rec.add(case["id"], "tokenize", name, "skipped", "no golden render to tokenize")
                continue
            ids = encode(text)
            if golden_mode and name == job.get("golden_tokenizer", "tokenizers"):
                rec.produce(case["id"], "ids", ids)
            if "ids" not in expect:
                if not golden_mode:
                    rec.add(case["id"], "tokenize", name, "skipped", "no golden ids for this case")
                continue
            diff = first_id_divergence(expect["ids"], ids)
            if diff:
                rec.add(case["id"], "tokenize", name, "fail", diff, klass="mismatch")
                continue
            back = decode(ids)
            diff = first_divergence(text, back)
            if diff:
                rec.add(case["id"], "tokenize", name, "fail", "decode round trip: " + diff, klass="round-trip")
            else:
                rec.add(case["id"], "tokenize", name, "pass")
