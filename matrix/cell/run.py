"""Running cells: resolve, key, reuse or build the environment, run the probe, write a result.

A cell's worker writes exactly one result file, named by its key, atomically. It never
touches the store: the aggregator is the single writer. A cell whose key already has a
result is reused and never run again, except an ``infra`` result (or an unreadable file),
which is retried. A cached environment whose interpreter is gone or cannot start is removed
and rebuilt once before the cell is called ``infra``; an unexpected error of one cell makes
that cell ``infra`` with the error as its reason, never an exception for the whole run.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from matrix import atomic, paths, scratch
from matrix.declare.config import Matrix
from matrix.env import uv as envs
from matrix.outcome import Outcome, worst
from matrix.plan.cells import Cell
from matrix.plan.key import cell_key, digest

PROBE_DIR = Path(__file__).resolve().parent.parent / "probe"
PROBE_TIMEOUT = 900
HEALTH_TIMEOUT = 60
PROBE_LIMITS = {"render_seconds": 5, "render_chars": 1_000_000, "request_seconds": 60, "server_start_seconds": 120}
"""The probe's limits for a cell's job (and ``llmcompat endpoint``'s)."""
# Only these reach a cell's probe: no tokens or other secrets of the caller's environment.
PASSED_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "OLLAMA_BIN",
    "CUDA_VISIBLE_DEVICES",
)  # the runner's Ollama runtime; its GPU selection
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "PYTHONHASHSEED": "0",
    "PYTHONDONTWRITEBYTECODE": "1",
}


class BrokenEnvironment(Exception):
    """A cell's environment that does not start even after one rebuild: the cell is infra."""


def harness_digest() -> str:
    """The probe's own source: a changed harness can change results, so it is in the key."""
    files = sorted([*PROBE_DIR.glob("*.py"), *PROBE_DIR.glob("*.mjs"), *PROBE_DIR.glob("*.json")])
    return digest(*(f.name + "\n" + f.read_text(encoding="utf-8") for f in files))


@dataclass(frozen=True)
class ModelRef:
    """A built model: its directory and content hash."""

    name: str
    path: Path
    hash: str


@dataclass(frozen=True)
class SuiteRef:
    """The suite as a cell sees it: cases with goldens merged, and their digest."""

    name: str
    digest: str
    cases: tuple[dict, ...]
    tricky: dict = field(default_factory=dict)
    """Goldens of the tokenize stage's tricky texts, by name."""
    corpus: dict = field(default_factory=dict)
    """The template corpus the probe renders (``matrix/app/corpus.py``: templates, reference goldens);
    ``digest`` covers it."""


@dataclass
class CellReport:
    """What happened to one cell in this run (the summary table and the run record use it)."""

    cell: Cell
    outcome: Outcome
    key: str = ""
    reused: bool = False
    path: Path | None = None
    seconds: float = 0.0
    env_seconds: float = 0.0
    reason: str = ""
    stages: dict = field(default_factory=dict)


def requirements(matrix: Matrix, cell: Cell) -> list[str]:
    """The pinned Python requirements of a cell: each pypi component's primary plus its extras."""
    reqs: list[str] = []
    for axis, choice in cell.choices:
        comp = matrix.component(axis, choice.component)
        if comp.ecosystem == "pypi":
            reqs.append(comp.requirement(choice.version))
            reqs.extend(comp.requires)
    return reqs


def npm_pins(matrix: Matrix, cell: Cell) -> dict[str, str]:
    """npm packages of a cell (package -> exact version); they live beside the uv env."""
    return {
        matrix.component(a, c.component).primary: c.version
        for a, c in cell.choices
        if matrix.component(a, c.component).ecosystem == "npm"
    }


def node_version() -> str:
    """``node --version`` (part of the key of cells that run Node), or "" without Node."""
    import shutil

    node = shutil.which("node")
    if not node:
        return ""
    return subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()


def ollama_version() -> str:
    """The Ollama runtime's version (part of the key of cells whose engine is ``ollama``: the runner
    brings the binary, no lock pins it); "" without one. ``$OLLAMA_BIN`` or PATH, as the probe finds it."""
    import re
    import shutil

    exe = os.environ.get("OLLAMA_BIN") or shutil.which("ollama")
    if not exe:
        return ""
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    found = re.findall(r"\d+\.\d+\.\d+\S*", out.stdout + out.stderr)
    return found[-1] if found else (out.stdout + out.stderr).strip()[:100]


ROLES = ("renderers", "tokenizers", "engines", "clients")
"""What a component can bring to the probe (``probe:`` in axes.yaml)."""
SERVER_ENGINES = ("llama-cpp-server", "llama-server", "transformers-serve", "vllm", "sglang", "ollama")
"""Engines that serve an OpenAI-compatible endpoint the client stage can talk to."""


def probe_job(
    matrix: Matrix,
    cell: Cell,
    model: ModelRef,
    suite: SuiteRef,
    mode: str = "check",
    node_modules: dict[str, str] | None = None,
) -> dict:
    """The probe's job: the stages, renderers, tokenizers and engines this cell's components bring."""
    roles: dict[str, list[str]] = {role: [] for role in ROLES}
    report: list[str] = []
    for axis, choice in cell.choices:
        comp = matrix.component(axis, choice.component)
        if comp.ecosystem == "pypi":  # importlib.metadata sees only Python distributions
            report.extend(comp.packages)
        for role in roles:
            roles[role] += [r for r in comp.probe_roles(role) if r not in roles[role]]
    # postprocess always runs: its detokenizer and parser checks need no engine
    stages = ["template", "tokenize"] + (["inference"] if roles["engines"] else []) + ["postprocess"]
    targets = [e for e in roles["engines"] if e in SERVER_ENGINES]  # the client stage talks to each
    if roles["clients"]:
        stages.append("client")  # without a server in the cell the stage says so (skipped)
    sources = ["hf"] + [
        src for src, name in (("gguf", "model.gguf"), ("ollama", "Modelfile")) if (model.path / name).is_file()
    ]
    return {
        "mode": mode,
        "model_dir": str(model.path),
        "stages": stages,
        "template_sources": sources,
        "renderers": roles["renderers"] or ["jinja2"],
        "tokenizers": roles["tokenizers"] or ["tokenizers"],
        "engines": roles["engines"],
        "clients": roles["clients"],
        **({"client_target": targets[0]} if targets else {}),
        **({"client_targets_more": targets[1:]} if len(targets) > 1 else {}),
        "cases": list(suite.cases),
        "tricky": dict(suite.tricky),
        **({"corpus": suite.corpus} if suite.corpus else {}),
        "max_new_tokens": 16,
        "limits": dict(PROBE_LIMITS),
        "report_versions": sorted(set(report)),
        "node_modules": node_modules or {},
    }


def repro_command(cell: Cell) -> str:
    return f'nox -s "cell({cell.id})"'


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: dict) -> None:
    atomic.write_json(path, data)


def run_probe(
    python: Path, job: dict, timeout: float = PROBE_TIMEOUT, pass_env: tuple[str, ...] = ()
) -> tuple[dict | None, str]:
    """Run the probe in a cell's interpreter; (result, log). None when the probe itself died.
    ``pass_env``: more variables the probe gets besides :data:`PASSED_ENV` (``llmcompat endpoint``'s
    ``--api-key-env``: the key reaches the probe's environment only, never the job file)."""
    with tempfile.TemporaryDirectory(prefix="probe-", dir=scratch.directory()) as tmp:
        job_path, out_path = Path(tmp, "job.json"), Path(tmp, "result.json")
        job_path.write_text(json.dumps(job, ensure_ascii=False), encoding="utf-8")
        env = {k: os.environ[k] for k in (*PASSED_ENV, *pass_env) if k in os.environ}
        env.update(OFFLINE_ENV)
        env["HF_HOME"] = str(Path(tmp, "hf"))
        # LLMCOMPAT_PROBE_WRAPPER: a command the probe runs under (nice, a fault injector...)
        wrapper = shlex.split(os.environ.get("LLMCOMPAT_PROBE_WRAPPER", ""))
        try:
            proc = subprocess.run(
                [*wrapper, str(python), "-I", str(PROBE_DIR / "probe.py"), str(job_path), str(out_path)],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                cwd=tmp,
            )
        except subprocess.TimeoutExpired as exc:
            return None, f"probe timed out after {timeout:.0f}s\n{str(exc.stderr or '')}"
        except OSError as exc:  # the interpreter vanished or cannot be executed
            return None, f"probe could not start: {exc}"
        log = (proc.stdout + proc.stderr)[-20000:]
        if proc.returncode != 0 or not out_path.is_file():
            return None, f"probe exited {proc.returncode}\n{log}"
        try:
            return json.loads(out_path.read_text(encoding="utf-8")), log
        except (OSError, ValueError) as exc:
            return None, f"probe wrote an unreadable result: {exc}\n{log}"


def env_problem(python: Path, timeout: float = HEALTH_TIMEOUT) -> str | None:
    """Why a cached environment's interpreter cannot run a probe (missing, not executable, fails
    to start), or None when it starts."""
    if not python.exists():
        return f"{python} is missing"
    try:
        proc = subprocess.run(
            [str(python), "-I", "-c", "import sys, json"],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={"PATH": os.environ.get("PATH", "")},
        )
    except subprocess.TimeoutExpired:
        return f"{python} did not start within {timeout:.0f}s"
    except OSError as exc:
        return f"{python} cannot start: {exc}"
    if proc.returncode != 0:
        return f"{python} exited {proc.returncode} at start: {(proc.stderr or proc.stdout).strip()[-500:]}"
    return None


def reusable(path: Path, known: bool) -> dict | None:
    """The result a key already has and that stands (reused, never run again), or None: no
    result, an unreadable file, or an ``infra`` result (retried on the next run)."""
    if not path.is_file():
        return {} if known else None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("outcome") in (None, Outcome.INFRA.value):
        return None
    try:
        Outcome(data["outcome"])
    except ValueError:
        return None
    return data


def overall(stages: dict) -> Outcome:
    """A cell's outcome: the worst of its stages (:data:`matrix.outcome.WORST_FIRST`)."""
    return worst((Outcome(s["outcome"]) for s in stages.values()), default=Outcome.SKIPPED)


class CellRunner:
    """Runs cells of one matrix against one suite and its models. Thread-safe per cell."""

    def __init__(
        self,
        matrix: Matrix,
        suites: dict[str, SuiteRef],
        models: dict[str, ModelRef],
        results_dir: Path | None = None,
        known_keys: set[str] | None = None,
        env: str | None = None,
    ):
        self.matrix = matrix
        self.env = env
        """``uv`` or ``image`` for every cell (``--env``); None: each runner's ``environment``."""
        self.suites = suites
        self.models = models
        self.results_dir = results_dir or paths.results_dir()
        self.known_keys = known_keys if known_keys is not None else set()
        self.harness = harness_digest()
        self._built: dict[str, dict[str, Path]] = {}
        self._resolved: dict[tuple, envs.Lock | envs.Unresolvable] = {}
        """Resolutions of this run by (requirements, python, pins, wheels): cells that differ only
        in runner or model install the same set, and the index does not change within a run."""
        from matrix.cell.client_server import ClientServer

        self.client_server = ClientServer(matrix)
        """The shared ``transformers serve`` for cells with clients and no server engine (started on first use)."""

    def wants_client_server(self, cell: Cell) -> bool:
        """A cell whose client SDKs would have no wire: it brings clients but no server engine."""
        comps = [self.matrix.component(a, c.component) for a, c in cell.choices]
        engines = {e for comp in comps for e in comp.probe_roles("engines")}
        return any(comp.probe_roles("clients") for comp in comps) and not engines & set(SERVER_ENGINES)

    def runner(self, name: str):
        return next(r for r in self.matrix.runners if r.name == name)

    def built(self, cell: Cell) -> dict[str, Path]:
        """Wheels of the cell's source-built components (compiled once per version and flags;
        looked up once per cell: resolving, keying and installing all need them)."""
        from matrix.env import builds

        if cell.id not in self._built:
            python = self.runner(cell.runner).python
            out = {}
            for axis, choice in cell.choices:
                comp = self.matrix.component(axis, choice.component)
                if comp.build:
                    out[comp.primary] = builds.wheel(comp.primary, choice.version, dict(comp.build), python=python)
            self._built[cell.id] = out
        return self._built[cell.id]

    def resolve(self, cell: Cell) -> envs.Lock | envs.Unresolvable:
        from matrix.env import builds

        runner = self.runner(cell.runner)
        try:
            built = self.built(cell)
        except builds.BuildError as exc:  # the same sources and flags fail the same way: not infra
            return envs.Unresolvable(tuple(requirements(self.matrix, cell)), f"build failed: {exc}"[-4000:])
        reqs = requirements(self.matrix, cell)
        memo = (tuple(reqs), runner.python, tuple(runner.pins), tuple(sorted(map(str, built.values()))))
        if memo not in self._resolved:  # a ResolveError (infra) is not kept: the retry asks uv again
            self._resolved[memo] = envs.resolve(
                reqs, python=runner.python, overrides=list(runner.pins), find_links=list(built.values())
            )
        return self._resolved[memo]

    def key(self, cell: Cell, lock: envs.Lock) -> str:
        from matrix.env import builds

        pins = dict(lock.pins)
        pins |= {f"build:{name}": builds.info(d)["key"] for name, d in self.built(cell).items()}
        for axis, choice in cell.choices:
            comp = self.matrix.component(axis, choice.component)
            if comp.build_server:
                pins["build:llama-server"] = builds.server_key(choice.version, dict(comp.build))
        if any("ollama" in self.matrix.component(a, c.component).probe_roles("engines") for a, c in cell.choices):
            pins["runtime:ollama"] = ollama_version()
        if self.wants_client_server(cell):
            pins["server:client"] = self.client_server.key_part()
        npm = npm_pins(self.matrix, cell)
        if npm:
            pins |= {f"npm:{p}": v for p, v in npm.items()}
            pins["node"] = node_version()
        return cell_key(
            pins=pins,
            python=lock.python,
            suite=self.suites[cell.model].digest,
            model_hash=self.models[cell.model].hash,
            runner=cell.runner,
            harness=self.harness,
        )

    def result_path(self, key: str) -> Path:
        return self.results_dir / f"{key}.json"

    def execute(self, cell: Cell, resolved=None, *, force: bool = False) -> CellReport:
        """Run one cell (or reuse its result). Never raises for a cell's own failure: an
        unexpected error makes the cell ``infra``, with the error as its reason, in its result file."""
        started = time.perf_counter()
        seen: dict = {}
        try:
            return self._execute(cell, resolved, force, started, seen)
        except Exception as exc:  # noqa: BLE001 - one cell's error must never abort the others
            reason = f"llmcompat error in this cell: {type(exc).__name__}: {exc}\n" + traceback.format_exc()[-3000:]
            key = seen.get("key") or digest("error", cell.id, self.harness)
            try:
                return self._finish(cell, key, Outcome.INFRA, {}, started, lock=seen.get("lock"), reason=reason)
            except Exception:  # noqa: BLE001 - not even a result file: the run still goes on
                return CellReport(cell, Outcome.INFRA, key, reason=reason, seconds=time.perf_counter() - started)

    def _execute(self, cell: Cell, resolved, force: bool, started: float, seen: dict) -> CellReport:
        try:
            resolved = resolved or self.resolve(cell)
        except envs.ResolveError as exc:
            return CellReport(
                cell, Outcome.INFRA, reason=f"resolution failed: {exc}"[:4000], seconds=time.perf_counter() - started
            )
        if isinstance(resolved, envs.Unresolvable):
            key = digest("unresolvable", *resolved.requirements, cell.runner)
            return self._finish(cell, key, Outcome.UNRESOLVABLE, {}, started, reason=resolved.reason)
        key = self.key(cell, resolved)
        seen.update(key=key, lock=resolved)
        path = self.result_path(key)
        data = None if force else reusable(path, key in self.known_keys)
        if data is not None:
            return CellReport(
                cell,
                Outcome(data.get("outcome", "pass")),
                key,
                reused=True,
                path=path if path.is_file() else None,
                stages=data.get("stages", {}),
                seconds=time.perf_counter() - started,
            )
        in_image = self.environment(cell) == "image"
        try:
            env = None if in_image else self.healthy_env(resolved, cell)
        except envs.ResolveError as exc:
            return self._finish(
                cell, key, Outcome.INFRA, {}, started, lock=resolved, reason=f"environment build failed: {exc}"[:4000]
            )
        except BrokenEnvironment as exc:
            return self._finish(cell, key, Outcome.INFRA, {}, started, lock=resolved, reason=str(exc))
        try:
            node_modules = self.npm_packages(cell)
        except Exception as exc:  # noqa: BLE001 - npm down or a failed install is infra
            return self._finish(
                cell, key, Outcome.INFRA, {}, started, lock=resolved, reason=f"npm install failed: {exc}"[:4000]
            )
        job = probe_job(self.matrix, cell, self.models[cell.model], self.suites[cell.model], node_modules=node_modules)
        job["cell"] = cell.id  # for the log and a probe wrapper; the probe itself ignores it
        job["llama_server_bin"] = self.llama_server(cell)
        if "client" in job["stages"] and "client_target" not in job and self.wants_client_server(cell):
            job["client_target"] = self.client_server.target(self.models[cell.model].path)
        try:
            job["exports"] = self.exports(cell, job["engines"])
        except Exception as exc:  # noqa: BLE001 - a failed model export is infra, not the engine's fault
            return self._finish(
                cell, key, Outcome.INFRA, {}, started, lock=resolved, reason=f"model export failed: {exc}"[:4000]
            )
        if in_image:
            from matrix.cell import in_image as image_path

            result, log = image_path.probe(self, cell, key, resolved, job, OFFLINE_ENV)
        else:
            assert env is not None  # built above for every cell that is not run in an image
            result, log = run_probe(env.python, job)
        if result is None:
            report = self._finish(cell, key, Outcome.INFRA, {}, started, lock=resolved, reason=log[-4000:])
        else:
            report = self._finish(
                cell, key, overall(result["stages"]), result["stages"], started, lock=resolved, probe=result, log=log
            )
        report.env_seconds = env.seconds if env else 0.0
        return report

    def environment(self, cell: Cell) -> str:
        """Where the cell runs: ``uv`` (an environment on this machine) or ``image`` (its container image)."""
        return self.env or self.runner(cell.runner).environment

    def healthy_env(self, lock, cell: Cell):
        """The cell's environment, checked: an interpreter that is gone or cannot start gets the
        cached environment removed and rebuilt once; still broken: :class:`BrokenEnvironment`."""
        env = envs.ensure(lock, built=self.built(cell))
        problem = env_problem(env.python)
        if problem is None:
            return env
        shutil.rmtree(env.path, ignore_errors=True)
        env = envs.ensure(lock, built=self.built(cell))
        again = env_problem(env.python)
        if again is not None:
            raise BrokenEnvironment(
                f"environment {env.path} is broken ({problem}); rebuilt once, still broken: {again}"
            )
        return env

    def llama_server(self, cell: Cell) -> str | None:
        """llama.cpp's native server built from a component's sources, when it asks for one.
        A failed build leaves it out: its renderer and engine then say why they were skipped."""
        from matrix.env import builds

        for axis, choice in cell.choices:
            comp = self.matrix.component(axis, choice.component)
            if comp.build_server:
                try:
                    return str(builds.llama_server(choice.version, dict(comp.build)))
                except builds.BuildError:
                    return None
        return None

    def exports(self, cell: Cell, engines: list[str]) -> dict[str, str]:
        """Engine-specific conversions of the model (ONNX, OpenVINO IR), made once per model hash."""
        from matrix.env import model_exports

        wanted: dict[str, str] = {}
        for axis, choice in cell.choices:
            comp = self.matrix.component(axis, choice.component)
            wanted |= {e: choice.version for e in comp.probe_roles("engines") if e in model_exports.EXPORTERS}
        return model_exports.job_exports(self.models[cell.model].path, wanted) if wanted else {}

    def npm_packages(self, cell: Cell) -> dict[str, str]:
        from matrix.releases import npm

        return {
            pkg: str(npm.ensure_package(pkg, version, paths.cache_dir()))
            for pkg, version in npm_pins(self.matrix, cell).items()
        }

    def _finish(self, cell, key, outcome, stages, started, *, lock=None, reason="", probe=None, log="") -> CellReport:
        seconds = time.perf_counter() - started
        model = self.models[cell.model]
        data = {
            "schema": 1,
            "key": key,
            "cell": cell.to_json(),
            "outcome": outcome.value,
            "reason": reason,
            "stages": stages,
            "records": (probe or {}).get("records", []),
            # what the cell asked uv for (extras included): triage reads the extras it requested (#15)
            "facts": {**(probe or {}).get("facts", {}), "requirements": requirements(self.matrix, cell)},
            "versions": (probe or {}).get("versions", {}),
            "lock": lock.to_json() if lock else {},
            "model_hash": model.hash,
            "suite": {"name": self.suites[cell.model].name, "digest": self.suites[cell.model].digest},
            "harness": self.harness,
            "duration_s": round(seconds, 3),
            "finished": now_iso(),
            "repro": repro_command(cell),
            "log": log[-8000:],
        }
        path = self.result_path(key)
        write_json_atomic(path, data)
        return CellReport(cell, outcome, key, path=path, seconds=seconds, reason=reason, stages=stages)
