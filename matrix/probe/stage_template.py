"""Template stage: render every case from every template source with every renderer of the cell.

Sources (``job["template_sources"]``, default ``["hf"]``): ``hf`` (tokenizer_config.json's
``chat_template``), ``gguf`` (``tokenizer.chat_template`` of the model's GGUF, read by
``gguf_meta``) and ``override`` (the file ``job["template_override"]``). A source the model or
job does not provide is one ``skipped`` record (case ``*``, check = the source) with the reason.

Checks per (source, renderer), named ``jinja2`` / ``transformers`` for ``hf`` and
``gguf/jinja2`` etc. for the others: the render against the golden (or the expected error);
``<check>:needles`` (class ``capability``) where a case names needles that must survive into
the render (a template that silently drops the system prompt, tools, tool calls, typed content
or reasoning fails it); ``<check>:roundtrip`` where a case's assistant turns carry tool calls:
parsed back out of the render (``toolcalls``), names and arguments must equal the case's.
Goldens (golden mode) come from the ``hf`` source and the golden renderer only; needles and
round trips are checked in both modes. ``facts["capabilities"]`` maps check -> capability -> bool.

Templates are untrusted: jinja2 renders in an immutable sandbox, under a wall-clock limit
(SIGALRM, the probe runs in its own process's main thread) and an output-size limit (the
output is consumed chunk by chunk from ``generate`` and cut at the limit).
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from contextlib import contextmanager

from chat_messages import _plain, cut_continued, default_generation_prompt, prepare_messages
from probe import first_divergence


class RenderTimeout(Exception):
    pass


class OutputTooLarge(Exception):
    pass


def _on_alarm(signum, frame):
    raise RenderTimeout(f"render took longer than {_LIMIT[0]}s")


_LIMIT = [0.0, False]
"""The current limit (for the message) and whether ``alarm_handler`` holds the handler."""


@contextmanager
def time_limit(seconds: float):
    """SIGALRM after ``seconds``. The handler is installed once and stays while limits nest
    or follow each other (``alarm_handler``), so a case costs two ``setitimer`` calls only."""
    installed = _LIMIT[1]
    old = None if installed else signal.signal(signal.SIGALRM, _on_alarm)
    _LIMIT[0] = seconds
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if not installed:
            signal.signal(signal.SIGALRM, old)


@contextmanager
def alarm_handler():
    """The render-timeout handler for a whole stage run (restored after it)."""
    old, outer = signal.signal(signal.SIGALRM, _on_alarm), _LIMIT[1]
    _LIMIT[1] = True
    try:
        yield
    finally:
        _LIMIT[1] = outer
        signal.signal(signal.SIGALRM, old)


def load_template(model_dir: str) -> tuple[str, dict]:
    """The chat template and special tokens from an HF ``tokenizer_config.json``."""
    with open(os.path.join(model_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    if template is None:
        jinja = os.path.join(model_dir, "chat_template.jinja")
        with open(jinja, encoding="utf-8") as f:
            template = f.read()
    return template, hf_special_tokens(config)


def hf_special_tokens(config: dict) -> dict:
    special = {}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        tok = config.get(name)
        if isinstance(tok, dict):
            tok = tok.get("content")
        if tok is not None:
            special[name] = tok
    return special


class SourceUnavailable(Exception):
    """A template source this model or job does not provide: its checks are ``skipped``."""


def load_source(source: str, job: dict) -> tuple[str, dict]:
    """(template, special tokens) of one template source of the cell's model.

    ``hf``: ``tokenizer_config.json``'s ``chat_template`` (else ``chat_template.jinja`` beside it);
    ``gguf``: ``tokenizer.chat_template`` of ``job["gguf_path"]`` (default ``model_dir/model.gguf``),
    special tokens from the GGUF vocabulary; ``override``: the file ``job["template_override"]``,
    with the HF special tokens.
    """
    model_dir = job["model_dir"]
    if source == "hf":
        try:
            return load_template(model_dir)
        except FileNotFoundError:
            raise SourceUnavailable(
                "the model has neither a chat_template in tokenizer_config.json nor a chat_template.jinja"
            ) from None
    if source == "gguf":
        import gguf_meta

        path = job.get("gguf_path") or os.path.join(model_dir, "model.gguf")
        if not os.path.isfile(path):
            raise SourceUnavailable(f"the model has no GGUF file ({path})")
        meta = gguf_meta.read_metadata(path)
        if meta.chat_template is None:
            raise SourceUnavailable(f"{path} has no tokenizer.chat_template")
        return meta.chat_template, gguf_meta.special_tokens(meta)
    if source == "override":
        path = job.get("template_override")
        if not path:
            raise SourceUnavailable("the job names no template override (job['template_override'])")
        if not os.path.isfile(path):
            raise SourceUnavailable(f"the template override {path} does not exist")
        with open(path, encoding="utf-8") as f:
            template = f.read()
        try:
            with open(os.path.join(model_dir, "tokenizer_config.json"), encoding="utf-8") as f:
                special = hf_special_tokens(json.load(f))
        except FileNotFoundError:
            special = {}
        return template, special
    if source == "ollama":
        # the Modelfile's TEMPLATE is a Go template: only an Ollama runtime renders it
        if not os.path.isfile(os.path.join(model_dir, "Modelfile")):
            raise SourceUnavailable("the model has no Ollama Modelfile")
        import shutil

        if shutil.which("ollama") is None:
            raise SourceUnavailable("no Ollama runtime on this runner (the ollama binary is not on PATH)")
        raise SourceUnavailable("rendering a Modelfile through an Ollama runtime is not implemented yet")
    raise SourceUnavailable(f"unknown template source {source!r} (hf, gguf, override, ollama)")


def jinja2_renderer(template_src: str, special: dict, limits: dict, job: dict | None = None):
    """A renderer that runs jinja2 the way transformers does (sandbox, globals, filters, the
    ``{% generation %}`` tag, message normalization and ``continue_final_message``)."""
    from datetime import datetime

    import jinja2
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    class Generation(Extension):
        """``{% generation %}...{% endgeneration %}`` renders its body (transformers tracks it)."""

        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    template = env.from_string(template_src)
    max_chars = int(limits.get("render_chars", 1_000_000))

    def render(case: dict) -> str:
        messages, final = prepare_messages(case)
        ctx = dict(special)
        ctx.update(case.get("template_kwargs", {}))  # kwargs overwrite special tokens
        ctx.update(
            messages=messages,
            tools=_plain(case.get("tools")),
            documents=None,
            add_generation_prompt=default_generation_prompt(case),
        )
        out, size = [], 0
        for chunk in template.generate(**ctx):
            size += len(chunk)
            if size > max_chars:
                raise OutputTooLarge(f"rendered output exceeds {max_chars} characters")
            out.append(chunk)
        text = "".join(out)
        return cut_continued(text, final) if final is not None else text

    return render


_TOKENIZERS: dict = {}


def transformers_renderer(model_dir: str, limits: dict, template_src: str | None = None):
    """transformers' own ``apply_chat_template`` of the cell's version; ``template_src`` renders
    another source's template with it (``chat_template=``), None the tokenizer's own."""
    from transformers import AutoTokenizer

    tok = _TOKENIZERS.get(model_dir)
    if tok is None:
        tok = _TOKENIZERS[model_dir] = AutoTokenizer.from_pretrained(model_dir)

    def render(case: dict) -> str:
        kwargs = dict(case.get("template_kwargs", {}))
        if case.get("continue_final_message"):
            kwargs["continue_final_message"] = True
        if template_src is not None:
            kwargs["chat_template"] = template_src
        return tok.apply_chat_template(
            case["messages"],
            tools=case.get("tools"),
            tokenize=False,
            add_generation_prompt=default_generation_prompt(case),
            **kwargs,
        )

    return render


def node_renderer(template_src: str, special: dict, limits: dict, job: dict | None = None):
    """``@huggingface/jinja`` in Node (``render_node.py``), imported only when a job names it."""
    try:
        import render_node
    except ImportError:
        from matrix.probe import render_node
    return render_node.node_renderer(template_src, special, limits, job)


class Unsupported(Exception):
    """The renderer's library has no way to express this case (e.g. ``continue_final_message``
    in an engine's chat API): the case's check is ``skipped`` with this reason, not failed."""


class RendererInfra(Exception):
    """A renderer that runs out of process could not be brought up (server start): ``infra``."""


def _no_continue(case: dict, library: str) -> None:
    if case.get("continue_final_message"):
        raise Unsupported(
            f"{library} has no continue_final_message (its chat API cannot continue a final assistant message)"
        )


def llama_cpp_python_renderer(template_src: str, special: dict, limits: dict, job: dict | None = None):
    """llama-cpp-python's own formatter (``llama_chat_format.Jinja2ChatFormatter``), as its chat
    API uses it for a model's template: the messages as the caller gives them (no reasoning
    aliasing, keys kept), its own jinja2 environment (jinja2's ``tojson``, ``raise_exception``
    raising ``ValueError``), bos/eos from the source's special tokens; template kwargs go where
    its ``__call__`` takes them (``**kwargs``)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    max_chars = int(limits.get("render_chars", 1_000_000))
    formatters: dict = {}

    def formatter(add_generation_prompt: bool):
        if add_generation_prompt not in formatters:
            formatters[add_generation_prompt] = Jinja2ChatFormatter(
                template=template_src,
                eos_token=special.get("eos_token", ""),
                bos_token=special.get("bos_token", ""),
                add_generation_prompt=add_generation_prompt,
            )
        return formatters[add_generation_prompt]

    def render(case: dict) -> str:
        _no_continue(case, "llama-cpp-python")
        messages = _plain(case["messages"])
        kwargs = dict(case.get("template_kwargs", {}))
        resp = formatter(default_generation_prompt(case))(messages=messages, tools=_plain(case.get("tools")), **kwargs)
        text = resp.prompt
        if len(text) > max_chars:
            raise OutputTooLarge(f"rendered output exceeds {max_chars} characters")
        return text

    return render


class ServerTemplateError(Exception):
    """The server refused to render (its HTTP error body): a ``template-error``."""


_LLAMA_SERVERS: list = []


def _stop_llama_servers() -> None:
    while _LLAMA_SERVERS:
        _LLAMA_SERVERS.pop().stop()


def _parent_death_cmd(cmd: list) -> list:
    """``cmd`` run through a tiny exec wrapper that asks Linux to kill it when the probe dies
    (``PR_SET_PDEATHSIG``): a probe killed on timeout leaves no server behind."""
    import sys

    if not sys.platform.startswith("linux"):
        return cmd
    wrapper = (
        "import ctypes, os, signal, sys\n"
        "try:\n    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"
        "except Exception:\n    pass\n"
        "os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-I", "-c", wrapper, *cmd]


_REFUSED = "the supplied chat template is not supported"
_FALLBACK = "failed to parse chat template (defaulting to chatml)"


def _read_log(path: str, limit: int = 1_000_000) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _template_refusal(log: str) -> str | None:
    """Why llama-server did not take the template, from its log: it could not parse it (it then
    renders its ChatML default instead, saying so only in the log) or its start-up check (one
    user message ``test``) raised and it aborted. None when the log says neither."""
    for line in log.splitlines():
        if _FALLBACK in line:
            why = line.split(_FALLBACK, 1)[1].strip(" :")
            return f"llama-server could not parse the template and renders its ChatML default in its place: {why[:300]}"
    if _REFUSED in log:
        said = [s.strip()[:200] for s in log.splitlines() if s.lstrip().lower().startswith("failed to")][:2]
        return (
            "llama-server refuses the template at start and aborts (" + _REFUSED + ": its start-up check, "
            "one user message 'test', raised)" + (f"; it logged: {' | '.join(said)}" if said else "")
        )
    return None


def _post_json(url: str, body: dict, timeout: float) -> dict:
    """POST JSON; an HTTP error raises ServerTemplateError with the server's message (404: LookupError)."""
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url, data=json.dumps(body).encode("utf-8"), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raw = exc.read().decode("utf-8", errors="replace")
        if exc.code == 404:
            raise LookupError(raw) from None
        try:
            msg = (json.loads(raw).get("error") or {}).get("message") or raw
        except (ValueError, AttributeError):
            msg = raw
        raise ServerTemplateError(f"HTTP {exc.code}: {msg}") from None


class ServerRender:
    """One template's renderer on its own llama-server: ``render(case) -> str``; :meth:`close`
    stops the server. ``refused``: why the server did not take the template (every case raises
    it as a ``ServerTemplateError``). ``strips``: the server's BOS/EOS rule (llama.cpp's
    ``common/chat.cpp`` removes a leading BOS and a trailing EOS text from every render, to avoid
    doubling them at tokenization): ``{"bos", "eos", "adds_bos", "adds_eos"}``, the tokens as the
    server names them and whether its tokenizer adds them back."""

    def __init__(self, srv, limits: dict, refused: str | None = None, strips: dict | None = None):
        self.srv, self.refused, self.strips = srv, refused, strips
        self.timeout = float(limits.get("request_seconds", 60))
        self.max_chars = int(limits.get("render_chars", 1_000_000))

    def post(self, path: str, body: dict) -> dict:
        srv = self.srv
        try:
            return _post_json(srv.base_url + path, body, self.timeout)
        except OSError as exc:
            if not srv.alive():
                raise RuntimeError(f"llama-server died: {exc}\n{srv.log_tail(1500)}") from None
            raise

    def __call__(self, case: dict) -> str:
        _no_continue(case, "llama-server")  # first: no template makes this expressible
        if self.refused:
            raise ServerTemplateError(self.refused)
        body = {"messages": _plain(case["messages"]), "add_generation_prompt": default_generation_prompt(case)}
        if case.get("tools") is not None:
            body["tools"] = _plain(case["tools"])
        if case.get("template_kwargs"):
            body["chat_template_kwargs"] = _plain(case["template_kwargs"])
        out = self.post("/apply-template", body)
        text = out.get("prompt") if isinstance(out, dict) else None
        if not isinstance(text, str):
            raise ServerTemplateError(f"/apply-template answered without a prompt: {str(out)[:300]}")
        if len(text) > self.max_chars:
            raise OutputTooLarge(f"rendered output exceeds {self.max_chars} characters")
        return text

    def close(self) -> None:
        if self.srv in _LLAMA_SERVERS:
            _LLAMA_SERVERS.remove(self.srv)
        self.srv.stop()

    def learn_strips(self) -> None:
        """The server's BOS/EOS text (``/props``) and whether its tokenizer adds them (``/tokenize``
        with and without ``add_special``); left None on a server that answers neither."""
        try:
            props = _get_json(self.srv.base_url + "/props", self.timeout)
            plain = self.post("/tokenize", {"content": "a", "add_special": False}).get("tokens") or []
            special = self.post("/tokenize", {"content": "a", "add_special": True}).get("tokens") or []
        except (LookupError, ServerTemplateError, OSError, ValueError, AttributeError):
            return
        at = next((k for k in range(len(special) - len(plain) + 1) if special[k : k + len(plain)] == plain), None)
        if not plain or at is None:
            return
        self.strips = {
            "bos": props.get("bos_token") or "",
            "eos": props.get("eos_token") or "",
            "adds_bos": at > 0,
            "adds_eos": len(special) > at + len(plain),
        }


def _get_json(url: str, timeout: float) -> dict:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read().decode("utf-8"))


def _server_cmd(binary: str, gguf: str, tmpl_path: str, threads: str) -> list:
    return [
        binary,
        "-m",
        gguf,
        "--jinja",
        "--chat-template-file",
        tmpl_path,
        "--host",
        "{host}",
        "--port",
        "{port}",
        "-c",
        "512",
        "-t",
        threads,
        "-tb",
        threads,
        "--no-warmup",  # no decode is ever asked of it: a third of its start-up
    ]


def _server_paths(job: dict) -> tuple[str, str]:
    """(binary, GGUF) of the job, or ImportError saying which is missing (the checks are skipped)."""
    binary = job.get("llama_server_bin")
    if not binary:
        raise ImportError("the job names no llama-server binary (job['llama_server_bin'])")
    if not os.path.isfile(binary) or not os.access(binary, os.X_OK):
        raise ImportError(f"the llama-server binary {binary} does not exist or is not executable")
    gguf = job.get("gguf_path") or os.path.join(job["model_dir"], "model.gguf")
    if not os.path.isfile(gguf):
        raise ImportError(f"llama-server needs the model's GGUF ({gguf} does not exist)")
    return binary, gguf


def llama_server_renderer(
    template_src: str, special: dict, limits: dict, job: dict | None = None, *, alone: bool = True
) -> ServerRender:
    """llama.cpp's native C++ Jinja engine (minja) through ``llama-server --jinja``'s
    ``/apply-template``: the server (``job["llama_server_bin"]``) runs on the model's GGUF with
    this source's template (``--chat-template-file``; llama-server takes no template per request,
    so it is one server per template); each case is POSTed as ``{"messages", "tools",
    "add_generation_prompt"}`` (and ``chat_template_kwargs``), the answer's ``prompt`` is the
    render. The server parses the messages into its own structure first, as its chat endpoint
    does. No binary, no GGUF, a server without ``--jinja`` or without ``/apply-template``:
    ImportError (the checks are skipped with the reason). A server that will not take this
    template (it aborts at start, or falls back to ChatML) is no infra: the renderer raises the
    reason on every case. ``alone``: stop the servers earlier renderers left first (one at a
    time); False lets the caller run several, each closed with ``close()``."""
    import atexit
    import tempfile

    try:
        import servers
    except ImportError:
        from matrix.probe import servers

    binary, gguf = _server_paths(job or {})
    if alone:
        _stop_llama_servers()  # one at a time: the previous source's server is done
    workdir = tempfile.mkdtemp(prefix="llmcompat-llama-server-template-")
    tmpl_path = os.path.join(workdir, "template.jinja")
    with open(tmpl_path, "w", encoding="utf-8") as f:
        f.write(template_src)
    cmd = _server_cmd(binary, gguf, tmpl_path, str((job or {}).get("threads", 2)))
    for attempt in (1, 2):  # a second start on a new port when the first lost a race for its port
        srv = servers.Server(
            _parent_death_cmd(cmd),
            name="llama-server-template",
            ready_path="/health",
            start_timeout=float(limits.get("server_start_seconds", 120)),
            log_dir=workdir,
        )
        try:
            srv.start()
            break
        except servers.ServerStartError as exc:
            tail = exc.log_tail
            if "invalid argument" in tail or "unknown argument" in tail or "error: unrecognized" in tail:
                raise ImportError(
                    "this llama-server predates --jinja/--chat-template-file (llama.cpp's C++ "
                    "Jinja engine): " + tail.strip().splitlines()[-1][:300]
                ) from None
            log = _read_log(srv.log_path)
            refused = _template_refusal(log)
            if refused:
                return ServerRender(srv, limits, refused=refused)
            if attempt == 2 or "couldn't bind HTTP server socket" not in log:
                raise RendererInfra(f"llama-server did not start: {exc}") from None
    _LLAMA_SERVERS.append(srv)
    if len(_LLAMA_SERVERS) == 1:
        atexit.register(_stop_llama_servers)
    render = ServerRender(srv, limits)
    try:
        render.post(
            "/apply-template", {"messages": [{"role": "user", "content": "ping"}], "add_generation_prompt": True}
        )
    except LookupError:
        render.close()
        raise ImportError("this llama-server has no /apply-template endpoint (older llama.cpp)") from None
    except ServerTemplateError:
        pass  # the endpoint exists; this template refuses the probe conversation: cases will say
    refused = _template_refusal(_read_log(srv.log_path))
    if refused:
        render.close()
        render.refused = refused
        return render
    render.learn_strips()
    return render


Render = Callable[[dict], str]
"""A built renderer: ``render(case) -> str``."""

RENDERERS: dict[str, tuple[str, Callable[..., Render]]] = {
    "jinja2": ("jinja2", jinja2_renderer),
    "transformers": ("transformers", transformers_renderer),
    "hf-jinja-js": ("@huggingface/jinja", node_renderer),
    "llama-cpp-python": ("llama-cpp-python", llama_cpp_python_renderer),
    "llama-server": ("llama-server", llama_server_renderer),
}
MODEL_RENDERERS = {"transformers"}
"""Renderers built from the model directory (they load the tokenizer): their factories take
``(model_dir, limits, template_src)``, the others' ``(template_src, special, limits, job)``."""
SOURCES = ("hf", "gguf", "override", "ollama")


def check_name(source: str, renderer: str) -> str:
    """``jinja2`` for the HF template (the original check names), ``gguf/jinja2`` for the others."""
    return renderer if source == "hf" else f"{source}/{renderer}"


def make_renderer(renderer_name: str, source: str, template_src: str, special: dict, job: dict):
    _, factory = RENDERERS[renderer_name]
    limits = job.get("limits", {})
    if renderer_name in MODEL_RENDERERS:
        return factory(job["model_dir"], limits, None if source == "hf" else template_src)
    return factory(template_src, special, limits, job)


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


def check_needles(case: dict, text: str) -> tuple[str, str]:
    """(outcome, detail) of a case's capability needles: each must survive into the render."""
    capability = case.get("capability") or case["id"]
    missing = [n for n in case["needles"] if n not in text]
    if missing:
        return "fail", (
            f"capability {capability}: needle {missing[0]!r} is not in the render "
            f"({len(missing)} of {len(case['needles'])} missing)"
        )
    return "pass", f"capability {capability}: {len(case['needles'])} needle(s) survive"


def has_tool_calls(case: dict) -> bool:
    return any(isinstance(m, dict) and m.get("role") == "assistant" and m.get("tool_calls") for m in case["messages"])


def run(job: dict, rec) -> None:
    with alarm_handler():
        _run(job, rec)


def _run(job: dict, rec) -> None:
    import toolcalls

    limits = job.get("limits", {})
    seconds = float(limits.get("render_seconds", 5))
    golden_mode = rec.mode == "golden"
    golden_renderer = job.get("golden_renderer", "jinja2")
    fmt = job.get("toolcall_format") or toolcalls.CHATML
    cases = [c for c in job["cases"] if "template" in c.get("stages", ["template"])]
    capabilities = rec.facts.setdefault("capabilities", {}) if any(c.get("needles") for c in cases) else None
    for source in job.get("template_sources", ["hf"]):
        try:
            template_src, special = load_source(source, job)
        except SourceUnavailable as exc:
            rec.add("*", "template", source, "skipped", f"template source {source}: {exc}")
            continue
        except (ValueError, OSError) as exc:  # e.g. gguf_meta.GGUFError: the model's own file is broken
            rec.add(
                "*",
                "template",
                source,
                "fail",
                f"template source {source}: {type(exc).__name__}: {exc}",
                klass="template-source",
            )
            continue
        for renderer_name in job.get("renderers", ["jinja2"]):
            check = check_name(source, renderer_name)
            if renderer_name not in RENDERERS:
                rec.add("*", "template", check, "skipped", f"unknown renderer {renderer_name!r}")
                continue
            package = RENDERERS[renderer_name][0]
            try:
                render = make_renderer(renderer_name, source, template_src, special, job)
            except ImportError as exc:
                rec.add("*", "template", check, "skipped", f"{package} is not installed in this cell: {exc}")
                continue
            except RendererInfra as exc:
                rec.add("*", "template", check, "infra", str(exc), klass="renderer-start")
                continue
            produce = golden_mode and source == "hf" and renderer_name == golden_renderer
            for case in cases:
                expect = case.get("expect", {})
                try:
                    with time_limit(seconds):
                        text = render(case)
                except Unsupported as exc:
                    rec.add(case["id"], "template", check, "skipped", str(exc))
                    continue
                except BaseException as exc:  # any render failure is a result (interrupts re-raised below)
                    if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                        raise
                    klass, detail = classify(exc)
                    want = expect.get("error")
                    if want and want in detail:
                        rec.add(case["id"], "template", check, "pass", f"raised as expected: {detail}")
                    else:
                        rec.add(case["id"], "template", check, "fail", detail, klass=klass)
                    continue
                if produce:
                    rec.produce(case["id"], "render", text)
                if expect.get("error"):
                    rec.add(
                        case["id"],
                        "template",
                        check,
                        "fail",
                        f"rendered, but the case expects an error containing {expect['error']!r}",
                        klass="mismatch",
                    )
                elif "render" in expect:
                    diff = "" if expect["render"] == text else first_divergence(expect["render"], text)
                    if diff:
                        rec.add(case["id"], "template", check, "fail", diff, klass="mismatch")
                    else:
                        rec.add(case["id"], "template", check, "pass")
                elif not golden_mode:
                    rec.add(case["id"], "template", check, "skipped", "no golden render for this case")
                if case.get("needles"):
                    outcome, detail = check_needles(case, text)
                    rec.add(case["id"], "template", f"{check}:needles", outcome, detail, klass="capability")
                    cap = case.get("capability") or case["id"]
                    if capabilities is not None:  # set whenever a case has needles
                        capabilities.setdefault(check, {})[cap] = outcome == "pass"
                if has_tool_calls(case):
                    diff = toolcalls.roundtrip(case["messages"], text, fmt)
                    if diff:
                        rec.add(case["id"], "template", f"{check}:roundtrip", "fail", diff, klass="roundtrip")
                    else:
                        rec.add(case["id"], "template", f"{check}:roundtrip", "pass")
