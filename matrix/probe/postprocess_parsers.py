"""Reasoning and tool-call parsing (items 5 and 6 of :mod:`stage_postprocess`): the library's
parser (transformers' response-template parser, whole and streamed, as ``transformers serve``
runs it) against the reference (:func:`postprocess_rules.split_reasoning`, ``toolcalls.parse``)
on fixed completions. Libraries are imported lazily, inside the cell's environment."""

from __future__ import annotations

import json
import os

import toolcalls
from postprocess_context import Ctx, Unavailable
from postprocess_rules import PARSER_PREFIX, REASONING_TEXTS, TOOL_TEXTS, compare_split, split_reasoning, tool_calls_of
from probe import first_divergence


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
        raise Unavailable(
            f"transformers {transformers.__version__} has no response parser ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None
    tok = AutoTokenizer.from_pretrained(job["model_dir"])
    try:
        with open(os.path.join(job["model_dir"], "config.json"), encoding="utf-8") as f:
            model_type = json.load(f).get("model_type")
    except (OSError, ValueError):
        model_type = None

    class _Model:
        class config:
            model_type: str | None = None

    _Model.config.model_type = model_type
    template = su.get_response_template(tok, _Model)
    if template is None:
        raise Unavailable(
            f"transformers {transformers.__version__}: no response template for model_type {model_type!r}"
        )

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

    info = {
        "parser": "transformers response template (transformers.cli.serving.utils)",
        "transformers": transformers.__version__,
        "template_from": "tokenizer.response_template"
        if getattr(tok, "response_template", None)
        else f"fallback for model_type {model_type}",
    }
    return whole, streamed, info


def parser_checks(ctx: Ctx) -> None:
    ctx.facts["reasoning_inputs"] = (
        "fixed completion texts (the tiny random model never emits <think> or "
        "<tool_call> by itself); the reference is split_reasoning / toolcalls.parse"
    )
    parsers = _parsers(ctx)
    if parsers:
        _reasoning_checks(ctx, parsers)
        _tool_checks(ctx, parsers)


def _parsers(ctx: Ctx) -> dict:
    """name -> parse(text, prefix) of the parsers this cell has (none: the reasons in the facts)."""
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
            "format, so it cannot be driven with these fixed completions"
        )
    except ImportError:
        pass
    return parsers


def _parse_all(ctx: Ctx, parsers: dict, case: str, text: str, prefix: str) -> dict:
    """Every parser's answer on one text (None where it crashed: a crash record)."""
    got = {}
    for pname, parse in parsers.items():
        try:
            got[pname] = parse(text, prefix)
        except Exception:  # noqa: BLE001
            ctx.crash(case, f"{case.split('/')[0].lstrip('_')}:{pname}")
            got[pname] = None
    return got


def _reasoning_checks(ctx: Ctx, parsers: dict) -> None:
    mode = ctx.conf.get("whitespace", "trim")
    ws_only = ctx.facts.setdefault("whitespace_only", [])
    for name, text in REASONING_TEXTS.items():
        case = f"_reasoning/{name}"
        prefix = PARSER_PREFIX + ("<think>\n" if name == "prefilled-open" else "")
        ref = split_reasoning(text)
        # the reference content of a text with tool calls is the text before the first call
        ref = (ref[0], ref[1].split("<tool_call>")[0].strip())
        got = _parse_all(ctx, parsers, case, text, prefix)
        for pname, out in got.items():
            if out is None:
                continue
            check = f"reasoning:{pname}"
            diff, ws = compare_split(ref, out[:2], mode)
            if ws:
                ws_only.append(f"{case} {check}")
            ctx.add(
                case,
                check,
                "fail" if diff else "pass",
                diff or ("equal up to surrounding whitespace" if ws else "equal"),
                klass="backend-specific" if diff else None,
            )
        stream_vs_whole(
            ctx, case, "reasoning:transformers:stream", got.get("transformers"), got.get("transformers-stream")
        )


def _tool_checks(ctx: Ctx, parsers: dict) -> None:
    for name, text in TOOL_TEXTS.items():
        case = f"_tools/{name}"
        want = toolcalls.parse(text)
        got = _parse_all(ctx, parsers, case, text, PARSER_PREFIX)
        for pname, out in got.items():
            if out is None:
                continue
            check = f"tools:{pname}"
            try:
                diff = toolcalls.compare(want, tool_calls_of(out[2]))
            except Exception:  # noqa: BLE001 - arguments that are not JSON
                ctx.crash(case, check)
                continue
            ctx.add(
                case,
                check,
                "fail" if diff else "pass",
                diff or f"{len(want)} call(s) equal",
                klass="backend-specific" if diff else None,
            )
        stream_vs_whole(ctx, case, "tools:transformers:stream", got.get("transformers"), got.get("transformers-stream"))


def stream_vs_whole(ctx: Ctx, case: str, check: str, whole, streamed) -> None:
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
    ctx.add(
        case,
        check,
        "fail" if diffs else "pass",
        ("whole vs streamed: " + "; ".join(diffs)) if diffs else "whole and streamed parses identical",
        klass="backend-specific" if diffs else None,
    )
