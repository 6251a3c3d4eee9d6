"""Time-to-fix: how long a problem was out in a release, how long until we saw it, how long until
its issue closed; per project, the median and the 90th percentile, and how many are still open.

Per finding (:class:`Timeline`), from the store:

- the bad release: the first bad version's upload time (a regression's bisected ``first_bad``;
  a difference has no bisected start, so its oldest version seen failing stands in, basis
  ``earliest-seen``: the true exposure is at least that long);
- the fix release: ``fixed_in``'s upload time (the first fixed release where a fixed-in
  bisection found it, else the version the store saw passing);
- detected (the ``detected`` event, else ``first_seen``), filed and closed (the issue's times).

Derived, in days: exposure window = fix release - bad release; detection delay = detected - bad
release; time to close = closed - filed. The statistics (:func:`median`, :func:`p90`) are exact:
the median of an even count is the mean of the two middle values, p90 is the nearest-rank
percentile (the smallest value with at least 90% of the values at or below it).

Pure core: :func:`timelines`, :func:`summarize`, :func:`release_events`. Shell: :func:`collect`
(reads the store, upload times from its ``releases`` table and, for versions outside the version
sets, the package index), :func:`record` (writes ``released``/``fix-released`` events so the JSON
export carries them), :func:`cmd_ttf` (``llmcompat ttf``: a table in 80 columns, or ``--json``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from packaging.version import InvalidVersion, Version

__all__ = [
    "ProjectStats",
    "Stat",
    "Timeline",
    "collect",
    "median",
    "p90",
    "record",
    "release_events",
    "summarize",
    "timelines",
]

DAY = 86400.0


def parse_time(text: str | None) -> datetime | None:
    """An ISO time (``Z`` or an offset; naive means UTC), None for none or garbage."""
    if not text:
        return None
    try:
        t = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _days(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    return (b - a).total_seconds() / DAY


def _iso(t: datetime | None) -> str | None:
    return t.isoformat() if t else None


@dataclass(frozen=True)
class Timeline:
    """One finding's time-to-fix facts (times are timezone-aware, None when unknown)."""

    fingerprint: str
    project: str
    component: str
    kind: str
    status: str
    bad_version: str | None = None
    bad_released: datetime | None = None
    bad_basis: str = ""
    """``first-bad`` (bisected) or ``earliest-seen`` (a difference's oldest failing version)."""
    fixed_version: str | None = None
    fix_released: datetime | None = None
    detected: datetime | None = None
    filed: datetime | None = None
    closed: datetime | None = None

    @property
    def exposure_days(self) -> float | None:
        return _days(self.bad_released, self.fix_released)

    @property
    def detection_delay_days(self) -> float | None:
        return _days(self.bad_released, self.detected)

    @property
    def time_to_close_days(self) -> float | None:
        return _days(self.filed, self.closed)

    @property
    def open(self) -> bool:
        """Still open: the finding is not fixed, or its issue is filed and not closed."""
        return self.status != "fixed" or (self.filed is not None and self.closed is None)

    def as_dict(self) -> dict:
        d = {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in asdict(self).items()}
        d.update(
            exposure_days=self.exposure_days,
            detection_delay_days=self.detection_delay_days,
            time_to_close_days=self.time_to_close_days,
            open=self.open,
        )
        return d


def _get(obj, name: str, default=None):
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _vkey(v: str):
    try:
        return (0, Version(v))
    except InvalidVersion:
        return (1, Version("0"))


UploadTime = Callable[[str, str], "str | datetime | None"]
"""(package, version) -> the release's upload time."""


def timeline(
    finding,
    *,
    package: str,
    project: str,
    upload_time: UploadTime,
    events: Mapping[str, Mapping] | None = None,
    issue: Mapping | None = None,
) -> Timeline:
    """One finding's :class:`Timeline`. ``events``: event name -> its ``ttf_events`` row;
    ``issue``: its first filed issue (``created``, ``closed``), if any."""
    events = dict(events or {})
    bad, basis = _get(finding, "first_bad"), "first-bad"
    if not bad:
        seen = sorted(_get(finding, "versions") or (), key=_vkey)
        bad, basis = (seen[0], "earliest-seen") if seen else (None, "")
    fixed = _get(finding, "fixed_in") or None

    def released(version: str | None) -> datetime | None:
        t = upload_time(package, version) if version else None
        return t if isinstance(t, datetime) else parse_time(t)

    detected = parse_time((events.get("detected") or {}).get("time")) or parse_time(_get(finding, "first_seen"))
    filed = parse_time((issue or {}).get("created")) or parse_time((events.get("filed") or {}).get("time"))
    closed = parse_time((issue or {}).get("closed")) or parse_time((events.get("closed") or {}).get("time"))
    return Timeline(
        fingerprint=_get(finding, "fingerprint"),
        project=project,
        component=_get(finding, "component"),
        kind=_get(finding, "kind") or "regression",
        status=_get(finding, "status") or "open",
        bad_version=bad,
        bad_released=released(bad),
        bad_basis=basis,
        fixed_version=fixed,
        fix_released=released(fixed),
        detected=detected,
        filed=filed,
        closed=closed,
    )


def timelines(
    findings: Iterable,
    *,
    upload_time: UploadTime,
    events: Iterable[Mapping] = (),
    issues: Iterable[Mapping] = (),
    packages: Mapping[str, str] | None = None,
    projects: Mapping[str, str] | None = None,
) -> list[Timeline]:
    """Every finding's :class:`Timeline`. ``packages``/``projects``: component -> its primary
    package / its project (``owner/name``); both default to the component's name."""
    packages, projects = dict(packages or {}), dict(projects or {})
    by_fp: dict[str, dict[str, Mapping]] = {}
    for e in events:
        by_fp.setdefault(e["fingerprint"], {})[e["event"]] = e
    first_issue: dict[str, Mapping] = {}
    for i in sorted(issues, key=lambda i: str(i.get("created") or "")):
        first_issue.setdefault(i["fingerprint"], i)
    out = []
    for f in findings:
        comp, fp = _get(f, "component"), _get(f, "fingerprint")
        out.append(
            timeline(
                f,
                package=packages.get(comp, comp),
                project=projects.get(comp, comp),
                upload_time=upload_time,
                events=by_fp.get(fp, {}),
                issue=first_issue.get(fp),
            )
        )
    return out


def median(values: Iterable[float]) -> float | None:
    """The median (mean of the two middle values for an even count); None for no values."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        return None
    mid = n // 2
    return xs[mid] if n % 2 else (xs[mid - 1] + xs[mid]) / 2


def p90(values: Iterable[float]) -> float | None:
    """Nearest-rank 90th percentile: the ceil(0.9 n)-th smallest value; None for no values."""
    xs = sorted(values)
    if not xs:
        return None
    return xs[max(1, math.ceil(0.9 * len(xs))) - 1]


@dataclass(frozen=True)
class Stat:
    """Median and p90 of one duration over the findings that have it (``n`` of them), in days."""

    n: int
    median: float | None
    p90: float | None

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Stat:
        xs = [v for v in values if v is not None]
        return cls(len(xs), median(xs), p90(xs))


@dataclass(frozen=True)
class ProjectStats:
    project: str
    findings: int
    open: int
    exposure: Stat
    detection: Stat
    close: Stat

    def as_dict(self) -> dict:
        return asdict(self)


def summarize(lines: Iterable[Timeline]) -> list[ProjectStats]:
    """Per project (sorted by name): findings, still open, and the three durations' statistics."""
    groups: dict[str, list[Timeline]] = {}
    for t in lines:
        groups.setdefault(t.project, []).append(t)
    return [
        ProjectStats(
            p,
            len(ts),
            sum(t.open for t in ts),
            Stat.of(t.exposure_days for t in ts),
            Stat.of(t.detection_delay_days for t in ts),
            Stat.of(t.time_to_close_days for t in ts),
        )
        for p, ts in sorted(groups.items())
    ]


def release_events(t: Timeline) -> list[dict]:
    """The store events a timeline adds: ``released`` (the bad release's upload) and
    ``fix-released`` (the fix release's upload), each with its version, when known."""
    out = []
    if t.bad_released is not None:
        out.append({"event": "released", "time": _iso(t.bad_released), "version": t.bad_version})
    if t.fix_released is not None:
        out.append({"event": "fix-released", "time": _iso(t.fix_released), "version": t.fixed_version})
    return out


# ------------------------------------------------------------------------------------ shell


def _components(matrix) -> tuple[dict[str, str], dict[str, str]]:
    packages, projects = {}, {}
    if matrix is not None:
        for comps in matrix.axes.values():
            for c in comps:
                packages[c.name] = c.primary
                projects[c.name] = c.repo or c.name
    return packages, projects


def store_upload_time(store, index=None) -> UploadTime:
    """Upload times from the store's ``releases`` table, else from the package index (cached)."""
    cache: dict[str, dict[str, datetime | None]] = {}

    def lookup(package: str, version: str):
        t = store.release_time(package, version)
        if t or index is None:
            return t
        if package not in cache:
            try:
                cache[package] = {r.version: r.upload_time for r in index.releases(package)}
            except Exception:  # noqa: BLE001 - an index that cannot answer leaves the time unknown
                cache[package] = {}
        return cache[package].get(version)

    return lookup


def collect(store, matrix=None, index=None) -> list[Timeline]:
    """Every finding's timeline from the store (and the index for versions it has no time for)."""
    packages, projects = _components(matrix)
    return timelines(
        store.findings(),
        upload_time=store_upload_time(store, index),
        events=store.ttf_events(),
        issues=store.issues(),
        packages=packages,
        projects=projects,
    )


def record(store, matrix=None, index=None) -> list[Timeline]:
    """Collect the timelines and store their release events (the first of each kind is kept),
    so the JSON export (``ttf_events``) carries every finding's dates."""
    lines = collect(store, matrix, index)
    for t in lines:
        for e in release_events(t):
            store.add_ttf_event(t.fingerprint, e["event"], e["time"], e["version"])
    return lines


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.0f}d" if abs(v) >= 10 else f"{v:.1f}d"


def _pair(s: Stat) -> str:
    return "-" if not s.n else f"{_fmt(s.median)}/{_fmt(s.p90)}"


def render_table(stats: list[ProjectStats], console) -> None:
    """The per-project table (readable in 80 columns): durations as median/p90 in days."""
    from rich import box
    from rich.table import Table

    table = Table(title="time to fix (median/p90, days)", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("project", overflow="fold", max_width=30)
    for name in ("found", "open", "exposure", "detection", "to close"):
        table.add_column(name, justify="right", no_wrap=True)
    for s in stats:
        table.add_row(s.project, str(s.findings), str(s.open), _pair(s.exposure), _pair(s.detection), _pair(s.close))
    console.print(table)


def cmd_ttf(args) -> int:
    """``llmcompat ttf [--json] [--offline]``: the time-to-fix table of the store's findings."""
    import json

    from matrix import paths
    from reports.store import Store

    path = paths.store_path()
    if not path.is_file():
        print(f"llmcompat ttf: error: no store at {path} (run the matrix first)")
        return 2
    from matrix.declare import loader
    from matrix.releases.index import PackageIndex

    matrix = loader.load(args.axes) if getattr(args, "axes", None) else loader.load_default()
    index = PackageIndex(paths.cache_dir() / "index", offline=getattr(args, "offline", False))
    with Store(path, readonly=True) as store:
        lines = collect(store, matrix, index)
    stats = summarize(lines)
    if getattr(args, "json", False):
        print(
            json.dumps(
                {"findings": [t.as_dict() for t in lines], "projects": [s.as_dict() for s in stats]},
                indent=1,
                sort_keys=True,
            )
        )
        return 0
    from rich.console import Console

    console = Console(width=min(Console().width, 100))
    render_table(stats, console)
    console.print(
        f"{len(lines)} finding(s); exposure = fix release - bad release, detection = detected - bad "
        "release, to close = issue closed - filed",
        markup=False,
    )
    return 0
