"""The postprocess stage's reference: its fixed inputs and the pure rules its checks judge by.

Standard library only, no I/O: what an incremental decode must concatenate to, the reference
split of reasoning and content, what a stop must cut, which convention a special-token decode
follows, a GBNF grammar that forces a text. The check drivers (:mod:`postprocess_detok`,
:mod:`postprocess_parsers`, :mod:`postprocess_engines`) run the libraries and engines and judge
what comes back with these.
"""

from __future__ import annotations

import toolcalls
from probe import first_divergence

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
    "think-then-tool": (
        "<think>\nNeed the weather.\n</think>\n\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Zürich"}}\n</tool_call>'
    ),
    "prefilled-open": "Reasoning that the prompt opened.\n</think>\n\nThe answer.",
}

TOOL_TEXTS = {
    "single": '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>',
    "parallel": (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_time", "arguments": {"tz": "Europe/Paris"}}\n</tool_call>'
    ),
    "nested-unicode": (
        '<tool_call>\n{"name": "book", "arguments": {"guest": {"name": "Zoë 李", "tags": ["vip", "🙂"]}, '
        '"nights": 2, "note": "quote \\" and \\\\ backslash", "opts": {"late": true, "floor": null}}}\n'
        "</tool_call>"
    ),
    "content-then-call": (
        'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "東京"}}\n</tool_call>'
    ),
}

PARSER_PREFIX = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
"""The prompt before the fixed completions (parsers that read the prefill need it);
``_reasoning/prefilled-open`` adds ``<think>\\n`` to it, as thinking templates prefill."""


def incremental_diff(pieces, full) -> str:
    """ "" when the pieces of an incremental decode concatenate to ``full`` with no extra U+FFFD
    and no lost bytes; otherwise the first divergence. ``pieces`` are str (None = nothing yet)
    or bytes; ``full`` is str or bytes accordingly."""
    got = [p for p in pieces if p]
    if isinstance(full, (bytes, bytearray)):
        raw = b"".join(got)
        if raw == full:
            return ""
        n = next((i for i, (a, b) in enumerate(zip(full, raw)) if a != b), min(len(full), len(raw)))
        lost = len(full) - len(raw)
        return (
            f"bytes differ at byte {n} (full decode {len(full)} bytes, pieces {len(raw)}"
            + (f": {lost} bytes lost" if lost > 0 else "")
            + f"): expected {bytes(full[max(0, n - 8) : n + 8])!r}, "
            f"got {raw[max(0, n - 8) : n + 8]!r}"
        )
    joined = "".join(got)
    out = []
    if joined.count(REPLACEMENT) > full.count(REPLACEMENT):
        pos = 0
        for i, p in enumerate(pieces):
            if p and REPLACEMENT in p:
                out.append(
                    f"U+FFFD in piece {i} ({p!r}) at char {pos + p.index(REPLACEMENT)}; the full decode has "
                    f"{full.count(REPLACEMENT)}"
                )
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
        return text[:c].strip(), text[c + len(close_tag) :].strip()
    before = text[:o]
    c = text.find(close_tag, o + len(open_tag))
    if c < 0:
        return text[o + len(open_tag) :].strip(), before.strip()
    return text[o + len(open_tag) : c].strip(), (before + text[c + len(close_tag) :]).strip()


def stream_diff(plain: dict, streamed: dict) -> str:
    """ "" when a streamed answer equals the plain one (text, reasoning, tool calls, finish_reason)."""
    out = []
    if plain.get("text") != streamed.get("text"):
        out.append(
            "text: "
            + (
                first_divergence(plain.get("text") or "", streamed.get("text") or "")
                or f"{plain.get('text')!r} vs {streamed.get('text')!r}"
            )
        )
    for f in ("reasoning", "tool_calls"):
        if (plain.get(f) or None) != (streamed.get(f) or None):
            out.append(f"{f}: {plain.get(f)!r} (plain) vs {streamed.get(f)!r} (streamed)")
    if plain.get("finish_reason") != streamed.get("finish_reason"):
        out.append(
            f"finish_reason {plain.get('finish_reason')!r} (plain) vs {streamed.get('finish_reason')!r} (streamed)"
        )
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
    if text == expected and finish == "stop":
        return "pass", f"cut exactly before {what}, finish_reason 'stop'", None
    if text == expected:
        return "fail", f"cut exactly before {what}, but finish_reason is {finish!r}, not 'stop'", "protocol"
    if text.startswith(expected):
        rest = text[len(expected) :]
        if stop and rest == stop:
            return (
                "fail",
                (
                    f"the stop string {stop!r} is returned at the end of the text (finish_reason "
                    f"{finish!r}); OpenAI semantics exclude it"
                ),
                "protocol",
            )
        return (
            "fail",
            (f"output runs past the cut point by {len(rest)} chars ({rest[:40]!r}), finish_reason {finish!r}"),
            "backend-specific",
        )
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
            out.append(f"\\x{o:02X}")
        elif o < 0x80:
            out.append(ch)
        elif o < 0x10000:
            out.append(f"\\u{o:04X}")
        else:
            out.append(f"\\U{o:08X}")
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
