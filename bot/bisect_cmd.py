"""``llmcompat bisect``: bisect any package's releases with a check script, like ``git bisect run``.

The version list comes from the configured package index (:class:`matrix.releases.index.PackageIndex`),
filtered by a PEP 440 range (``>=20,<24``) or given explicitly (``20.0,21.3,22.0``), ordered by
:mod:`packaging`. Yanked releases inside a range are bisected like any other (an exact ``==`` pin
installs a yanked release, PEP 592) and marked ``yanked``; releases whose Requires-Python excludes
the environments' Python are left out and listed when they lie between the answers.

Each test resolves ``package==v`` plus the ``--with`` requirements with uv, builds (or reuses)
that environment and runs the check with the environment's interpreter first on ``PATH``
(``VIRTUAL_ENV`` set, ``LLMCOMPAT_BISECT_VERSION=v``), in its own process group, killed on
``--timeout`` and on SIGTERM/SIGINT (:mod:`bot.check`). Exit codes of the check follow git bisect:
0 good, 125 skip, 1..127 bad, 128 and above abort. Versions that cannot be installed are UNKNOWN
and searched around.

What is searched (:func:`answer`, pure over a test):

- by default the first bad release after a good one (introduced-in); ``--find-fix`` the first
  good release after a bad one (fixed-in). Both ends are always tested.
- a range whose ends both pass is searched for a bad release (``--bad``, or up to ``--samples``
  releases sampled coarse to fine), then for both transitions: introduced-in and fixed-in.
- a ``--bad`` inside the range is the search's bad end, and the newest release is tested too: if
  it passes, the fix is searched as well.
- a range bad at both ends is said to be so, with the way on; never a "first bad" that is only
  the oldest release tried.

Exit status: 0 found, 1 not found (the status says why and what to do next), 2 usage error,
3 aborted (a check exited 128 or more, timed out, or the command was interrupted).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from bot import links
from bot.check import (
    CHECK_TIMEOUT,
    BisectAborted,
    CheckInterrupted,
    check_command,
    killing_checks_on_signals,
    missing_script,
    run_check,
    verdict_of_run,
)
from bot.search import (
    BOTH_NEW,
    BOTH_OLD,
    FOUND,
    NEW_END_UNKNOWN,
    NO_OLD_FOUND,
    REVERSED,
    BisectResult,
    Direction,
    Transitions,
    Verdict,
    bisect,
    bisect_parallel,
    transitions,
)
from matrix import scratch
from matrix.env import uv as envs
from matrix.releases.versions import Release

EXIT_FOUND, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_ABORTED = 0, 1, 2, 3
SAMPLES = 8
"""Releases tested at most, by default, to find a bad one between two ends that pass."""
_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)


class BisectUsageError(ValueError):
    """Bad package name, range or check; unknown or swapped --good/--bad; too few versions."""


# ------------------------------------------------------------------------------------ versions


@dataclass(frozen=True)
class Selection:
    """The releases to bisect, ascending, with what is known about them."""

    versions: list[str]
    yanked: frozenset[str] = frozenset()
    excluded: dict[str, str] = field(default_factory=dict)
    """Releases inside the range left out, and why (Requires-Python), ascending."""

    def label(self, version: str | None) -> str:
        if version is None:
            return "-"
        return f"{version} (yanked)" if version in self.yanked else version

    def excluded_between(self, low: str | None, high: str | None) -> dict[str, str]:
        if low is None or high is None:
            return {}
        lo, hi = sorted((Version(low), Version(high)))
        return {v: why for v, why in self.excluded.items() if lo < Version(v) < hi}


def parse_versions_arg(text: str) -> list[str] | SpecifierSet:
    """``20.0,21.3`` (only versions) is an explicit list; anything else must be a PEP 440 range."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if parts:
        try:
            for p in parts:
                Version(p)
        except InvalidVersion:
            pass
        else:
            return parts
    try:
        return SpecifierSet(text)
    except InvalidSpecifier as exc:
        raise BisectUsageError(f"{text!r} is neither a PEP 440 range nor a list of versions: {exc}") from None


def select_versions(
    releases: Iterable[Release],
    versions_or_range: str | SpecifierSet | Sequence[str],
    *,
    python: str = "3.11",
) -> Selection:
    """The releases to bisect, ascending (PEP 440). A range keeps yanked releases (marked: an exact
    pin installs them), leaves out releases whose Requires-Python excludes ``python`` (listed in
    ``excluded``) and pre-releases unless the range names one (as :class:`SpecifierSet` does); an
    explicit list is taken as given (published strings kept)."""
    parsed = sorted(((v, r) for r in releases if (v := _version(r.version)) is not None), key=lambda p: p[0])
    yanked = frozenset(r.version for _, r in parsed if r.yanked)
    if isinstance(versions_or_range, str):
        versions_or_range = parse_versions_arg(versions_or_range)
    if not isinstance(versions_or_range, SpecifierSet):
        by_version = {v: r.version for v, r in parsed}
        chosen: dict[Version, str] = {}
        for s in versions_or_range:
            v = _version(str(s))
            if v is None:
                raise BisectUsageError(f"{s!r} is not a PEP 440 version")
            chosen[v] = by_version.get(v, str(s))
        return Selection([chosen[v] for v in sorted(chosen)], yanked & frozenset(chosen.values()))
    allowed = set(versions_or_range.filter([v for v, _ in parsed]))
    py = Version(python)
    kept, excluded = [], {}
    for v, r in parsed:
        if v not in allowed:
            continue
        if _python_ok(r.requires_python, py):
            kept.append(r.version)
        else:
            excluded[r.version] = f"requires Python {r.requires_python}, not {python}"
    return Selection(kept, yanked & frozenset(kept), excluded)


def _version(s: str) -> Version | None:
    try:
        return Version(s)
    except (InvalidVersion, TypeError):
        return None


def _python_ok(requires_python: str | None, python: Version) -> bool:
    if not requires_python or not requires_python.strip():
        return True
    try:
        return SpecifierSet(requires_python).contains(python, prereleases=True)
    except InvalidSpecifier:
        return True


def _index_of(versions: Sequence[str], wanted: str | None, what: str) -> int | None:
    if wanted is None:
        return None
    target = _version(wanted)
    for i, v in enumerate(versions):
        if v == wanted or (target is not None and _version(v) == target):
            return i
    raise BisectUsageError(f"--{what} {wanted} is not among the versions to bisect ({', '.join(versions)})")


def check_package_name(name: str) -> str:
    """A PEP 508 project name, or a usage error naming it."""
    if not _NAME.match(name):
        raise BisectUsageError(
            f"{name!r} is not a valid package name (letters, digits, '.', '_', '-'; "
            f"starting and ending with a letter or digit)"
        )
    return name


# ------------------------------------------------------------------------------------ the test


@dataclass
class Tested:
    """What happened when one version was tested: verdict, why, how long, the check's output tail."""

    version: str
    verdict: Verdict
    reason: str = ""
    seconds: float = 0.0
    output: str = ""


@dataclass
class PackageTest:
    """A bisection's test at one version of ``package``: resolve, ensure, run the check.

    ``resolve``/``ensure`` default to :func:`matrix.env.uv.resolve`/:func:`matrix.env.uv.ensure`
    (tests and callers may pass others). ``notes`` keeps what happened at each version.
    """

    package: str
    script: str
    extra_requirements: tuple[str, ...] = ()
    python: str = "3.11"
    env_root: Path | None = None
    timeout: float = CHECK_TIMEOUT
    cwd: Path | None = None
    resolve: Callable = envs.resolve
    ensure: Callable = envs.ensure
    notes: dict[str, Tested] = field(default_factory=dict)

    def __call__(self, version: str) -> Verdict:
        started = time.perf_counter()
        verdict, reason, output = self._test(version)
        self.notes[version] = Tested(version, verdict, reason, time.perf_counter() - started, output)
        return verdict

    def requirements(self, version: str) -> list[str]:
        return [f"{self.package}=={version}", *self.extra_requirements]

    def _test(self, version: str) -> tuple[Verdict, str, str]:
        reqs = self.requirements(version)
        try:
            lock = self.resolve(reqs, python=self.python)
        except envs.ResolveError as exc:
            return Verdict.UNKNOWN, f"resolution failed: {_first_line(exc.reason)}", str(exc.reason)[-2000:]
        if isinstance(lock, envs.Unresolvable):
            return Verdict.UNKNOWN, f"unresolvable: {_first_line(lock.reason, 'cause:')}", str(lock.reason)[-2000:]
        try:
            env = self.ensure(lock, self.env_root) if self.env_root else self.ensure(lock)
        except envs.ResolveError as exc:
            return Verdict.UNKNOWN, f"install failed: {_first_line(exc.reason)}", str(exc.reason)[-2000:]
        run = self.run_check(Path(env.python), version)
        verdict = verdict_of_run(run, version, self.timeout)
        return verdict, f"exit {run.code}", run.tail()

    def run_check(self, python: Path, version: str):
        venv = python.parent.parent
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX")}
        env["PATH"] = os.pathsep.join([str(python.parent), env.get("PATH", "")])
        env["VIRTUAL_ENV"] = str(venv)
        env["LLMCOMPAT_BISECT_VERSION"] = version
        env["LLMCOMPAT_BISECT_PACKAGE"] = self.package
        cmd = check_command(self.script)
        if cmd[0] == "python":
            cmd[0] = str(python)
        return run_check(cmd, env=env, timeout=self.timeout, cwd=self.cwd)


def _first_line(text: str, prefer: str = "") -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    if prefer:
        for ln in lines:
            if ln.startswith(prefer):
                return ln[len(prefer) :].strip()
    return lines[0] if lines else ""


# ------------------------------------------------------------------------------------ the answer (pure)


@dataclass
class Answer:
    """What one ``llmcompat bisect`` found, over a test; plain data for the text and JSON reports.

    ``status``: ``found`` (the transition asked for), ``found-both`` (the ends passed; a bad release
    between them, introduced-in and fixed-in), ``bad-at-both-ends``, ``good-at-both-ends``,
    ``found-part`` (a bad release between ends that pass, but only one transition found),
    ``reversed`` (the range holds the other transition), ``end-unknown``, ``no-good-found``,
    ``no-bad-found``, ``bad-passes`` (the ``--bad`` given passes)."""

    status: str
    direction: Direction
    versions: list[str]
    ends: tuple[str, str]
    introduced: BisectResult | None = None
    fixed: BisectResult | None = None
    bad: str | None = None
    """The bad release between two ends that pass (given or sampled)."""
    sampled: list[str] = field(default_factory=list)
    sample_limit: int = 0
    newest: tuple[str, Verdict] | None = None
    """The newest release, tested after a ``--bad`` inside the range."""
    probes: list[tuple[str, Verdict]] = field(default_factory=list)
    bound: int = 0

    @property
    def found(self) -> bool:
        """The transition asked for is known (with ``found-part``, the other one is not)."""
        asked = self.introduced if self.direction is Direction.INTRODUCED else self.fixed
        return self.status in ("found", "found-both") or (self.status == "found-part" and bool(asked and asked.found))


def plan_ends(
    versions: Sequence[str], direction: Direction, good: str | None, bad: str | None
) -> tuple[int, int, int | None]:
    """(old end, new end, a bad release inside) as indices; usage errors for unknown or swapped ends.

    Introduced-in: the old end is ``--good`` (default the oldest), the new end ``--bad`` (default
    the newest); a ``--bad`` before the newest is also returned as the bad release inside.
    Fixed-in: the old end is ``--bad`` (default the oldest), the new end ``--good`` (default newest).
    """
    n = len(versions)
    gi, bi = _index_of(versions, good, "good"), _index_of(versions, bad, "bad")
    if gi is not None and bi is not None and gi == bi:
        raise BisectUsageError(f"--good and --bad are the same version ({versions[gi]})")
    if direction is Direction.INTRODUCED:
        old, new = (0 if gi is None else gi), (n - 1 if bi is None else bi)
        if old >= new:
            raise BisectUsageError(
                f"--good {versions[old]} is not older than --bad {versions[new]}: a regression goes from a good "
                f"release to a newer bad one; to find the release that fixed it, add --find-fix"
            )
        return old, new, (bi if bi is not None and bi < n - 1 else None)
    old, new = (0 if bi is None else bi), (n - 1 if gi is None else gi)
    if old >= new:
        raise BisectUsageError(
            f"--bad {versions[old]} is not older than --good {versions[new]}: with --find-fix the fix goes from a "
            f"bad release to a newer good one; to find where it broke, leave out --find-fix"
        )
    return old, new, None


def answer(
    versions: Sequence[str],
    test: Callable[[str], Verdict],
    *,
    direction: Direction = Direction.INTRODUCED,
    good: str | None = None,
    bad: str | None = None,
    samples: int = SAMPLES,
    jobs: int = 1,
) -> Answer:
    """Search ``versions`` with ``test`` as the module docstring says. Each version is tested once."""
    old, new, inside = plan_ends(versions, direction, good, bad)
    memo: dict[str, Verdict] = {}
    order: list[tuple[str, Verdict]] = []

    def once(v: str) -> Verdict:
        if v not in memo:
            memo[v] = Verdict(test(v))
            order.append((v, memo[v]))
        return memo[v]

    out = Answer("", direction, list(versions), (versions[old], versions[new]), probes=order)
    first = _search(versions, once, old, new, direction, jobs)
    out.bound = first.bound
    if direction is Direction.INTRODUCED:
        out.introduced = first
    else:
        out.fixed = first
    both_good = BOTH_OLD if direction is Direction.INTRODUCED else BOTH_NEW
    both_bad = BOTH_NEW if direction is Direction.INTRODUCED else BOTH_OLD
    if first.found:
        out.status = "found"
        if inside is not None:  # --bad inside the range: is the newest release fixed?
            out.newest = (versions[-1], once(versions[-1]))
            out.bound += 1
            if out.newest[1] is Verdict.GOOD:
                out.fixed = bisect(versions, once, old=inside, new=len(versions) - 1, direction=Direction.FIXED)
                out.bound += out.fixed.bound - 2
                out.status = "found-both" if out.fixed.found else "found"
    elif first.status == both_good and bad is None:  # both ends pass: look for a bad release between
        tr: Transitions = transitions(versions, once, good=old, good_end=new, samples=samples)
        out.introduced, out.fixed, out.bad = tr.introduced, tr.fixed, tr.bad
        out.sampled, out.sample_limit, out.bound = tr.sampled, tr.sample_limit, tr.bound
        out.status = "found-both" if tr.found else "good-at-both-ends" if tr.bad is None else "found-part"
    elif first.status == both_good:
        out.status = "bad-passes"
    elif first.status == both_bad:
        out.status = "bad-at-both-ends"
    else:
        out.status = {
            REVERSED: "reversed",
            NEW_END_UNKNOWN: "end-unknown",
            NO_OLD_FOUND: "no-good-found" if direction is Direction.INTRODUCED else "no-bad-found",
            FOUND: "found",
        }.get(first.status, first.status)
    return out


def _search(versions, test, old, new, direction, jobs) -> BisectResult:
    if jobs <= 1:
        return bisect(list(versions), test, old=old, new=new, direction=direction)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=jobs) as pool:

        def test_many(batch: list[str]) -> dict[str, Verdict]:
            return dict(zip(batch, pool.map(test, batch)))

        return bisect_parallel(list(versions), test_many, jobs, old=old, new=new, direction=direction)


def default_index():
    from matrix.paths import cache_dir
    from matrix.releases.index import PackageIndex

    return PackageIndex(cache_dir() / "index")


def versions_to_bisect(package: str, versions_or_range, *, python: str = "3.11", index=None) -> Selection:
    index = index or default_index()
    selection = select_versions(index.releases(check_package_name(package)), versions_or_range, python=python)
    if len(selection.versions) < 2:
        raise BisectUsageError(
            f"{package} {versions_or_range}: {len(selection.versions)} version(s) to bisect, need 2 or more"
        )
    return selection


def run_bisection(
    versions: Sequence[str],
    test: Callable[[str], Verdict],
    *,
    good: str | None = None,
    bad: str | None = None,
    jobs: int = 1,
) -> BisectResult[str]:
    """Search introduced-in only, between ``good`` and ``bad`` (defaults: the oldest and newest),
    with ``jobs`` > 1 tests per round run concurrently (ceil(log_{jobs+1} n) rounds)."""
    old, new, _ = plan_ends(versions, Direction.INTRODUCED, good, bad)
    return _search(versions, test, old, new, Direction.INTRODUCED, jobs)


# ------------------------------------------------------------------------------------ the report


def explain(a: Answer, sel: Selection, *, find_fix_cmd: str = "", introduced_cmd: str = "") -> tuple[str, str]:
    """The status in plain words, and the next step to take."""
    old, new = (sel.label(v) for v in a.ends)
    if a.status in ("found", "found-both", "found-part"):
        parts = []
        if a.introduced and a.introduced.found:
            parts.append(
                f"the check first fails in {sel.label(a.introduced.first_bad)} "
                f"(it passes in {sel.label(a.introduced.last_good)})"
            )
        if a.fixed and a.fixed.found:
            parts.append(
                f"it passes again from {sel.label(a.fixed.last_good)} "
                f"(it still fails in {sel.label(a.fixed.first_bad)})"
            )
        words = "found: " + "; ".join(parts)
        if a.newest and a.newest[1] is Verdict.BAD:
            return words, f"the newest release, {sel.label(a.newest[0])}, still fails: not fixed yet"
        if a.status == "found-part":
            missing = a.fixed if a.introduced and a.introduced.found else a.introduced
            return words, f"the other transition was not found ({missing.status if missing else 'not searched'})"
        return words, ""
    if a.status == "bad-at-both-ends":
        if a.direction is Direction.FIXED:
            return (
                f"bad at both ends: not fixed in this range (the check fails in {old} and in {new})",
                "widen the range to newer releases, or wait for a fix",
            )
        return (
            f"bad at both ends: no transition in this range (the check fails in {old} and in {new})",
            (
                "widen the range to older releases to find where it broke, or search a newer range with "
                "--find-fix to find where it was fixed"
            ),
        )
    if a.status == "good-at-both-ends":
        sampled = len(a.sampled)
        between = (
            f", and in the {sampled} release{'s' if sampled != 1 else ''} sampled between them"
            if sampled
            else " (no release between them was sampled)"
        )
        return (
            f"good at both ends: the check passes in {old} and in {new}{between}: no bad release found",
            "give a release where it fails with --bad V, or sample more with --samples N",
        )
    if a.status == "bad-passes":
        given = a.ends[1] if a.direction is Direction.INTRODUCED else a.ends[0]
        return (
            f"the check passes in the release given as --bad, {sel.label(given)}, and at the other end",
            "give a release where the check fails as --bad, or check the check (its output is shown below)",
        )
    if a.status == "reversed":
        if a.direction is Direction.INTRODUCED:
            return (
                (
                    f"reversed: the check fails in the older end {old} and passes in the newer end {new}: "
                    f"this range holds a fix, not a regression"
                ),
                f"find the fix: {find_fix_cmd}",
            )
        return (
            (
                f"reversed: the check passes in the older end {old} and fails in the newer end {new}: "
                f"this range holds a regression, not a fix"
            ),
            f"find where it broke: {introduced_cmd}",
        )
    if a.status == "end-unknown":
        return (
            f"the newer end {new} cannot be tested (see its reason below)",
            "end the range at a release that installs, or give the end with --bad/--good",
        )
    if a.status in ("no-good-found", "no-bad-found"):
        term = "passes" if a.status == "no-good-found" else "fails"
        return (f"no release before {new} that could be tested {term} the check", "widen the range to older releases")
    return a.status, ""


def to_json(
    a: Answer,
    sel: Selection,
    *,
    package: str,
    range_text: str,
    repro: str,
    repo: str | None = None,
    tag_format: str | None = None,
    notes: dict[str, Tested] | None = None,
    message: str = "",
    next_step: str = "",
) -> dict:
    notes = notes or {}

    def link(lo, hi):
        return links.compare_url(repo, tag_format, lo, hi) if repo and tag_format and lo and hi else ""

    def part(r: BisectResult | None, names: tuple[str, str]) -> dict | None:
        if r is None:
            return None
        lo, hi = r.last_old, r.first_new
        return {
            "status": r.status,
            names[0]: lo,
            names[1]: hi,
            "yanked": [v for v in (lo, hi) if v in sel.yanked],
            "compare_url": link(lo, hi) if r.found else "",
            "untested_between": list(r.unknown_between),
            "excluded_between": sel.excluded_between(lo, hi),
            "bound": r.bound,
        }

    return {
        "package": package,
        "range": range_text,
        "direction": a.direction.value,
        "status": a.status,
        "found": a.found,
        "message": message,
        "next": next_step,
        "ends": list(a.ends),
        "versions": a.versions,
        "yanked": sorted(sel.yanked, key=Version),
        "excluded": sel.excluded,
        "introduced": part(a.introduced, ("last_good", "first_bad")),
        "fixed": part(a.fixed, ("last_bad", "first_fixed")),
        "bad": a.bad,
        "sampled": a.sampled,
        "sample_limit": a.sample_limit,
        "newest": {"version": a.newest[0], "verdict": a.newest[1].value} if a.newest else None,
        "tests": [
            {
                "version": v,
                "verdict": verdict.value,
                "yanked": v in sel.yanked,
                **(
                    {"reason": notes[v].reason, "seconds": round(notes[v].seconds, 3), "output": notes[v].output}
                    if v in notes
                    else {}
                ),
            }
            for v, verdict in a.probes
        ],
        "bound": a.bound,
        "reproduce": repro,
        "exit_code": EXIT_FOUND if a.found else EXIT_NOT_FOUND,
    }


def format_answer(
    a: Answer,
    sel: Selection,
    *,
    package: str,
    repro: str,
    repo: str | None = None,
    tag_format: str | None = None,
    notes: dict[str, Tested] | None = None,
    verbose: bool = False,
    message: str = "",
    next_step: str = "",
) -> str:
    """The printed report: plain-words status and next step, both answers, every test, reproduction."""
    notes = notes or {}
    n = len(sel.versions)
    extra = f", {len(sel.yanked)} yanked" if sel.yanked else ""
    asked = "fixed-in (--find-fix)" if a.direction is Direction.FIXED else "introduced-in"
    lines = [
        (
            f"bisect {package}: {n} versions{extra}, {sel.label(a.ends[0])} .. {sel.label(a.ends[1])}, "
            f"looking for {asked}"
        ),
        f"  status:     {message}",
    ]
    if next_step:
        lines.append(f"  next:       {next_step}")
    for r, names in ((a.introduced, ("last good", "first bad")), (a.fixed, ("last bad", "first fixed"))):
        if r is not None and r.found:
            lines.append(f"  {names[0] + ':':<11} {sel.label(r.last_old)}")
            lines.append(f"  {names[1] + ':':<11} {sel.label(r.first_new)}")
            if repo and tag_format:
                lines.append(f"  compare:    {links.compare_url(repo, tag_format, *r.pair())}")
            if r.unknown_between:
                lines.append(
                    f"  untested between {r.last_old} and {r.first_new}: "
                    + "; ".join(
                        f"{sel.label(v)} ({notes[v].reason})" if v in notes else sel.label(v) for v in r.unknown_between
                    )
                )
            excluded = sel.excluded_between(r.last_old, r.first_new)
            if excluded:
                lines.append(
                    f"  excluded between {r.last_old} and {r.first_new}: "
                    + "; ".join(f"{v} ({why})" for v, why in excluded.items())
                )
    if a.sampled:
        lines.append(
            f"  sampled:    {len(a.sampled)} of at most {a.sample_limit} releases between the ends, "
            f"looking for a bad one: " + ", ".join(f"{sel.label(v)} {dict(a.probes)[v].value}" for v in a.sampled)
        )
    lines.append(
        f"  tests:      {len(a.probes)} (bound {a.bound} for the intervals searched): "
        + ", ".join(f"{sel.label(v)} {verdict.value}" for v, verdict in a.probes)
    )
    skipped = [v for v, verdict in a.probes if verdict is Verdict.UNKNOWN]
    lines.append(
        "  skipped:    "
        + (
            "; ".join(f"{sel.label(v)} ({notes[v].reason})" if v in notes else v for v in skipped)
            if skipped
            else "none"
        )
    )
    shown = {v for v, _ in a.probes} if verbose else set(_surprising_ends(a))
    for v, verdict in a.probes:
        if v in shown:
            note = notes.get(v)
            lines.append(
                f"  test {sel.label(v)}: {verdict.value}" + (f" ({note.reason}, {note.seconds:.1f}s)" if note else "")
            )
            if note and note.output.strip():
                lines += [f"      | {ln}" for ln in note.output.rstrip().splitlines()[-12:]]
    lines.append(f"  reproduce:  {repro}")
    return "\n".join(lines)


def _surprising_ends(a: Answer) -> list[str]:
    """The ends whose verdict is not what the search was asked to expect there."""
    got = dict(a.probes)
    want = (a.direction.old, a.direction.new)
    return [v for v, w in zip(a.ends, want) if v in got and got[v] is not w]


# ------------------------------------------------------------------------------------ command line


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``llmcompat bisect`` (pass a subparser to fill it in)."""
    p = parser or argparse.ArgumentParser(prog="llmcompat bisect", description=__doc__.split("\n\n")[0])
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = (
        "exit status: 0 found, 1 not found (the status says why and what to do next), 2 usage error, "
        "3 aborted (a check exited 128 or more, timed out, or the command was interrupted)\n"
        "check exit codes, as git bisect run: 0 good, 125 skip, 1-127 bad, 128 or more abort"
    )
    p.add_argument("package", help="the package whose releases are bisected")
    p.add_argument("range", help='PEP 440 range (">=20,<24") or a list of versions ("20.0,21.3,22.0")')
    p.add_argument(
        "script",
        nargs="?",
        help="check: a .py file (run with the env's python), an executable, or a "
        "shell command; exit 0 good, 125 skip, 1-127 bad, >=128 abort",
    )
    p.add_argument(
        "--with",
        dest="extra",
        action="append",
        default=[],
        metavar="REQ",
        help="another requirement installed with every version (repeatable)",
    )
    p.add_argument("--python", default="3.11", help="Python version of the environments (default 3.11)")
    p.add_argument(
        "--find-fix",
        action="store_true",
        help="search for the first release in which the failing check passes (last bad -> first fixed)",
    )
    p.add_argument(
        "--good",
        help="a version known good: the old end (--find-fix: the new end); default: the "
        "oldest (--find-fix: newest) in range, tested",
    )
    p.add_argument(
        "--bad",
        help="a version known bad: the new end (--find-fix: the old end); default: the "
        "newest (--find-fix: oldest) in range, tested",
    )
    p.add_argument(
        "--samples",
        type=int,
        default=SAMPLES,
        help=f"releases tested at most to find a bad one when both ends pass (default {SAMPLES})",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=CHECK_TIMEOUT,
        help=f"seconds the check may run at one version; then its process group is killed and the "
        f"bisection aborts (default {CHECK_TIMEOUT:g})",
    )
    p.add_argument("--repo", help="upstream GitHub owner/name, for the compare link")
    p.add_argument(
        "--tag-format", default=None, help="tag of a version, e.g. v{version} (default v{version} with --repo)"
    )
    p.add_argument("--offline", action="store_true", help="use the cached package index only")
    p.add_argument(
        "--jobs", type=int, default=1, help="tests per round, run at once (parallel mode: fewer rounds, more tests)"
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show each test's verdict with the last lines of the check's output",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON only")
    g = p.add_argument_group(
        "llama.cpp commits (package llama.cpp, RANGE GOOD..BAD: build tags, commits or "
        "llama-cpp-python versions; see bot/narrow.py)"
    )
    g.add_argument("--git", help="llama.cpp git repository, path or URL (default: $LLMCOMPAT_LLAMACPP_GIT)")
    g.add_argument(
        "--python-git",
        help="llama-cpp-python git repository, for the exact vendored commits "
        "(default: $LLMCOMPAT_LLAMACPP_PYTHON_GIT)",
    )
    g.add_argument("--case", help="instead of a script: this suite case, through the native llama-server")
    g.add_argument("--stage", default="inference", choices=("template", "inference"), help="the case's stage")
    g.add_argument("--model", default="tiny-qwen2", help="the tiny model of the case (default tiny-qwen2)")
    return p


def _usage(message: str) -> int:
    print(f"llmcompat bisect: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def repro_of(args, *, find_fix: bool | None = None) -> str:
    """The complete ``llmcompat bisect`` line for these arguments (output options left out)."""
    return links.repro_command(
        args.package,
        args.range,
        args.script,
        extra_requirements=args.extra,
        python=args.python if args.python != "3.11" else None,
        good=args.good,
        bad=args.bad,
        repo=args.repo,
        tag_format=args.tag_format,
        find_fix=args.find_fix if find_fix is None else find_fix,
        samples=args.samples if args.samples != SAMPLES else None,
        timeout=args.timeout if args.timeout != CHECK_TIMEOUT else None,
        jobs=args.jobs if args.jobs != 1 else None,
        offline=args.offline,
    )


def cmd_bisect(args) -> int:
    """Run a parsed ``llmcompat bisect``; exit 0 found, 1 not found, 2 usage error, 3 aborted.
    Package ``llama.cpp`` narrows over llama.cpp build tags or commits (:mod:`bot.narrow`)."""
    from bot import narrow
    from matrix.paths import cache_dir
    from matrix.releases.index import IndexUnavailable, PackageIndex

    if args.package.lower() in narrow.ALIASES:
        return narrow.cmd_narrow(args)
    if not args.script:
        return _usage(f"{args.package}: a check script is required")
    for problem in (
        missing_script(args.script),
        args.timeout <= 0 and f"--timeout {args.timeout:g}: give a positive number of seconds",
        args.samples < 0 and f"--samples {args.samples}: give 0 or more",
        args.jobs < 1 and f"--jobs {args.jobs}: give 1 or more",
    ):
        if problem:
            return _usage(problem)
    direction = Direction.FIXED if args.find_fix else Direction.INTRODUCED
    tag_format = args.tag_format or ("v{version}" if args.repo else None)
    repro = repro_of(args)
    index = PackageIndex(cache_dir() / "index", offline=args.offline)
    test = PackageTest(args.package, args.script, tuple(args.extra), args.python, timeout=args.timeout)
    try:
        selection = versions_to_bisect(args.package, args.range, python=args.python, index=index)
        with killing_checks_on_signals():
            result = answer(
                selection.versions,
                test,
                direction=direction,
                good=args.good,
                bad=args.bad,
                samples=args.samples,
                jobs=args.jobs,
            )
    except (BisectUsageError, IndexUnavailable) as exc:
        return _usage(str(exc))
    except BisectAborted as exc:
        print(f"llmcompat bisect: aborted: {exc}\n{exc.output}", file=sys.stderr)
        return EXIT_ABORTED
    except (CheckInterrupted, KeyboardInterrupt) as exc:
        print(
            f"llmcompat bisect: aborted: {exc or 'interrupted'}; the running check's process group was killed",
            file=sys.stderr,
        )
        return EXIT_ABORTED
    message, next_step = explain(
        result, selection, find_fix_cmd=repro_of(args, find_fix=True), introduced_cmd=repro_of(args, find_fix=False)
    )
    if args.json:
        print(
            json.dumps(
                to_json(
                    result,
                    selection,
                    package=args.package,
                    range_text=args.range,
                    repro=repro,
                    repo=args.repo,
                    tag_format=tag_format,
                    notes=test.notes,
                    message=message,
                    next_step=next_step,
                ),
                indent=1,
            )
        )
    else:
        print(
            format_answer(
                result,
                selection,
                package=args.package,
                repro=repro,
                repo=args.repo,
                tag_format=tag_format,
                notes=test.notes,
                verbose=args.verbose,
                message=message,
                next_step=next_step,
            )
        )
    return EXIT_FOUND if result.found else EXIT_NOT_FOUND


def main(argv: Sequence[str] | None = None) -> int:
    """``llmcompat bisect PACKAGE RANGE SCRIPT [options]`` (see ``--help``)."""
    return cmd_bisect(build_parser().parse_args(argv))


# ------------------------------------------------------------------------------------ benchmark

LEGACY_CHECK = (
    "import sys\n"
    "from packaging.version import parse\n"
    "try:\n"
    "    parse('not-a-version')\n"
    "except Exception:\n"
    "    sys.exit(1)  # InvalidVersion: LegacyVersion is gone (packaging 22.0)\n"
    "sys.exit(0)\n"
)


def bench_bisect(last: int = 40, *, index=None, env_root: Path | None = None, python: str = "3.11") -> dict:
    """Bisect ``packaging`` over its last ``last`` final releases for the LegacyVersion removal,
    once to warm the caches (index, uv, environments), then timed. {"n", "probes", "bound",
    "seconds", "first_bad", "last_good"}."""
    import tempfile

    index = index or default_index()
    versions = select_versions(index.releases("packaging"), SpecifierSet(">=0"), python=python).versions[-last:]
    with tempfile.TemporaryDirectory(prefix="llmcompat-bench-bisect-", dir=scratch.directory()) as tmp:
        script = Path(tmp, "check.py")
        script.write_text(LEGACY_CHECK)
        run_bisection(versions, PackageTest("packaging", str(script), (), python, env_root))  # warm-up
        started = time.perf_counter()
        result = run_bisection(versions, PackageTest("packaging", str(script), (), python, env_root))
        seconds = time.perf_counter() - started
    return {
        "n": len(versions),
        "probes": len(result.probes),
        "bound": result.bound,
        "seconds": round(seconds, 3),
        "first_bad": result.first_bad,
        "last_good": result.last_good,
    }


if __name__ == "__main__":
    sys.exit(main())
