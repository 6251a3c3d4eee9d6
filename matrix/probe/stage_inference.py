"""Inference stage: every engine of the cell generates from the golden prompt token ids; the
tokens are compared with the reference engine's goldens (transformers, float32, CPU, greedy).

Job fields:

- ``engines``: the engines the cell brings, each a name or ``{"name": ..., **options}``:
  ``transformers``, ``llama-cpp-python``, ``llama-cpp-server``, ``transformers-serve``,
  ``openai-endpoint`` (options ``base_url``, ``api`` = ``completions`` | ``chat``, ``prompt`` =
  ``ids`` | ``text`` | ``auto``, ``model``, ``api_key_env``). Options common to all: ``threads``
  (default 2), ``seed``, ``n_ctx`` (llama.cpp). ``engine_options``: name -> options, merged under.
- ``gen_cases``: ``[{id, prompt_ids, prompt_text, max_new_tokens, sampling, expect: {gen}}]``.
  Every field but ``id`` may be left out when ``id`` names a case of ``job["cases"]``: the prompt
  ids then come from that case's ``expect.ids`` (the tokenize golden), the text from its
  ``expect.render``, the messages and tools from the case; in golden mode from what the template
  and tokenize stages just produced. Without ``gen_cases``, the cases whose ``stages`` name
  ``inference`` are used. ``max_new_tokens`` default ``job["max_new_tokens"]`` or 16;
  ``sampling`` default ``{temperature: 0, top_k: 1, top_p: 1.0, min_p: 0, repeat_penalty: 1.0,
  seed: 0, stop_at_eos: false}`` (``job["sampling"]`` overrides the default for all cases).
- ``expect.gen`` (from the goldens): ``{"ids", "topk": [[[id, logprob] x k] per step], "text",
  "pieces", "topk_pieces", "engine", "max_new_tokens", "sampling"}``.
- ``reference_engine`` (default ``transformers``): the engine golden mode runs; ``topk`` (5);
  ``inference_min_level`` (default ``L2``): the weakest reproducibility level that passes;
  ``concurrency`` (N, default 4) and ``concurrency_cases`` (how many cases, default 2) for
  servers; ``limits.server_start_seconds`` (120), ``limits.request_seconds`` (120);
  ``gguf_path`` (default ``model_dir/model.gguf``); ``eos_ids`` (default from the model's config).

Checks, one record per (case, engine): ``<engine>`` the generation against the golden (vLLM's
rule: exact token agreement; where tokens first diverge, each side's token must be in the other's
top-k at that step, else ``fail`` klass ``numerical``; the first divergent step is reported and
nothing after it is compared, the prefixes differ from there); ``<engine>:determinism`` the same
request again gives identical tokens (llama-cpp-python: without a reset, through the KV-cache
prefix reuse; klass ``determinism``); ``<engine>:concurrency`` (servers) the request alone vs
among N concurrent identical requests (klass ``concurrency``). Identical tokens with other text
than the reference decode add a ``postprocess`` record ``<engine>:text`` (klass
``backend-specific``) when the job runs that stage: the engine's own detokenization differs.

Where ids are not observable (a server returns text pieces), tokens are compared as pieces
against the golden's ``pieces``/``topk_pieces``; a piece that is not whole UTF-8 ("" or with
U+FFFD) matches anything.

Reproducibility level per case and engine (fact ``inference[engine].level``, the worst case):
``L0`` identical tokens and identical text (the engine's own detokenization); ``L1`` identical
tokens (text differs or unobserved); ``L2`` top-k containment at the first divergence; ``L3``
task-level pass (not judged here). Failure classes: ``numerical``, ``crash``, ``determinism``,
``concurrency``, ``backend-specific``, ``protocol``, ``configuration-default``; an engine that
cannot start is ``infra`` (log tail in the detail), one whose package is missing ``skipped``.
"""

from __future__ import annotations

import json
import os
import time
import traceback

STAGE = "inference"
LEVELS = ("L0", "L1", "L2", "L3")
DEFAULT_MAX_NEW_TOKENS = 16


# --------------------------------------------------------------------------- comparison (pure)


def unknown_piece(p) -> bool:
    return isinstance(p, str) and (p == "" or "\ufffd" in p)


def piece_eq(a, b) -> bool:
    return a == b or unknown_piece(a) or unknown_piece(b)


def realign_pieces(ref: list, got: list, got_topk: list, omitted: int) -> tuple[list, list]:
    """Put back the steps an engine left out of its pieces (older llama.cpp servers give no
    probability entry for a token that is not whole UTF-8): where the reference has a run of such
    pieces and the engine's next piece is the reference's next whole piece, up to ``omitted``
    empty (unknown) pieces are inserted. Nothing is inserted anywhere else, so a real divergence
    still shows at its step."""
    out: list = []
    out_k: list = []
    j, i = 0, 0
    while i < len(ref):
        if omitted and unknown_piece(ref[i]):
            run = i
            while run < len(ref) and unknown_piece(ref[run]):
                run += 1
            width = run - i
            nxt = ref[run] if run < len(ref) else None
            if width <= omitted and (j >= len(got) or (nxt is not None and got[j] == nxt)):
                out += [""] * width
                out_k += [[] for _ in range(width)]
                omitted -= width
                i = run
                continue
        if j < len(got):
            out.append(got[j])
            out_k.append(got_topk[j] if j < len(got_topk) else [])
            j += 1
        i += 1
    out += got[j:]
    out_k += [got_topk[k] if k < len(got_topk) else [] for k in range(j, len(got))]
    return out, out_k


def _lp_of(tok, topk, eq) -> float | None:
    for t, lp in topk or ():
        if eq(t, tok):
            return lp
    return None


def compare(ref: list, ref_topk: list, got: list, got_topk: list | None, eq=None) -> dict:
    """vLLM's rule on two token sequences (ids or pieces) with their per-step top-k.

    Returns ``{"match": exact | topk | diverged | shorter | longer, "step", "detail",
    "one_sided", "max_logprob_delta"}``. ``one_sided``: the engine gave no top-k, so only
    "engine token in the reference's top-k" could be checked.
    """
    eq = eq or (lambda a, b: a == b)
    n = min(len(ref), len(got))
    delta = 0.0
    for i in range(n):
        rk = ref_topk[i] if i < len(ref_topk) else []
        gk = got_topk[i] if got_topk and i < len(got_topk) else []
        if eq(ref[i], got[i]):
            a, b = _lp_of(ref[i], rk, eq), _lp_of(got[i], gk, eq)
            if a is not None and b is not None:
                delta = max(delta, abs(a - b))
            continue
        got_in_ref = any(eq(got[i], t) for t, _ in rk)
        one_sided = not gk
        ref_in_got = True if one_sided else any(eq(ref[i], t) for t, _ in gk)
        ok = got_in_ref and ref_in_got
        detail = (
            f"first divergence at step {i}: reference {ref[i]!r} (logprob {_lp_of(ref[i], rk, eq)}), "
            f"engine {got[i]!r} (logprob {_lp_of(got[i], gk, eq)}); "
            f"engine token {'in' if got_in_ref else 'NOT in'} the reference top-{len(rk)} {rk}; "
            + (
                "engine gave no top-k"
                if one_sided
                else f"reference token {'in' if ref_in_got else 'NOT in'} the engine top-{len(gk)} {gk}"
            )
        )
        return {
            "match": "topk" if ok else "diverged",
            "step": i,
            "detail": detail,
            "one_sided": one_sided,
            "max_logprob_delta": round(delta, 6),
        }
    if len(got) < len(ref):
        return {
            "match": "shorter",
            "step": n,
            "one_sided": False,
            "max_logprob_delta": round(delta, 6),
            "detail": f"engine stopped after {len(got)} tokens, reference has {len(ref)}; "
            f"reference token at step {n}: {ref[n]!r}",
        }
    if len(got) > len(ref):
        return {
            "match": "longer",
            "step": n,
            "one_sided": False,
            "max_logprob_delta": round(delta, 6),
            "detail": f"engine gave {len(got)} tokens, reference {len(ref)}",
        }
    return {"match": "exact", "step": None, "detail": "", "one_sided": False, "max_logprob_delta": round(delta, 6)}


def level_of(cmp: dict, text_equal: bool | None) -> str | None:
    """The reproducibility level a comparison reached (None: below L2)."""
    if cmp["match"] == "exact":
        return "L0" if text_equal else "L1"
    if cmp["match"] == "topk":
        return "L2"
    return None


def worst_level(levels) -> str | None:
    levels = list(levels)
    if not levels:
        return None
    if any(lv is None for lv in levels):
        return None
    return max(levels, key=LEVELS.index)


def judge(expect: dict, gen, eos_ids=(), min_level: str = "L2") -> dict:
    """Outcome of one generation against its golden: ``{outcome, klass, level, detail, step, ...}``."""
    if gen.by == "text":
        from probe import first_divergence

        ref_text = expect.get("text")
        base = {
            "step": None,
            "max_logprob_delta": None,
            "compared_by": "text",
            "one_sided": True,
            "text_equal": gen.text == ref_text,
        }
        if ref_text is None:
            return {
                **base,
                "outcome": "skipped",
                "level": None,
                "klass": None,
                "detail": "the engine returns no logprobs and the golden has no text",
            }
        if gen.text == ref_text:
            return {**base, "outcome": "pass", "level": "L0", "klass": None, "detail": "identical text (no logprobs)"}
        if isinstance(gen.text, str) and gen.text.strip() == ref_text.strip():
            return {
                **base,
                "outcome": "fail",
                "level": None,
                "klass": "backend-specific",
                "detail": "identical text except surrounding whitespace (the engine strips its output): "
                + first_divergence(ref_text, gen.text),
            }
        return {
            **base,
            "outcome": "fail",
            "level": None,
            "klass": "numerical",
            "detail": "text differs and the engine returns no logprobs to judge it by: "
            + first_divergence(ref_text, gen.text),
        }
    if gen.by == "ids":
        ref, ref_topk, eq = expect["ids"], expect.get("topk") or [], None
    else:
        pieces = expect.get("pieces")
        if pieces is None:
            return {
                "outcome": "skipped",
                "level": None,
                "klass": None,
                "step": None,
                "detail": "the engine returns text pieces and the golden has no pieces",
            }
        tp = expect.get("topk_pieces") or []
        ref = pieces
        ref_topk = [
            [[p, lp] for p, (_, lp) in zip(tp[i], step)]
            for i, step in enumerate(expect.get("topk") or [])
            if i < len(tp)
        ]
        eq = piece_eq
    got, got_topk = gen.tokens, gen.topk
    if gen.by == "pieces" and gen.extra.get("omitted_steps"):
        got, got_topk = realign_pieces(ref, got, got_topk or [], gen.extra["omitted_steps"])
    cmp = compare(ref, ref_topk, got, got_topk, eq)
    text_equal = None if gen.text is None or expect.get("text") is None else gen.text == expect["text"]
    out = {
        "step": cmp["step"],
        "max_logprob_delta": cmp["max_logprob_delta"],
        "compared_by": gen.by,
        "one_sided": cmp["one_sided"],
        "text_equal": text_equal,
    }
    if cmp["match"] == "shorter":
        stop_tok = expect["ids"][cmp["step"]] if cmp["step"] < len(expect.get("ids", [])) else None
        if gen.finish_reason == "stop" and stop_tok in set(eos_ids):
            # identical up to an EOS the engine stops at (the golden ran on past it)
            out.update(outcome="pass", klass=None, level="L1", detail="identical up to EOS, where the engine stopped")
            return out
        out.update(
            outcome="fail",
            klass="backend-specific",
            level=None,
            detail=f"{cmp['detail']} (finish_reason={gen.finish_reason!r})",
        )
        return out
    if cmp["match"] == "longer":
        out.update(outcome="fail", klass="protocol", level=None, detail=cmp["detail"] + " (max_tokens not honoured)")
        return out
    level = level_of(cmp, text_equal)
    out["level"] = level
    if level is None:
        out.update(outcome="fail", klass="numerical", detail=cmp["detail"])
    elif LEVELS.index(level) > LEVELS.index(min_level):
        out.update(
            outcome="fail",
            klass="numerical",
            detail=f"level {level} is below the required {min_level}: " + (cmp["detail"] or "text differs"),
        )
    else:
        detail = cmp["detail"]
        if level == "L1" and text_equal is False:
            detail = f"identical tokens; the engine's text differs: {gen.text!r} vs {expect.get('text')!r}"
        out.update(outcome="pass", klass=None, detail=detail)
    return out


def _text_differs(rec, case: str, engine: str, want: str, got: str) -> None:
    """Identical tokens but other text: the engine's own detokenization differs from the
    reference's, a postprocess-stage failure (the inference stage itself passed at L1)."""
    from probe import first_divergence

    rec.add(
        case,
        "postprocess",
        f"{engine}:text",
        "fail",
        "identical tokens; the engine's own detokenization gives other text than the reference decode: "
        + first_divergence(want, got),
        klass="backend-specific",
    )


def same_output(a, b) -> str:
    """ "" when two generations are identical (tokens and text), else where they differ."""
    from probe import first_id_divergence

    if a.tokens != b.tokens:
        if a.by == "ids":
            return first_id_divergence(a.tokens, b.tokens)
        n = next((i for i, (x, y) in enumerate(zip(a.tokens, b.tokens)) if x != y), min(len(a.tokens), len(b.tokens)))
        return f"first divergence at token {n}: {a.tokens[n : n + 4]} vs {b.tokens[n : n + 4]}"
    if a.text != b.text:
        return f"same tokens, different text: {a.text!r} vs {b.text!r}"
    return ""


# --------------------------------------------------------------------------- cases


def gen_cases(job: dict, rec) -> list[dict]:
    """The generation cases with prompt ids, text, messages, settings and goldens filled in."""
    from engines import DEFAULT_SAMPLING

    by_id = {c["id"]: c for c in job.get("cases", [])}
    raw = job.get("gen_cases")
    if raw is None:
        raw = [{"id": c["id"]} for c in job.get("cases", []) if STAGE in (c.get("stages") or ())]
    out = []
    for g in raw:
        base = by_id.get(g["id"], {})
        expect = {**(base.get("expect") or {}), **(g.get("expect") or {})}
        produced = rec.produced.get(g["id"], {})
        case = {**base, **g, "expect": expect}
        case["prompt_ids"] = g.get("prompt_ids") or expect.get("ids") or produced.get("ids")
        case["prompt_text"] = g.get("prompt_text") or expect.get("render") or produced.get("render")
        case["max_new_tokens"] = int(g.get("max_new_tokens") or job.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
        case["sampling"] = {**DEFAULT_SAMPLING, **(job.get("sampling") or {}), **(g.get("sampling") or {})}
        if not case["prompt_ids"]:
            rec.add(g["id"], STAGE, "prompt", "skipped", "no prompt token ids (no tokenize golden for this case)")
            continue
        out.append(case)
    return out


def model_eos_ids(job: dict) -> list[int]:
    if job.get("eos_ids") is not None:
        return list(job["eos_ids"])
    ids = set()
    for name in ("generation_config.json", "config.json"):
        try:
            with open(os.path.join(job["model_dir"], name), encoding="utf-8") as f:
                v = json.load(f).get("eos_token_id")
        except (OSError, ValueError):
            continue
        ids.update(v if isinstance(v, list) else [v] if v is not None else [])
    return sorted(i for i in ids if isinstance(i, int))


# --------------------------------------------------------------------------- the stage


def run(job: dict, rec) -> None:
    cases = gen_cases(job, rec)
    if not cases:
        return
    specs = list(job.get("engines") or [])
    if rec.mode == "golden":
        specs = [job.get("reference_engine", "transformers")]
    if not specs:
        rec.add("*", STAGE, "engines", "skipped", "the cell brings no inference engine (job['engines'] is empty)")
        return
    need = max(len(c["prompt_ids"]) + c["max_new_tokens"] for c in cases)
    job = dict(job, _n_ctx=max(512, -(-(need + 64) // 256) * 256))
    facts = rec.facts.setdefault(STAGE, {})
    skipped: list = []
    for spec in specs:
        run_engine(spec, job, cases, rec, facts, skipped)
    # An engine whose package this cell lacks is a fact, not a record: it must not turn the
    # stage of a cell whose other engines ran into `skipped`. With no engine run, it is the result.
    if not any(r["stage"] == STAGE and r["case"] != "*" for r in rec.records):
        for name, reason in skipped:
            rec.add("*", STAGE, name, "skipped", reason)


def _name(spec) -> str:
    return spec if isinstance(spec, str) else spec.get("name", "?")


def run_engine(spec, job: dict, cases: list[dict], rec, facts: dict, skipped: list | None = None) -> None:
    import engine_registry
    import engines

    name = _name(spec)
    started = time.perf_counter()
    info: dict = {}
    try:
        eng = engine_registry.make(spec, job)
    except engines.EngineUnavailable as exc:
        _skip(name, str(exc), facts, skipped)
        return
    levels: list = []
    try:
        try:
            eng.start()
        except engines.EngineUnavailable as exc:
            _skip(name, str(exc), facts, skipped)
            return
        except engines.EngineInfra as exc:
            rec.add("*", STAGE, name, "infra", f"{exc}\n--- log tail ---\n{exc.log_tail}", klass="engine-start")
            facts[name] = {"infra": str(exc)}
            return
        except Exception:  # noqa: BLE001 - a model the engine cannot load is a result
            rec.add(
                "*",
                STAGE,
                name,
                "fail",
                "engine failed to load the model:\n" + traceback.format_exc(limit=6),
                klass="crash",
            )
            facts[name] = {"crash": "load"}
            return
        info["start_seconds"] = round(time.perf_counter() - started, 3)
        eos = model_eos_ids(job)
        min_level = job.get("inference_min_level", "L2")
        conc_n = int(job.get("concurrency", 4))
        conc_cases = int(job.get("concurrency_cases", 2))
        divergences = []
        for i, case in enumerate(cases):
            gen = _generate(eng, case, rec, name)
            if gen is None:
                levels.append(None)
                continue
            cid = case["id"]
            if rec.mode == "golden":
                rec.produce(
                    cid,
                    "gen",
                    {
                        "engine": name,
                        "ids": gen.tokens,
                        "topk": gen.topk,
                        "text": gen.text,
                        "pieces": gen.extra.get("pieces"),
                        "topk_pieces": gen.extra.get("topk_pieces"),
                        "max_new_tokens": case["max_new_tokens"],
                        "sampling": case["sampling"],
                    },
                )
                rec.add(cid, STAGE, name, "pass", "golden produced", level="L1")
                levels.append("L1")
            else:
                expect = (case.get("expect") or {}).get("gen")
                if not expect:
                    rec.add(cid, STAGE, name, "skipped", "no inference golden for this case")
                elif expect.get("sampling") not in (None, case["sampling"]) or expect.get("max_new_tokens") not in (
                    None,
                    case["max_new_tokens"],
                ):
                    rec.add(
                        cid,
                        STAGE,
                        name,
                        "skipped",
                        "the golden was made with other settings "
                        f"({expect.get('max_new_tokens')} tokens, {expect.get('sampling')})",
                    )
                else:
                    j = judge(expect, gen, eos, min_level)
                    levels.append(j["level"])
                    if j.get("step") is not None:
                        divergences.append({"case": cid, "step": j["step"], "match": j["outcome"]})
                    rec.add(
                        cid,
                        STAGE,
                        name,
                        j["outcome"],
                        j["detail"],
                        klass=j.get("klass"),
                        level=j["level"],
                        step=j.get("step"),
                        compared_by=j["compared_by"],
                        prompt_kind=gen.prompt_kind,
                        max_logprob_delta=j["max_logprob_delta"],
                    )
                    if j["outcome"] == "pass" and j.get("text_equal") is False and "postprocess" in job["stages"]:
                        _text_differs(rec, cid, name, expect.get("text"), gen.text)
            _determinism(eng, case, gen, rec, name)
            if eng.server and i < conc_cases and conc_n > 1:
                _concurrency(eng, case, gen, conc_n, rec, name)
        info["level"] = worst_level(levels)
        info["first_divergence"] = divergences
    finally:
        try:
            eng.close()
        except Exception as exc:  # noqa: BLE001 - teardown must not hide the results
            info["close_error"] = str(exc)[:300]
        try:
            info.update({k: v for k, v in eng.facts().items() if k not in info})
        except Exception:  # noqa: BLE001
            pass
        info["seconds"] = round(time.perf_counter() - started, 3)
        info["cases"] = len(cases)
        facts.setdefault(name, {}).update(info)


def _skip(name: str, reason: str, facts: dict, skipped: list | None) -> None:
    facts[name] = {"skipped": reason}
    if skipped is not None:
        skipped.append((name, reason))


def _generate(eng, case, rec, name, check=None):
    """One generation, or None after recording why it failed (crash / protocol)."""
    import engines
    from servers import HTTPStatusError, TransportError

    check = check or name
    try:
        return eng.generate(case)
    except engines.ProtocolError as exc:
        rec.add(case["id"], STAGE, check, "fail", str(exc), klass="protocol")
    except HTTPStatusError as exc:
        klass = "protocol" if 400 <= exc.status < 500 else "crash"
        rec.add(case["id"], STAGE, check, "fail", f"{exc}{_tail(eng)}", klass=klass)
    except TransportError as exc:
        srv = getattr(eng, "srv", None)
        if srv is not None and not srv.alive():
            rec.add(case["id"], STAGE, check, "fail", f"the server died: {exc}{_tail(eng)}", klass="crash")
        else:
            rec.add(case["id"], STAGE, check, "infra", f"{exc}{_tail(eng)}", klass="transport")
    except Exception:  # noqa: BLE001 - an engine crash is a result
        rec.add(case["id"], STAGE, check, "fail", traceback.format_exc(limit=6), klass="crash")
    return None


def _tail(eng) -> str:
    tail = eng.log_tail() if hasattr(eng, "log_tail") else ""
    return f"\n--- server log (tail) ---\n{tail}" if tail else ""


def _determinism(eng, case, gen, rec, name) -> None:
    check = f"{name}:determinism"
    again = getattr(eng, "generate_again", eng.generate)
    try:
        gen2 = again(case)
    except Exception:  # noqa: BLE001
        rec.add(case["id"], STAGE, check, "fail", traceback.format_exc(limit=6), klass="crash")
        return
    diff = same_output(gen, gen2)
    rec.add(
        case["id"],
        STAGE,
        check,
        "fail" if diff else "pass",
        f"the same request twice: {diff}" if diff else "",
        klass="determinism" if diff else None,
    )


def _concurrency(eng, case, alone, n, rec, name) -> None:
    check = f"{name}:concurrency"
    try:
        outs = eng.generate_many([case] * n)
    except Exception:  # noqa: BLE001
        rec.add(case["id"], STAGE, check, "fail", traceback.format_exc(limit=6), klass="crash")
        return
    diffs = [(i, d) for i, d in ((i, same_output(alone, g)) for i, g in enumerate(outs)) if d]
    if diffs:
        rec.add(
            case["id"],
            STAGE,
            check,
            "fail",
            f"{len(diffs)} of {n} concurrent requests differ from the request alone; first: "
            f"#{diffs[0][0]}: {diffs[0][1]}",
            klass="concurrency",
        )
    else:
        rec.add(case["id"], STAGE, check, "pass", f"{n} concurrent requests identical to the request alone")
