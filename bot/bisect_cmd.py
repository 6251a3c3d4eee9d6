"""``llmcompat bisect``: bisect any package's releases with a check script, like ``git bisect run``.

The version list comes from the configured package index (:class:`matrix.releases.index.PackageIndex`),
filtered by a PEP 440 range (``>=20,<24``) or given explicitly (``20.0,21.3,22.0``), ordered by
:mod:`packaging`. Each probe resolves ``package==v`` plus the ``--with`` requirements with uv, builds
(or reuses) that environment and runs the check script with the environment's interpreter first
on ``PATH`` (``VIRTUAL_ENV`` set, ``LLMCOMPAT_BISECT_VERSION=v``). Exit codes follow git bisect:

- 0: GOOD; 125: UNKNOWN (skip); 1..127 otherwise: BAD;
- 128 and above, or killed by a signal: the bisection aborts (:class:`BisectAborted`).

Versions that cannot be installed (uv says unresolvable, or resolution/installation fails) are
UNKNOWN and searched around, as cargo-bisect-rustc skips toolchains it cannot build. The search
itself is :func:`bot.search.bisect`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from bot import links
from bot.search import BisectResult, Verdict, bisect, bisect_parallel, probe_bound
from matrix.env import uv as envs
from matrix.releases.versions import Release

SKIP = 125
ABORT_FROM = 128
CHECK_TIMEOUT = 900.0


class BisectAborted(RuntimeError):
    """The check exited with 128 or more (or was killed): git bisect stops there, so do we."""

    def __init__(self, version: str, code: int, output: str = ""):
        self.version = version
        self.code = code
        self.output = output
        super().__init__(f"check script exited {code} at {version}: bisection aborted (codes >= 128 abort)")


class BisectUsageError(ValueError):
    """Bad range, unknown --good/--bad version, or too few versions to bisect."""


# ------------------------------------------------------------------------------------ versions


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
) -> list[str]:
    """The releases to bisect, ascending (PEP 440). A range drops yanked releases, releases whose
    Requires-Python excludes ``python`` and pre-releases (unless the range names one, as
    :class:`SpecifierSet` does); an explicit list is taken as given (published strings kept)."""
    releases = list(releases)
    parsed = [(v, r) for r in releases if (v := _version(r.version)) is not None]
    parsed.sort(key=lambda p: p[0])
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
        return [chosen[v] for v in sorted(chosen)]
    spec = versions_or_range
    py = Version(python)
    eligible = [(v, r) for v, r in parsed if not r.yanked and _python_ok(r.requires_python, py)]
    allowed = set(spec.filter([v for v, _ in eligible]))
    return [r.version for v, r in eligible if v in allowed]


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


# ------------------------------------------------------------------------------------ probing


def verdict_for_exit(code: int) -> Verdict | None:
    """git bisect's convention: 0 GOOD, 125 UNKNOWN, 1..127 BAD, None (abort) for >= 128 or < 0."""
    if code == 0:
        return Verdict.GOOD
    if code == SKIP:
        return Verdict.UNKNOWN
    if 0 < code < ABORT_FROM:
        return Verdict.BAD
    return None


def check_command(script: str) -> list[str]:
    """How to run ``script``: a ``.py`` file with the environment's ``python``, another existing file
    directly (or with ``sh`` when not executable), anything else as a shell command line."""
    path = Path(script)
    if path.is_file():
        if path.suffix == ".py":
            return ["python", str(path.resolve())]
        if os.access(path, os.X_OK):
            return [str(path.resolve())]
        return ["sh", str(path.resolve())]
    return ["sh", "-c", script]


@dataclass
class ProbeNote:
    version: str
    verdict: Verdict
    reason: str = ""
    seconds: float = 0.0


@dataclass
class PackageProbe:
    """Probe one version of ``package``: resolve, ensure, run the check. Callable as a bisect probe.

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
    notes: dict[str, ProbeNote] = field(default_factory=dict)

    def __call__(self, version: str) -> Verdict:
        started = time.perf_counter()
        verdict, reason = self._probe(version)
        self.notes[version] = ProbeNote(version, verdict, reason, time.perf_counter() - started)
        return verdict

    def requirements(self, version: str) -> list[str]:
        return [f"{self.package}=={version}", *self.extra_requirements]

    def _probe(self, version: str) -> tuple[Verdict, str]:
        reqs = self.requirements(version)
        try:
            lock = self.resolve(reqs, python=self.python)
        except envs.ResolveError as exc:
            return Verdict.UNKNOWN, f"resolution failed: {_first_line(exc.reason)}"
        if isinstance(lock, envs.Unresolvable):
            return Verdict.UNKNOWN, f"unresolvable: {_first_line(lock.reason, 'cause:')}"
        try:
            env = self.ensure(lock, self.env_root) if self.env_root else self.ensure(lock)
        except envs.ResolveError as exc:
            return Verdict.UNKNOWN, f"install failed: {_first_line(exc.reason)}"
        code, output = self.run_check(Path(env.python), version)
        verdict = verdict_for_exit(code)
        if verdict is None:
            raise BisectAborted(version, code, output)
        return verdict, f"exit {code}"

    def run_check(self, python: Path, version: str) -> tuple[int, str]:
        venv = python.parent.parent
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "CONDA_PREFIX")}
        env["PATH"] = os.pathsep.join([str(python.parent), env.get("PATH", "")])
        env["VIRTUAL_ENV"] = str(venv)
        env["LLMCOMPAT_BISECT_VERSION"] = version
        env["LLMCOMPAT_BISECT_PACKAGE"] = self.package
        cmd = check_command(self.script)
        if cmd[0] == "python":
            cmd[0] = str(python)
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=self.timeout,
                                  cwd=self.cwd)
        except subprocess.TimeoutExpired:
            return ABORT_FROM + 9, f"check timed out after {self.timeout:.0f}s"
        return proc.returncode, (proc.stdout + proc.stderr)[-4000:]


def _first_line(text: str, prefer: str = "") -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    if prefer:
        for ln in lines:
            if ln.startswith(prefer):
                return ln[len(prefer):].strip()
    return lines[0] if lines else ""


# ------------------------------------------------------------------------------------ bisection


def default_index():
    from matrix.releases.index import PackageIndex
    from matrix.paths import cache_dir

    return PackageIndex(cache_dir() / "index")


def bisect_package(
    package: str,
    versions_or_range: str | SpecifierSet | Sequence[str],
    check_script: str,
    *,
    extra_requirements: Sequence[str] = (),
    python: str = "3.11",
    good: str | None = None,
    bad: str | None = None,
    index=None,
    env_root: Path | None = None,
    probe: PackageProbe | None = None,
) -> BisectResult[str]:
    """Bisect ``package``'s releases in ``versions_or_range`` with ``check_script``.

    ``good``/``bad`` are versions (default: the oldest and the newest of the list). Pass ``probe``
    (a :class:`PackageProbe`) to read its ``notes`` afterwards. Raises :class:`BisectUsageError`
    and :class:`BisectAborted`.
    """
    versions = versions_to_bisect(package, versions_or_range, python=python, index=index)
    probe = probe or PackageProbe(package, check_script, tuple(extra_requirements), python, env_root)
    return run_bisection(versions, probe, good=good, bad=bad)


def versions_to_bisect(package: str, versions_or_range, *, python: str = "3.11", index=None) -> list[str]:
    index = index or default_index()
    versions = select_versions(index.releases(package), versions_or_range, python=python)
    if len(versions) < 2:
        raise BisectUsageError(f"{package} {versions_or_range}: {len(versions)} version(s) to bisect, need 2 or more")
    return versions


def run_bisection(versions: Sequence[str], probe: Callable[[str], Verdict], *, good: str | None = None,
                  bad: str | None = None, jobs: int = 1) -> BisectResult[str]:
    """Bisect with one probe at a time, or with ``jobs`` > 1 probes per round run concurrently
    (one per worker: each builds its own environment), in ceil(log_{jobs+1} n) rounds."""
    gi = _index_of(versions, good, "good")
    bi = _index_of(versions, bad, "bad")
    start = 0 if gi is None else gi
    if jobs <= 1:
        return bisect(list(versions), probe, good=start, bad=bi)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        def probe_many(batch: list[str]) -> dict[str, Verdict]:
            return dict(zip(batch, pool.map(probe, batch)))

        return bisect_parallel(list(versions), probe_many, jobs, good=start, bad=bi)


def unknown_versions(result: BisectResult) -> list[str]:
    return [v for v, verdict in result.probes if verdict is Verdict.UNKNOWN]


def format_result(
    result: BisectResult,
    *,
    package: str,
    n: int,
    repro: str,
    repo: str | None = None,
    tag_format: str | None = None,
    notes: dict[str, ProbeNote] | None = None,
) -> str:
    notes = notes or {}
    lines = [f"bisect {package}: {result.status} over {n} versions"]
    lines.append(f"  last good:  {result.last_good or '-'}")
    lines.append(f"  first bad:  {result.first_bad or '-'}")
    used = ", ".join(f"{v} {verdict.value}" for v, verdict in result.probes)
    lines.append(f"  probes:     {len(result.probes)} (bound {probe_bound(n)}): {used}")
    skipped = unknown_versions(result)
    if skipped:
        why = "; ".join(f"{v} ({notes[v].reason})" if v in notes else v for v in skipped)
        lines.append(f"  skipped:    {len(skipped)} unknown: {why}")
    else:
        lines.append("  skipped:    none")
    if result.unknown_between:
        lines.append(f"  untested in range: {', '.join(result.unknown_between)}")
    if result.found and repo and tag_format:
        lines.append(f"  compare:    {links.compare_url(repo, tag_format, result.last_good, result.first_bad)}")
    lines.append(f"  reproduce:  {repro}")
    return "\n".join(lines)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of ``llmcompat bisect`` (pass a subparser to fill it in)."""
    p = parser or argparse.ArgumentParser(prog="llmcompat bisect", description=__doc__.split("\n\n")[0])
    p.add_argument("package", help="the package whose releases are bisected")
    p.add_argument("range", help="PEP 440 range (\">=20,<24\") or a list of versions (\"20.0,21.3,22.0\")")
    p.add_argument("script", nargs="?", help="check: a .py file (run with the env's python), an executable, or a "
                                             "shell command; exit 0 good, 125 skip, 1-127 bad, >=128 abort")
    p.add_argument("--with", dest="extra", action="append", default=[], metavar="REQ",
                   help="another requirement installed with every version (repeatable)")
    p.add_argument("--python", default="3.11", help="Python version of the environments (default 3.11)")
    p.add_argument("--good", help="a version known good (default: the oldest in range, verified)")
    p.add_argument("--bad", help="a version known bad (default: the newest in range, verified)")
    p.add_argument("--repo", help="upstream GitHub owner/name, for the compare link")
    p.add_argument("--tag-format", default=None, help="tag of a version, e.g. v{version} (default v{version} with --repo)")
    p.add_argument("--offline", action="store_true", help="use the cached package index only")
    p.add_argument("--jobs", type=int, default=1,
                   help="probes per round, run at once (parallel mode: fewer rounds, more probes)")
    g = p.add_argument_group("llama.cpp commits (package llama.cpp, RANGE GOOD..BAD: build tags, commits or "
                             "llama-cpp-python versions; see bot/narrow.py)")
    g.add_argument("--git", help="llama.cpp git repository, path or URL (default: $LLMCOMPAT_LLAMACPP_GIT)")
    g.add_argument("--python-git", help="llama-cpp-python git repository, for the exact vendored commits "
                                        "(default: $LLMCOMPAT_LLAMACPP_PYTHON_GIT)")
    g.add_argument("--case", help="instead of a script: this suite case, through the native llama-server")
    g.add_argument("--stage", default="inference", choices=("template", "inference"), help="the case's stage")
    g.add_argument("--model", default="tiny-qwen2", help="the tiny model of the case (default tiny-qwen2)")
    g.add_argument("--json", action="store_true", help="also print the result as JSON")
    return p


def cmd_bisect(args) -> int:
    """Run a parsed ``llmcompat bisect``; exit 0 found, 1 not found, 2 usage error, 3 aborted.
    Package ``llama.cpp`` narrows over llama.cpp build tags or commits (:mod:`bot.narrow`)."""
    from bot import narrow
    from matrix.releases.index import IndexUnavailable, PackageIndex
    from matrix.paths import cache_dir

    if args.package.lower() in narrow.ALIASES:
        return narrow.cmd_narrow(args)
    if not args.script:
        print(f"llmcompat bisect: error: {args.package}: a check script is required", file=sys.stderr)
        return 2

    tag_format = args.tag_format or ("v{version}" if args.repo else None)
    repro = links.repro_command(args.package, args.range, args.script, extra_requirements=args.extra,
                                python=args.python if args.python != "3.11" else None, good=args.good,
                                bad=args.bad, repo=args.repo, tag_format=args.tag_format)
    index = PackageIndex(cache_dir() / "index", offline=args.offline)
    try:
        versions = versions_to_bisect(args.package, args.range, python=args.python, index=index)
        probe = PackageProbe(args.package, args.script, tuple(args.extra), args.python)
        result = run_bisection(versions, probe, good=args.good, bad=args.bad, jobs=args.jobs)
    except (BisectUsageError, IndexUnavailable) as exc:
        print(f"llmcompat bisect: error: {exc}", file=sys.stderr)
        return 2
    except BisectAborted as exc:
        print(f"llmcompat bisect: {exc}\n{exc.output}", file=sys.stderr)
        return 3
    print(format_result(result, package=args.package, n=len(versions), repro=repro, repo=args.repo,
                        tag_format=tag_format, notes=probe.notes))
    return 0 if result.found else 1


def main(argv: Sequence[str] | None = None) -> int:
    """``llmcompat bisect PACKAGE RANGE SCRIPT [--with REQ] [--repo owner/name] [--tag-format F]
    [--good V] [--bad V] [--python X.Y] [--offline]``."""
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
    versions = select_versions(index.releases("packaging"), SpecifierSet(">=0"), python=python)[-last:]
    with tempfile.TemporaryDirectory(prefix="llmcompat-bench-bisect-") as tmp:
        script = Path(tmp, "check.py")
        script.write_text(LEGACY_CHECK)
        kwargs = dict(python=python, env_root=env_root)
        run_bisection(versions, PackageProbe("packaging", str(script), (), **kwargs))  # warm-up
        started = time.perf_counter()
        result = run_bisection(versions, PackageProbe("packaging", str(script), (), **kwargs))
        seconds = time.perf_counter() - started
    return {"n": len(versions), "probes": len(result.probes), "bound": probe_bound(len(versions)),
            "seconds": round(seconds, 3), "first_bad": result.first_bad, "last_good": result.last_good}


if __name__ == "__main__":
    sys.exit(main())
