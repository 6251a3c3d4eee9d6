"""A cell's Dockerfile, decided from plain data: its layers, its labels, the rendered text.

Pure: no Docker, no files but the Jinja2 templates beside this module. The layers split the
cell's lock so the heavy part is shared by every cell that has it in common:

1. the engine's own dependencies that no other component of the cell needs (torch and its kin);
2. the engine's packages themselves (a new engine release leaves layer 1 as it was);
3. everything else in the lock (tokenizer, template renderer, client and what they share).

Each layer installs exact pins with ``--no-deps``, as :func:`matrix.env.uv.ensure` does on the
host, so the image's environment holds the same distributions as the cell's uv environment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from packaging.utils import canonicalize_name

TEMPLATES = Path(__file__).resolve().parent / "dockerfiles"
LABEL_PREFIX = "io.llmcompat"
TAG_REPO = "llmcompat-cell"
FORMAT = 1
"""Version of the image layout; part of every tag, so a layout change builds afresh."""

FAMILIES = {"vllm": "vllm", "sglang": "sglang", "ollama": "ollama", "llama-cpp-python": "llama-cpp"}
"""Engine component -> family (its template extras and, on GPU, its vendor image); others: python."""


@dataclass(frozen=True)
class Layer:
    """One install step: exact pins, and the directory (in the build context) of local wheels."""

    name: str
    pins: tuple[str, ...]
    wheels: str = ""
    only_binary: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImageSpec:
    """Everything a cell's Dockerfile is rendered from."""

    cell_id: str
    key: str
    runner: str
    family: str
    base: str
    python: str
    """The interpreter ``uv venv`` gets: a path in the base (CPU) or a version (GPU)."""
    gpu: bool
    layers: tuple[Layer, ...]
    labels: tuple[tuple[str, str], ...]
    vendor: bool = False
    """The base is the engine vendor's image (its packages stay visible to the cell)."""
    family_files: tuple[tuple[str, str], ...] = field(default=())
    """(path in the build context, path in the image) of family artifacts (``llama-server``)."""

    @property
    def template(self) -> str:
        return "gpu.Dockerfile.j2" if self.gpu else "cpu.Dockerfile.j2"


def family_of(engine_component: str) -> str:
    return FAMILIES.get(engine_component, "python")


def image_tag(key: str) -> str:
    """The image of a cell key: one tag per key (and layout format), so an existing tag is a hit."""
    return f"{TAG_REPO}:{key[:48]}-f{FORMAT}"


def closure(roots: set[str], graph: dict[str, set[str]]) -> set[str]:
    """Every package reachable from ``roots`` in ``graph`` (package -> what it requires)."""
    seen: set[str] = set()
    todo: list[str] = [canonicalize_name(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(graph.get(name, ()))
    return seen


def split_layers(
    pins: dict[str, str],
    graph: dict[str, set[str]],
    engine_roots: set[str],
    other_roots: set[str],
    engine_packages: set[str] | None = None,
) -> list[tuple[str, list[str]]]:
    """The lock's packages in three groups: engine-only dependencies, the engine, the rest.

    ``graph`` maps a package to its requirements (from the resolver's annotations);
    ``engine_roots`` are the engine component's packages and fixed requirements (transformers'
    torch), ``engine_packages`` the packages whose version is the engine's (default: all roots).
    The fixed requirements go with the dependencies, so a new engine release leaves that heavy
    layer as it was. A package needed by another component as well goes to the rest, so it cannot
    make the engine layers differ between cells that share the engine.
    """
    roots = set(pins) & {canonicalize_name(r) for r in engine_roots}
    engine = set(pins) & {canonicalize_name(r) for r in (engine_packages or engine_roots)}
    others = closure(other_roots, graph)
    deps = (closure(roots, graph) - engine - others) & set(pins)
    rest = set(pins) - deps - engine
    groups = [("engine dependencies", deps), ("engine", engine), ("cell", rest)]
    return [(name, sorted(group)) for name, group in groups if group]


def parse_annotated(text: str) -> tuple[dict[str, str], dict[str, set[str]]]:
    """``uv pip compile`` output with ``# via`` annotations -> (pins, package -> requirements)."""
    pins: dict[str, str] = {}
    required_by: dict[str, set[str]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==(\S+)", line)
        if m:
            current = str(canonicalize_name(m.group(1)))
            pins[current] = m.group(3)
            required_by.setdefault(current, set())
            continue
        via = re.match(r"^\s+#\s+(?:via\s+)?([A-Za-z0-9][A-Za-z0-9._-]*)\s*$", line)
        if via and current and via.group(1) != "via":
            required_by[current].add(str(canonicalize_name(via.group(1))))
    graph: dict[str, set[str]] = {name: set() for name in pins}
    for dep, parents in required_by.items():
        for parent in parents:
            if parent in graph:
                graph[parent].add(dep)
    return pins, graph


def labels(
    cell_id: str,
    key: str,
    runner: str,
    family: str,
    versions: dict[str, str],
    *,
    base: str,
    python: str,
    uv: str,
    harness: str,
    suite: str,
) -> tuple[tuple[str, str], ...]:
    """OCI annotations plus the cell's key and every version in its lock."""
    out = [
        ("org.opencontainers.image.title", f"llmcompat cell {cell_id}"),
        ("org.opencontainers.image.description", "A dependency-matrix cell of llmcompat: its lock, probe and suites"),
        ("org.opencontainers.image.version", key),
        ("org.opencontainers.image.base.name", base),
        (f"{LABEL_PREFIX}.cell", cell_id),
        (f"{LABEL_PREFIX}.key", key),
        (f"{LABEL_PREFIX}.runner", runner),
        (f"{LABEL_PREFIX}.family", family),
        (f"{LABEL_PREFIX}.python", python),
        (f"{LABEL_PREFIX}.uv", uv),
        (f"{LABEL_PREFIX}.harness", harness),
        (f"{LABEL_PREFIX}.suite", suite),
    ]
    out += [(f"{LABEL_PREFIX}.version.{name}", version) for name, version in sorted(versions.items())]
    return tuple(out)


def render(spec: ImageSpec) -> str:
    """The Dockerfile text of ``spec`` (Jinja2, strict: a missing variable is an error)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )  # a Dockerfile, not HTML
    text = env.get_template(spec.template).render(
        cell_id=spec.cell_id,
        template=spec.template,
        base=spec.base,
        python=spec.python,
        layers=spec.layers,
        family=spec.family,
        family_files=spec.family_files,
        labels=spec.labels,
        vendor=spec.vendor,
    )
    return re.sub(r"\n{3,}", "\n\n", text)
