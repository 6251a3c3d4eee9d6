"""The template corpus as a template source: real models' chat templates through every renderer.

Part of the template stage (``stage_template.run`` calls :func:`run` when the job has a
``corpus``). The job's ``corpus`` is ``{"name", "version", "digest", "templates": {name: text},
"goldens": {name: {"capabilities": {...}, "renders": {case: {"text"} | {"error", "klass"}}}},
"reference": "jinja2 3.1.6"}``; the cases are the suite's template cases, the special tokens the
model's own (every renderer sees the same ones).

Golden mode (the reference environment): each template is rendered with the reference renderer
(jinja2 the transformers way) and its capabilities are detected from how it behaves on small
probe conversations that carry needles (:data:`PROBES`); both are produced under
``_corpus/<template>``. Check mode: every renderer of the cell renders every case with every
template; a case that needs a capability the template lacks (per the reference's detection) is
``skipped`` with that reason; the others are compared exactly with the reference's render (the
first divergence), or its error: a template that raises in a renderer and not in the reference
fails with the error's class, one that renders where the reference raises fails as a mismatch,
both raising pass. Records: case ``<template>/<case>``, check ``corpus/<renderer>``.
``facts["corpus"]`` names the corpus, each template's capabilities, and per renderer how many
templates rendered every expressible case identically.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

import stage_template as st
from probe import first_divergence

CHECK_PREFIX = "corpus"
N = "7f3a"
"""Suffix of every needle: text no real template contains by itself."""


def _call(name: str, args, call_id: str) -> dict:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def _tool(name: str) -> dict:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": "d",
            "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
        },
    }


def _calls_case(calls: list[dict]) -> dict:
    return {
        "id": "probe",
        "tools": [_tool(c["function"]["name"]) for c in calls],
        "add_generation_prompt": True,
        "messages": [
            {"role": "user", "content": "u"},
            {"role": "assistant", "content": "", "tool_calls": calls},
            *({"role": "tool", "tool_call_id": c["id"], "content": f"result{N}"} for c in calls[:1]),
        ],
    }


PROBES: dict[str, tuple[dict, tuple[str, ...]]] = {
    "system_role": (
        {"messages": [{"role": "system", "content": f"sys{N}"}, {"role": "user", "content": "u"}]},
        (f"sys{N}",),
    ),
    "tools": ({"tools": [_tool(f"tool{N}")], "messages": [{"role": "user", "content": "u"}]}, (f"tool{N}",)),
    "tool_calls": (_calls_case([_call(f"call{N}", {f"arg{N}": "v"}, f"id{N}")]), (f"call{N}",)),
    "tool_call_ids": (_calls_case([_call(f"call{N}", {f"arg{N}": "v"}, f"id{N}")]), (f"id{N}",)),
    "object_arguments": (_calls_case([_call(f"call{N}", {f"arg{N}": "v"}, f"id{N}")]), (f"arg{N}",)),
    "string_arguments": (_calls_case([_call(f"call{N}", json.dumps({f"arg{N}": "v"}), f"id{N}")]), (f"arg{N}",)),
    "parallel_calls": (
        _calls_case([_call(f"one{N}", {"x": "1"}, "i1"), _call(f"two{N}", {"x": "2"}, "i2")]),
        (f"one{N}", f"two{N}"),
    ),
    "tool_results": (_calls_case([_call(f"call{N}", {f"arg{N}": "v"}, f"id{N}")]), (f"result{N}",)),
    "reasoning": (
        {
            "add_generation_prompt": False,
            "messages": [
                {"role": "user", "content": "u"},
                {"role": "assistant", "content": "a", "reasoning_content": f"think{N}"},
            ],
        },
        (f"think{N}",),
    ),
}
"""Capability -> (probe conversation, needles that must all be in its render)."""
CAPABILITIES = (*PROBES, "generation_prompt")


def _try(render, case: dict) -> str | None:
    try:
        with st.time_limit(5):
            return render(dict(case, id="probe"))
    except Exception:  # noqa: BLE001 - a probe the template refuses means it lacks the capability
        return None


def detect(render) -> dict[str, bool]:
    """The template's capabilities, from its behaviour on :data:`PROBES` and the generation prompt."""
    caps = {}
    for name, (case, needles) in PROBES.items():
        text = _try(render, case)
        caps[name] = text is not None and all(n in text for n in needles)
    user = {"messages": [{"role": "user", "content": "u"}]}
    on, off = (
        _try(render, dict(user, add_generation_prompt=True)),
        _try(render, dict(user, add_generation_prompt=False)),
    )
    caps["generation_prompt"] = on is not None and off is not None and on != off
    return caps


def needs(case: dict) -> list[str]:
    """The capabilities a case needs to be expressed at all."""
    out = []
    msgs = [m for m in case.get("messages", []) if isinstance(m, dict)]
    if any(m.get("role") == "system" for m in msgs):
        out.append("system_role")
    if case.get("tools"):
        out.append("tools")
    calls = [m["tool_calls"] for m in msgs if m.get("role") == "assistant" and m.get("tool_calls")]
    if calls:
        out.append("tool_calls")
        args = [c.get("function", {}).get("arguments") for group in calls for c in group if isinstance(c, dict)]
        if any(isinstance(a, dict) for a in args):
            out.append("object_arguments")
        if any(isinstance(a, str) for a in args):
            out.append("string_arguments")
        if any(len(group) > 1 for group in calls):
            out.append("parallel_calls")
    if any(m.get("role") == "tool" for m in msgs):
        out.append("tool_results")
    if any(
        m.get("role") == "assistant" and any(m.get(k) for k in ("reasoning_content", "thinking", "reasoning"))
        for m in msgs
    ):
        out.append("reasoning")
    if "add_generation_prompt" in case:
        out.append("generation_prompt")
    return out


def _outcome(render, case: dict, seconds: float) -> dict:
    """``{"text"}`` or ``{"error", "klass"}`` of one render (Unsupported: ``{"unsupported"}``)."""
    try:
        with st.time_limit(seconds):
            return {"text": render(case)}
    except st.Unsupported as exc:
        return {"unsupported": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a render failure is a result
        klass, detail = st.classify(exc)
        return {"error": detail, "klass": klass}


def _failing(exc: BaseException):
    def render(case: dict) -> str:
        raise exc

    return render


def _renderer(name: str, text: str, special: dict, job: dict):
    """The renderer for one template; a template it cannot even compile raises on every case."""
    try:
        return st.make_renderer(name, "corpus", text, special, job)
    except (ImportError, st.RendererInfra):
        raise
    except Exception as exc:  # noqa: BLE001 - e.g. a TemplateSyntaxError at compile time
        return _failing(exc)


def _cases(job: dict) -> list[dict]:
    """The suite's template cases, without their tiny-model expectations."""
    return [
        {k: v for k, v in c.items() if k not in ("expect", "needles")}
        for c in job["cases"]
        if "template" in c.get("stages", ["template"])
    ]


def golden(job: dict, rec, special: dict) -> None:
    corpus, cases = job["corpus"], _cases(job)
    seconds = float(job.get("limits", {}).get("render_seconds", 5))
    renderer = job.get("golden_renderer", "jinja2")
    for name, text in sorted(corpus["templates"].items()):
        render = _renderer(renderer, text, special, dict(job, cases=cases))
        renders = {c["id"]: _outcome(render, c, seconds) for c in cases}
        rec.produce(f"_corpus/{name}", "corpus", {"capabilities": detect(render), "renders": renders})


def _compare(
    name: str, renderer: str, want: dict, got: dict, strips: dict | None = None
) -> tuple[str, str, str | None]:
    """(outcome, detail, klass) of one render against the reference's. ``strips``: the renderer's
    rule for a leading BOS / trailing EOS text (llama-server's), applied to the reference first."""
    if "unsupported" in got:
        return "skipped", got["unsupported"], None
    if "error" in want and "error" in got:
        return "pass", f"raises as the reference does: {got['error'][:200]}", None
    if "error" in got:
        return "fail", f"{name} raises in {renderer}, not in the reference: {got['error']}", got["klass"]
    if "error" in want:
        return "fail", f"{name} renders in {renderer}, the reference raises: {want['error'][:300]}", "mismatch"
    diff = first_divergence(want["text"], got["text"])
    if diff and strips:
        return _compare_stripped(renderer, want["text"], got["text"], strips) or ("fail", diff, "mismatch")
    return ("fail", diff, "mismatch") if diff else ("pass", "", None)


def _compare_stripped(renderer: str, want: str, got: str, strips: dict) -> tuple[str, str, str | None] | None:
    """The reference's render as a server that strips a leading BOS and a trailing EOS text makes
    it, against the server's; None when the rule removes nothing. Identical then: ``pass`` when
    its tokenizer adds the stripped token back, else the prompt lacks it (``missing-bos`` /
    ``missing-eos``); different: the first divergence after the strip (``mismatch``)."""
    bos, eos, cut, removed = strips.get("bos") or "", strips.get("eos") or "", want, []
    if bos and cut.startswith(bos):
        cut, removed = cut[len(bos) :], ["bos"]
    if eos and cut.endswith(eos):
        cut, removed = cut[: -len(eos)], [*removed, "eos"]
    if not removed:
        return None
    what = " and ".join(f"the {'leading BOS' if r == 'bos' else 'trailing EOS'} text {strips[r]!r}" for r in removed)
    diff = first_divergence(cut, got)
    if diff:
        return "fail", f"after {what} that {renderer} strips from every render: {diff}", "mismatch"
    lost = [r for r in removed if not strips.get(f"adds_{r}")]
    if lost:
        return (
            "fail",
            f"identical but for {what}: {renderer} strips it from every render and its tokenizer does not add "
            f"{'it' if len(removed) == 1 else 'them'} back (add_{lost[0]}_token false), so the prompt has no "
            f"{lost[0].upper()}",
            "missing-bos" if lost[0] == "bos" else "missing-eos",
        )
    return "pass", f"identical once {what} is removed, which {renderer} strips and its tokenizer adds back", None


SERVER_RENDERERS = {"llama-server"}
"""Renderers that start a server per template: started ahead, a few at a time (:func:`_built`)."""


def _skips(name: str, caps: dict, cases: list[dict]) -> tuple[list[dict], list[tuple[str, str]]]:
    """(cases the template can express, (case, reason) for the others)."""
    todo, skips = [], []
    for case in cases:
        missing = [c for c in needs(case) if not caps.get(c)]
        if missing:
            reason = f"template {name} cannot express this case: no {', '.join(missing)} (detected from the reference's renders)"
            skips.append((f"{name}/{case['id']}", reason))
        else:
            todo.append(case)
    return todo, skips


def _start_server(text: str, special: dict, job: dict):
    try:
        return st.llama_server_renderer(text, special, job.get("limits", {}), job, alone=False)
    except (ImportError, st.RendererInfra):
        raise
    except Exception as exc:  # noqa: BLE001 - as _renderer: a template it cannot take raises on every case
        return _failing(exc)


def _close(render) -> None:
    close = getattr(render, "close", None)
    if close is not None:
        close()


def _built(
    renderer: str, plans: list[tuple[str, str, list[dict]]], special: dict, job: dict
) -> Generator[tuple, None, None]:
    """``(template, renderer or the ImportError/RendererInfra that building it raised)`` in order.

    A server renderer (:data:`SERVER_RENDERERS`: one server per template, since llama-server
    takes no template per request) is started ahead of its turn, at most
    ``limits.server_concurrency`` (default 4) at a time besides the one in use, so start-ups
    overlap the renders; the caller closes each one it gets, and whatever was started and not
    handed out is closed when the generator is closed, however the loop ends."""
    if renderer not in SERVER_RENDERERS:
        for name, text, todo in plans:
            try:
                yield name, _renderer(renderer, text, special, dict(job, cases=todo))
            except (ImportError, st.RendererInfra) as exc:
                yield name, exc
        return
    bound = max(1, int(job.get("limits", {}).get("server_concurrency", 4)))
    # The pool's threads start the servers and outlive every one of them (the generator closes
    # them inside this block): a server's parent-death signal fires when the thread that started
    # it ends, so a server must never outlive its pool.
    ahead: deque = deque()
    rest = iter(plans)
    with ThreadPoolExecutor(max_workers=bound, thread_name_prefix="corpus-server") as pool:

        def submit() -> None:
            plan = next(rest, None)
            if plan is not None:
                name, text, todo = plan
                ahead.append((name, pool.submit(_start_server, text, special, dict(job, cases=todo))))

        try:
            for _ in range(bound):
                submit()
            while ahead:
                name, future = ahead.popleft()
                submit()
                try:
                    yield name, future.result()
                except (ImportError, st.RendererInfra) as exc:
                    yield name, exc
        finally:
            for _, future in ahead:
                if not future.cancel():
                    try:
                        _close(future.result())
                    except Exception:  # noqa: BLE001 - a start that failed left nothing to close
                        pass


def check(job: dict, rec, special: dict) -> None:
    corpus, cases = job["corpus"], _cases(job)
    goldens = corpus.get("goldens") or {}
    facts = rec.facts.setdefault(
        "corpus",
        {
            "name": corpus.get("name"),
            "version": corpus.get("version"),
            "reference": corpus.get("reference"),
            "templates": len(corpus["templates"]),
            "capabilities": {},
            "identical": {},
            "classes": {},
        },
    )
    for renderer in job.get("renderers", ["jinja2"]):
        check_name = f"{CHECK_PREFIX}/{renderer}"
        if renderer not in st.RENDERERS:
            rec.add("*", "template", check_name, "skipped", f"unknown renderer {renderer!r}")
            continue
        plans = []
        for name, text in sorted(corpus["templates"].items()):
            gold = goldens.get(name)
            if gold is None:
                rec.add(f"{name}/*", "template", check_name, "skipped", f"no reference render of template {name}")
                continue
            facts["capabilities"][name] = gold["capabilities"]
            plans.append((name, text, _skips(name, gold["capabilities"], cases)))
        result = _check_renderer(job, rec, special, renderer, plans, goldens)
        if result is not None:
            facts["identical"][renderer], facts["classes"][renderer] = result


def _check_renderer(job: dict, rec, special: dict, renderer: str, plans: list, goldens: dict):
    """Every template of ``plans`` through one renderer: (templates identical in every expressible
    case, {failure class: templates}), or None when the renderer is not installed."""
    check_name = f"{CHECK_PREFIX}/{renderer}"
    seconds = float(job.get("limits", {}).get("render_seconds", 5))
    identical, classes = 0, dict[str, int]()
    with closing(_built(renderer, [(n, t, todo) for n, t, (todo, _) in plans], special, job)) as built:
        for (name, _, (todo, skips)), (_, render) in zip(plans, built):
            if isinstance(render, ImportError):
                package = st.RENDERERS[renderer][0]
                rec.add("*", "template", check_name, "skipped", f"{package} is not installed in this cell: {render}")
                return None
            if isinstance(render, st.RendererInfra):
                rec.add(f"{name}/*", "template", check_name, "infra", str(render), klass="renderer-start")
                continue
            try:
                for case_id, reason in skips:
                    rec.add(case_id, "template", check_name, "skipped", reason)
                same, seen = True, set()
                for case in todo:
                    want = goldens[name]["renders"].get(case["id"])
                    if want is None:
                        rec.add(
                            f"{name}/{case['id']}",
                            "template",
                            check_name,
                            "skipped",
                            "no reference render of this case",
                        )
                        continue
                    got = _outcome(render, case, seconds)
                    outcome, detail, klass = _compare(name, renderer, want, got, getattr(render, "strips", None))
                    same &= outcome != "fail"
                    if klass:
                        seen.add(klass)
                    rec.add(
                        f"{name}/{case['id']}",
                        "template",
                        check_name,
                        outcome,
                        detail,
                        **({"klass": klass} if klass else {}),
                    )
            finally:
                _close(render)
            identical += same
            for klass in seen:
                classes[klass] = classes.get(klass, 0) + 1
    return identical, classes


def run(job: dict, rec) -> None:
    """The template stage's corpus part (the probe runs it after ``stage_template``): nothing
    unless the job names a corpus."""
    if not job.get("corpus"):
        return
    with st.alarm_handler():
        _run(job, rec)


def _run(job: dict, rec) -> None:
    try:
        _, special = st.load_template(job["model_dir"])
    except FileNotFoundError:
        special = {}
    (golden if rec.mode == "golden" else check)(job, rec, special)
