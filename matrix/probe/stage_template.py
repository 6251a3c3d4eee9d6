"""Template stage: render every case with every renderer of the cell, compare with goldens.

Templates are untrusted: jinja2 renders in an immutable sandbox, under a wall-clock limit
(SIGALRM, the probe runs in its own process's main thread) and an output-size limit (the
output is consumed chunk by chunk from ``generate`` and cut at the limit).
"""

from __future__ import annotations

import json
import os
import signal
from contextlib import contextmanager

from probe import first_divergence


class RenderTimeout(Exception):
    pass


class OutputTooLarge(Exception):
    pass


@contextmanager
def time_limit(seconds: float):
    def on_alarm(signum, frame):
        raise RenderTimeout(f"render took longer than {seconds}s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def load_template(model_dir: str) -> tuple[str, dict]:
    """The chat template and special tokens from an HF ``tokenizer_config.json``."""
    with open(os.path.join(model_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    template = config.get("chat_template")
    if template is None:
        jinja = os.path.join(model_dir, "chat_template.jinja")
        with open(jinja, encoding="utf-8") as f:
            template = f.read()
    special = {}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        tok = config.get(name)
        if isinstance(tok, dict):
            tok = tok.get("content")
        if tok is not None:
            special[name] = tok
    return template, special


def jinja2_renderer(template_src: str, special: dict, limits: dict):
    """A renderer that runs jinja2 the way transformers does (sandbox, globals, filters)."""
    from datetime import datetime

    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    template = env.from_string(template_src)
    max_chars = int(limits.get("render_chars", 1_000_000))

    def render(case: dict) -> str:
        ctx = dict(special)
        ctx.update(
            messages=case["messages"],
            tools=case.get("tools"),
            add_generation_prompt=case.get("add_generation_prompt", True),
        )
        ctx.update(case.get("template_kwargs", {}))
        out, size = [], 0
        for chunk in template.generate(**ctx):
            size += len(chunk)
            if size > max_chars:
                raise OutputTooLarge(f"rendered output exceeds {max_chars} characters")
            out.append(chunk)
        return "".join(out)

    return render


def transformers_renderer(model_dir: str, limits: dict):
    """transformers' own ``apply_chat_template`` of the cell's version."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)

    def render(case: dict) -> str:
        kwargs = dict(case.get("template_kwargs", {}))
        if case.get("continue_final_message"):
            kwargs["continue_final_message"] = True
        return tok.apply_chat_template(
            case["messages"],
            tools=case.get("tools"),
            tokenize=False,
            add_generation_prompt=case.get("add_generation_prompt", True),
            **kwargs,
        )

    return render


RENDERERS = {"jinja2": ("jinja2", jinja2_renderer), "transformers": ("transformers", transformers_renderer)}


def classify(exc: BaseException) -> tuple[str, str]:
    """(class, detail) of a render failure; untrusted-template failures get their own names."""
    name = type(exc).__name__
    if isinstance(exc, RenderTimeout):
        return "template-timeout", str(exc)
    if isinstance(exc, OutputTooLarge):
        return "template-output-limit", str(exc)
    if name == "SecurityError":
        return "sandbox-violation", f"{name}: {exc}"
    if isinstance(exc, (OverflowError, MemoryError)):  # e.g. the sandbox's range() cap
        return "sandbox-limit", f"{name}: {exc}"
    if isinstance(exc, ImportError):  # installable together, yet refuses at run time
        return "undeclared-requirement", f"{name}: {exc}"
    if name == "TemplateError" or "Template" in name:
        return "template-error", f"{name}: {exc}"
    return "crash", f"{name}: {exc}"


def run(job: dict, rec) -> None:
    model_dir = job["model_dir"]
    limits = job.get("limits", {})
    seconds = float(limits.get("render_seconds", 5))
    template_src, special = load_template(model_dir)
    golden_mode = rec.mode == "golden"
    for renderer_name in job.get("renderers", ["jinja2"]):
        package, factory = RENDERERS[renderer_name]
        try:
            render = factory(template_src, special, limits) if renderer_name == "jinja2" else factory(model_dir, limits)
        except ImportError as exc:
            rec.add("*", "template", renderer_name, "skipped", f"{package} is not installed in this cell: {exc}")
            continue
        for case in job["cases"]:
            if "template" not in case.get("stages", ["template"]):
                continue
            expect = case.get("expect", {})
            try:
                with time_limit(seconds):
                    text = render(case)
            except BaseException as exc:  # noqa: BLE001 - any render failure is a result
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                klass, detail = classify(exc)
                want = expect.get("error")
                if want and want in detail:
                    rec.add(case["id"], "template", renderer_name, "pass", f"raised as expected: {detail}")
                else:
                    rec.add(case["id"], "template", renderer_name, "fail", detail, klass=klass)
                continue
            if golden_mode and renderer_name == job.get("golden_renderer", "jinja2"):
                rec.produce(case["id"], "render", text)
            if "render" not in expect:
                if not golden_mode:
                    rec.add(case["id"], "template", renderer_name, "skipped", "no golden render for this case")
                continue
            diff = first_divergence(expect["render"], text)
            if diff:
                rec.add(case["id"], "template", renderer_name, "fail", diff, klass="mismatch")
            else:
                rec.add(case["id"], "template", renderer_name, "pass")
