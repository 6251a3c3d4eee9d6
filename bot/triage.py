"""Triage before filing: is a finding the component's own fault, or the matrix's configuration?

"transformers refuses jinja2 3.1.5" looks like an undeclared requirement until one reads
transformers' metadata: it declares ``jinja2>=3.1.6; extra == "chat-template"``, and the cell
installed transformers without that extra. Filing that upstream would be wrong; the matrix must
install the extra the probed feature needs (then the pair is ``unresolvable``, with the
resolver's reason). Only what the failing package's own metadata does not explain goes upstream.

Pure core: :func:`triage` over a finding and :class:`Facts` (the failing package's Requires-Dist
and Requires-Python, the extras the cell requested, the cell's exact pins), judged with
:mod:`packaging` (requirements, markers with ``extra``, specifiers). The shell
(:func:`facts_for`) reads the metadata from the cell environment's ``*.dist-info/METADATA``.

Verdicts:

- ``matrix-configuration``: the cell's Python is outside the package's Requires-Python; or the
  cell's install violates a requirement the package declares unconditionally or in an extra the
  cell requested; or the finding names a package the failing package declares in an extra the
  cell did not request, and the install violates that requirement. Not filed upstream.
- ``component-bug``: nothing in the metadata explains it (a requirement the package refuses at
  run time but never declares, or declares with a bound that the cell satisfies, is a bug too).
- ``undetermined``: no metadata, or an undeclared-requirement finding that names no package.
  Not filed upstream until it is determined.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from email.parser import Parser
from pathlib import Path

from packaging.markers import UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

__all__ = [
    "COMPONENT_BUG",
    "MATRIX_CONFIGURATION",
    "UNDETERMINED",
    "VERDICTS",
    "Facts",
    "PackageMeta",
    "Triage",
    "facts_for",
    "read_metadata",
    "triage",
    "triage_store",
]

COMPONENT_BUG = "component-bug"
MATRIX_CONFIGURATION = "matrix-configuration"
UNDETERMINED = "undetermined"
VERDICTS = (COMPONENT_BUG, MATRIX_CONFIGURATION, UNDETERMINED)

REQUIREMENT_KLASSES = frozenset({"undeclared-requirement"})
"""Failure classes that claim a requirement problem: without metadata naming the package they
stay undetermined."""

AGGREGATE_EXTRAS = frozenset(
    {"all", "dev", "dev-torch", "dev-tensorflow", "testing", "test", "tests", "docs", "quality", "benchmark"}
)
"""Extras that bundle other extras: named last when a requirement is declared in several."""


@dataclass(frozen=True)
class Triage:
    """The verdict on one finding: one of :data:`VERDICTS`, why (one line, for the page and the
    issue), and whether it may go upstream (only a component bug)."""

    verdict: str
    reason: str
    upstream_ok: bool

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"triage verdict {self.verdict!r} is not one of {', '.join(VERDICTS)}")


@dataclass(frozen=True)
class PackageMeta:
    """What a distribution's METADATA says about its requirements."""

    name: str
    version: str
    requires_dist: tuple[str, ...] = ()
    requires_python: str | None = None
    provides_extra: tuple[str, ...] = ()


@dataclass(frozen=True)
class Facts:
    """What triage needs of one finding's cell: the failing package's metadata, the extras the
    cell requested for it, the cell's exact pins (canonical name -> version) and Python."""

    package: PackageMeta | None
    requested_extras: frozenset[str] = frozenset()
    installed: Mapping[str, str] = field(default_factory=dict)
    python: str = "3.11"
    platform: Mapping[str, str] = field(default_factory=dict)
    """Marker variables beyond the Python version (default: CPython on Linux x86-64)."""


# ------------------------------------------------------------------------------------ pure core


def _get(finding, name: str, default=None):
    if isinstance(finding, Mapping):
        return finding.get(name, default)
    return getattr(finding, name, default)


def marker_env(python: str, platform: Mapping[str, str] | None = None) -> dict[str, str]:
    """The marker environment of a cell: its Python (``3.11`` -> full version ``3.11.0``) on
    CPython/Linux x86-64 unless ``platform`` says otherwise."""
    full = python if python.count(".") >= 2 else f"{python}.0"
    env = {
        "python_version": ".".join(python.split(".")[:2]),
        "python_full_version": full,
        "implementation_name": "cpython",
        "implementation_version": full,
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "platform_release": "",
        "platform_version": "",
        "extra": "",
    }
    env.update(platform or {})
    return env


def _applies(req: Requirement, env: dict, extra: str) -> bool:
    if req.marker is None:
        return extra == ""
    try:
        return req.marker.evaluate({**env, "extra": extra})
    except (UndefinedComparison, UndefinedEnvironmentName):
        return False


def _marker_extras(req: Requirement) -> set[str]:
    """Extras named in a marker (``extra == "chat-template"``), canonicalized as packaging does."""
    if req.marker is None:
        return set()
    return {canonicalize_name(m) for m in re.findall(r"extra\s*==\s*['\"]([^'\"]+)['\"]", str(req.marker))}


@dataclass(frozen=True)
class _Declared:
    req: Requirement
    extras: tuple[str, ...]
    """The extras that bring it; () for an unconditional requirement."""


def declared(meta: PackageMeta, env: dict) -> list[_Declared]:
    """Every requirement of ``meta`` that applies on ``env``: unconditional, or the extras that bring it."""
    out = []
    extras = sorted({canonicalize_name(e) for e in meta.provides_extra})
    for text in meta.requires_dist:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if _applies(req, env, ""):
            out.append(_Declared(req, ()))
            continue
        brought = [e for e in sorted(set(extras) | _marker_extras(req)) if _applies(req, env, e)]
        if brought:
            out.append(_Declared(req, tuple(brought)))
    return out


def _violation(req: Requirement, installed: Mapping[str, str]) -> str | None:
    """Why the install does not satisfy ``req`` ("not installed", "3.1.5"), None when it does."""
    have = installed.get(canonicalize_name(req.name))
    if have is None:
        return "not installed"
    if not req.specifier:
        return None
    try:
        ok = req.specifier.contains(Version(have), prereleases=True)
    except InvalidVersion:
        return None
    return None if ok else have


def named_in(text: str, name: str) -> bool:
    """Whether ``text`` names the distribution ``name`` (any of its -, _ and . spellings)."""
    canon = canonicalize_name(name)
    spellings = {name, canon, canon.replace("-", "_"), canon.replace("-", ".")}
    return any(re.search(rf"(?<![\w.-]){re.escape(s)}(?![\w-])", text, re.IGNORECASE) for s in spellings if s)


def _bare(req: Requirement) -> str:
    """``jinja2>=3.1.6`` of ``jinja2>=3.1.6; extra == "chat-template"`` (the marker said where)."""
    return f"{req.name}{'[' + ','.join(sorted(req.extras)) + ']' if req.extras else ''}{req.specifier}"


def _extras_text(extras: Iterable[str]) -> str:
    ranked = sorted(extras, key=lambda e: (e in AGGREGATE_EXTRAS, e))
    first, rest = ranked[0], ranked[1:]
    return f"its extra {first!r}" + (f" (also: {', '.join(rest)})" if rest else "")


def triage(finding, facts: Facts) -> Triage:
    """The verdict on ``finding`` (a :class:`matrix.outcome.Finding` or a mapping with its
    fields) given the metadata and install of the cell it failed in."""
    meta = facts.package
    klass = _get(finding, "klass") or ""
    detail = str(_get(finding, "detail") or "")
    if meta is None:
        return Triage(UNDETERMINED, "no metadata of the failing package: not triaged", False)
    who = f"{meta.name} {meta.version}"
    env = marker_env(facts.python, facts.platform)
    if meta.requires_python:
        try:
            if not SpecifierSet(meta.requires_python).contains(env["python_full_version"], prereleases=True):
                return Triage(
                    MATRIX_CONFIGURATION,
                    f"{who} requires Python {meta.requires_python}; the cell runs Python {facts.python}",
                    False,
                )
        except InvalidSpecifier:
            pass
    requested = {canonicalize_name(e) for e in facts.requested_extras}
    reqs = declared(meta, env)
    for d in reqs:
        if d.extras and not requested & set(d.extras):
            continue
        why = _violation(d.req, facts.installed)
        if why is not None:
            where = "requires" if not d.extras else f"requires (extra {min(requested & set(d.extras))!r})"
            return Triage(
                MATRIX_CONFIGURATION,
                f"{who} {where} {_bare(d.req)}; the cell has {d.req.name} {why}: the "
                "cell's install breaks the package's own metadata",
                False,
            )
    own = canonicalize_name(meta.name)
    implicated = [d for d in reqs if canonicalize_name(d.req.name) != own and named_in(detail, d.req.name)]
    for d in implicated:
        why = _violation(d.req, facts.installed)
        if d.extras and why is not None:
            name = canonicalize_name(d.req.name)
            extras = {
                e
                for o in implicated
                if canonicalize_name(o.req.name) == name and o.extras and _violation(o.req, facts.installed) is not None
                for e in o.extras
            }
            ranked = sorted(extras, key=lambda e: (e in AGGREGATE_EXTRAS, e))
            return Triage(
                MATRIX_CONFIGURATION,
                f"{who} declares {_bare(d.req)} in {_extras_text(extras)}; the cell "
                f"installed {meta.name} without it and has {d.req.name} {why}: install "
                f"{meta.name}[{ranked[0]}]",
                False,
            )
    if klass in REQUIREMENT_KLASSES:
        names = [n for n in facts.installed if n != own and named_in(detail, n)]
        if implicated:
            d = implicated[0]
            have = facts.installed.get(canonicalize_name(d.req.name), "not installed")
            where = "unconditionally" if not d.extras else f"in {_extras_text(d.extras)}"
            return Triage(
                COMPONENT_BUG,
                f"{who} declares {_bare(d.req)} {where} and the cell's {d.req.name} {have} "
                "satisfies it, yet it refuses it at run time: the declared bound is wrong",
                True,
            )
        if names:
            return Triage(
                COMPONENT_BUG,
                f"{who} refuses {names[0]} {facts.installed[names[0]]} at run time but "
                f"declares no requirement on {names[0]} (Requires-Dist): an undeclared requirement",
                True,
            )
        return Triage(
            UNDETERMINED, f"a requirement failure of {who} that names no installed package: not triaged", False
        )
    base = sum(1 for d in reqs if not d.extras)
    return Triage(
        COMPONENT_BUG,
        f"{who}'s metadata does not explain it: its {base} unconditional requirement(s) "
        f"hold in the cell and no requirement of an extra is involved",
        True,
    )


# ------------------------------------------------------------------------------------ shell


def read_metadata(text: str) -> PackageMeta:
    """A :class:`PackageMeta` from the text of a METADATA (or PKG-INFO) file."""
    msg = Parser().parsestr(text, headersonly=True)
    return PackageMeta(
        name=str(msg.get("Name", "")),
        version=str(msg.get("Version", "")),
        requires_dist=tuple(str(v) for v in msg.get_all("Requires-Dist") or ()),
        requires_python=(str(msg["Requires-Python"]) if msg.get("Requires-Python") else None),
        provides_extra=tuple(str(v) for v in msg.get_all("Provides-Extra") or ()),
    )


def env_metadata(env_path: Path, package: str) -> PackageMeta | None:
    """The installed ``package``'s METADATA in the environment at ``env_path`` (None when absent)."""
    want = canonicalize_name(package)
    for meta_file in sorted(Path(env_path).glob("lib/python*/site-packages/*.dist-info/METADATA")):
        stem = meta_file.parent.name[: -len(".dist-info")]
        if canonicalize_name(stem.rsplit("-", 1)[0]) == want:
            return read_metadata(meta_file.read_text(encoding="utf-8", errors="replace"))
    return None


def requested_extras(requirements: Iterable[str], package: str) -> frozenset[str]:
    """The extras ``requirements`` (PEP 508 strings, a cell's install) request for ``package``."""
    want = canonicalize_name(package)
    out: set[str] = set()
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement:
            continue
        if canonicalize_name(req.name) == want:
            out |= {canonicalize_name(e) for e in req.extras}
    return frozenset(out)


def _failing_package(finding, matrix) -> str:
    comp_name, axis = _get(finding, "component"), _get(finding, "axis")
    if matrix is not None:
        try:
            comp = matrix.component(axis, comp_name)
        except KeyError:
            comp = None
        if comp is not None and comp.ecosystem == "pypi":
            return comp.primary
    return str(comp_name)


def cell_requirements(cell_row: Mapping, matrix) -> list[str]:
    """The requirements the cell installed: recorded in its facts (``requirements``), else
    recomputed from the matrix (which may have changed since)."""
    import json

    facts = cell_row.get("facts") or {}
    if isinstance(facts, str):
        facts = json.loads(facts)
    if facts.get("requirements"):
        return list(facts["requirements"])
    if matrix is None:
        return []
    from matrix.cell.run import requirements
    from matrix.plan.cells import Cell

    try:
        return requirements(matrix, Cell.parse(cell_row["cell_id"]))
    except (KeyError, ValueError):
        return []


def facts_for(finding, cell_row: Mapping | None, matrix=None, *, env_root: Path | None = None) -> Facts:
    """The :class:`Facts` of ``finding`` in the cell ``cell_row`` (a store ``cells`` row: its lock and
    facts): the failing package's METADATA from the cell's environment (rebuilt from the lock when
    it is gone: uv caches make that cheap), the extras requested, the pins."""
    import json

    from matrix.env import uv as envs

    if cell_row is None:
        return Facts(None)
    lock_data = cell_row.get("lock") or {}
    if isinstance(lock_data, str):
        lock_data = json.loads(lock_data)
    pins: dict[str, str] = {canonicalize_name(k): v for k, v in (lock_data.get("pins") or {}).items()}
    python = lock_data.get("python") or "3.11"
    package = _failing_package(finding, matrix)
    version = pins.get(canonicalize_name(package))
    meta = None
    if version is not None:
        root = env_root or envs.envs_root()
        lock = envs.Lock(tuple(sorted(pins.items())), python)
        candidates = [root / lock.digest[:24]]
        for path in candidates:
            if (path / envs.MARKER).is_file():
                meta = env_metadata(path, package)
                if meta is not None:
                    break
        if meta is None:  # the one distribution, without its dependencies: its METADATA is all we read
            try:
                env = envs.ensure(envs.Lock(((canonicalize_name(package), version),), python), root)
                meta = env_metadata(env.path, package)
            except (envs.ResolveError, OSError):
                meta = None
    requested = requested_extras(cell_requirements(cell_row, matrix), package)
    if meta is not None and not _recorded(cell_row):
        requested = consistent_extras(meta, requested, pins, python)
    return Facts(meta, requested, pins, python)


def _recorded(cell_row: Mapping) -> bool:
    import json

    facts = cell_row.get("facts") or {}
    return bool((json.loads(facts) if isinstance(facts, str) else facts).get("requirements"))


def consistent_extras(meta: PackageMeta, extras: Iterable[str], pins: Mapping[str, str], python: str) -> frozenset[str]:
    """Of ``extras`` (today's matrix, for a cell that did not record what it asked for), those its
    lock can have been resolved with: an extra whose requirement the pins break was not requested
    (uv resolves requested extras with everything else)."""
    env = marker_env(python)
    broken = {e for d in declared(meta, env) if d.extras and _violation(d.req, pins) is not None for e in d.extras}
    return frozenset(e for e in extras if canonicalize_name(e) not in broken)


def triage_store(store, matrix=None, findings=None, *, env_root: Path | None = None) -> dict[str, Triage]:
    """Triage every open finding of ``store`` (or ``findings``) in its bad cell; the verdicts are
    saved on the findings (``triage``, ``triage_reason``)."""
    out: dict[str, Triage] = {}
    cells = {c["key"]: c for c in store.cells()}
    for f in findings if findings is not None else store.findings(status="open"):
        row = cells.get(_get(f, "bad_key") or "")
        out[_get(f, "fingerprint")] = triage(f, facts_for(f, row, matrix, env_root=env_root))
    store.set_triage({fp: (t.verdict, t.reason) for fp, t in out.items()})
    return out
