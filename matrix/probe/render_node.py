"""A template renderer that runs ``@huggingface/jinja`` (npm) in Node, for the template stage.

Standard library only: it runs inside a cell's environment, with the probe. The npm package
is installed outside that environment (``matrix/npm.py``); the probe job names where, as
``job["node_modules"]``: ``{package: directory}`` (the install prefix or its ``node_modules``),
or one directory.

:func:`node_renderer` has the shape of a ``stage_template.RENDERERS`` factory and renders every
template case of the job up front through ONE ``node`` process running
``render_hf_jinja.mjs`` (one JSON job on stdin, one JSON line per case back); ``render(case)``
then returns the text or raises. ES modules ignore ``NODE_PATH``, so the package's ES entry is
resolved here from its ``package.json`` and imported by absolute ``file://`` URL.

Limits: the wall-clock limit ``render_seconds`` applies to each case (the time between two
answered cases); a case that overruns gets :class:`RenderTimeout`, the process is killed and a
fresh one renders the remaining cases. A process that dies mid-case (heap limit
``node_heap_mb``, a crash) fails that case only, the same way. The output-size limit
``render_chars`` is enforced inside Node.

Failures are named so that the stage's ``classify`` names them: :class:`RenderTimeout` and
:class:`OutputTooLarge` are also the stage's own classes of those names when the stage module
is loaded; :class:`NodeTemplateError` has "Template" in its name (template-error);
:class:`NodeLimitError` is an OverflowError and :class:`NodeOutOfMemory` a MemoryError
(sandbox-limit); anything else is a :class:`NodeRenderError` (crash). When ``node`` or the
package is missing the factory raises ImportError (the stage reports ``skipped``).
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from chat_messages import cut_continued, default_generation_prompt, prepare_messages

PACKAGE = "@huggingface/jinja"
SCRIPT = Path(__file__).resolve().with_name("render_hf_jinja.mjs")
MIN_NODE_MAJOR = 18
STARTUP_SECONDS = 30.0
"""Until the package is imported (first start of node is slower on a cold disk)."""
HEAP_MB = 512
LINE_SLACK = 4096


class NodeRenderError(Exception):
    """Node failed to render a case (crash, unexpected exit, protocol error): class ``crash``."""


class NodeTemplateError(NodeRenderError):
    """The JavaScript engine rejected the template or failed rendering it (``template-error``)."""


class NodeLimitError(NodeRenderError, OverflowError):
    """The engine hit a limit of its own: call stack, array length (``sandbox-limit``)."""


class NodeOutOfMemory(NodeRenderError, MemoryError):
    """Node died at its heap limit while rendering (``sandbox-limit``)."""


class RenderTimeout(NodeRenderError, TimeoutError):
    """A case took longer than ``render_seconds`` (``template-timeout``)."""


class OutputTooLarge(NodeRenderError):
    """The rendered text exceeds ``render_chars`` (``template-output-limit``)."""


_STAGE_MODULES = ("stage_template", "matrix.probe.stage_template")
_flavours: dict[tuple[type, type], type] = {}


def _named(cls: type) -> type:
    """``cls`` mixed with the loaded stage module's class of the same name, so ``isinstance`` checks
    written against the stage's classes hold (looked up at raise time: no import cycle)."""
    for name in _STAGE_MODULES:
        base = getattr(sys.modules.get(name), cls.__name__, None)
        if isinstance(base, type) and issubclass(base, Exception) and not issubclass(cls, base):
            key = (cls, base)
            if key not in _flavours:
                _flavours[key] = type(cls.__name__, (cls, base), {"__module__": __name__, "__doc__": cls.__doc__})
            return _flavours[key]
    return cls


def _error(kind: str, message: str, name: str = "Error") -> Exception:
    """The exception for one failed case, from the script's ``kind``."""
    if kind == "output-limit":
        return _named(OutputTooLarge)(message)
    if kind == "timeout":
        return _named(RenderTimeout)(message)
    if kind == "limit":
        return NodeLimitError(f"{name}: {message}")
    if kind == "template":
        return NodeTemplateError(f"{name}: {message}")
    if kind == "oom":
        return NodeOutOfMemory(message)
    return NodeRenderError(f"{name}: {message}" if name else message)


# --------------------------------------------------------------------------- locating things


def _node_modules(job: dict, package: str) -> Path:
    where = job.get("node_modules")
    if isinstance(where, dict):
        where = where.get(package)
    if not where:
        raise ImportError(f"the probe job names no node_modules for {package} (job['node_modules'])")
    path = Path(where)
    if path.name != "node_modules" and (path / "node_modules").is_dir():
        path = path / "node_modules"
    if not path.is_dir():
        raise ImportError(f"node_modules directory {path} does not exist")
    return path


def _conditional(target, conditions=("import", "node", "default")):
    """The file an ``exports`` target points at for an ES ``import`` (nested conditions, arrays)."""
    if isinstance(target, str):
        return target
    if isinstance(target, list):
        for item in target:
            found = _conditional(item, conditions)
            if found:
                return found
        return None
    if isinstance(target, dict):
        for key, value in target.items():
            if key in conditions:
                found = _conditional(value, conditions)
                if found:
                    return found
    return None


def es_entry(package_dir: Path) -> tuple[Path, dict]:
    """The ES module entry file of an installed package, and its ``package.json``."""
    try:
        meta = json.loads((package_dir / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ImportError(f"cannot read {package_dir / 'package.json'}: {exc}") from None
    exports = meta.get("exports")
    target = None
    if exports is not None:
        if isinstance(exports, dict) and any(k.startswith(".") for k in exports):
            exports = exports.get(".")
        target = _conditional(exports)
    target = target or meta.get("module") or meta.get("main") or "index.js"
    entry = (package_dir / target).resolve()
    if not entry.is_file():
        raise ImportError(f"entry {target!r} of {package_dir.name} is missing ({entry})")
    return entry, meta


def _node_binary(job: dict) -> tuple[str, str]:
    node = job.get("node") or shutil.which("node")
    if not node:
        raise ImportError("node is not on PATH (this renderer needs Node.js)")
    try:
        out = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ImportError(f"cannot run {node}: {exc}") from None
    version = out.stdout.strip()
    try:
        major = int(version.lstrip("v").split(".")[0])
    except ValueError:
        raise ImportError(f"cannot tell the version of {node}: {version!r}") from None
    if major < MIN_NODE_MAJOR:
        raise ImportError(f"node {version} is too old (need >= {MIN_NODE_MAJOR})")
    return node, version


# --------------------------------------------------------------------------- running node


def _payload(case: dict) -> dict:
    """What node renders for a case: messages as a transformers.js caller passes them (no
    reasoning alias), with ``continue_final_message`` marked as transformers marks it."""
    try:
        messages, _ = prepare_messages(case, alias_reasoning=False)
    except ValueError:
        messages = case["messages"]  # the stage reports the caller-side error for its renderer
    return {
        "id": str(case["id"]),
        "messages": messages,
        "tools": case.get("tools"),
        "add_generation_prompt": default_generation_prompt(case),
        "template_kwargs": case.get("template_kwargs", {}),
    }


class NodeBatch:
    """Renders cases through one node process at a time (a new one after a timeout or crash)."""

    def __init__(
        self,
        node: str,
        module_url: str,
        node_modules: Path,
        template_src: str,
        special: dict,
        limits: dict,
        package_version: str | None = None,
    ):
        self.node = node
        self.module_url = module_url
        self.node_modules = node_modules
        self.template_src = template_src
        self.special = dict(special)
        self.seconds = float(limits.get("render_seconds", 5))
        self.max_chars = int(limits.get("render_chars", 1_000_000))
        self.heap_mb = int(limits.get("node_heap_mb", HEAP_MB))
        self.startup = float(limits.get("node_startup_seconds", STARTUP_SECONDS))
        self.package_version = package_version
        self.meta: dict = {}
        self.processes = 0

    def run(self, payloads: list[dict]) -> dict[str, dict]:
        """``{case_id: {"text": ...} | {"error", "kind", "name"}}`` for every payload."""
        results: dict[str, dict] = {}
        pending = list(payloads)
        while pending:
            got, failure, started = self._once(pending)
            results.update(got)
            pending = [p for p in pending if p["id"] not in results]
            if not pending:
                break
            if failure is None:
                failure = {"error": "node exited without answering this case", "kind": "crash", "name": ""}
            if not started:  # node or the package cannot start: every case fails alike
                results.update({p["id"]: failure for p in pending})
                break
            results[pending[0]["id"]] = failure  # the case in flight; the rest get a fresh process
            pending = pending[1:]
        return results

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if k not in ("NODE_OPTIONS", "NODE_PATH")}
        env["NODE_PATH"] = str(self.node_modules)
        return env

    def _once(self, payloads: list[dict]) -> tuple[dict[str, dict], dict | None, bool]:
        """One node process over ``payloads``: (answers, failure of the case in flight, started)."""
        job = {
            "template": self.template_src,
            "special": self.special,
            "cases": payloads,
            "limits": {"render_chars": self.max_chars},
            "module_url": self.module_url,
            "package_version": self.package_version,
        }
        answers: dict[str, dict] = {}
        started = False
        max_line = 8 * self.max_chars + LINE_SLACK  # JSON escaping of the largest allowed text
        with tempfile.TemporaryFile() as job_file, tempfile.TemporaryFile() as err_file:
            job_file.write(json.dumps(job, ensure_ascii=False).encode("utf-8"))
            job_file.seek(0)
            self.processes += 1
            try:
                proc = subprocess.Popen(
                    [self.node, f"--max-old-space-size={self.heap_mb}", str(SCRIPT)],
                    stdin=job_file,
                    stdout=subprocess.PIPE,
                    stderr=err_file,
                    cwd=str(self.node_modules.parent),
                    env=self._env(),
                )
            except OSError as exc:
                return answers, {"error": f"cannot start node: {exc}", "kind": "crash", "name": ""}, False
            assert proc.stdout is not None  # stdout=PIPE
            sel = selectors.DefaultSelector()
            fd = proc.stdout.fileno()
            sel.register(fd, selectors.EVENT_READ)
            buf = bytearray()
            failure = None
            deadline = time.monotonic() + self.startup
            try:
                while True:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        if started:
                            failure = {"error": f"render took longer than {self.seconds}s", "kind": "timeout"}
                        else:
                            failure = {
                                "error": f"node did not start within {self.startup:.0f}s",
                                "kind": "crash",
                                "name": "",
                            }
                        break
                    if not sel.select(remaining):
                        continue
                    chunk = os.read(fd, 1 << 20)
                    if not chunk:
                        failure = self._exit_failure(proc, err_file, started)
                        break
                    buf += chunk
                    while (nl := buf.find(b"\n")) >= 0:
                        line = bytes(buf[:nl])
                        del buf[: nl + 1]
                        try:
                            ((key, value),) = json.loads(line.decode("utf-8")).items()
                        except (ValueError, UnicodeDecodeError):
                            failure = {
                                "error": f"unreadable answer from node: {line[:200]!r}",
                                "kind": "crash",
                                "name": "",
                            }
                            break
                        if key == "":
                            self.meta = value
                            if not value.get("ready"):
                                failure = {
                                    "error": value.get("error", "node did not get ready"),
                                    "kind": "crash",
                                    "name": "",
                                }
                                break
                            started = True
                        else:
                            answers[key] = value
                        deadline = time.monotonic() + self.seconds
                    if failure is not None or len(answers) == len(payloads):
                        break
                    if len(buf) > max_line:
                        failure = {
                            "error": f"rendered output exceeds {self.max_chars} characters",
                            "kind": "output-limit",
                        }
                        break
            finally:
                sel.close()
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                proc.stdout.close()
        return answers, failure, started

    def _exit_failure(self, proc, err_file, started: bool) -> dict:
        try:
            rc = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        err_file.seek(0)
        stderr = err_file.read().decode("utf-8", "replace")
        tail = stderr.strip()[-1500:]
        how = f"killed by signal {-rc}" if rc < 0 else f"exited {rc}"
        if "heap out of memory" in stderr or "Reached heap limit" in stderr:
            return {"error": f"node ran out of memory (heap limit {self.heap_mb} MB): {how}", "kind": "oom"}
        where = "while rendering" if started else "before it was ready"
        return {"error": f"node {how} {where}: {tail}", "kind": "crash", "name": ""}


def node_renderer(template_src: str, special: dict, limits: dict, job: dict | None = None):
    """A ``RENDERERS`` factory: ``render(case) -> str`` backed by ``@huggingface/jinja`` in Node.

    Every template case of ``job`` is rendered here, up front, in one node process; ``render``
    returns the text or raises (a case not rendered up front, or changed since, is rendered on
    demand). ``render.info`` records the package and node versions and the timing. Raises
    ImportError when node, the job's ``node_modules`` or the package is missing.
    """
    job = job or {}
    node, node_version = _node_binary(job)
    modules = _node_modules(job, PACKAGE)
    package_dir = modules.joinpath(*PACKAGE.split("/"))
    if not (package_dir / "package.json").is_file():
        raise ImportError(f"{PACKAGE} is not installed under {modules}")
    if not SCRIPT.is_file():
        raise ImportError(f"the renderer script {SCRIPT} is missing")
    entry, meta = es_entry(package_dir)
    batch = NodeBatch(node, entry.as_uri(), modules, template_src, special, limits, meta.get("version"))

    cases = [c for c in job.get("cases", []) if "template" in c.get("stages", ["template"])]
    payloads = {str(c["id"]): _payload(c) for c in cases}
    started = time.perf_counter()
    answers = batch.run(list(payloads.values())) if payloads else {}
    seconds = time.perf_counter() - started

    def render(case: dict) -> str:
        payload = _payload(case)
        answer = answers.get(payload["id"]) if payloads.get(payload["id"]) == payload else None
        if answer is None:
            answer = batch.run([payload])[payload["id"]]
        if "text" in answer:
            if case.get("continue_final_message"):
                _, final = prepare_messages(case, alias_reasoning=False)
                return cut_continued(answer["text"], final)
            return answer["text"]
        raise _error(answer.get("kind", "crash"), answer.get("error", "unknown error"), answer.get("name", ""))

    render.info = {  # type: ignore[attr-defined]  # a function attribute: mypy does not model them
        "package": PACKAGE,
        "package_version": meta.get("version"),
        "node": node_version,
        "runaway_guard": batch.meta.get("guarded"),
        "cases": len(payloads),
        "processes": batch.processes,
        "seconds": round(seconds, 4),
    }
    return render
