"""Plain data that describes what is tested: axes, components, runners, models, constraints.

Loaded from ``matrix/axes.yaml`` by :mod:`matrix.declare.loader`; every other module takes these
frozen dataclasses and never reads YAML itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from matrix.errors import ConfigError

AXES: tuple[str, ...] = ("engine", "tokenizer", "template", "client")
"""The four axes, in the order they appear in cell ids."""


@dataclass(frozen=True)
class VersionRule:
    """Which releases of a component's primary package make its version set.

    Either ``explicit`` (exact versions, kept in the given order) or a discovery rule:
    the newest ``latest`` releases (one per ``per`` group: ``release``, ``minor`` or
    ``major``), not older than ``floor``, older than ``below``, pre-releases only when
    ``prereleases`` is true. Yanked releases are never selected by a rule.
    """

    explicit: tuple[str, ...] | None = None
    latest: int | None = None
    floor: str | None = None
    below: str | None = None
    prereleases: bool = False
    per: str = "release"


@dataclass(frozen=True)
class Component:
    """One thing on an axis. Its version is the version of ``packages[0]`` (the primary)."""

    axis: str
    name: str
    packages: tuple[str, ...]
    versions: VersionRule
    extras: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    """Further fixed requirements installed with it (PEP 508 strings), e.g. ``accelerate``."""
    needs: frozenset[str] = frozenset({"cpu"})
    """What a runner must provide: cpu, gpu, docker, node, compile."""
    repo: str | None = None
    """Upstream GitHub repository ``owner/name``, for compare links and issues."""
    tag_format: str = "v{version}"
    default: bool = True
    """Part of the default local matrix; heavy components are opt-in (``default: false``)."""
    probe: tuple[tuple[str, tuple[str, ...]], ...] = ()
    """What the probe exercises through it, e.g. ``(("renderers", ("jinja2",)),)``."""
    ecosystem: str = "pypi"
    """Where its packages come from: ``pypi`` (installed into the cell's Python environment) or
    ``npm`` (one npm package, installed by :func:`matrix.releases.npm.ensure_package` and run by Node)
    or ``corpus`` (templates read out of the primary's source distribution, nothing installed)."""
    build: tuple[tuple[str, str], ...] = ()
    """Built from source once per version and these variables (``CMAKE_ARGS``...) by
    :mod:`matrix.env.builds`; empty for packages installed as published wheels."""
    build_server: bool = False
    """Also build llama.cpp's native ``llama-server`` from the same source distribution."""
    corpus_path: str | None = None
    """``ecosystem: corpus``: the folder inside the primary's sdist whose ``*.jinja`` are the corpus
    (a template source rendered in every cell, never a planning choice; ``matrix/env/template_corpus.py``)."""
    corpus_templates: tuple[str, ...] | None = None
    """The corpus narrowed to these template names; None: every template under ``corpus_path``."""
    upstream_issues: bool = False
    """The bot may file issues in ``repo`` (an explicit allowlist; else only the bot's own repository)."""

    def probe_roles(self, role: str) -> tuple[str, ...]:
        return dict(self.probe).get(role, ())

    @property
    def primary(self) -> str:
        return self.packages[0]

    def requirement(self, version: str) -> str:
        """The pinned PEP 508 requirement of the primary package at ``version``."""
        extras = f"[{','.join(self.extras)}]" if self.extras else ""
        return f"{self.primary}{extras}=={version}"


@dataclass(frozen=True)
class Runner:
    """Where cells run: GitHub Actions labels, what it provides, pins every cell on it gets."""

    name: str
    labels: tuple[str, ...]
    provides: frozenset[str]
    pins: tuple[str, ...] = ()
    """Overrides applied to every resolution on this runner, e.g. ``torch==2.13.0+cpu``."""
    python: str = "3.11"
    default: bool = True
    environment: str = "uv"
    """Where its cells run: ``uv`` (an environment on the runner) or ``image`` (a container image
    per cell, :mod:`matrix.env.image`)."""
    image: ImageConfig = field(default_factory=lambda: ImageConfig())


@dataclass(frozen=True)
class ImageConfig:
    """A runner's cell images: the base, vendor images per engine family, the container's limits."""

    base: str = "debootstrap:bookworm"
    """``debootstrap:SUITE`` (a minbase Debian with Python, built and imported here) or an image
    reference pinned by digest (``name:version@sha256:...``), e.g. a CUDA runtime image."""
    engines: tuple[tuple[str, str], ...] = ()
    """Engine family -> vendor image pinned by digest (vLLM's, SGLang's, Ollama's), used as base."""
    memory: str = "8g"
    pids: int = 4096
    seconds: int = 900


@dataclass(frozen=True)
class Model:
    """The model every cell names: the project's own tiny model, or a hub id for networked runners."""

    name: str
    kind: str  # "tiny" | "hub"
    arch: str | None = None
    hub_id: str | None = None
    needs: frozenset[str] = frozenset()
    default: bool = True


@dataclass(frozen=True)
class Condition:
    """Matches a component on one axis, optionally only at versions in ``specifier``."""

    axis: str
    component: str
    specifier: str = ""


@dataclass(frozen=True)
class Constraint:
    """A combination that must not be planned: every condition matching means excluded."""

    conditions: tuple[Condition, ...]
    reason: str


@dataclass(frozen=True)
class BotSettings:
    """The GitHub bot's settings (``bot:`` in axes.yaml)."""

    close_after: int = 3
    """Consecutive scheduled runs a release newer than first bad must pass before an issue is closed."""


@dataclass(frozen=True)
class Matrix:
    """The whole of ``axes.yaml``."""

    source: str
    axes: dict[str, tuple[Component, ...]]
    runners: tuple[Runner, ...]
    models: tuple[Model, ...]
    constraints: tuple[Constraint, ...] = ()
    reference: dict[str, str] = field(default_factory=dict)
    """Pinned versions of the reference path that produces goldens (package -> version)."""
    suite_version: str = "1"
    bot: BotSettings = field(default_factory=BotSettings)
    lines: dict[str, int] = field(default_factory=dict, compare=False)
    """Line of each field path in ``source`` (``axes.engine.transformers.versions``), for errors."""

    def error(self, field_path: str, value: object, message: str) -> ConfigError:
        """A :class:`ConfigError` pointing at ``field_path`` in this matrix's file."""
        line = self.lines.get(field_path)
        return ConfigError(self.source, field_path, value, message, line=line)

    def component(self, axis: str, name: str) -> Component:
        for c in self.axes.get(axis, ()):
            if c.name == name:
                return c
        raise KeyError(f"{axis}/{name}")
