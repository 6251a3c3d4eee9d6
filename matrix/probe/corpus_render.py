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


def _compare(name: str, renderer: str, want: dict, got: dict) -> tuple[str, str, str | None]:
    """(outcome, detail, klass) of one render against the reference's."""
    if "unsupported" in got:
        return "skipped", got["unsupported"], None
    if "error" in want and "error" in got:
        return "pass", f"raises as the reference does: {got['error'][:200]}", None
    if "error" in got:
        return "fail", f"{name} raises in {renderer}, not in the reference: {got['error']}", got["klass"]
    if "error" in want:
        return "fail", f"{name} renders in {renderer}, the reference raises: {want['error'][:300]}", "mismatch"
    diff = first_divergence(want["text"], got["text"])
    return ("fail", diff, "mismatch") if diff else ("pass", "", None)


def check(job: dict, rec, special: dict) -> None:
    corpus, cases = job["corpus"], _cases(job)
    goldens = corpus.get("goldens") or {}
    seconds = float(job.get("limits", {}).get("render_seconds", 5))
    facts = rec.facts.setdefault(
        "corpus",
        {
            "name": corpus.get("name"),
            "version": corpus.get("version"),
            "reference": corpus.get("reference"),
            "templates": len(corpus["templates"]),
            "capabilities": {},
            "identical": {},
        },
    )
    for renderer in job.get("renderers", ["jinja2"]):
        check_name = f"{CHECK_PREFIX}/{renderer}"
        if renderer not in st.RENDERERS:
            rec.add("*", "template", check_name, "skipped", f"unknown renderer {renderer!r}")
            continue
        identical = 0
        for name, text in sorted(corpus["templates"].items()):
            gold = goldens.get(name)
            if gold is None:
                rec.add(f"{name}/*", "template", check_name, "skipped", f"no reference render of template {name}")
                continue
            caps = gold["capabilities"]
            facts["capabilities"][name] = caps
            todo, skips, same = [], [], True
            for case in cases:
                missing = [c for c in needs(case) if not caps.get(c)]
                if missing:
                    skips.append(
                        (
                            f"{name}/{case['id']}",
                            f"template {name} cannot express this case: no "
                            f"{', '.join(missing)} (detected from the reference's renders)",
                        )
                    )
                else:
                    todo.append(case)
            try:
                render = _renderer(renderer, text, special, dict(job, cases=todo))
            except ImportError as exc:
                rec.add(
                    "*",
                    "template",
                    check_name,
                    "skipped",
                    f"{st.RENDERERS[renderer][0]} is not installed in this cell: {exc}",
                )
                break
            except st.RendererInfra as exc:
                rec.add(f"{name}/*", "template", check_name, "infra", str(exc), klass="renderer-start")
                continue
            for case_id, reason in skips:
                rec.add(case_id, "template", check_name, "skipped", reason)
            for case in todo:
                want = gold["renders"].get(case["id"])
                if want is None:
                    rec.add(
                        f"{name}/{case['id']}", "template", check_name, "skipped", "no reference render of this case"
                    )
                    continue
                outcome, detail, klass = _compare(name, renderer, want, _outcome(render, case, seconds))
                same &= outcome != "fail"
                extra = {"klass": klass} if klass else {}
                rec.add(f"{name}/{case['id']}", "template", check_name, outcome, detail, **extra)
            identical += same
        else:
            facts["identical"][renderer] = identical


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
