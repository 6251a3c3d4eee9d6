"""The model every cell names: the project's own tiny model, or a hub model fetched into the cache.

The tiny model is built by ``build.py`` inside the reference environment (exact pins, made by
:mod:`matrix.env.uv`), never in llmcompat's own process, so the pinned tokenizers and transformers
write its files. A build is keyed by the hash of everything that can change its bytes (the files
beside this module, the pins, arch, parts, Python) and made once: under a temporary name, then
renamed into place, so a killed build never leaves a half-made model that looks whole.

The model hash, which goes into every cell key, is a sha256 over the output files' names and
bytes: equal builds give equal hashes on every machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from matrix import atomic

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build.py"
INPUTS = ("build.py", "corpus.txt", "chat_template.jinja", "ollama.gotmpl")
"""Files whose bytes decide the output; editing any of them makes a new model."""

ARCHS = ("qwen2", "llama")
PARTS = ("tokenizer", "weights", "gguf")
NEEDS = {"tokenizer": ("jinja2", "tokenizers", "transformers"), "weights": ("torch",), "gguf": ("gguf",)}
"""Packages each part imports; only these are pinned, so a tokenizer build never installs torch."""

DEFAULT_REFERENCE = {
    "gguf": "0.19.0",
    "jinja2": "3.1.6",
    "tokenizers": "0.23.3",
    "torch": "2.13.0+cpu",
    "transformers": "5.23.0",
}
"""Pins for packages the caller's ``reference`` mapping does not name (the CPU torch build:
a bare ``torch`` would resolve to CUDA wheels)."""

MARKER = "llmcompat-model.json"
FORMAT = 1
"""Bump when this adapter changes what a build means (not needed for edits to INPUTS)."""
BUILD_TIMEOUT = 900


@dataclass(frozen=True)
class BuiltModel:
    """A model directory in the cache and the hash of its files (relative name -> sha256)."""

    path: Path
    model_hash: str
    files: dict[str, str]
    created: bool = field(default=False, compare=False)
    seconds: float = field(default=0.0, compare=False)


class ModelUnavailable(Exception):
    """A model cannot be had here (no network to the hub, unknown id): an ``infra`` outcome."""

    def __init__(self, model: str, reason: str):
        super().__init__(f"model {model} is unavailable: {reason}")
        self.model = model
        self.reason = reason


class BuildError(RuntimeError):
    """build.py failed; the message ends with its stderr."""


def models_root() -> Path:
    from matrix.paths import cache_dir

    return cache_dir() / "models"


# --------------------------------------------------------------------------- pure helpers


def normalize_parts(parts: Iterable[str]) -> tuple[str, ...]:
    """Parts in build order; every build has the tokenizer, and a GGUF needs the weights."""
    wanted = set(parts) | {"tokenizer"}
    unknown = sorted(wanted - set(PARTS))
    if unknown:
        raise ValueError(f"unknown model parts {unknown}: choose from {', '.join(PARTS)}")
    if "gguf" in wanted:
        wanted.add("weights")
    return tuple(p for p in PARTS if p in wanted)


def reference_pins(parts: tuple[str, ...], reference: Mapping[str, str]) -> dict[str, str]:
    """Exact versions of the packages ``parts`` need: the caller's first, then the defaults."""
    names = sorted({pkg for part in parts for pkg in NEEDS[part]})
    return {name: str(reference.get(name) or DEFAULT_REFERENCE[name]) for name in names}


def input_digests() -> dict[str, str]:
    return {name: hashlib.sha256((HERE / name).read_bytes()).hexdigest() for name in INPUTS}


def cache_key(arch: str, parts: tuple[str, ...], pins: Mapping[str, str], python: str) -> str:
    """sha256 of everything that decides a build's bytes."""
    doc = {
        "format": FORMAT,
        "arch": arch,
        "parts": list(parts),
        "pins": dict(sorted(pins.items())),
        "python": python,
        "inputs": input_digests(),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def hash_files(root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root`` by POSIX relative name; dot-files and the
    marker are bookkeeping (the hub client keeps timestamps in ``.cache/``), not the model."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or rel.as_posix() == MARKER:
            continue
        if path.is_file():
            out[rel.as_posix()] = _sha256_file(path)
    return out


def model_hash(files: Mapping[str, str]) -> str:
    """One digest for a model: names and contents, order-independent."""
    lines = "".join(f"{name}\0{digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- the tiny model


def ensure(
    arch: str = "qwen2",
    parts: Iterable[str] = ("tokenizer",),
    reference: Mapping[str, str] = DEFAULT_REFERENCE,
    python: str = "3.11",
    root: Path | None = None,
) -> BuiltModel:
    """The tiny model for ``arch`` with ``parts`` built by the ``reference`` pins, built once."""
    if arch not in ARCHS:
        raise ValueError(f"unknown tiny model arch {arch!r}: choose from {', '.join(ARCHS)}")
    parts = normalize_parts(parts)
    pins = reference_pins(parts, reference)
    key = cache_key(arch, parts, pins, python)
    root = root or models_root()
    path = root / f"tiny-{arch}-{key[:24]}"
    if (path / MARKER).is_file():
        return _built(path)
    started = time.perf_counter()
    python_bin = reference_python(parts, reference, python)
    build_dir(
        path,
        lambda out: _run_build(python_bin, out, arch, parts),
        {"arch": arch, "parts": list(parts), "pins": pins, "python": python, "key": key},
    )
    built = _built(path)
    return BuiltModel(built.path, built.model_hash, built.files, True, time.perf_counter() - started)


def reference_python(
    parts: Iterable[str] = ("tokenizer",),
    reference: Mapping[str, str] = DEFAULT_REFERENCE,
    python: str = "3.11",
) -> Path:
    """The interpreter of the environment that builds ``parts`` (made once by matrix.env.uv);
    also where goldens and tests load the model with the reference versions."""
    from matrix.env import uv as envs

    pins = reference_pins(normalize_parts(parts), reference)
    reqs = [f"{name}=={version}" for name, version in sorted(pins.items())]
    overrides = [f"torch=={pins['torch']}"] if "torch" in pins else []  # never a CUDA torch
    lock = envs.resolve(reqs, python=python, overrides=overrides)
    if isinstance(lock, envs.Unresolvable):
        raise BuildError(f"reference pins cannot be installed together: {lock.reason}")
    return envs.ensure(lock).python


def _run_build(python_bin: Path, out: Path, arch: str, parts: tuple[str, ...]) -> None:
    env = _child_env()
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        TRANSFORMERS_VERBOSITY="error",
        TOKENIZERS_PARALLELISM="false",
    )
    # -I: llmcompat's PYTHONPATH and user site must not leak into the reference environment.
    cmd = [str(python_bin), "-I", str(BUILD_SCRIPT), "--out", str(out), "--arch", arch, "--parts", ",".join(parts)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=BUILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise BuildError(f"build.py timed out after {BUILD_TIMEOUT}s: {' '.join(cmd)}") from None
    if proc.returncode != 0:
        raise BuildError(f"build.py exited {proc.returncode}: {' '.join(cmd)}\n{proc.stderr[-4000:]}")


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(name, None)
    return env


def build_dir(path: Path, build, meta: dict) -> None:
    """``build(tmp)`` once under :func:`matrix.atomic.build_once`; the marker holds ``meta``, the
    files' hashes and the model hash."""

    def made(tmp: Path) -> dict:
        build(tmp)
        _make_readable(tmp)
        files = hash_files(tmp)
        return {**meta, "files": files, "model_hash": model_hash(files)}

    atomic.build_once(path, made, marker=MARKER)


def _make_readable(root: Path) -> None:
    """mkdtemp makes 0700 and safetensors writes 0600; engines in containers or services running
    as another user (an Ollama daemon) must still read the cached model."""
    for path in [root, *root.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def _built(path: Path) -> BuiltModel:
    """Re-hash on every call (a few MB, milliseconds): the hash always describes the bytes on disk."""
    files = hash_files(path)
    return BuiltModel(path, model_hash(files), files)


# --------------------------------------------------------------------------- hub models


def ensure_hub(
    hub_id: str,
    reference: Mapping[str, str] = DEFAULT_REFERENCE,
    python: str = "3.11",
    root: Path | None = None,
    timeout: float = 3600,
) -> BuiltModel:
    """A hub model (``org/name`` or ``org/name@revision``) downloaded once into the cache.

    The download runs in the reference environment (it has ``huggingface_hub``) with
    ``HF_HUB_OFFLINE`` unset; where the hub cannot be reached it raises :class:`ModelUnavailable`
    with the client's own reason, which callers report as ``infra`` (tests skip with it).
    """
    repo_id, _, revision = hub_id.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"hub id must be 'org/name' or 'org/name@revision', got {hub_id!r}")
    root = root or models_root()
    path = root / "hub" / f"{repo_id.replace('/', '--')}@{revision or 'main'}"
    if (path / MARKER).is_file():
        return _built(path)
    started = time.perf_counter()
    try:
        python_bin = reference_python(("tokenizer",), reference, python)
    except Exception as exc:  # noqa: BLE001 - no index, no environment: the model cannot be had
        raise ModelUnavailable(hub_id, f"no environment to download with: {exc}") from None
    build_dir(path, lambda out: _download(python_bin, hub_id, out, timeout), {"hub_id": hub_id})
    built = _built(path)
    return BuiltModel(built.path, built.model_hash, built.files, True, time.perf_counter() - started)


_DOWNLOAD = """
import sys
from huggingface_hub import snapshot_download
snapshot_download(sys.argv[1], revision=sys.argv[2] or None, local_dir=sys.argv[3])
"""


def _download(python_bin: Path, hub_id: str, out: Path, timeout: float) -> None:
    repo_id, _, revision = hub_id.partition("@")
    env = _child_env()
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(name, None)
    env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    cmd = [str(python_bin), "-I", "-c", _DOWNLOAD, repo_id, revision, str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ModelUnavailable(hub_id, f"download timed out after {timeout:.0f}s") from None
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        # the client's exception line ("...Error: Got: ConnectError: ..."), else its last words
        reason = next((line for line in reversed(lines) if "Error: " in line), lines[-1] if lines else "")
        raise ModelUnavailable(hub_id, reason.strip() or f"download exited {proc.returncode}")
