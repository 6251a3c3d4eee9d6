"""Pure version selection: which published releases make a component's version set.

No I/O here: :mod:`matrix.releases.index` discovers :class:`Release` records from the package index,
this module orders and selects them according to a :class:`~matrix.declare.config.VersionRule`.
Errors are plain :class:`ValueError` subclasses that carry their data; the caller (the loader
or the planner) turns them into :class:`~matrix.errors.ConfigError` pointing at the YAML field.

Ordering always follows PEP 440 via :class:`packaging.version.Version`; strings that are not
valid PEP 440 versions (some very old releases) are dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from matrix.declare.config import VersionRule

PER_GROUPS: tuple[str, ...] = ("release", "minor", "major")
"""Valid values of :attr:`VersionRule.per`."""

NEARBY = 3
"""How many known releases on each side of an unknown explicit version are reported."""


@dataclass(frozen=True)
class Release:
    """One published version of a project, merged over all its files on all configured sources.

    ``upload_time`` is the earliest upload of any of its files (timezone-aware UTC), ``None``
    where no source says (PEP 503 HTML pages, find-links directories). ``yanked`` is true only
    when every file is yanked (PEP 592). ``requires_python`` is the files' ``Requires-Python``.
    """

    version: str
    upload_time: datetime | None = None
    yanked: bool = False
    requires_python: str | None = None


class UnknownVersion(ValueError):
    """An explicit version that is not a published release; names the nearest known ones."""

    def __init__(self, version: str, known_nearby: Sequence[str]):
        self.version = version
        self.known_nearby = tuple(known_nearby)
        nearby = ", ".join(self.known_nearby) if self.known_nearby else "no releases known"
        super().__init__(f"version {version!r} is not a published release (nearby: {nearby})")


class EmptyVersionSet(ValueError):
    """A rule that selects nothing; the message states the rule and why releases were dropped."""

    def __init__(self, rule: VersionRule, python: str, total: int, dropped: dict[str, int]):
        self.rule = rule
        self.python = python
        self.total = total
        self.dropped = dict(dropped)
        why = ", ".join(f"{n} {reason}" for reason, n in self.dropped.items() if n)
        of = f"of {total} release{'s' if total != 1 else ''}" + (f": {why}" if why else "")
        super().__init__(f"no release matches the version rule ({describe_rule(rule)}; Python {python}) ({of})")


class InvalidRule(ValueError):
    """A rule field that cannot be used (bad ``per``, ``latest`` < 1, unparsable ``floor``)."""

    def __init__(self, field: str, value: object, message: str):
        self.field = field
        self.value = value
        self.message = message
        super().__init__(f"{field}: {value!r}: {message}")


def describe_rule(rule: VersionRule) -> str:
    """A short human statement of ``rule``, e.g. ``latest 3 per minor, >=4.40, <5, no pre-releases``."""
    if rule.explicit is not None:
        return "explicit " + (", ".join(rule.explicit) if rule.explicit else "(empty list)")
    parts = [f"latest {rule.latest} per {rule.per}" if rule.latest is not None else f"every {rule.per}"]
    if rule.floor is not None:
        parts.append(f">={rule.floor}")
    if rule.below is not None:
        parts.append(f"<{rule.below}")
    parts.append("pre-releases allowed" if rule.prereleases else "no pre-releases")
    return ", ".join(parts)


def _parse(version: str) -> Version | None:
    try:
        return Version(version)
    except (InvalidVersion, TypeError):
        return None


def order(releases: Iterable[Release]) -> list[Release]:
    """``releases`` ascending by PEP 440 version; invalid versions are dropped (stable for ties)."""
    parsed = [(v, r) for r in releases if (v := _parse(r.version)) is not None]
    parsed.sort(key=lambda pair: pair[0])
    return [r for _, r in parsed]


def _ordered_strings(versions: Iterable[str]) -> list[tuple[Version, str]]:
    parsed = [(v, s) for s in versions if (v := _parse(s)) is not None]
    parsed.sort(key=lambda pair: pair[0])
    return parsed


def _nearby(known: list[tuple[Version, Release]], wanted: str) -> list[str]:
    """Up to :data:`NEARBY` known versions either side of ``wanted`` (the newest ones if invalid)."""
    target = _parse(wanted)
    if target is None:
        return [r.version for _, r in known[-2 * NEARBY :]]
    below = [r.version for v, r in known if v < target][-NEARBY:]
    above = [r.version for v, r in known if v > target][:NEARBY]
    return below + above


def _select_explicit(known: list[tuple[Version, Release]], wanted: tuple[str, ...], rule: VersionRule) -> list[str]:
    if not wanted:
        raise EmptyVersionSet(rule, "any", len(known), {})
    by_version: dict[Version, Release] = {}
    for v, r in known:
        by_version.setdefault(v, r)
    chosen: dict[Version, str] = {}
    for s in wanted:
        parsed = _parse(str(s))
        if parsed is None or parsed not in by_version:
            raise UnknownVersion(str(s), _nearby(known, str(s)))
        chosen[parsed] = by_version[parsed].version
    return [chosen[v] for v in sorted(chosen)]


def _bound(field: str, value: str | None, op: str) -> SpecifierSet | None:
    if value is None:
        return None
    if _parse(str(value)) is None:
        raise InvalidRule(field, value, "not a PEP 440 version")
    try:
        return SpecifierSet(f"{op}{value}")
    except InvalidSpecifier as exc:  # pragma: no cover - a valid Version always makes a valid specifier
        raise InvalidRule(field, value, str(exc)) from exc


def _python_ok(requires_python: str | None, python: Version) -> bool:
    """Whether ``python`` satisfies ``requires_python``; unparsable metadata counts as satisfied."""
    if not requires_python or not requires_python.strip():
        return True
    try:
        spec = SpecifierSet(requires_python)
    except InvalidSpecifier:
        return True
    return spec.contains(python, prereleases=True)


def _group_key(v: Version, per: str) -> tuple:
    if per == "major":
        return (v.major,)
    if per == "minor":
        return (v.major, v.minor)
    # "release": each release is its own group, except that post-releases (and local builds)
    # collapse onto the release they amend, so 1.0.post1 supersedes 1.0.
    release = list(v.release)
    while len(release) > 1 and release[-1] == 0:
        release.pop()
    return (tuple(release), v.pre, None if v.post is not None else v.dev)


def select(releases: Iterable[Release], rule: VersionRule, python: str = "3.11") -> list[str]:
    """The versions ``rule`` selects from ``releases``, ascending, as published.

    Explicit: every listed version must be a release (yanked ones allowed, Requires-Python not
    checked); ``4.40`` matches a release published as ``4.40.0``, and the published string is
    returned. Otherwise raises :class:`UnknownVersion`.

    Rule: drop yanked releases, releases whose Requires-Python excludes ``python``, pre/dev
    releases unless ``prereleases``, releases outside ``>=floor`` / ``<below`` (PEP 440
    specifier semantics: ``<5`` excludes ``5.0rc1``) and local builds (``2.0+cpu``) when the public
    release exists; group by ``per`` (``release``: each, post-releases superseding the release
    they amend; ``minor``: (major, minor); ``major``) keeping the newest of each group; keep the
    newest ``latest`` groups (all when ``latest`` is None). Raises :class:`EmptyVersionSet` when
    nothing is left and :class:`InvalidRule` for unusable rule fields.
    """
    known = [(v, r) for r in releases if (v := _parse(r.version)) is not None]
    known.sort(key=lambda pair: pair[0])
    if rule.explicit is not None:
        return _select_explicit(known, tuple(rule.explicit), rule)

    if rule.per not in PER_GROUPS:
        raise InvalidRule("per", rule.per, f"must be one of {', '.join(PER_GROUPS)}")
    if rule.latest is not None and (
        not isinstance(rule.latest, int) or isinstance(rule.latest, bool) or rule.latest < 1
    ):
        raise InvalidRule("latest", rule.latest, "must be a positive integer")
    py = _parse(str(python))
    if py is None:
        raise InvalidRule("python", python, "not a Python version")
    floor = _bound("floor", rule.floor, ">=")
    below = _bound("below", rule.below, "<")

    dropped = {"yanked": 0, "pre-release": 0, "require another Python": 0, "below floor": 0, "not below the bound": 0}
    eligible: list[tuple[Version, Release]] = []
    for v, r in known:
        if r.yanked:
            dropped["yanked"] += 1
        elif v.is_prerelease and not rule.prereleases:
            dropped["pre-release"] += 1
        elif not _python_ok(r.requires_python, py):
            dropped["require another Python"] += 1
        elif floor is not None and not floor.contains(v, prereleases=True):
            dropped["below floor"] += 1
        elif below is not None and not below.contains(v, prereleases=True):
            dropped["not below the bound"] += 1
        else:
            eligible.append((v, r))

    public = {v for v, _ in eligible if v.local is None}
    eligible = [(v, r) for v, r in eligible if v.local is None or Version(v.public) not in public]
    if not eligible:
        raise EmptyVersionSet(rule, str(python), len(known), dropped)

    newest: dict[tuple, tuple[Version, Release]] = {}
    for v, r in eligible:  # ascending, so the last one of each group wins
        newest[_group_key(v, rule.per)] = (v, r)
    best = sorted(newest.values(), key=lambda pair: pair[0])
    if rule.latest is not None:
        best = best[-rule.latest :]
    return [r.version for _, r in best]


def newer_than(selected: Iterable[str], seen: Iterable[str]) -> list[str]:
    """The versions in ``selected`` newer than every version in ``seen``, ascending.

    For one-axis sweeps: which releases appeared since the last run. With nothing (valid) seen,
    all of ``selected``. Invalid version strings are ignored on both sides.
    """
    seen_versions = [v for s in seen if (v := _parse(s)) is not None]
    newest_seen = max(seen_versions) if seen_versions else None
    return [s for v, s in _ordered_strings(selected) if newest_seen is None or v > newest_seen]


def previous(selected: Iterable[str], version: str) -> str | None:
    """The release just before ``version`` in ``selected`` (ordered by PEP 440), or None.

    ``version`` need not itself be in ``selected``: the newest release older than it is returned.
    """
    target = _parse(version)
    if target is None:
        return None
    older = [s for v, s in _ordered_strings(selected) if v < target]
    return older[-1] if older else None
