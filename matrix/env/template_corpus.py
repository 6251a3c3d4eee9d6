"""A corpus of real chat templates, read from a source distribution on the package index.

llama.cpp keeps the chat templates of real models for its own tests under
``vendor/llama.cpp/models/templates/*.jinja``; the llama-cpp-python source distribution carries
them. This adapter fetches that sdist through pip's index configuration (``builds.sdist``, which
downloads each sdist once), reads the templates out of the tar without unpacking or compiling
anything, and keeps them cached by content: each template under its sha256, plus one small
manifest per (package, version, path) naming them. A second run reads the manifest and never
touches the index or the 77 MB archive. Nothing of the corpus is committed to the repository.

A template's identity is its file name without ``.jinja`` (``meta-llama-Llama-3.1-8B-Instruct``).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from matrix import atomic, paths
from matrix.plan.key import digest

__all__ = ["Corpus", "CorpusError", "load", "select"]

SUFFIX = ".jinja"
MAX_TEMPLATE_BYTES = 1 << 20
"""A template larger than this is not a chat template; the corpus refuses it."""


class CorpusError(Exception):
    """The corpus cannot be had: no sdist, no templates under the path, an unknown name."""


@dataclass(frozen=True)
class Corpus:
    """Templates of one (package, version, path), by name; ``digest`` hashes names and texts."""

    package: str
    version: str
    path: str
    templates: dict[str, str]

    @property
    def digest(self) -> str:
        return digest(self.package, self.version, *(f"{n}\n{t}" for n, t in sorted(self.templates.items())))


def _root() -> Path:
    return paths.cache_dir() / "template-corpus"


def _manifest_path(package: str, version: str, path: str) -> Path:
    tag = hashlib.sha256(f"{package}\n{version}\n{path}".encode()).hexdigest()[:16]
    return _root() / f"{package}-{version}-{tag}.json"


def _blob(sha: str) -> Path:
    return _root() / "blobs" / f"{sha}{SUFFIX}"


def read_tar(archive: Path, path: str) -> dict[str, str]:
    """``{name: text}`` of every ``*.jinja`` directly under ``path`` inside the sdist ``archive``
    (whose members sit under one top folder, ``pkg-version/``)."""
    want = path.strip("/") + "/"
    out: dict[str, str] = {}
    with tarfile.open(archive, "r:*") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(SUFFIX):
                continue
            _, _, inner = member.name.partition("/")
            if not inner.startswith(want) or "/" in inner[len(want) :]:
                continue
            if member.size > MAX_TEMPLATE_BYTES:
                raise CorpusError(f"{archive.name}: {member.name} is {member.size} bytes, not a chat template")
            f = tar.extractfile(member)
            if f is None:
                continue
            out[Path(inner).name[: -len(SUFFIX)]] = f.read().decode("utf-8")
    return out


def _cached(package: str, version: str, path: str) -> dict[str, str] | None:
    manifest = _manifest_path(package, version, path)
    if not manifest.is_file():
        return None
    names = json.loads(manifest.read_text(encoding="utf-8"))["templates"]
    out = {}
    for name, sha in names.items():
        blob = _blob(sha)
        if not blob.is_file():
            return None
        text = blob.read_bytes().decode("utf-8")  # bytes: a template's CR LF stays as it is
        if hashlib.sha256(text.encode("utf-8")).hexdigest() != sha:
            return None  # a damaged blob: fetch again
        out[name] = text
    return out


def _store(package: str, version: str, path: str, templates: dict[str, str]) -> None:
    names = {}
    for name, text in templates.items():
        sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
        blob = _blob(sha)
        if not blob.is_file():
            atomic.write_text(blob, text)
        names[name] = sha
    atomic.write_json(
        _manifest_path(package, version, path),
        {"package": package, "version": version, "path": path, "templates": names},
    )


def load(package: str, version: str, path: str, *, offline: bool = False) -> Corpus:
    """The corpus of ``package==version`` under ``path``: from the cache, else from its sdist."""
    templates = _cached(package, version, path)
    if templates is None:
        from matrix.env import builds

        archive = builds.cached_sdist(package, version)
        if archive is None:
            if offline:
                raise CorpusError(f"{package}=={version}'s source distribution is not cached and the run is offline")
            try:
                archive = builds.sdist(package, version)
            except builds.BuildError as exc:
                raise CorpusError(str(exc)) from None
        templates = read_tar(archive, path)
        if not templates:
            raise CorpusError(f"{archive.name} has no *{SUFFIX} under {path}")
        _store(package, version, path, templates)
    return Corpus(package, version, path, templates)


def select(corpus: Corpus, names: tuple[str, ...] | None) -> Corpus:
    """The corpus narrowed to ``names`` (None: all of it); an unknown name is an error naming it."""
    if names is None:
        return corpus
    missing = [n for n in names if n not in corpus.templates]
    if missing:
        raise CorpusError(
            f"{corpus.package}=={corpus.version} has no template {missing[0]!r} under {corpus.path} "
            f"(it has {len(corpus.templates)}, e.g. {', '.join(sorted(corpus.templates)[:5])})"
        )
    return Corpus(corpus.package, corpus.version, corpus.path, {n: corpus.templates[n] for n in names})
