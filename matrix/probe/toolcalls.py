"""Tool calls, standard library only: parse them out of rendered text and compare with a case's.

The template stage uses it for the render→parse round trip: the tool calls a case's assistant
turns carry are rendered by the chat template; parsing them back out of the rendered assistant
turns must give the same names and arguments. A template that mangles the arguments (escaping,
a string rendered twice, a dropped parallel call) fails here even where no golden exists.

Format (Hermes / Qwen style): ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``;
``parameters`` is accepted for ``arguments``. A case's arguments given as a JSON string are
decoded before comparing; parsed arguments are not: a template that writes the arguments as a
JSON string inside the block (double encoding) breaks every OpenAI-compatible parser, so it fails.
Assistant turns are found by their start and end markers (ChatML by default); a render
without those markers is searched whole.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

CHATML = {
    "turn_start": "<|im_start|>assistant",
    "turn_end": "<|im_end|>",
    "open": "<tool_call>",
    "close": "</tool_call>",
}


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: object  # decoded JSON (normally a dict)

    def canonical(self) -> str:
        return json.dumps({"name": self.name, "arguments": self.arguments}, ensure_ascii=False, sort_keys=True)


class ParseError(ValueError):
    pass


def _decode_arguments(args):
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            return args  # not JSON: compared as the string it is
    return args


def _call_from_obj(obj, decode: bool = True) -> ToolCall:
    if not isinstance(obj, dict):
        raise ParseError(f"a tool call must be a JSON object, got {type(obj).__name__}")
    if "function" in obj and isinstance(obj["function"], dict):  # OpenAI message shape
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str):
        raise ParseError(f"a tool call without a string name: {json.dumps(obj, ensure_ascii=False)[:120]}")
    args = obj.get("arguments", obj.get("parameters", {}))
    return ToolCall(name, _decode_arguments(args) if decode else args)


def expected_calls(messages) -> list[ToolCall]:
    """The tool calls of every assistant message, in order (what a round trip must give back)."""
    out = []
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "assistant":
            for call in m.get("tool_calls") or []:
                out.append(_call_from_obj(call))
    return out


def assistant_turns(text: str, fmt: dict = CHATML) -> list[str]:
    """The text of each assistant turn (an unterminated last turn runs to the end)."""
    start, end = fmt.get("turn_start"), fmt.get("turn_end")
    if not start or start not in text:
        return [text]
    turns: list[str] = []
    pos = 0
    while True:
        i = text.find(start, pos)
        if i < 0:
            return turns
        j = text.find(end, i + len(start)) if end else -1
        turns.append(text[i + len(start) : j if j >= 0 else len(text)])
        if j < 0 or not end:  # j >= 0 only when there is an end marker
            return turns
        pos = j + len(end)


def parse(text: str, fmt: dict = CHATML) -> list[ToolCall]:
    """Tool calls in ``text``'s assistant turns, in order. Raises ParseError on a block whose
    body is not a JSON tool call, naming the block and the JSON error."""
    open_, close = re.escape(fmt.get("open", CHATML["open"])), re.escape(fmt.get("close", CHATML["close"]))
    block = re.compile(open_ + r"(.*?)" + close, re.S)
    calls: list[ToolCall] = []
    for turn in assistant_turns(text, fmt):
        for m in block.finditer(turn):
            body = m.group(1).strip()
            try:
                obj = json.loads(body)
            except ValueError as exc:
                raise ParseError(f"tool call block {len(calls) + 1} is not JSON ({exc}): {body[:120]!r}") from None
            calls.append(_call_from_obj(obj, decode=False))
    return calls


def compare(expected: list[ToolCall], actual: list[ToolCall]) -> str:
    """ "" when equal; otherwise the first divergence: which call, name or arguments, both sides."""
    for i, (e, a) in enumerate(zip(expected, actual)):
        if e.name != a.name:
            return f"tool call {i + 1}: expected name {e.name!r}, got {a.name!r}"
        if e.arguments != a.arguments:
            ej = json.dumps(e.arguments, ensure_ascii=False, sort_keys=True)
            aj = json.dumps(a.arguments, ensure_ascii=False, sort_keys=True)
            return f"tool call {i + 1} ({e.name}): arguments differ: expected {ej[:200]}, got {aj[:200]}"
    if len(expected) != len(actual):
        extra = actual[len(expected) :] or expected[len(actual) :]
        which = "parsed an extra" if len(actual) > len(expected) else "missing"
        return f"expected {len(expected)} tool calls, parsed {len(actual)}: {which} {extra[0].canonical()[:200]}"
    return ""


def roundtrip(messages, text: str, fmt: dict = CHATML) -> str:
    """ "" when the tool calls of ``messages`` parse back out of their render ``text``; else why not."""
    try:
        want = expected_calls(messages)
    except ParseError as exc:
        return f"the case's own tool calls: {exc}"
    try:
        got = parse(text, fmt)
    except ParseError as exc:
        return str(exc)
    return compare(want, got)
