"""Streamed vs whole, stop strings and tokens, special tokens through the engines (items 1, 3 and
4 of :mod:`stage_postprocess`).

The engines are the inference stage's adapters (:mod:`engine_registry`): llama-cpp-python
in-process (its ``Llama``, driven here through ``create_completion`` with and without
``stream``), and the OpenAI-compatible servers through their client. Streams are read with
:mod:`wire`'s SSE parser and accumulated by its OpenAI streaming rules; nothing here parses a
stream of its own. Standard library only at import time.
"""

from __future__ import annotations

import time
import traceback
from typing import Any

import engine_registry
import engines
import wire
from postprocess_context import Ctx, Unavailable, model_specials, pick_cases
from postprocess_rules import (
    SPECIAL_TEXT,
    TEXTS,
    convention,
    gbnf_literal,
    judge_stop,
    special_expectations,
    stop_across,
    stream_diff,
    whole_pieces,
)
from probe import first_divergence
from servers import HTTPStatusError

ENGINES_HERE = ("llama-cpp-python", "llama-cpp-server", "transformers-serve", "openai-endpoint")
GREEDY = {"temperature": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0, "seed": 0}
FORCED_PROMPT = "<|im_start|>user\nSay it.<|im_end|>\n<|im_start|>assistant\n"


# --------------------------------------------------------------------------- answers in one shape


def sse_payloads(body: bytes | str) -> list[dict]:
    """The JSON payloads of an SSE body (:func:`wire.parse_sse`) up to OpenAI's ``[DONE]``; a
    payload that is not JSON raises ValueError (a broken stream is a failure, never skipped)."""
    out = []
    for event in wire.parse_sse(body):
        if event["done"]:
            break
        if event["json"] is None:
            raise ValueError(f"SSE data is not JSON: {event['data'][:200]!r}")
        out.append(event["json"])
    return out


def streamed_answer(chunks) -> dict:
    """Streamed chunks (completions or chat) accumulated by :func:`wire.accumulate`, as
    ``{"text", "finish_reason", "reasoning", "tool_calls", "chunks"}`` (what :func:`chat_message`
    and a plain completion give, so the two compare field by field)."""
    acc = wire.accumulate(chunks)
    calls = [{"name": c["name"] or "", "arguments": c["arguments"]} for c in acc["tool_calls"]] or None
    return {
        "text": acc["content"] or "",
        "finish_reason": acc["finish_reason"],
        "reasoning": acc["reasoning"],
        "tool_calls": calls,
        "chunks": acc["chunks"],
    }


def chat_message(resp: dict) -> dict:
    """A non-streamed chat completion's choice 0 in :func:`streamed_answer`'s shape."""
    ch = (resp.get("choices") or [{}])[0]
    msg = ch.get("message") or {}
    calls = [
        {"name": (c.get("function") or {}).get("name", ""), "arguments": (c.get("function") or {}).get("arguments", "")}
        for c in msg.get("tool_calls") or []
    ] or None
    return {
        "text": msg.get("content") or "",
        "finish_reason": ch.get("finish_reason"),
        "reasoning": msg.get("reasoning_content") or None,
        "tool_calls": calls,
    }


def stream_request(client, path: str, body: dict) -> list[dict]:
    """POST with ``stream: true`` (:meth:`servers.OpenAIClient.stream`); the SSE payloads."""
    return sse_payloads(client.stream(path, body))


# --------------------------------------------------------------------------- the driver


def engine_checks(ctx: Ctx) -> None:
    for spec in list(ctx.job.get("engines") or []):
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
            ctx.facts.setdefault("engines", {}).setdefault(name, {})["seconds"] = round(
                time.perf_counter() - started, 3
            )


def _adapter(ctx: Ctx, spec):
    try:
        return engine_registry.make(spec, ctx.job)
    except engines.EngineUnavailable as exc:
        raise Unavailable(str(exc)) from None


def _close(eng) -> None:
    try:
        eng.close()
    except Exception:  # noqa: BLE001 - closing is best effort; the records are written
        pass


# --------------------------------------------------------------------------- llama-cpp-python in-process


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


class _Completer:
    """Greedy ``create_completion`` on the adapter's ``Llama``, streamed or not, optionally forced."""

    def __init__(self, llm):
        self.llm = llm

    def __call__(self, prompt, max_tokens, stream, force=None, stop=None, logprobs=None) -> dict:
        from llama_cpp import LogitsProcessorList

        lp = LogitsProcessorList([_Force(len(prompt), force)]) if force is not None else None
        self.llm.reset()
        kw = dict(
            max_tokens=max_tokens, stream=stream, stop=stop or [], logprobs=logprobs, logits_processor=lp, **GREEDY
        )
        if not stream:
            ch = self.llm.create_completion(prompt, **kw)["choices"][0]
            return {"text": ch["text"], "finish_reason": ch["finish_reason"]}
        return streamed_answer(list(self.llm.create_completion(prompt, **kw)))

    def tokens(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def detok(self, ids) -> str:
        return self.llm.detokenize(list(ids)).decode("utf-8", errors="replace")


def llama_in_process(ctx: Ctx, spec) -> None:
    eng = _adapter(ctx, spec)
    try:
        try:
            eng.start()
        except engines.EngineUnavailable as exc:
            raise Unavailable(str(exc)) from None
        run = _Completer(eng.llm)
        facts = ctx.facts.setdefault("engines", {}).setdefault(eng.name, {})
        facts.update({"llama_cpp_python": eng.facts().get("llama_cpp_python"), "eos": eng.llm.token_eos()})
        base = run.tokens(FORCED_PROMPT)
        _llama_streams(ctx, eng.name, run, base)
        _llama_stop_string(ctx, eng.name, run, base, facts)
        _llama_stop_tokens(ctx, eng.name, run, base, eng.eos_ids)
        _llama_special(ctx, eng.name, run, base)
    finally:
        _close(eng)


def _llama_streams(ctx: Ctx, eng: str, run: _Completer, base: list[int]) -> None:
    """1. streamed vs not, on the golden prompts (whatever the model says) and forced texts."""
    prompts: list[tuple[str, list[int], list[int] | None, str | None]] = []
    for c in pick_cases(ctx.job, int(ctx.conf.get("max_cases", 2))):
        ids = (c.get("expect") or {}).get("ids")
        if ids:
            prompts.append((c["id"], [int(i) for i in ids], None, None))
    for tname, text in TEXTS.items():
        target = run.tokens(text)
        prompts.append((f"_forced/{tname}", base, target, run.detok(target)))
    k, n_new = int(ctx.conf.get("logprobs", 5)), int(ctx.conf.get("max_new_tokens", 24))
    for case, prompt, force, expected in prompts:
        n = len(force) if force else n_new
        for check, lp in ((f"{eng}:stream", None), (f"{eng}:stream-logprobs", k)):
            try:
                plain = run(prompt, n, False, force, logprobs=lp)
                streamed = run(prompt, n, True, force, logprobs=lp)
            except Exception:  # noqa: BLE001
                ctx.crash(case, check)
                continue
            diff = stream_diff(plain, streamed)
            if expected is not None and plain["text"] != expected:
                diff = (
                    (diff + "; " if diff else "")
                    + "non-streamed text is not the forced text: "
                    + first_divergence(expected, plain["text"])
                )
            ctx.add(
                case,
                check,
                "fail" if diff else "pass",
                diff or f"{len(plain['text'])} chars equal, finish_reason {plain['finish_reason']!r}",
                klass="backend-specific" if diff else None,
                logprobs=lp,
            )


def _llama_stop_string(ctx: Ctx, eng: str, run: _Completer, base: list[int], facts: dict) -> None:
    """3. a stop string spanning two tokens, on a forced text."""
    target = run.tokens(TEXTS["mixed"])
    pieces, ends = whole_pieces([run.llm.detokenize([t]) for t in target])
    chosen = stop_across(pieces)
    if chosen is None:
        ctx.add("_forced/mixed", f"{eng}:stop-string", "skipped", "no two-token stop string in the forced text")
        return
    stop, expected, i = chosen
    facts["stop_string"] = {"stop": stop, "between_tokens": [target[ends[i]], target[ends[i] + 1]]}
    for stream in (False, True):
        check = f"{eng}:stop-string" + (":stream" if stream else "")
        try:
            out = run(base, len(target) + 4, stream, target + target, stop=[stop])
        except Exception:  # noqa: BLE001
            ctx.crash("_forced/mixed", check)
            continue
        outcome, detail, klass = judge_stop(out["text"], out["finish_reason"], expected, f"stop {stop!r}", stop)
        ctx.add("_forced/mixed", check, outcome, detail, klass=klass, stop=stop)


def _llama_stop_tokens(ctx: Ctx, eng: str, run: _Completer, base: list[int], eos_ids: list[int]) -> None:
    """3. stop tokens: the model's EOS and EOT forced in the middle of a text."""
    ascii_ids = run.tokens("Hello there, the stop comes now")
    for tid in eos_ids:
        forced = ascii_ids + [tid] + ascii_ids
        for stream in (False, True):
            check = f"{eng}:stop-token:{tid}" + (":stream" if stream else "")
            try:
                out = run(base, len(forced), stream, forced)
            except Exception:  # noqa: BLE001
                ctx.crash("_forced/stop-token", check)
                continue
            outcome, detail, klass = judge_stop(out["text"], out["finish_reason"], run.detok(ascii_ids), f"token {tid}")
            ctx.add("_forced/stop-token", check, outcome, detail, klass=klass)


def _llama_special(ctx: Ctx, eng: str, run: _Completer, base: list[int]) -> None:
    """4. special tokens in what the engine returns."""
    control, _ = model_specials(ctx.job["model_dir"])
    kept, skipped = special_expectations(SPECIAL_TEXT, control)
    forced = run.tokens(SPECIAL_TEXT)
    for stream in (False, True):
        check = f"{eng}:special" + (":stream" if stream else "")
        try:
            out = run(base, len(forced), stream, forced)
        except Exception:  # noqa: BLE001
            ctx.crash("_special/mixed", check)
            continue
        c = convention(out["text"], kept, skipped)
        ctx.facts.setdefault("special_convention", {})[check] = c
        if c == "neither":
            ctx.add(
                "_special/mixed",
                check,
                "fail",
                f"{out['text']!r} is neither the text with control tokens kept {kept!r} nor skipped {skipped!r}",
                klass="backend-specific",
            )
        else:
            ctx.add("_special/mixed", check, "pass", f"control tokens {c}; added tokens <think>/<tool_call> kept")


# --------------------------------------------------------------------------- servers


class _Server:
    """One started server adapter: request bodies for its API, plain and streamed answers, and
    attempts whose HTTP errors and crashes become records."""

    def __init__(self, ctx: Ctx, eng, name: str):
        self.ctx, self.eng, self.name = ctx, eng, name
        self.api = eng.api
        self.client = eng.client
        self.path = "/chat/completions" if self.api == "chat" else "/completions"
        self.n_new = int(ctx.conf.get("max_new_tokens", 24))
        self.facts: dict[str, Any] = ctx.facts.setdefault("engines", {}).setdefault(name, {})
        self.facts["api"] = self.api
        self.forced = self.name == "llama-cpp-server" and self.api != "chat"
        """A GBNF grammar can make this server emit a fixed text (token pieces known)."""

    def body(self, case: dict, **extra) -> dict:
        b: dict[str, Any] = {"max_tokens": self.n_new, "temperature": 0.0, "top_p": 1.0, "seed": 0, "n": 1}
        if self.eng.model_name:
            b["model"] = self.eng.model_name
        if self.name == "llama-cpp-server":
            b.update(top_k=1, repeat_penalty=1.0, min_p=0.0)
        if self.api == "chat":
            b["messages"] = case["messages"]
        else:
            b["prompt"] = case["expect"].get("render") or ""
        b.update(extra)
        return b

    def plain(self, b: dict) -> tuple[dict, dict]:
        r = self.client.request("POST", self.path, b)
        if self.api == "chat":
            return chat_message(r), r
        ch = (r.get("choices") or [{}])[0]
        return {"text": ch.get("text") or "", "finish_reason": ch.get("finish_reason")}, r

    def streamed(self, b: dict) -> dict:
        return streamed_answer(stream_request(self.client, self.path, b))

    def attempt(self, case: str, check: str, fn):
        try:
            return fn()
        except HTTPStatusError as exc:
            self.ctx.add(
                case, check, "fail", f"{exc}{_tail(self.eng)}", klass="protocol" if exc.status < 500 else "crash"
            )
        except Exception:  # noqa: BLE001
            self.ctx.add(case, check, "fail", traceback.format_exc(limit=6) + _tail(self.eng), klass="crash")
        return None


def _grammar(text: str) -> dict:
    return {"grammar": gbnf_literal(text), "max_tokens": 4 * len(text.encode("utf-8")) + 8}


def server_checks(ctx: Ctx, spec, name: str) -> None:
    eng = _adapter(ctx, spec)
    try:
        try:
            eng.start()
        except engines.EngineUnavailable as exc:
            raise Unavailable(str(exc)) from None
        except engines.EngineInfra as exc:
            ctx.add("*", name, "infra", f"{exc}\n--- log tail ---\n{exc.log_tail}", klass="engine-start")
            return
        srv = _Server(ctx, eng, name)
        first_plain = _server_streams(srv)
        _server_stop_string(srv, first_plain)
        srv.facts["stop_token"] = "not expressible through the OpenAI API (no stop-token-id parameter): not checked"
    finally:
        _close(eng)


def _server_streams(srv: _Server):
    """1. streamed vs not on the golden prompts and, where a grammar can force it, fixed texts;
    returns the first golden case's plain answer (or None)."""
    ctx = srv.ctx
    cases = [
        c
        for c in pick_cases(ctx.job, int(ctx.conf.get("max_cases", 2)))
        if (c.get("messages") if srv.api == "chat" else (c.get("expect") or {}).get("render"))
    ]
    runs = [(c, None) for c in cases]
    if srv.forced:
        runs += [
            ({"id": f"_forced/{tname}", "expect": {"render": FORCED_PROMPT}}, text) for tname, text in TEXTS.items()
        ]
    first_plain = None
    for case, text in runs:
        extra: dict[str, Any] = _grammar(text) if text else {}
        variants: list[tuple[str, dict[str, Any]]] = [(f"{srv.name}:stream", {})]
        if srv.api != "chat":
            variants.append((f"{srv.name}:stream-logprobs", {"logprobs": int(ctx.conf.get("logprobs", 5))}))
        for check, more in variants:
            b = srv.body(case, **extra, **more)
            got = srv.attempt(case["id"], check, lambda b=b: (srv.plain(b)[0], srv.streamed(b)))
            if got is None:
                continue
            p, s = got
            if first_plain is None and text is None:
                first_plain = (case, p)
            diff = _forced_diff(stream_diff(p, s), p, text)
            ctx.add(
                case["id"],
                check,
                "fail" if diff else "pass",
                diff or f"{len(p['text'])} chars equal over {s['chunks']} chunks, finish_reason {p['finish_reason']!r}",
                klass="backend-specific" if diff else None,
            )
    return first_plain


def _forced_diff(diff: str, plain: dict, text: str | None) -> str:
    """The stream difference, plus what a grammar-forced answer got wrong."""
    if text is not None and plain["text"] != text:
        diff = (
            (diff + "; " if diff else "")
            + "the grammar-forced text came back different: "
            + first_divergence(text, plain["text"])
        )
    if text is not None and plain["finish_reason"] != "stop":
        diff = (diff + "; " if diff else "") + (
            f"finish_reason {plain['finish_reason']!r} after the grammar "
            "ended (EOS is the only token left): expected 'stop'"
        )
    return diff


def _server_stop_string(srv: _Server, first_plain) -> None:
    """3. a stop string across two tokens (where the tokens are known) on a forced or greedy text."""
    stop_case: tuple[dict, dict, list[str]] | None = _forced_stop_case(srv) if srv.forced else None
    if stop_case is None and first_plain is not None:
        case, p = first_plain
        # token boundaries are unknown here: a two-character stop near the middle of the text
        # (a character boundary; with a byte-level vocabulary of this size, most are tokens')
        if len(p["text"]) >= 4:
            stop_case = (case, {}, list(p["text"]))
            srv.facts["stop_string_boundary"] = "token boundaries unknown: a character boundary near the middle"
    if stop_case is None:
        return
    case, extra, pieces = stop_case
    chosen = stop_across(pieces)
    if chosen is None:
        srv.ctx.add(case["id"], f"{srv.name}:stop-string", "skipped", "no stop string across two tokens in the text")
        return
    stop, expected, _ = chosen
    srv.facts["stop_string"] = stop
    for stream in (False, True):
        check = f"{srv.name}:stop-string" + (":stream" if stream else "")
        b = srv.body(case, stop=[stop], **extra)
        got = srv.attempt(case["id"], check, (lambda b=b: srv.streamed(b)) if stream else (lambda b=b: srv.plain(b)[0]))
        if got is None:
            continue
        outcome, detail, klass = judge_stop(got["text"], got["finish_reason"], expected, f"stop {stop!r}", stop)
        srv.ctx.add(case["id"], check, outcome, detail, klass=klass, stop=stop)


def _forced_stop_case(srv: _Server) -> tuple[dict, dict, list[str]] | None:
    """The grammar-forced mixed text with its token pieces (from ``logprobs.tokens``), or None."""
    text = TEXTS["mixed"]
    case: dict[str, Any] = {"id": "_forced/mixed", "expect": {"render": FORCED_PROMPT}}
    r = srv.attempt(
        case["id"], f"{srv.name}:stop-string", lambda: srv.plain(srv.body(case, **_grammar(text), logprobs=1))[1]
    )
    toks = (((r or {}).get("choices") or [{}])[0].get("logprobs") or {}).get("tokens") if r else None
    if toks and "".join(toks) == text:
        return case, _grammar(text), toks
    if r is not None:
        srv.facts["stop_string"] = (
            "token pieces unavailable or not whole UTF-8 (logprobs.tokens joined "
            f"{''.join(toks or [])!r}); greedy text used instead"
        )
    return None


def _tail(eng) -> str:
    tail = eng.log_tail() if hasattr(eng, "log_tail") else ""
    return f"\n--- server log (tail) ---\n{tail[-1500:]}" if tail else ""
