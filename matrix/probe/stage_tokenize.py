"""Tokenize stage: every tokenizer front end of the cell on the golden renders and on fixed tricky texts.

Front ends (``job["tokenizers"]``): ``tokenizers`` (``Tokenizer.from_file``), ``transformers``
(``AutoTokenizer``, fast), ``transformers-slow`` (``use_fast=False``), and the hooks
``sentencepiece`` and ``tiktoken``. A front end the model cannot use (no slow tokenizer, no
SentencePiece or tiktoken file) is not a result: it is named with its reason in the fact
``tokenizer_skipped`` and adds no record, so it never turns a passing stage into ``skipped``.
Tokenizer libraries are imported lazily, inside the cell's environment.

Checks, one record per (case, stage, check):

- ``<front>`` on each golden case: ids of the render (``add_special_tokens=False``) against the
  golden ids, then the decode round trip (klass ``mismatch`` / ``round-trip``);
- ``<front>:bos`` on each golden case: the render encoded with ``add_special_tokens=True``; the
  BOS ids at its start are counted (fact ``bos_count``) and two or more fail (klass ``double-bos``:
  the template already emits BOS and the tokenizer adds another);
- ``<front>`` on ``_tricky/<name>``: the texts of ``tricky_texts.json`` against their goldens
  (``job["tricky"]``: name -> {"ids", "ids_literal", "text"}); with no golden, against the first
  front end that ran; then the round trip. ``<front>:literal`` on texts marked ``special``: the
  ids with special-token text read literally (``split_special_tokens``);
- ``<front>:special`` on ``_special/<token>``: each special token's text encodes to its one id
  when parsed, and to several ids without it, decoding back, when read literally (facts
  ``special_tokens``; klass ``special-parse`` / ``special-literal``).

Facts per front end: ``tokenizer_fingerprint`` (hash of the ids of a fixed probe text),
``bos_count``, ``adds_bos``, ``special_tokens``, ``tokenizer_class``, ``tokenizer_skipped``.
Golden mode produces ``ids`` per case and ``_tricky/<name>`` entries with the reference front end.
"""

from __future__ import annotations

import hashlib
import json
import os

from probe import first_divergence, first_id_divergence

FINGERPRINT_TEXT = (
    "Hello, world! 你好 🙂 e\u0301 \u00a0nbsp \u200bzw  two  spaces\r\nCRLF <|im_start|>user\n"
    '{"name": "get_weather", "arguments": {"city": "Zürich"}}'
)
TRICKY_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tricky_texts.json")
TRICKY_PREFIX = "_tricky/"
SPECIAL_PREFIX = "_special/"
STAGE = "tokenize"


class NotApplicable(Exception):
    """The model does not use this front end (no slow tokenizer, no SentencePiece file...)."""


# --------------------------------------------------------------------------- model files


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _content(tok):
    return tok.get("content") if isinstance(tok, dict) else tok


def model_special_tokens(model_dir: str) -> tuple[str | None, dict]:
    """(BOS text, {special token text: id}) from the model's own files, standard library only."""
    config = _read_json(os.path.join(model_dir, "tokenizer_config.json"))
    smap = _read_json(os.path.join(model_dir, "special_tokens_map.json"))
    bos = _content(config.get("bos_token")) or _content(smap.get("bos_token"))
    specials = {}
    for t in _read_json(os.path.join(model_dir, "tokenizer.json")).get("added_tokens", []):
        if t.get("special"):
            specials[t["content"]] = t["id"]
    if not specials:
        for tid, t in (config.get("added_tokens_decoder") or {}).items():
            if isinstance(t, dict) and t.get("special"):
                specials[t["content"]] = int(tid)
    return bos, specials


def model_eos_token(model_dir: str) -> str | None:
    """The EOS text from the model's own files, standard library only."""
    config = _read_json(os.path.join(model_dir, "tokenizer_config.json"))
    smap = _read_json(os.path.join(model_dir, "special_tokens_map.json"))
    return _content(config.get("eos_token")) or _content(smap.get("eos_token"))


def load_tricky(path: str = TRICKY_PATH) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)["texts"]


# --------------------------------------------------------------------------- front ends


class FrontEnd:
    """One tokenizer front end: encode (parsed specials), literal encode, decode, BOS id, specials.

    ``encode_literal`` is None where the library cannot read special-token text literally;
    ``added_tokens`` is False where the front end cannot parse added tokens at all (a bare
    SentencePiece model): texts containing them are left to the front ends that can.
    """

    def __init__(
        self,
        name,
        encode,
        decode,
        *,
        encode_literal=None,
        bos_id=None,
        specials=None,
        cls: str = "",
        added_tokens: bool = True,
    ):
        self.name = name
        self.encode = encode  # (text, add_special_tokens: bool) -> list[int]
        self.decode = decode  # ids -> str (special tokens kept)
        self.encode_literal = encode_literal
        self.bos_id = bos_id
        self.specials = dict(specials or {})
        self.cls = cls
        self.added_tokens = added_tokens


def tokenizers_front(model_dir: str) -> FrontEnd:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    bos, specials = model_special_tokens(model_dir)
    post = getattr(tok, "post_process", None)
    last: list = [None, None]  # the last text encoded without special tokens, and its encoding

    def encode(text, add_special_tokens=False):
        """The stage encodes each text plain, then with special tokens (the BOS count): the second
        is the first's encoding through the tokenizer's own post-processor (``post_process``, what
        ``encode`` itself ends with), not a second pass over the text."""
        if add_special_tokens and post is not None and last[0] == text:
            return list(post(last[1], add_special_tokens=True).ids)
        enc = tok.encode(text, add_special_tokens=add_special_tokens)
        if not add_special_tokens:
            last[0], last[1] = text, enc
        return list(enc.ids)

    literal = None
    if hasattr(tok, "encode_special_tokens"):

        def literal(text):
            tok.encode_special_tokens = True
            try:
                return list(tok.encode(text, add_special_tokens=False).ids)
            finally:
                tok.encode_special_tokens = False

    return FrontEnd(
        "tokenizers",
        encode,
        lambda ids: tok.decode(ids, skip_special_tokens=False),
        encode_literal=literal,
        bos_id=tok.token_to_id(bos) if bos else None,
        specials=specials,
        cls="tokenizers.Tokenizer",
    )


def _transformers_front(name: str, tok) -> FrontEnd:
    specials = {}
    for tid, added in getattr(tok, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            specials[str(added)] = int(tid)

    def encode(text, add_special_tokens=False):
        return list(tok(text, add_special_tokens=add_special_tokens)["input_ids"])

    def literal(text):
        return list(tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])

    def decode(ids):
        return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    return FrontEnd(
        name, encode, decode, encode_literal=literal, bos_id=tok.bos_token_id, specials=specials, cls=type(tok).__name__
    )


def transformers_front(model_dir: str) -> FrontEnd:
    from transformers import AutoTokenizer

    return _transformers_front("transformers", AutoTokenizer.from_pretrained(model_dir))


def transformers_slow_front(model_dir: str) -> FrontEnd:
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir, use_fast=False)
    if getattr(tok, "is_fast", False):
        raise NotApplicable(
            f"transformers {transformers.__version__} gives the fast {type(tok).__name__} for use_fast=False: "
            "no slow (Python) tokenizer for this model"
        )
    return _transformers_front("transformers-slow", tok)


def sentencepiece_front(model_dir: str) -> FrontEnd:
    path = os.path.join(model_dir, "tokenizer.model")
    if not os.path.isfile(path):
        raise NotApplicable("the model ships no tokenizer.model: it does not use SentencePiece")
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=path)
    bos_id = sp.bos_id() if sp.bos_id() >= 0 else None

    def encode(text, add_special_tokens=False):
        return list(sp.encode(text, out_type=int, add_bos=bool(add_special_tokens and bos_id is not None)))

    return FrontEnd(
        "sentencepiece",
        encode,
        lambda ids: sp.decode(list(ids)),
        bos_id=bos_id,
        cls="sentencepiece.SentencePieceProcessor",
        added_tokens=False,
    )


def tiktoken_front(model_dir: str) -> FrontEnd:
    names = sorted(n for n in os.listdir(model_dir) if n.endswith(".tiktoken") or n == "tiktoken.model")
    if not names:
        raise NotApplicable(
            "the model ships no tiktoken BPE file (*.tiktoken, tiktoken.model): it does not use tiktoken"
        )
    config = _read_json(os.path.join(model_dir, "tokenizer_config.json"))
    pattern = config.get("pat_str")
    if not pattern:
        raise NotApplicable(f"{names[0]} has no split pattern (tokenizer_config.json pat_str) to load it with")
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe

    ranks = load_tiktoken_bpe(os.path.join(model_dir, names[0]))
    bos, specials = model_special_tokens(model_dir)
    enc = tiktoken.Encoding(name=names[0], pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
    bos_id = specials.get(bos) if bos else None

    def encode(text, add_special_tokens=False):
        ids = enc.encode(text, allowed_special="all")
        return ([bos_id] + ids) if add_special_tokens and bos_id is not None and config.get("add_bos_token") else ids

    return FrontEnd(
        "tiktoken",
        encode,
        lambda ids: enc.decode(list(ids)),
        encode_literal=lambda text: enc.encode(text, disallowed_special=()),
        bos_id=bos_id,
        specials=specials,
        cls="tiktoken.Encoding",
    )


def llama_cpp_front(model_dir: str) -> FrontEnd:
    """The engine's own tokenizer: llama.cpp's, from the GGUF vocabulary (llama-cpp-python)."""
    from llama_cpp import Llama

    path = os.path.join(model_dir, "model.gguf")
    if not os.path.isfile(path):
        raise NotApplicable(f"the model has no GGUF file ({path})")
    llm = Llama(model_path=path, vocab_only=True, verbose=False)
    bos, specials = model_special_tokens(model_dir)

    def encode(text, add_special_tokens=False):
        return list(llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True))

    def literal(text):
        return list(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def decode(ids):
        try:
            raw = llm.detokenize(list(ids), special=True)
        except TypeError:  # before 0.3 there is no switch: control tokens are dropped (the round trip says so)
            raw = llm.detokenize(list(ids))
        return raw.decode("utf-8", errors="replace")

    return FrontEnd(
        "llama-cpp",
        encode,
        decode,
        encode_literal=literal,
        bos_id=llm.token_bos() if bos else None,
        specials=specials,
        cls="llama_cpp.Llama",
    )


FRONT_ENDS = {
    "tokenizers": tokenizers_front,
    "llama-cpp": llama_cpp_front,
    "transformers": transformers_front,
    "transformers-slow": transformers_slow_front,
    "sentencepiece": sentencepiece_front,
    "tiktoken": tiktoken_front,
}
HOOKS = ("sentencepiece", "tiktoken")
"""Optional front ends: a missing package is a fact, not a skipped record."""
TOKENIZERS = FRONT_ENDS  # the former name


# --------------------------------------------------------------------------- checks


def fingerprint(ids) -> str:
    return hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest()[:16]


def leading(ids, token_id) -> int:
    n = 0
    while token_id is not None and n < len(ids) and ids[n] == token_id:
        n += 1
    return n


def _failure(exc: BaseException) -> str:
    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
        raise exc
    return f"{type(exc).__name__}: {exc}"


class _Checker:
    """The checks of one front end; records go to ``rec`` under stage ``tokenize``."""

    def __init__(self, fe: FrontEnd, rec, golden_mode: bool, golden_front: bool):
        self.fe, self.rec, self.golden_mode, self.golden_front = fe, rec, golden_mode, golden_front

    def add(self, case, suffix, outcome, detail="", **extra):
        check = self.fe.name + (":" + suffix if suffix else "")
        self.rec.add(case, STAGE, check, outcome, detail, **extra)

    def ids_and_round_trip(self, case: str, text: str, expect_ids, ids, *, suffix="", what="", decode_text=None):
        """ids against the expectation, then the decode round trip; one record."""
        if expect_ids is not None:
            diff = first_id_divergence(list(expect_ids), ids)
            if diff:
                self.add(case, suffix, "fail", what + diff, klass="mismatch")
                return False
        try:
            back = self.fe.decode(ids)
        except BaseException as exc:  # noqa: BLE001 - a decoder crash is a result
            self.add(case, suffix, "fail", "decode: " + _failure(exc), klass="crash")
            return False
        diff = first_divergence(text if decode_text is None else decode_text, back)
        if diff:
            self.add(case, suffix, "fail", "decode round trip: " + diff, klass="round-trip")
            return False
        return True

    def encode(self, case: str, text: str, suffix="", **kw):
        try:
            return self.fe.encode(text, **kw)
        except BaseException as exc:  # noqa: BLE001 - a tokenizer crash (even a Rust panic) is a result
            self.add(case, suffix, "fail", "encode: " + _failure(exc), klass="crash")
            return None

    def bos(self, case: str, text: str, plain_ids) -> int | None:
        """Encode with add_special_tokens=True and count BOS at the start; two is the double-BOS bug."""
        ids = self.encode(case, text, "bos", add_special_tokens=True)
        if ids is None:
            return None
        n = leading(ids, self.fe.bos_id)
        in_text = leading(plain_ids, self.fe.bos_id)
        if n >= 2:
            self.add(
                case,
                "bos",
                "fail",
                f"{n} BOS ids ({self.fe.bos_id}) at the start with add_special_tokens=True "
                f"({in_text} from the text itself, {n - in_text} added by the tokenizer): "
                + first_id_divergence(plain_ids, ids),
                klass="double-bos",
                bos_count=n,
            )
        else:
            self.add(case, "bos", "pass", f"{n} BOS at the start", bos_count=n)
        return n

    def special(self, token: str, token_id: int) -> dict:
        """A special token's text: its one id when parsed; several ids, decoding back, when literal."""
        case = SPECIAL_PREFIX + token
        out: dict = {}
        parsed = self.encode(case, token, "special")
        if parsed is None:
            return out
        out["parsed"] = parsed
        if parsed != [token_id]:
            self.add(
                case,
                "special",
                "fail",
                f"{token!r} parsed as special: " + first_id_divergence([token_id], parsed),
                klass="special-parse",
            )
            return out
        if self.fe.encode_literal is None:
            self.add(case, "special", "pass", "parsed to its id; this front end has no literal mode")
            return out
        try:
            literal = list(self.fe.encode_literal(token))
        except BaseException as exc:  # noqa: BLE001
            self.add(case, "special", "fail", "literal encode: " + _failure(exc), klass="crash")
            return out
        out["literal"] = literal
        if len(literal) < 2 or token_id in literal:
            self.add(
                case,
                "special",
                "fail",
                f"{token!r} read literally still gives the special id {token_id}: "
                + first_id_divergence(parsed, literal),
                klass="special-literal",
            )
            return out
        if self.ids_and_round_trip(case, token, None, literal, suffix="special", what="literal: "):
            self.add(case, "special", "pass", f"parsed to [{token_id}], literal to {len(literal)} ids")
        return out


def _front_end(name: str, job: dict, rec, given: dict | None):
    """The front end, or None after recording why it cannot run here."""
    if given and name in given:
        return given[name]
    factory = FRONT_ENDS.get(name)
    if factory is None:
        rec.add(
            "*",
            STAGE,
            name,
            "fail",
            f"unknown tokenizer front end {name!r}: one of {', '.join(FRONT_ENDS)}",
            klass="config",
        )
        return None
    try:
        return factory(job["model_dir"])
    except NotApplicable as exc:
        rec.facts.setdefault("tokenizer_skipped", {})[name] = str(exc)
    except ImportError as exc:
        if name in HOOKS:
            rec.facts.setdefault("tokenizer_skipped", {})[name] = f"not installed in this cell: {exc}"
        else:
            rec.add("*", STAGE, name, "skipped", f"{name} is not installed in this cell: {exc}")
    except BaseException as exc:  # noqa: BLE001 - a tokenizer that cannot load this model is a result
        rec.add("*", STAGE, name, "fail", "load: " + _failure(exc), klass="load")
    return None


def run(job: dict, rec, front_ends: dict | None = None, tricky: list | None = None) -> None:
    """``front_ends`` (name -> FrontEnd) and ``tricky`` replace the real ones in in-process tests."""
    golden_mode = rec.mode == "golden"
    golden_name = job.get("golden_tokenizer", "tokenizers")
    tricky = load_tricky() if tricky is None else tricky
    tricky_expect = job.get("tricky") or {}
    baseline: dict = {}  # tricky name -> (front end, ids, literal ids) of the first front end that ran
    names = list(job.get("tokenizers", ["tokenizers"]))
    names += [n for n in (front_ends or {}) if n not in names]
    for name in names:
        fe = _front_end(name, job, rec, front_ends)
        if fe is None:
            continue
        chk = _Checker(fe, rec, golden_mode, golden_mode and name == golden_name)
        specials = fe.specials or model_special_tokens(job["model_dir"])[1]
        facts = rec.facts
        facts.setdefault("tokenizer_class", {})[name] = fe.cls
        fp = chk.encode("*", FINGERPRINT_TEXT, "fingerprint") if fe.added_tokens else None
        if fp is not None:
            facts.setdefault("tokenizer_fingerprint", {})[name] = fingerprint(fp)
        probe_ids = chk.encode("*", "Hello", "bos", add_special_tokens=True)
        if probe_ids is not None:
            facts.setdefault("adds_bos", {})[name] = leading(probe_ids, fe.bos_id) > 0

        # the golden renders
        bos_counts = []
        for case in job["cases"]:
            if STAGE not in case.get("stages", ["template", STAGE]):
                continue
            cid = case["id"]
            expect = case.get("expect", {})
            text = expect.get("render")
            if text is None and golden_mode:  # the render the template stage just produced
                text = rec.produced.get(cid, {}).get("render")
            if text is None:
                chk.add(cid, "", "skipped", "no golden render to tokenize")
                continue
            if not fe.added_tokens and any(t in text for t in specials):
                continue  # a bare SentencePiece model cannot parse the template's control tokens
            ids = chk.encode(cid, text)
            if ids is None:
                continue
            if chk.golden_front:
                rec.produce(cid, "ids", ids)
            n = chk.bos(cid, text, ids)
            if n is not None:
                bos_counts.append(n)
            if "ids" not in expect and not golden_mode:
                chk.add(cid, "", "skipped", "no golden ids for this case")
                continue
            if chk.ids_and_round_trip(cid, text, expect.get("ids"), ids):
                chk.add(cid, "", "pass")
        if bos_counts:
            facts.setdefault("bos_count", {})[name] = max(bos_counts)

        # the tricky texts
        for item in tricky:
            _tricky(chk, item, tricky_expect.get(item["name"]), baseline)

        # special tokens: parsed vs literal
        if fe.added_tokens:
            seen = {}
            for token, token_id in sorted(specials.items(), key=lambda kv: kv[1]):
                seen[token] = chk.special(token, token_id)
            facts.setdefault("special_tokens", {})[name] = seen


def _tricky(chk: _Checker, item: dict, expect: dict | None, baseline: dict) -> None:
    name, text = item["name"], item["text"]
    case = TRICKY_PREFIX + name
    fe = chk.fe
    if not fe.added_tokens and ("<|" in text or item.get("special")):
        return
    ids = chk.encode(case, text)
    if ids is None:
        return
    literal = None
    if item.get("special") and fe.encode_literal is not None:
        try:
            literal = list(fe.encode_literal(text))
        except BaseException as exc:  # noqa: BLE001
            chk.add(case, "literal", "fail", "literal encode: " + _failure(exc), klass="crash")
    if chk.golden_front:
        chk.rec.produce(case, "text", text)
        chk.rec.produce(case, "ids", ids)
        if literal is not None:
            chk.rec.produce(case, "ids_literal", literal)
    against = ""
    if expect and expect.get("text", text) != text:
        chk.add(
            case,
            "",
            "fail",
            "the golden was made for another text: " + first_divergence(expect["text"], text) + "; regenerate goldens",
            klass="stale-golden",
        )
        return
    if expect and "ids" in expect:
        want, want_literal = expect["ids"], expect.get("ids_literal")
    elif name in baseline:
        against, want, want_literal = baseline[name]
    else:
        want = want_literal = None
    baseline.setdefault(name, (fe.name, ids, literal))
    what = f"(no golden: compared with {against}) " if against else ""
    if chk.ids_and_round_trip(case, text, want, ids, what=what):
        note = (
            f"no golden: equal to {against}" if against else ("" if want is not None else "no golden: round trip only")
        )
        chk.add(case, "", "pass", note)
    if literal is not None:
        if chk.ids_and_round_trip(case, text, want_literal, literal, suffix="literal", what="literal: " + what):
            chk.add(case, "literal", "pass", f"{len(ids)} ids parsed, {len(literal)} literal")
