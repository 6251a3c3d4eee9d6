"""Host-side model conversions for engines that cannot read a transformers directory or a GGUF.

``onnxruntime-genai`` runs an ONNX export made by its own model builder
(``python -m onnxruntime_genai.models.builder -i DIR -o OUT -p fp32 -e cpu``); ``openvino-genai``
runs an OpenVINO IR (model plus tokenizer/detokenizer IR) made by optimum-intel
(``optimum-cli export openvino --task text-generation-with-past --weight-format fp32``).

Each exporter runs in its own uv environment (made by :mod:`matrix.env.uv`, never in llmcompat's
process, never in the cell's environment, so the versions under test stay untouched):

- onnxruntime-genai: the builder of the *same* onnxruntime-genai version as the cell's engine
  (its genai_config.json must suit that runtime), plus onnx, onnx-ir, CPU torch and the reference
  transformers.
- openvino-genai: optimum-intel[openvino] together with the cell's openvino-genai version and
  openvino and openvino-tokenizers of that exact release (the tokenizer IR uses the custom ops of
  openvino-tokenizers, which load only into the openvino they were built for);
  optimum-intel pulls torchvision, which breaks against the CPU torch build: it is dropped from
  the lock before the environment is made.

An export is made once, keyed by the model hash, the exporter environment's exact lock and the
command: under ``cache_dir()/exports/<engine>-<key>``, built in a temporary sibling and renamed
into place (a killed export never leaves a half-made directory that looks whole).

transformers 5 writes ``rope_parameters`` but no top-level ``rope_theta``, which both exporters
read: a model whose config lacks it is staged (symlinks, patched config.json) before export.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from matrix import scratch

FORMAT = 1
"""Bump when this module changes what an export means."""
TORCH_CPU = "torch==2.13.0+cpu"
EXPORT_TIMEOUT = 1200
DEFAULT_VERSIONS = {"onnxruntime-genai": "0.18.0", "openvino-genai": "2026.4.1.0"}
DEFAULT_TRANSFORMERS = "5.24.0"


@dataclass(frozen=True)
class Exporter:
    """How one engine's export is made: the environment's requirements (``{version}`` is the
    engine's version, ``{transformers}`` the reference one), packages dropped from its lock, and
    the command (``{python}``, ``{src}``, ``{out}``, ``{cache}``)."""

    engine: str
    requirements: tuple[str, ...]
    command: tuple[str, ...]
    drop: tuple[str, ...] = ()
    expect: tuple[str, ...] = ()
    """Files a good export has (checked before it is renamed into place)."""

    def requirements_for(self, version: str, transformers: str) -> list[str]:
        release = ".".join(version.split(".")[:3])  # openvino-genai 2026.4.0.0 -> openvino 2026.4.0
        return [r.format(version=version, release=release, transformers=transformers) for r in self.requirements]


EXPORTERS = {
    "onnxruntime-genai": Exporter(
        engine="onnxruntime-genai",
        requirements=("onnxruntime-genai=={version}", "onnx", "onnx-ir", "torch", "transformers=={transformers}"),
        command=(
            "{python}",
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            "{src}",
            "-o",
            "{out}",
            "-p",
            "fp32",
            "-e",
            "cpu",
            "-c",
            "{cache}",
        ),
        expect=("genai_config.json", "model.onnx"),
    ),
    "openvino-genai": Exporter(
        engine="openvino-genai",
        # openvino itself pinned to the genai release: openvino-genai 2026.4.0.0 accepts openvino
        # 2026.4.1, whose runtime refuses openvino-tokenizers 2026.4.0's ops ("Couldn't create
        # operation: SpecialTokensSplit"), and optimum then exports no tokenizer IR without a word
        requirements=(
            "optimum-intel[openvino]",
            "openvino-genai=={version}",
            "openvino=={release}",
            "openvino-tokenizers=={version}",
            "torch",
        ),
        command=(
            "{python}",
            "-m",
            "optimum.commands.optimum_cli",
            "export",
            "openvino",
            "--model",
            "{src}",
            "--task",
            "text-generation-with-past",
            "--weight-format",
            "fp32",
            "{out}",
        ),
        drop=("torchvision",),
        expect=("openvino_model.xml", "openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml"),
    ),
}


class ExportError(RuntimeError):
    """The exporter failed; the message ends with its output tail."""


@dataclass(frozen=True)
class BuiltExport:
    engine: str
    path: Path
    key: str
    pins: dict = field(compare=False)
    created: bool = field(default=False, compare=False)
    seconds: float = field(default=0.0, compare=False)
    env_seconds: float = field(default=0.0, compare=False)


def exports_root() -> Path:
    from matrix.paths import cache_dir

    return cache_dir() / "exports"


# --------------------------------------------------------------------------- pure helpers


def exporter(engine: str) -> Exporter:
    try:
        return EXPORTERS[engine]
    except KeyError:
        raise ValueError(f"no exporter for engine {engine!r} (known: {', '.join(sorted(EXPORTERS))})") from None


def export_key(engine: str, model_hash: str, pins: Mapping[str, str], python: str, command: tuple[str, ...]) -> str:
    """sha256 of everything that decides an export's bytes."""
    doc = {
        "format": FORMAT,
        "engine": engine,
        "model_hash": model_hash,
        "pins": dict(sorted(pins.items())),
        "python": python,
        "command": list(command),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def patched_config(cfg: dict) -> dict | None:
    """config.json with a top-level ``rope_theta`` where only ``rope_parameters`` has it; None
    when nothing needs patching."""
    if "rope_theta" in cfg:
        return None
    theta = (cfg.get("rope_parameters") or {}).get("rope_theta")
    if theta is None:
        return None
    return {**cfg, "rope_theta": theta}


def drop_pins(pins: tuple[tuple[str, str], ...], drop: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple(p for p in pins if p[0] not in set(drop))


# --------------------------------------------------------------------------- shells


def exporter_env(
    engine: str, version: str | None = None, *, python: str = "3.11", reference: Mapping[str, str] | None = None
):
    """The exporter's environment (:class:`matrix.env.uv.Environment`), made once per lock."""
    from matrix.env import uv as envs

    ex = exporter(engine)
    version = version or DEFAULT_VERSIONS[engine]
    transformers = (reference or {}).get("transformers") or DEFAULT_TRANSFORMERS
    lock = envs.resolve(ex.requirements_for(version, transformers), python=python, overrides=[TORCH_CPU])
    if isinstance(lock, envs.Unresolvable):
        raise ExportError(f"the {engine} exporter's requirements cannot be installed together: {lock.reason}")
    lock = envs.Lock(drop_pins(lock.pins, ex.drop), lock.python)
    return envs.ensure(lock)


def _stage(model_dir: Path, tmp: Path) -> Path:
    """The model directory as the exporter should read it (patched config where needed)."""
    try:
        cfg = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return model_dir
    patched = patched_config(cfg)
    if patched is None:
        return model_dir
    staged = tmp / "src"
    staged.mkdir()
    for entry in model_dir.iterdir():
        if entry.name != "config.json" and not entry.name.startswith("."):
            (staged / entry.name).symlink_to(entry.resolve())
    (staged / "config.json").write_text(json.dumps(patched, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return staged


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(name, None)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TOKENIZERS_PARALLELISM="false",
        TRANSFORMERS_VERBOSITY="error",
        TQDM_DISABLE="1",
    )
    return env


def _run_export(ex: Exporter, python_bin: Path, model_dir: Path, out: Path, timeout: float) -> None:
    with tempfile.TemporaryDirectory(prefix="llmcompat-export-", dir=scratch.directory()) as work:
        work_p = Path(work)
        src = _stage(model_dir, work_p)
        cache = work_p / "cache"
        cmd = [part.format(python=str(python_bin), src=str(src), out=str(out), cache=str(cache)) for part in ex.command]
        env = _child_env()
        env["HF_HOME"] = str(work_p / "hf")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ExportError(f"{ex.engine} export timed out after {timeout:.0f}s: {' '.join(cmd)}") from None
        if proc.returncode != 0:
            raise ExportError(
                f"{ex.engine} export exited {proc.returncode}: {' '.join(cmd)}\n{(proc.stdout + proc.stderr)[-4000:]}"
            )
    missing = [name for name in ex.expect if not (out / name).is_file()]
    if missing:
        raise ExportError(
            f"{ex.engine} export lacks {', '.join(missing)} (has {sorted(p.name for p in out.iterdir())})"
        )


def ensure_export(
    model_dir: Path | str,
    engine: str,
    version: str | None = None,
    *,
    python: str = "3.11",
    reference: Mapping[str, str] | None = None,
    root: Path | None = None,
    timeout: float = EXPORT_TIMEOUT,
) -> BuiltExport:
    """The ``engine`` export of the model in ``model_dir`` for engine ``version``, made once."""
    from matrix import tinymodel

    model_dir = Path(model_dir)
    ex = exporter(engine)
    version = version or DEFAULT_VERSIONS[engine]
    started = time.perf_counter()
    env = exporter_env(engine, version, python=python, reference=reference)
    env_seconds = time.perf_counter() - started
    pins = dict(env.lock.pins)
    mhash = tinymodel.model_hash(tinymodel.hash_files(model_dir))
    key = export_key(engine, mhash, pins, env.lock.python, ex.command)
    path = (root or exports_root()) / f"{engine}-{key[:24]}"
    if (path / tinymodel.MARKER).is_file():
        return BuiltExport(engine, path, key, pins, env_seconds=env_seconds)
    t = time.perf_counter()
    tinymodel.build_dir(
        path,
        lambda out: _run_export(ex, env.python, model_dir, out, timeout),
        {
            "engine": engine,
            "engine_version": version,
            "model_hash": mhash,
            "pins": pins,
            "python": env.lock.python,
            "key": key,
            "command": list(ex.command),
        },
    )
    return BuiltExport(engine, path, key, pins, created=True, seconds=time.perf_counter() - t, env_seconds=env_seconds)


def job_exports(model_dir: Path | str, engines: Mapping[str, str | None], **kwargs) -> dict[str, str]:
    """``job["exports"]`` for a cell: engine name -> export directory, for the engines (name ->
    version) that need one; others are ignored."""
    return {
        name: str(ensure_export(model_dir, name, version, **kwargs).path)
        for name, version in engines.items()
        if name in EXPORTERS
    }
