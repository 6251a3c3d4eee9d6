"""Postprocess stage: what happens to tokens after the engine picked them. Detokenization (whole
and incremental), streaming vs non-streaming, stop strings and stop tokens, special tokens,
reasoning separation and tool-call parsing, each against the project's reference.

Standard library only at import time; tokenizers, transformers and llama-cpp-python are imported
lazily inside the cell's environment. A library the cell lacks is a fact (``postprocess.skipped``),
never a record, so it cannot turn a stage whose other checks ran into ``skipped``.

Job fields (all optional):

- ``engines`` (as the inference stage): ``llama-cpp-python`` (in-process), ``llama-cpp-server``,
  ``transformers-serve``, ``openai-endpoint``; ``engine_options`` merged under. Other names are
  ignored here (``transformers`` in-process is covered through its detokenizers and parsers).
- ``postprocess``: ``{"detokenizers": [...], "texts": {name: text}, "max_new_tokens": 24,
  "max_cases": 2, "cases": [ids], "logprobs": 5, "whitespace": "trim" | "strict"}``.
  ``detokenizers`` default: ``tokenizers`` (``decoders.DecodeStream``), ``transformers``
  (``TextStreamer``), ``llama-cpp`` (``Llama.detokenize`` bytes per token). ``texts`` replace
  the built-in multi-byte texts (CJK, emoji ZWJ sequences, combining marks). ``cases``: the ids
  of ``job["cases"]`` whose golden prompts drive the engines (default: those whose ``stages``
  name ``postprocess``, else ``inference``), at most ``max_cases``. ``whitespace``: ``trim``
  compares reasoning and content after stripping surrounding whitespace (a difference there is
  named in the detail and in the fact ``postprocess.whitespace_only``); ``strict`` fails it.
- ``model_dir``, ``gguf_path`` (default ``model_dir/model.gguf``), ``limits`` (as inference).

Checks, one record per (case, stage ``postprocess``, check); failure classes
``backend-specific`` (the library's own behaviour differs from the reference), ``protocol``
(the API's documented shape or semantics: stop string returned, finish_reason), ``configuration-
default`` (a default, e.g. special tokens skipped, decides the difference), ``crash``:

1. ``<engine>:stream`` (and ``:stream-logprobs``): the same greedy request streamed (SSE
   accumulated; in-process ``create_completion(stream=True)``) and not: text and finish_reason
   equal. Cases: the golden prompts and, where the engine can be made to emit a fixed text
   (llama-cpp-python: a logits processor forcing token ids; llama-cpp-server: a GBNF grammar
   matching the text), ``_forced/<text>`` with the expected text known.
2. ``<detokenizer>:incremental`` on ``_detok/<text>`` (fixed texts, and ``_detok/gen:<case>``
   the inference golden's generated ids): token ids fed one at a time; the concatenation must
   equal the full decode, with no U+FFFD the full decode lacks and no lost bytes.
3. ``<engine>:stop-string`` (a stop string spanning two tokens) and ``<engine>:stop-token:<id>``:
   the output is cut exactly before it and ``finish_reason`` is ``stop``. In-process
   ``transformers`` keeps the stop token/string in its ids by design; it is not judged here.
4. ``<detokenizer>:special`` and ``<engine>:special``: a text with control tokens
   (``<|im_start|>``) and non-special added tokens (``<think>``, ``<tool_call>``) decoded with
   ``skip_special_tokens`` true and false; the decode must be the text (kept) or the text without
   the control tokens (skipped), non-special added tokens always kept. The convention each one
   follows is the fact ``postprocess.special_convention``.
5. ``reasoning:<parser>`` on ``_reasoning/<name>``: reasoning vs content of fixed completions by
   the reference :func:`split_reasoning` vs the library's parser (transformers' response-template
   parser, whole and streamed chunk by chunk, as ``transformers serve`` runs it). The tiny random
   model never emits ``<think>`` by itself: the fact ``postprocess.reasoning_inputs`` says these
   are fixed texts.
6. ``tools:<parser>`` on ``_tools/<name>``: tool calls of fixed completions (single, parallel,
   nested JSON, unicode) by ``toolcalls.parse`` vs the library's parser.
"""

from __future__ import annotations

import json
import os
import time
import traceback

STAGE = "postprocess"
REPLACEMENT = "\ufffd"

TEXTS = {
    "cjk": "你好，世界！日本語のテキストと한국어 문장。繁體中文字「測試」",
    "emoji-zwj": "family 👨\u200d👩\u200d👧\u200d👦 flags 🇨🇭🇯🇵 thumbs 👍🏽 rainbow 🏳\ufe0f\u200d🌈 done",
    "combining": "e\u0301 a\u0308 n\u0303 Z\u0351\u0308\u0323 A\u030a vs \u00c5, ka\u0301n\u0303\u0327",
    "mixed": "Zürich → 東京 🙂 naïve café — ∑x² ≤ 1; Ελληνικά, русский, עברית, हिन्दी",
}
"""Multi-byte texts: byte-level BPE splits their characters across tokens (the hard case)."""

SPECIAL_TEXT = "<|im_start|>assistant\n<think>\nplan 计划\n</think>\n\n<tool_call>\n{}\n</tool_call>ok"

REASONING_TEXTS = {
    "think-then-answer": "<think>\nThe user greets; 先想一想 🙂.\n</think>\n\nHello! 你好",
    "no-think": "Just an answer, ñ and 🙂.",
    "empty-think": "<think>\n\n</think>\n\nAnswer only.",
    "think-then-tool": ("<think>\nNeed the weather.\n</think>\n\n<tool_call>\n"
                        '{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>'),
    "prefilled-open": "Reasoning that the prompt opened.\n</think>\n\nThe answer.",
}

TOOL_TEXTS = {
    "single": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
    "parallel": ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
                 '<tool_call>\n{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}\n</tool_call>'),
    "nested-unicode": ('<tool_call>\n{"name": "book", "arguments": {"guest": {"name": "Zoë 李", "tags": ["vip", "🙂"]}, '
                       '"nights": 2, "note": "quote \\" and \\\\ backslash", "opts": {"late": true, "floor": null}}}\n'
                       '</tool_call>'),
    "content-then-call": ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京"}}\n'
                          '</tool_call>'),
}

PARSER_PREFIX = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
"""The prompt before the fixed completions (parsers that read the prefill need it);
``_reasoning/prefilled-open`` adds ``<think>\\n`` to it, as thinking templates prefill."""

DEFAULT_DETOKENIZERS = ("tokenizers", "transformers", "llama-cpp")
ENGINES_HERE = ("llama-cpp-python", "llama-cpp-server", "transformers-serve", "openai-endpoint")


class Unavailable(Exception):
    """This library or engine is not in the cell (a fact, not a record)."""


# =========================================================================== pure helpers

def incremental_diff(pieces, full) -> str:
    """"" when the pieces of an incremental decode concatenate to ``full`` with no extra U+FFFD
    and no lost bytes; otherwise the first divergence. ``pieces`` are str (None = nothing yet)
    or bytes; ``full`` is str or bytes accordingly."""
    from probe import first_divergence

    got = [p for p in pieces if p]
    if isinstance(full, (bytes, bytearray)):
        joined = b"".join(got)
        if joined == full:
            return ""
        n = next((i for i, (a, b) in enumerate(zip(full, joined)) if a != b), min(len(full), len(joined)))
        lost = len(full) - len(joined)
        return (f"bytes differ at byte {n} (full decode {len(full)} bytes, pieces {len(joined)}"
                + (f": {lost} bytes lost" if lost > 0 else "") + f"): expected {bytes(full[max(0, n - 8):n + 8])!r}, "
                f"got {joined[max(0, n - 8):n + 8]!r}")
    joined = "".join(got)
    out = []
    if joined.count(REPLACEMENT) > full.count(REPLACEMENT):
        pos = 0
        for i, p in enumerate(pieces):
            if p and REPLACEMENT in p:
                out.append(f"U+FFFD in piece {i} ({p!r}) at char {pos + p.index(REPLACEMENT)}; the full decode has "
                           f"{full.count(REPLACEMENT)}")
                break
            pos += len(p or "")
    if joined != full:
        lost = len(full.encode("utf-8", "surrogatepass")) - len(joined.encode("utf-8", "surrogatepass"))
        out.append(first_divergence(full, joined) + (f"; {lost} bytes lost" if lost > 0 else ""))
    return "; ".join(out)


def split_reasoning(text: str, open_tag: str = "<think>", close_tag: str = "</think>"):
    """The project's reference: ``(reasoning or None, content)``, the inverse of the tiny model's
    template (``<think>\\n`` + reasoning + ``\\n</think>\\n\\n`` + content). A ``</think>`` without
    ``<think>`` closes reasoning the prompt opened (prefill); an unterminated ``<think>`` makes
    the rest reasoning and the content empty. Surrounding whitespace is stripped."""
    o = text.find(open_tag)
    c = text.find(close_tag)
    if o < 0 and c < 0:
        return None, text.strip()
    if o < 0 or (0 <= c < o):
        return text[:c].strip(), text[c + len(close_tag):].strip()
    before = text[:o]
    c = text.find(close_tag, o + len(open_tag))
    if c < 0:
        return text[o + len(open_tag):].strip(), before.strip()
    return text[o + len(open_tag):c].strip(), (before + text[c + len(close_tag):]).strip()


def parse_sse(lines):
    """Server-sent events: each ``data:`` payload decoded from JSON until ``[DONE]``. ``lines``
    are str or bytes without their newline; a payload that is not JSON raises ValueError."""
    events, buf = [], []
    for raw in list(lines) + [""]:
        line = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        line = line.rstrip("\r")
        if line == "":
            if buf:
                data = "\n".join(buf)
                buf = []
                if data.strip() == "[DONE]":
                    break
                events.append(json.loads(data))
            continue
        if line.startswith(":"):
            continue
        if line.startswith("data:"):
            buf.append(line[5:].lstrip(" ") if line[5:6] == " " else line[5:])
    return events


def accumulate(events: list, api: str = "completions") -> dict:
    """Streamed chunks → ``{"text", "finish_reason", "reasoning", "tool_calls", "chunks"}`` as the
    non-streamed answer would hold them (OpenAI semantics: deltas concatenate; tool-call deltas
    merge by index, arguments concatenate)."""
    text, reasoning, finish, calls = [], [], None, {}
    for ev in events:
        for ch in ev.get("choices") or []:
            if ch.get("finish_reason"):
                finish = ch["finish_reason"]
            if api == "chat":
                d = ch.get("delta") or {}
                if d.get("content"):
                    text.append(d["content"])
                if d.get("reasoning_content"):
                    reasoning.append(d["reasoning_content"])
                for tc in d.get("tool_calls") or []:
                    slot = calls.setdefault(tc.get("index", len(calls)), {"name": "", "arguments": ""})
                    fn = tc.get("function") or {}
                    slot["name"] += fn.get("name") or ""
                    slot["arguments"] += fn.get("arguments") or ""
            else:
                if ch.get("text"):
                    text.append(ch["text"])
    return {"text": "".join(text), "finish_reason": finish, "reasoning": "".join(reasoning) if reasoning else None,
            "tool_calls": [calls[k] for k in sorted(calls)] or None, "chunks": len(events)}


def chat_message(resp: dict) -> dict:
    ch = (resp.get("choices") or [{}])[0]
    msg = ch.get("message") or {}
    calls = [{"name": (c.get("function") or {}).get("name", ""), "arguments": (c.get("function") or {}).get("arguments", "")}
             for c in msg.get("tool_calls") or []] or None
    return {"text": msg.get("content") or "", "finish_reason": ch.get("finish_reason"),
            "reasoning": msg.get("reasoning_content") or None, "tool_calls": calls}


def stream_diff(plain: dict, streamed: dict) -> str:
    """"" when a streamed answer equals the plain one (text, reasoning, tool calls, finish_reason)."""
    from probe import first_divergence

    out = []
    if plain.get("text") != streamed.get("text"):
        out.append("text: " + (first_divergence(plain.get("text") or "", streamed.get("text") or "")
                               or f"{plain.get('text')!r} vs {streamed.get('text')!r}"))
    for f in ("reasoning", "tool_calls"):
        if (plain.get(f) or None) != (streamed.get(f) or None):
            out.append(f"{f}: {plain.get(f)!r} (plain) vs {streamed.get(f)!r} (streamed)")
    if plain.get("finish_reason") != streamed.get("finish_reason"):
        out.append(f"finish_reason {plain.get('finish_reason')!r} (plain) vs {streamed.get('finish_reason')!r} (streamed)")
    return "; ".join(out)


def stop_across(pieces: list[str], prefer: int | None = None):
    """A stop string that spans two tokens: the last char of one piece and the first of the next,
    at a boundary where its first occurrence in the text is exactly there. ``(stop, expected
    text before it, boundary index)`` or None. Pieces must be whole UTF-8 (no U+FFFD)."""
    text = "".join(pieces)
    offs, pos = [], 0
    for p in pieces:
        pos += len(p)
        offs.append(pos)
    order = list(range(len(pieces) - 1))
    mid = prefer if prefer is not None else len(pieces) // 2
    order.sort(key=lambda i: abs(i - mid))
    for i in order:
        a, b = pieces[i], pieces[i + 1]
        if not a or not b or REPLACEMENT in a + b:
            continue
        for width in (2, 3):
            left = a[-1:] if width == 2 else a[-2:]
            stop = left + b[0]
            start = offs[i] - len(left)
            if len(left) == width - 1 and text.find(stop) == start and stop.strip():
                return stop, text[:start], i
    return None


def judge_stop(text: str, finish, expected: str, what: str, stop: str = "") -> tuple[str, str, str | None]:
    """(outcome, detail, klass) for a generation that must stop exactly before ``what``
    (``stop``: the stop string, if one; returned in the text is a protocol failure)."""
    from probe import first_divergence

    if text == expected and finish == "stop":
        return "pass", f"cut exactly before {what}, finish_reason 'stop'", None
    if text == expected:
        return "fail", f"cut exactly before {what}, but finish_reason is {finish!r}, not 'stop'", "protocol"
    if text.startswith(expected):
        rest = text[len(expected):]
        if stop and rest == stop:
            return "fail", (f"the stop string {stop!r} is returned at the end of the text (finish_reason "
                            f"{finish!r}); OpenAI semantics exclude it"), "protocol"
        return "fail", (f"output runs past the cut point by {len(rest)} chars ({rest[:40]!r}), "
                        f"finish_reason {finish!r}"), "backend-specific"
    return "fail", f"{first_divergence(expected, text)} (finish_reason {finish!r})", "backend-specific"


def special_expectations(text: str, control: list[str]) -> tuple[str, str]:
    """(kept, skipped) decodes of ``text``: skipped removes control tokens only; added tokens that
    are not special (``<think>``, ``<tool_call>``) stay in both."""
    skipped = text
    for tok in sorted(control, key=len, reverse=True):
        skipped = skipped.replace(tok, "")
    return text, skipped


def convention(got: str, kept: str, skipped: str) -> str:
    if got == kept:
        return "kept"
    if got == skipped:
        return "skipped"
    return "neither"


def compare_split(ref, got, mode: str = "trim") -> tuple[str, bool]:
    """("" or the difference, whitespace_only) of two ``(reasoning, content)`` pairs."""
    def norm(v):
        return (v or "").strip() if mode == "trim" else (v or "")

    out, ws = [], False
    for name, a, b in (("reasoning", ref[0], got[0]), ("content", ref[1], got[1])):
        if norm(a) != norm(b):
            out.append(f"{name}: reference {a!r}, parser {b!r}")
        elif (a or "") != (b or ""):
            ws = True
    return "; ".join(out), ws


def tool_calls_of(calls) -> list:
    """OpenAI-shaped or parser-shaped calls → ``toolcalls.ToolCall`` (arguments decoded)."""
    import toolcalls

    out = []
    for c in calls or []:
        if isinstance(c, toolcalls.ToolCall):
            out.append(c)
            continue
        out.append(toolcalls._call_from_obj(c if isinstance(c, dict) else {"name": c.name, "arguments": c.arguments}))
    return out


def gbnf_literal(text: str) -> str:
    """A GBNF grammar matching exactly ``text``. Non-ASCII characters are written as ``\\u``/
    ``\\U`` escapes: llama-cpp-python 0.2.x's Python grammar parser fails (IndexError) on raw
    3- and 4-byte UTF-8 characters in a literal."""
    out = []
    for ch in text:
        o = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif o < 0x20 or o == 0x7F:
            out.append("\\x%02X" % o)
        elif o < 0x80:
            out.append(ch)
        elif o < 0x10000:
            out.append("\\u%04X" % o)
        else:
            out.append("\\U%08X" % o)
    return 'root ::= "' + "".join(out) + '"\n'


def whole_pieces(byte_pieces: list) -> tuple[list[str], list[int]]:
    """Per-token bytes merged into pieces of whole UTF-8: ``(pieces, index of the last token of
    each piece)``. A boundary between two pieces is a token boundary where no character is split."""
    pieces, ends, buf = [], [], b""
    for i, b in enumerate(byte_pieces):
        buf += b
        try:
            text = buf.decode("utf-8")
        except UnicodeDecodeError:
            continue
        pieces.append(text)
        ends.append(i)
        buf = b""
    if buf:
        pieces.append(buf.decode("utf-8", errors="replace"))
        ends.append(len(byte_pieces) - 1)
    return pieces, ends


# =========================================================================== detokenizers

class Detokenizer:
    """Encode, full decode, incremental decode (pieces), and decode with specials kept/skipped."""

    name = ""
    bytes_level = False

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def decode(self, ids, skip_special_tokens: bool = False):
        raise NotImplementedError

    def incremental(self, ids) -> list:
        raise NotImplementedError

    def facts(self) -> dict:
        return {}


class TokenizersDetok(Detokenizer):
    name = "tokenizers"

    def __init__(self, model_dir: str):
        try:
            import tokenizers
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise Unavailable(f"tokenizers is not installed ({exc})") from None
        try:
            from tokenizers.decoders import DecodeStream
        except ImportError:
            raise Unavailable(f"tokenizers {tokenizers.__version__} has no decoders.DecodeStream") from None
        self.DecodeStream = DecodeStream
        self.version = tokenizers.__version__
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))

    def encode(self, text):
        return list(self.tok.encode(text, add_special_tokens=False).ids)

    def decode(self, ids, skip_special_tokens=False):
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def incremental(self, ids, skip_special_tokens=False):
        try:
            ds = self.DecodeStream(skip_special_tokens=skip_special_tokens)
        except TypeError:
            ds = self.DecodeStream(skip_special_tokens)
        return [ds.step(self.tok, int(i)) for i in ids]

    def facts(self):
        return {"tokenizers": self.version, "via": "tokenizers.decoders.DecodeStream"}


class _Ids:
    """The shape TextStreamer.put expects of a tensor: one step, one token."""

    def __init__(self, ids):
        self._ids = list(ids)
        self.shape = (len(self._ids),)

    def tolist(self):
        return list(self._ids)


class TransformersDetok(Detokenizer):
    name = "transformers"

    def __init__(self, model_dir: str):
        try:
            import transformers
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise Unavailable(f"transformers is not installed ({exc})") from None
        try:
            from transformers import TextStreamer
        except ImportError:
            raise Unavailable(f"transformers {transformers.__version__} has no TextStreamer") from None
        self.TextStreamer = TextStreamer
        self.version = transformers.__version__
        self.tok = AutoTokenizer.from_pretrained(model_dir)

    def encode(self, text):
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids, skip_special_tokens=False):
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens, clean_up_tokenization_spaces=False)

    def incremental(self, ids, skip_special_tokens=False):
        pieces: list = []

        class Collect(self.TextStreamer):
            def on_finalized_text(self, text, stream_end=False):
                pieces.append(text)

        st = Collect(self.tok, skip_prompt=False, skip_special_tokens=skip_special_tokens,
                     clean_up_tokenization_spaces=False)
        for i in ids:
            st.put(_Ids([int(i)]))
        st.end()
        return pieces

    def facts(self):
        return {"transformers": self.version, "via": "transformers.TextStreamer", "class": type(self.tok).__name__}


class LlamaCppDetok(Detokenizer):
    name = "llama-cpp"
    bytes_level = True

    def __init__(self, gguf_path: str):
        try:
            import llama_cpp
            from llama_cpp import Llama
        except ImportError as exc:
            raise Unavailable(f"llama-cpp-python is not installed ({exc})") from None
        if not os.path.isfile(gguf_path):
            raise Unavailable(f"the model has no GGUF file ({gguf_path})")
        self.version = getattr(llama_cpp, "__version__", None)
        self.llm = Llama(model_path=gguf_path, vocab_only=True, verbose=False)

    def encode(self, text):
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def decode(self, ids, skip_special_tokens=True):
        raw = self.llm.detokenize(list(ids))
        return raw.decode("utf-8", errors="replace")

    def decode_bytes(self, ids):
        return self.llm.detokenize(list(ids))

    def incremental(self, ids, skip_special_tokens=True):
        return [self.llm.detokenize([int(i)]) for i in ids]

    def facts(self):
        return {"llama_cpp_python": self.version, "via": "Llama.detokenize per token (bytes)"}

    def close(self):
        llm, self.llm = self.llm, None
        if llm is not None and hasattr(llm, "close"):
            try:
                llm.close()
            except Exception:  # noqa: BLE001
                pass


def make_detokenizer(name: str, job: dict) -> Detokenizer:
    if name == "tokenizers":
        return TokenizersDetok(job["model_dir"])
    if name == "transformers":
        return TransformersDetok(job["model_dir"])
    if name == "llama-cpp":
        return LlamaCppDetok(job.get("gguf_path") or os.path.join(job["model_dir"], "model.gguf"))
    raise Unavailable(f"unknown detokenizer {name!r} (known: {', '.join(DEFAULT_DETOKENIZERS)})")


# =========================================================================== the stage

class _Ctx:
    def __init__(self, job: dict, rec):
        self.job = job
        self.rec = rec
        self.conf = dict(job.get("postprocess") or {})
        self.facts = rec.facts.setdefault(STAGE, {})
        self.skipped = self.facts.setdefault("skipped", {})

    def add(self, case, check, outcome, detail="", klass=None, **extra):
        if outcome == "fail" and not klass:
            klass = "backend-specific"
        self.rec.add(case, STAGE, check, outcome, detail, klass=klass if outcome == "fail" else None, **extra)

    def crash(self, case, check):
        self.add(case, check, "fail", traceback.format_exc(limit=6), klass="crash")


def model_specials(model_dir: str) -> tuple[list[str], list[str]]:
    """(control/special token texts, added non-special token texts) from tokenizer.json."""
    try:
        with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
            added = json.load(f).get("added_tokens") or []
    except (OSError, ValueError):
        return [], []
    return [t["content"] for t in added if t.get("special")], [t["content"] for t in added if not t.get("special")]


def pick_cases(job: dict, max_cases: int) -> list[dict]:
    wanted = (job.get("postprocess") or {}).get("cases")
    cases = job.get("cases") or []
    if wanted is not None:
        sel = [c for c in cases if c["id"] in set(wanted)]
    else:
        sel = [c for c in cases if STAGE in (c.get("stages") or ())] or \
              [c for c in cases if "inference" in (c.get("stages") or ())]
    out = []
    for c in sel:
        e = c.get("expect") or {}
        if e.get("ids") or e.get("render") or c.get("messages"):
            out.append(c)
    return out[:max_cases]


def run(job: dict, rec) -> None:
    ctx = _Ctx(job, rec)
    if rec.mode == "golden":
        # nothing to record: every check compares two paths of the same cell, not a golden
        ctx.facts["golden"] = "the postprocess stage compares within the cell; it produces no goldens"
        return
    started = time.perf_counter()
    detok_checks(ctx)
    parser_checks(ctx)
    engine_checks(ctx)
    ctx.facts["seconds"] = round(time.perf_counter() - started, 3)
    if not any(r["stage"] == STAGE for r in rec.records):
        reasons = "; ".join(f"{k}: {v}" for k, v in ctx.skipped.items()) or "nothing to check"
        rec.add("*", STAGE, "postprocess", "skipped", reasons)


# --------------------------------------------------------------------------- 2 + 4: detokenizers

def detok_checks(ctx: _Ctx) -> None:
    job = ctx.job
    texts = dict(ctx.conf.get("texts") or TEXTS)
    control, _ = model_specials(job["model_dir"])
    gen_ids = {}
    for c in job.get("cases") or []:
        g = (c.get("expect") or {}).get("gen") or {}
        if g.get("ids"):
            gen_ids[c["id"]] = [int(i) for i in g["ids"]]
    conv = ctx.facts.setdefault("special_convention", {})
    for name in ctx.conf.get("detokenizers") or DEFAULT_DETOKENIZERS:
        try:
            d = make_detokenizer(name, job)
        except Unavailable as exc:
            ctx.skipped[f"detokenizer:{name}"] = str(exc)
            continue
        except Exception:  # noqa: BLE001 - loading is a result
            ctx.crash("*", f"{name}:load")
            continue
        try:
            ctx.facts.setdefault("detokenizers", {})[name] = d.facts()
            inputs = [(f"_detok/{t}", d.encode(txt), txt) for t, txt in texts.items()]
            # a generation of the tiny random model: whatever bytes it picked, split however
            inputs += [(f"_detok/gen:{cid}", ids, None) for cid, ids in gen_ids.items()]
            for case, ids, text in inputs:
                check = f"{name}:incremental"
                try:
                    if d.bytes_level:
                        full = d.decode_bytes(ids)
                        pieces = d.incremental(ids)
                    else:
                        full = d.decode(ids)
                        pieces = d.incremental(ids)
                except Exception:  # noqa: BLE001
                    ctx.crash(case, check)
                    continue
                diff = incremental_diff(pieces, full)
                full_text = full.decode("utf-8", errors="replace") if isinstance(full, bytes) else full
                if not diff and text is not None and full_text != text:
                    from probe import first_divergence
                    ctx.add(case, check, "pass", f"{len(ids)} ids; incremental equals the full decode, which "
                            f"itself differs from the text (a tokenize-stage matter): {first_divergence(text, full_text)}",
                            n_ids=len(ids))
                elif diff:
                    ctx.add(case, check, "fail", f"{len(ids)} ids fed one at a time: {diff}", klass="backend-specific",
                            n_ids=len(ids))
                else:
                    ctx.add(case, check, "pass", f"{len(ids)} ids, {sum(1 for p in pieces if p)} non-empty pieces",
                            n_ids=len(ids))
            special_check(ctx, d, control, conv)
        finally:
            if hasattr(d, "close"):
                d.close()


def special_check(ctx: _Ctx, d: Detokenizer, control: list[str], conv: dict) -> None:
    case, check = "_special/" + "mixed", f"{d.name}:special"
    kept, skipped = special_expectations(SPECIAL_TEXT, control)
    try:
        ids = d.encode(SPECIAL_TEXT)
        if d.bytes_level:
            got = {"default": d.decode(ids)}
        else:
            got = {"skip=False": d.decode(ids, False), "skip=True": d.decode(ids, True)}
            inc = d.incremental(ids, skip_special_tokens=True)
            got["skip=True incremental"] = "".join(p for p in inc if p)
    except Exception:  # noqa: BLE001
        ctx.crash(case, check)
        return
    problems = []
    for how, text in got.items():
        c = convention(text, kept, skipped)
        conv[f"{d.name} ({how})"] = c
        want = {"skip=False": "kept", "skip=True": "skipped", "skip=True incremental": "skipped"}.get(how)
        if c == "neither":
            problems.append(f"{how}: {text!r} is neither the text kept {kept!r} nor skipped {skipped!r}")
        elif want and c != want:
            problems.append(f"{how}: specials {c}, expected {want}")
    if problems:
        ctx.add(case, check, "fail", "; ".join(problems), klass="backend-specific")
    else:
        ctx.add(case, check, "pass", ", ".join(f"{h}: {conv[f'{d.name} ({h})']}" for h in got))


# --------------------------------------------------------------------------- 5 + 6: parsers

def transformers_parser(job: dict):
    """(parse_whole, parse_streamed, info) over transformers' response-template parser (the
    one ``transformers serve`` runs), or Unavailable."""
    try:
        import transformers
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise Unavailable(f"transformers is not installed ({exc})") from None
    try:
        from transformers.cli.serving import utils as su
        from transformers.utils.chat_parsing import ResponseParser
    except Exception as exc:  # noqa: BLE001 - older transformers: no parser
        raise Unavailable(f"transformers {transformers.__version__} has no response parser ({type(exc).__name__}: "
                          f"{str(exc)[:120]})") from None
    tok = AutoTokenizer.from_pretrained(job["model_dir"])
    try:
        with open(os.path.join(job["model_dir"], "config.json"), encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError):
        model_type = None

    class _Model:
        class config:
            pass

    _Model.config.model_type = model_type
    template = su.get_response_template(tok, _Model)
    if template is None:
        raise Unavailable(f"transformers {transformers.__version__}: no response template for model_type {model_type!r}")
    def whole(text, prefix=PARSER_PREFIX):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        p = tok.parse_response(ids, template, prefix=prefix)
        calls = [su._normalize_tool_call(v) for v in (p.get("tool_calls") or [])]
        reasoning = next((p[f] for f in su._REASONING_FIELDS if p.get(f) is not None), None)
        return reasoning, p.get("content", ""), calls

    def streamed(text, prefix=PARSER_PREFIX):
        """Fed one token's decode at a time (DecodeStream, specials kept) as DirectStreamer does."""
        from tokenizers.decoders import DecodeStream

        ids = tok(text, add_special_tokens=False)["input_ids"]
        parser = ResponseParser(template, prefix=prefix)
        ds = DecodeStream(skip_special_tokens=False)
        content, reasoning, calls = [], [], []
        events = list(parser.initial_events)
        for i in ids:
            piece = ds.step(tok._tokenizer, i)
            if piece is not None:
                events += parser.feed(piece)
        _msg, final = parser.finalize()
        events += final
        for item in su.response_events_to_chunks(events):
            if isinstance(item, su.ToolCall):
                calls.append(item)
            elif isinstance(item, su.ReasoningText):
                reasoning.append(str(item))
            elif isinstance(item, str):
                content.append(item)
        return ("".join(reasoning) if reasoning else None), "".join(content), calls

    info = {"parser": "transformers response template (transformers.cli.serving.utils)",
            "transformers": transformers.__version__, "template_from": "tokenizer.response_template"
            if getattr(tok, "response_template", None) else f"fallback for model_type {model_type}"}
    return whole, streamed, info


def parser_checks(ctx: _Ctx) -> None:
    import toolcalls

    mode = ctx.conf.get("whitespace", "trim")
    ctx.facts["reasoning_inputs"] = ("fixed completion texts (the tiny random model never emits <think> or "
                                     "<tool_call> by itself); the reference is split_reasoning / toolcalls.parse")
    ws_only = ctx.facts.setdefault("whitespace_only", [])
    parsers = {}
    try:
        whole, streamed, info = transformers_parser(ctx.job)
        parsers = {"transformers": whole, "transformers-stream": streamed}
        ctx.facts["parsers"] = info
    except Unavailable as exc:
        ctx.skipped["parser:transformers"] = str(exc)
    except Exception:  # noqa: BLE001
        ctx.crash("*", "reasoning:transformers")
    # llama-cpp-python: name what it offers (0.2.x: no reasoning parser, no <tool_call> parser)
    try:
        import llama_cpp.llama_chat_format as lcf  # noqa: F401

        ctx.facts["llama_cpp_parsers"] = (
            "llama-cpp-python offers no reasoning separation and no Hermes <tool_call> text parser: its function "
            "calling (chat_format chatml-function-calling, functionary) generates under its own grammar and "
            "format, so it cannot be driven with these fixed completions")
    except ImportError:
        pass
    if not parsers:
        return
    from probe import first_divergence

    def run_parser(pname, case, *args):
        try:
            return parsers[pname](*args)
        except Exception:  # noqa: BLE001
            ctx.crash(case, f"{case.split('/')[0].lstrip('_')}:{pname}")
            return None

    for name, text in REASONING_TEXTS.items():
        case = f"_reasoning/{name}"
        prefix = PARSER_PREFIX + ("<think>\n" if name == "prefilled-open" else "")
        ref = split_reasoning(text)
        # the reference content of a text with tool calls is the text before the first call
        ref = (ref[0], ref[1].split("<tool_call>")[0].strip())
        got = {p: run_parser(p, case, text, prefix) for p in parsers}
        for pname, out in got.items():
            if out is None:
                continue
            check = f"reasoning:{pname}"
            diff, ws = compare_split(ref, out[:2], mode)
            if ws:
                ws_only.append(f"{case} {check}")
            ctx.add(case, check, "fail" if diff else "pass",
                    diff or ("equal up to surrounding whitespace" if ws else "equal"),
                    klass="backend-specific" if diff else None)
        stream_vs_whole(ctx, case, "reasoning:transformers:stream", got.get("transformers"),
                        got.get("transformers-stream"), first_divergence)
    for name, text in TOOL_TEXTS.items():
        case = f"_tools/{name}"
        want = toolcalls.parse(text)
        got = {p: run_parser(p, case, text, PARSER_PREFIX) for p in parsers}
        for pname, out in got.items():
            if out is None:
                continue
            check = f"tools:{pname}"
            try:
                diff = toolcalls.compare(want, tool_calls_of(out[2]))
            except Exception:  # noqa: BLE001 - arguments that are not JSON
                ctx.crash(case, check)
                continue
            ctx.add(case, check, "fail" if diff else "pass", diff or f"{len(want)} call(s) equal",
                    klass="backend-specific" if diff else None)
        stream_vs_whole(ctx, case, "tools:transformers:stream", got.get("transformers"),
                        got.get("transformers-stream"), first_divergence)


def stream_vs_whole(ctx, case, check, whole, streamed, first_divergence) -> None:
    """The same parser on the whole text and fed token by token must agree exactly (what
    ``transformers serve`` returns without and with ``stream``)."""
    if whole is None or streamed is None:
        return
    diffs = []
    for i, field in enumerate(("reasoning", "content")):
        a, b = whole[i] or "", streamed[i] or ""
        if a != b:
            diffs.append(f"{field}: " + first_divergence(a, b))
    wa = [(c.name, c.arguments) for c in whole[2] or []]
    wb = [(c.name, c.arguments) for c in streamed[2] or []]
    if wa != wb:
        diffs.append(f"tool calls: whole {wa!r}, streamed {wb!r}")
    ctx.add(case, check, "fail" if diffs else "pass",
            ("whole vs streamed: " + "; ".join(diffs)) if diffs else "whole and streamed parses identical",
            klass="backend-specific" if diffs else None)


# --------------------------------------------------------------------------- 1 + 3 + 4: engines

def engine_checks(ctx: _Ctx) -> None:
    specs = list(ctx.job.get("engines") or [])
    for spec in specs:
        name = spec if isinstance(spec, str) else spec.get("name")
        if name not in ENGINES_HERE:
            continue
        started = time.perf_counter()
        try:
            if name == "llama-cpp-python":
                llama_in_process(ctx, spec)
            else:
                server_checks(ctx, spec, name)
        except Unavailable as exc:
            ctx.skipped[name] = str(exc)
        finally:
            ctx.facts.setdefault("engines", {}).setdefault(name, {})["seconds"] = round(time.perf_counter() - started, 3)


class _Force:
    """A llama-cpp-python logits processor forcing ``target`` ids after ``n_prompt`` tokens."""

    def __init__(self, n_prompt: int, target: list[int]):
        self.n_prompt = n_prompt
        self.target = list(target)

    def __call__(self, input_ids, scores):
        import numpy as np

        step = len(input_ids) - self.n_prompt
        if 0 <= step < len(self.target):
            out = np.full_like(scores, -np.inf)
            out[self.target[step]] = 0.0
            return out
        return scores


def llama_in_process(ctx: _Ctx, spec) -> None:
    from engines import have

    if not have("llama_cpp"):
        raise Unavailable("llama-cpp-python is not installed in this cell")
    gguf = ctx.job.get("gguf_path") or os.path.join(ctx.job["model_dir"], "model.gguf")
    if not os.path.isfile(gguf):
        raise Unavailable(f"the model has no GGUF file ({gguf})")
    import llama_cpp
    from llama_cpp import Llama, LogitsProcessorList

    opts = {} if isinstance(spec, str) else {k: v for k, v in spec.items() if k != "name"}
    opts = {**((ctx.job.get("engine_options") or {}).get("llama-cpp-python") or {}), **opts}
    threads = int(opts.get("threads", 2))
    llm = Llama(model_path=gguf, logits_all=True, n_ctx=int(opts.get("n_ctx", 2048)), seed=int(opts.get("seed", 0)),
                n_threads=threads, n_threads_batch=threads, verbose=False)
    eng = "llama-cpp-python"
    facts = ctx.facts.setdefault("engines", {}).setdefault(eng, {})
    facts.update({"llama_cpp_python": getattr(llama_cpp, "__version__", None), "eos": llm.token_eos()})
    k = int(ctx.conf.get("logprobs", 5))
    n_new = int(ctx.conf.get("max_new_tokens", 24))
    greedy = dict(temperature=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, seed=0)

    def complete(prompt, max_tokens, stream, force=None, stop=None, logprobs=None):
        lp = LogitsProcessorList([_Force(len(prompt), force)]) if force is not None else None
        llm.reset()
        kw = dict(max_tokens=max_tokens, stream=stream, stop=stop or [], logprobs=logprobs, logits_processor=lp, **greedy)
        if not stream:
            r = llm.create_completion(prompt, **kw)
            ch = r["choices"][0]
            return {"text": ch["text"], "finish_reason": ch["finish_reason"]}
        return accumulate(list(llm.create_completion(prompt, **kw)))

    def detok(ids):
        return llm.detokenize(list(ids)).decode("utf-8", errors="replace")

    try:
        # 1. streamed vs not, on the golden prompts (whatever the model says) and forced texts
        prompts = []
        for c in pick_cases(ctx.job, int(ctx.conf.get("max_cases", 2))):
            ids = (c.get("expect") or {}).get("ids")
            if ids:
                prompts.append((c["id"], [int(i) for i in ids], None, None))
        base = llm.tokenize(b"<|im_start|>user\nSay it.<|im_end|>\n<|im_start|>assistant\n", add_bos=False, special=True)
        for tname, text in TEXTS.items():
            target = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            prompts.append((f"_forced/{tname}", base, target, detok(target)))
        for case, prompt, force, expected in prompts:
            n = len(force) if force else n_new
            for check, lp in ((f"{eng}:stream", None), (f"{eng}:stream-logprobs", k)):
                try:
                    plain = complete(prompt, n, False, force, logprobs=lp)
                    streamed = complete(prompt, n, True, force, logprobs=lp)
                except Exception:  # noqa: BLE001
                    ctx.crash(case, check)
                    continue
                diff = stream_diff(plain, streamed)
                if expected is not None and plain["text"] != expected:
                    from probe import first_divergence
                    diff = (diff + "; " if diff else "") + "non-streamed text is not the forced text: " + \
                        first_divergence(expected, plain["text"])
                ctx.add(case, check, "fail" if diff else "pass",
                        diff or f"{len(plain['text'])} chars equal, finish_reason {plain['finish_reason']!r}",
                        klass="backend-specific" if diff else None, logprobs=lp)
        # 3. stop string spanning two tokens, on a forced text
        text = TEXTS["mixed"]
        target = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        pieces, ends = whole_pieces([llm.detokenize([t]) for t in target])
        chosen = stop_across(pieces)
        if chosen is None:
            ctx.add("_forced/mixed", f"{eng}:stop-string", "skipped", "no two-token stop string in the forced text")
        else:
            stop, expected, i = chosen
            facts["stop_string"] = {"stop": stop, "between_tokens": [target[ends[i]], target[ends[i] + 1]]}
            for stream in (False, True):
                check = f"{eng}:stop-string" + (":stream" if stream else "")
                try:
                    out = complete(base, len(target) + 4, stream, target + target, stop=[stop])
                except Exception:  # noqa: BLE001
                    ctx.crash("_forced/mixed", check)
                    continue
                outcome, detail, klass = judge_stop(out["text"], out["finish_reason"], expected, f"stop {stop!r}", stop)
                ctx.add("_forced/mixed", check, outcome, detail, klass=klass, stop=stop)
        # 3. stop tokens: the model's EOS and EOT forced in the middle of a text
        ascii_ids = llm.tokenize(b"Hello there, the stop comes now", add_bos=False, special=True)
        eot = _eot(llm)
        for tid in sorted({t for t in (llm.token_eos(), eot) if t is not None and t >= 0}):
            forced = ascii_ids + [tid] + ascii_ids
            for stream in (False, True):
                check = f"{eng}:stop-token:{tid}" + (":stream" if stream else "")
                try:
                    out = complete(base, len(forced), stream, forced)
                except Exception:  # noqa: BLE001
                    ctx.crash("_forced/stop-token", check)
                    continue
                outcome, detail, klass = judge_stop(out["text"], out["finish_reason"], detok(ascii_ids), f"token {tid}")
                ctx.add("_forced/stop-token", check, outcome, detail, klass=klass)
        # 4. special tokens in what the engine returns
        control, _ = model_specials(ctx.job["model_dir"])
        kept, skipped = special_expectations(SPECIAL_TEXT, control)
        forced = llm.tokenize(SPECIAL_TEXT.encode("utf-8"), add_bos=False, special=True)
        for stream in (False, True):
            check = f"{eng}:special" + (":stream" if stream else "")
            try:
                out = complete(base, len(forced), stream, forced)
            except Exception:  # noqa: BLE001
                ctx.crash("_special/mixed", check)
                continue
            c = convention(out["text"], kept, skipped)
            ctx.facts.setdefault("special_convention", {})[check] = c
            if c == "neither":
                ctx.add("_special/mixed", check, "fail", f"{out['text']!r} is neither the text with control tokens "
                        f"kept {kept!r} nor skipped {skipped!r}", klass="backend-specific")
            else:
                ctx.add("_special/mixed", check, "pass", f"control tokens {c}; added tokens <think>/<tool_call> kept")
    finally:
        if hasattr(llm, "close"):
            try:
                llm.close()
            except Exception:  # noqa: BLE001
                pass


def _eot(llm):
    try:
        return llm._model.token_eot()
    except Exception:  # noqa: BLE001
        return None


# --------------------------------------------------------------------------- servers

def stream_request(client, path: str, body: dict) -> list:
    """POST with ``stream: true``; the SSE events (JSON payloads) up to ``[DONE]``."""
    import urllib.error
    import urllib.request

    from servers import HTTPStatusError, TransportError

    url = client.base_url + path
    headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
    if client.api_key:
        headers["Authorization"] = f"Bearer {client.api_key}"
    req = urllib.request.Request(url, data=json.dumps(dict(body, stream=True)).encode("utf-8"), method="POST",
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=client.timeout) as resp:
            lines = [ln.rstrip(b"\n") for ln in resp]
    except urllib.error.HTTPError as exc:
        raise HTTPStatusError(exc.code, exc.read().decode("utf-8", errors="replace"), url) from None
    except (OSError, ValueError) as exc:
        raise TransportError(f"POST {url}: {exc}") from None
    return parse_sse(lines)


def server_checks(ctx: _Ctx, spec, name: str) -> None:
    import engine_registry
    import engines
    from probe import first_divergence
    from servers import HTTPStatusError

    try:
        eng = engine_registry.make(spec, ctx.job)
    except engines.EngineUnavailable as exc:
        raise Unavailable(str(exc)) from None
    try:
        try:
            eng.start()
        except engines.EngineUnavailable as exc:
            raise Unavailable(str(exc)) from None
        except engines.EngineInfra as exc:
            ctx.add("*", name, "infra", f"{exc}\n--- log tail ---\n{exc.log_tail}", klass="engine-start")
            return
        api = eng.api
        client = eng.client
        path = "/chat/completions" if api == "chat" else "/completions"
        n_new = int(ctx.conf.get("max_new_tokens", 24))
        facts = ctx.facts.setdefault("engines", {}).setdefault(name, {})
        facts["api"] = api

        def body(case, **extra):
            b = {"max_tokens": n_new, "temperature": 0.0, "top_p": 1.0, "seed": 0, "n": 1}
            if eng.model_name:
                b["model"] = eng.model_name
            if name == "llama-cpp-server":
                b.update(top_k=1, repeat_penalty=1.0, min_p=0.0)
            if api == "chat":
                b["messages"] = case["messages"]
            else:
                b["prompt"] = case["expect"].get("render") or ""
            b.update(extra)
            return b

        def plain(b):
            r = client.request("POST", path, b)
            if api == "chat":
                return chat_message(r), r
            ch = (r.get("choices") or [{}])[0]
            return {"text": ch.get("text") or "", "finish_reason": ch.get("finish_reason")}, r

        def streamed(b):
            return accumulate(stream_request(client, path, b), api)

        def attempt(case, check, fn):
            try:
                return fn()
            except HTTPStatusError as exc:
                ctx.add(case, check, "fail", f"{exc}{_tail(eng)}", klass="protocol" if exc.status < 500 else "crash")
            except Exception:  # noqa: BLE001
                ctx.add(case, check, "fail", traceback.format_exc(limit=6) + _tail(eng), klass="crash")
            return None

        cases = [c for c in pick_cases(ctx.job, int(ctx.conf.get("max_cases", 2)))
                 if (c.get("messages") if api == "chat" else (c.get("expect") or {}).get("render"))]
        forced = []
        if name == "llama-cpp-server" and api != "chat":
            prompt = "<|im_start|>user\nSay it.<|im_end|>\n<|im_start|>assistant\n"
            for tname, text in TEXTS.items():
                forced.append(({"id": f"_forced/{tname}", "expect": {"render": prompt}}, text))
        runs = [(c, None) for c in cases] + forced
        first_plain = None
        for case, text in runs:
            cid = case["id"]
            extra = {"grammar": gbnf_literal(text), "max_tokens": 4 * len(text.encode("utf-8")) + 8} if text else {}
            variants = [(f"{name}:stream", {})]
            if api != "chat":
                variants.append((f"{name}:stream-logprobs", {"logprobs": int(ctx.conf.get("logprobs", 5))}))
            for check, more in variants:
                got = attempt(cid, check, lambda: (plain(body(case, **extra, **more))[0], streamed(body(case, **extra, **more))))
                if got is None:
                    continue
                p, s = got
                if first_plain is None and text is None:
                    first_plain = (case, p)
                diff = stream_diff(p, s)
                if text is not None and p["text"] != text:
                    diff = (diff + "; " if diff else "") + "the grammar-forced text came back different: " + \
                        first_divergence(text, p["text"])
                if text is not None and p["finish_reason"] != "stop":
                    diff = (diff + "; " if diff else "") + (f"finish_reason {p['finish_reason']!r} after the grammar "
                                                            "ended (EOS is the only token left): expected 'stop'")
                ctx.add(cid, check, "fail" if diff else "pass",
                        diff or f"{len(p['text'])} chars equal over {s['chunks']} chunks, finish_reason "
                                f"{p['finish_reason']!r}", klass="backend-specific" if diff else None)
        # 3. stop string across two tokens (where the tokens are known) on a forced or greedy text
        stop_case = None
        if name == "llama-cpp-server" and api != "chat":
            text = TEXTS["mixed"]
            case = {"id": "_forced/mixed", "expect": {"render": forced[0][0]["expect"]["render"]}} if forced else None
            if case:
                r = attempt(case["id"], f"{name}:stop-string", lambda: plain(body(
                    case, grammar=gbnf_literal(text), max_tokens=4 * len(text.encode()) + 8, logprobs=1))[1])
                toks = (((r or {}).get("choices") or [{}])[0].get("logprobs") or {}).get("tokens") if r else None
                if toks and "".join(toks) == text:
                    stop_case = (case, {"grammar": gbnf_literal(text), "max_tokens": 4 * len(text.encode()) + 8}, toks)
                elif r is not None:
                    facts["stop_string"] = ("token pieces unavailable or not whole UTF-8 (logprobs.tokens joined "
                                            f"{''.join(toks or [])!r}); greedy text used instead")
        if stop_case is None and first_plain is not None:
            case, p = first_plain
            t = p["text"]
            # token boundaries are unknown here: a two-character stop near the middle of the text
            # (a character boundary; with a byte-level vocabulary of this size, most are tokens')
            if len(t) >= 4:
                stop_case = (case, {}, list(t))
                facts["stop_string_boundary"] = "token boundaries unknown: a character boundary near the middle"
        if stop_case is not None:
            case, extra, pieces = stop_case
            chosen = stop_across(pieces)
            if chosen is None:
                ctx.add(case["id"], f"{name}:stop-string", "skipped", "no stop string across two tokens in the text")
            else:
                stop, expected, _ = chosen
                facts["stop_string"] = stop
                for stream in (False, True):
                    check = f"{name}:stop-string" + (":stream" if stream else "")
                    b = body(case, stop=[stop], **extra)
                    got = attempt(case["id"], check, (lambda: streamed(b)) if stream else (lambda: plain(b)[0]))
                    if got is None:
                        continue
                    outcome, detail, klass = judge_stop(got["text"], got["finish_reason"], expected, f"stop {stop!r}", stop)
                    ctx.add(case["id"], check, outcome, detail, klass=klass, stop=stop)
        facts["stop_token"] = "not expressible through the OpenAI API (no stop-token-id parameter): not checked"
    finally:
        try:
            eng.close()
        except Exception:  # noqa: BLE001
            pass


def _tail(eng) -> str:
    tail = eng.log_tail() if hasattr(eng, "log_tail") else ""
    return f"\n--- server log (tail) ---\n{tail[-1500:]}" if tail else ""
