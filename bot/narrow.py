"""Narrow a llama-cpp-python release range to the llama.cpp build tag or commit that changed it.

Bisection over releases ends at two adjacent llama-cpp-python releases, often hundreds of
llama.cpp commits apart. Here the vendored commits of those releases (:mod:`matrix.env.gitsrc`) are
the ends; the candidates between them (build tags ``b<N>``, else first-parent commits) are
searched with :func:`bot.search.bisect` unchanged: a test (:class:`CommitTest`) builds
``llama-server`` at the commit (:func:`matrix.env.builds.llama_server_tree`: content-keyed,
incremental) and runs a check with it:

- :func:`case_check`: one suite case and stage through the probe with the native llama-server
  as renderer (``template``) or engine (``inference``), as cells run it; pass GOOD, fail BAD,
  anything else UNKNOWN;
- :func:`script_check`: a check script, as ``llmcompat bisect`` runs one (:mod:`bot.check`: exit
  0 good, 125 skip, 1..127 bad, >= 128 abort; its process group killed on timeout), with
  ``LLMCOMPAT_LLAMA_SERVER`` set to the binary.

A commit that does not build is UNKNOWN and searched around. Both ends are verified (a range
that the native server does not reproduce says so in its status). When adjacent build tags
still span untagged commits, the range is refined over those commits (no commit is tested twice).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bot.check import (
    CHECK_TIMEOUT,
    BisectAborted,
    CheckInterrupted,
    check_command,
    killing_checks_on_signals,
    run_check,
    verdict_of_run,
)
from bot.search import BisectResult, Verdict, bisect, bisect_bound, bisect_parallel
from matrix.env import gitsrc
from matrix.env.gitsrc import Candidate, GitSourceError, ReleaseCommit, Repo

PACKAGE = "llama-cpp-python"
COMPONENT = "llama.cpp"
ALIASES = ("llama.cpp", "llama-cpp", "ggml-org/llama.cpp")
"""Package names ``llmcompat bisect`` narrows over llama.cpp commits."""
NOT_CONFIGURED = f"no llama.cpp git source configured (set {gitsrc.ENV_GIT} or pass --git)"
SERVER_STAGES = {"template": "renderers", "inference": "engines"}
"""Stages the native llama-server takes part in, and as what."""

Check = Callable[[Path, Candidate], tuple[Verdict, str]]


# ----------------------------------------------------------------------------- result (pure)


@dataclass
class Tested:
    """What happened when one commit was tested: verdict, why, how long, how its binary came."""

    ref: str
    verdict: Verdict
    reason: str = ""
    seconds: float = 0.0
    build: dict = field(default_factory=dict)
    """How the binary came: ``reused`` (False, ``tree`` or ``sdist``), ``compiled`` units, ``seconds``."""


@dataclass
class NarrowResult:
    status: str
    candidates: list[Candidate]
    probes: list[tuple[Candidate, Verdict]]
    last_good: Candidate | None
    first_bad: Candidate | None
    unknown_between: list[Candidate] = field(default_factory=list)
    rounds: int = 0
    notes: dict[str, Tested] = field(default_factory=dict)
    repo: str = gitsrc.LLAMACPP_REPO
    repro: str = ""
    releases: tuple[ReleaseCommit, ReleaseCommit] | None = None
    refined: list[Candidate] = field(default_factory=list)
    """Untagged commits searched after the build tags (empty when the tags were adjacent)."""

    @property
    def found(self) -> bool:
        return self.status == "found"

    @property
    def compare_url(self) -> str:
        if not self.found or self.last_good is None or self.first_bad is None:
            return ""
        return gitsrc.compare_url(self.last_good, self.first_bad, self.repo)

    @property
    def bound(self) -> int:
        return bisect_bound(len(self.candidates)) + (bisect_bound(len(self.refined) + 2) - 2 if self.refined else 0)

    def bisection(self, started: str, finished: str | None = None) -> dict:
        """The store's ``bisections`` row (component ``llama.cpp``): candidates by tag or id."""
        return {
            "component": COMPONENT,
            "versions": [c.ref for c in self.candidates + self.refined],
            "probes": [(c.ref, v.value) for c, v in self.probes],
            "last_good": self.last_good.ref if self.last_good else None,
            "first_bad": self.first_bad.ref if self.first_bad else None,
            "status": self.status,
            "started": started,
            "finished": finished or _now(),
            "compare_url": self.compare_url if self.found else "",
            "repro": self.repro if self.found else "",
        }

    def to_json(self) -> dict:
        return {
            "status": self.status,
            "last_good": _cand(self.last_good),
            "first_bad": _cand(self.first_bad),
            "candidates": [c.ref for c in self.candidates],
            "refined": [c.ref for c in self.refined],
            "probes": [
                {
                    "ref": c.ref,
                    "commit": c.commit,
                    "verdict": v.value,
                    **(
                        {"reason": self.notes[c.commit].reason, "build": self.notes[c.commit].build}
                        if c.commit in self.notes
                        else {}
                    ),
                }
                for c, v in self.probes
            ],
            "bound": self.bound,
            "rounds": self.rounds,
            "compare_url": self.compare_url,
            "repro": self.repro,
            "unknown_between": [c.ref for c in self.unknown_between],
            "releases": [{"version": r.version, "commit": r.commit, "how": r.how} for r in self.releases or ()],
        }


def _cand(c: Candidate | None) -> dict | None:
    return None if c is None else {"ref": c.ref, "commit": c.commit, "tag": c.tag}


STATUS_WORDS = {
    "found": "found: the first bad commit is known",
    "both-old": "good at both ends: the newer end passes too; nothing to narrow between these commits",
    "both-new": "bad at both ends: the older end fails too; the change is older than this range",
    "reversed": "reversed: the older end fails and the newer passes; this range holds a fix",
    "new-end-unknown": "the newer end cannot be tested (it does not build, or the check skipped it)",
    "no-old-found": "no commit before the newer end that could be tested passes",
    "same-commit": "both releases vendor the same llama.cpp commit: nothing to narrow",
}


def format_result(result: NarrowResult) -> str:
    """The printed report: status in words, last good, first bad, tests used, compare URL, reproduction."""
    n = len(result.candidates)
    lines = [
        f"narrow llama.cpp: {result.status} over {n} candidates"
        + (f" (+{len(result.refined)} untagged commits)" if result.refined else ""),
        f"  status:     {STATUS_WORDS.get(result.status, result.status)}",
    ]
    if result.releases:
        lines.append(
            "  releases:   "
            + ", ".join(f"{PACKAGE} {r.version} vendors {r.commit[:12]} ({r.how})" for r in result.releases)
        )
    for label, c in (("last good", result.last_good), ("first bad", result.first_bad)):
        lines.append(f"  {label}:  {'-' if c is None else (c.tag + ' ' + c.commit[:12] if c.tag else c.commit)}")
    used = ", ".join(f"{c} {v.value}" + _build_word(result.notes.get(c.commit)) for c, v in result.probes)
    lines.append(f"  tests:      {len(result.probes)} (bound {result.bound}): {used}")
    skipped = [(c, result.notes.get(c.commit)) for c, v in result.probes if v is Verdict.UNKNOWN]
    if skipped:
        lines.append("  skipped:    " + "; ".join(f"{c} ({n.reason if n else 'unknown'})" for c, n in skipped))
    if result.unknown_between:
        lines.append(f"  untested in range: {', '.join(map(str, result.unknown_between))}")
    if result.compare_url:
        lines.append(f"  compare:    {result.compare_url}")
    if result.repro:
        lines.append(f"  reproduce:  {result.repro}")
    return "\n".join(lines)


def _build_word(note: Tested | None) -> str:
    if note is None or not note.build:
        return ""
    b = note.build
    if b.get("reused"):
        return f" [build reused: {b['reused']}]"
    return f" [built {b.get('seconds', 0):.0f}s, {b.get('compiled', '?')} units]"


def repro_command(
    good: str,
    bad: str,
    *,
    git: str,
    script: str | None = None,
    case: str | None = None,
    stage: str | None = None,
    model: str | None = None,
    python_git: str | None = None,
) -> str:
    """The one ``llmcompat bisect llama.cpp GOOD..BAD`` command line that narrows again."""
    argv = ["llmcompat", "bisect", COMPONENT, f"{good}..{bad}"]
    if script:
        argv.append(script)
    if case:
        argv += ["--case", case, "--stage", stage or "inference"]
        if model:
            argv += ["--model", model]
    argv += ["--git", git]
    if python_git:
        argv += ["--python-git", python_git]
    return shlex.join(argv)


def not_narrowed(reason: str, started: str | None = None) -> dict:
    """A ``bisections`` row that says plainly why a release range was not narrowed to commits."""
    now = _now()
    return {
        "component": COMPONENT,
        "versions": [],
        "probes": [],
        "last_good": None,
        "first_bad": None,
        "status": f"not narrowed: {reason}",
        "started": started or now,
        "finished": now,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- probing


@dataclass
class CommitTest:
    """A bisection's test at one commit: build ``llama-server`` at the candidate and run ``check``
    with it. A commit that does not build is UNKNOWN (searched around); each commit is tested once."""

    repo: Repo
    check: Check
    build_env: dict | None = None
    bin_root: Path | None = None
    work_root: Path | None = None
    notes: dict[str, Tested] = field(default_factory=dict)

    def __call__(self, cand: Candidate) -> Verdict:
        if cand.commit in self.notes:
            return self.notes[cand.commit].verdict
        from matrix.env import builds

        started = time.perf_counter()
        try:
            tree = self.repo.tree_of(cand.commit)
            exe, how = builds.llama_server_tree(
                self.repo.path, cand.commit, tree, self.build_env, root=self.bin_root, work_root=self.work_root
            )
        except (builds.BuildError, GitSourceError) as exc:
            first = str(exc).splitlines()[0]
            self.notes[cand.commit] = Tested(
                cand.ref, Verdict.UNKNOWN, f"does not build: {first}", time.perf_counter() - started
            )
            return Verdict.UNKNOWN
        verdict, reason = self.check(exe, cand)
        self.notes[cand.commit] = Tested(cand.ref, verdict, reason, time.perf_counter() - started, how)
        return verdict


def script_check(script: str, *, timeout: float = CHECK_TIMEOUT, cwd: Path | None = None) -> Check:
    """A check script run as ``llmcompat bisect`` runs one, with the binary in
    ``LLMCOMPAT_LLAMA_SERVER`` (and its directory first on ``PATH``)."""

    def check(exe: Path, cand: Candidate) -> tuple[Verdict, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env["PATH"] = os.pathsep.join([str(Path(exe).parent), env.get("PATH", "")])
        env.update(
            LLMCOMPAT_LLAMA_SERVER=str(exe),
            LLMCOMPAT_BISECT_PACKAGE=COMPONENT,
            LLMCOMPAT_BISECT_VERSION=cand.ref,
            LLMCOMPAT_BISECT_COMMIT=cand.commit,
        )
        cmd = check_command(script)
        if cmd[0] == "python":
            cmd[0] = sys.executable
        run = run_check(cmd, env=env, timeout=timeout, cwd=cwd)
        return verdict_of_run(run, cand.ref, timeout), f"exit {run.code}"

    return check


def case_check(
    case: str, stage: str, *, model: str = "tiny-qwen2", suite: str = "core", timeout: float = 600.0
) -> Check:
    """One suite case at one stage through the native llama-server (see the module docstring)."""
    if stage not in SERVER_STAGES:
        raise GitSourceError(
            f"stage {stage!r}: the native llama-server takes part only in "
            f"{', '.join(SERVER_STAGES)}; narrow with a check script instead"
        )
    job_base: dict | None = None

    def base() -> dict:
        nonlocal job_base
        if job_base is None:
            job_base = case_job(case, stage, model=model, suite=suite)
        return job_base

    def check(exe: Path, cand: Candidate) -> tuple[Verdict, str]:
        from bot.regress import outcomes_from_records, verdict_of
        from matrix.cell.run import run_probe

        job = {**base(), "llama_server_bin": str(exe)}
        result, log = run_probe(Path(sys.executable), job, timeout=timeout)
        if result is None:
            return Verdict.UNKNOWN, f"probe died: {log.strip().splitlines()[-1][:200] if log.strip() else ''}"
        records = [
            r
            for r in result.get("records", [])
            if r.get("case") == case and r.get("stage") == stage and "llama-server" in str(r.get("check", ""))
        ]
        if not records:
            return Verdict.UNKNOWN, f"no llama-server result for {case}/{stage}"
        outcome = outcomes_from_records(records)[(case, stage)]
        detail = next((str(r.get("detail", "")) for r in records if r["outcome"] == outcome), "")
        return verdict_of(outcome), f"{outcome}: {detail.splitlines()[0][:160] if detail else ''}".rstrip(": ")

    return check


def case_job(case: str, stage: str, *, model: str = "tiny-qwen2", suite: str = "core") -> dict:
    """The probe's job for one case at one stage with llama-server only (the binary is added)."""
    from matrix import suites, tinymodel
    from matrix.declare import loader
    from matrix.errors import LlmcompatError

    matrix = loader.load_default()
    mcfg = next((m for m in matrix.models if m.name == model), None)
    if mcfg is None or mcfg.kind != "tiny" or mcfg.arch is None:
        raise LlmcompatError(
            f"--model {model!r}: narrowing runs the tiny models only "
            f"({', '.join(m.name for m in matrix.models if m.kind == 'tiny')})"
        )
    built = tinymodel.ensure(arch=mcfg.arch, parts=("tokenizer", "weights", "gguf"), reference=matrix.reference)
    s = suites.load(suite)
    cases = suites.cases_with_goldens(s, suites.load_goldens(s, model))
    if not any(c["id"] == case for c in cases):
        raise LlmcompatError(f"--case {case!r}: no such case in suite {suite!r}")
    job = {
        "mode": "check",
        "model_dir": str(built.path),
        "stages": [stage],
        "cases": cases,
        "template_sources": ["hf"],
        "renderers": [],
        "engines": [],
        "max_new_tokens": 16,
        "limits": {"render_seconds": 10, "render_chars": 1_000_000, "request_seconds": 60, "server_start_seconds": 120},
    }
    job[SERVER_STAGES[stage]] = ["llama-server"]
    if stage == "inference":
        job.update(gen_cases=[{"id": case}], concurrency=0, concurrency_cases=0)
    return job


# ----------------------------------------------------------------------------- narrowing


def _search(cands: Sequence[Candidate], test: Callable[[Candidate], Verdict], jobs: int) -> BisectResult:
    if jobs <= 1:
        return bisect(list(cands), test, old=0, new=len(cands) - 1)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return bisect_parallel(
            list(cands), lambda batch: dict(zip(batch, pool.map(test, batch))), jobs, old=0, new=len(cands) - 1
        )


def narrow(
    repo: Repo,
    good: str | Candidate,
    bad: str | Candidate,
    test: Callable[[Candidate], Verdict],
    *,
    jobs: int = 1,
    repo_name: str = gitsrc.LLAMACPP_REPO,
    repro: str = "",
) -> NarrowResult:
    """Search the candidates from ``good`` to ``bad`` (refs or candidates) with ``test``."""
    g = good.commit if isinstance(good, Candidate) else repo.commit_of(good)
    b = bad.commit if isinstance(bad, Candidate) else repo.commit_of(bad)
    cands = repo.candidates(g, b)
    memo: dict[str, Verdict] = {}

    def once(c: Candidate) -> Verdict:  # each commit once, across both searches
        if c.commit not in memo:
            memo[c.commit] = test(c)
        return memo[c.commit]

    res = _search(cands, once, jobs)
    probes = list(res.probes)
    rounds = res.rounds
    refined: list[Candidate] = []
    last_good, first_bad, between = res.last_good, res.first_bad, list(res.unknown_between)
    status = res.status
    if res.found:
        line = repo.between(*res.pair())
        if len(line) > 2 and not between:  # adjacent build tags, untagged commits between them
            refined = line[1:-1]
            res2 = _search(line, once, jobs)  # both ends are known: they are not tested again
            probes += [p for p in res2.probes if p[0].commit not in {c.commit for c, _ in probes}]
            rounds += res2.rounds
            if res2.found:
                last_good, first_bad, between = res2.last_good, res2.first_bad, list(res2.unknown_between)
            else:
                status = res2.status
    return NarrowResult(
        status,
        cands,
        probes,
        last_good,
        first_bad,
        between,
        rounds,
        dict(getattr(test, "notes", {}) or {}),
        repo_name,
        repro,
        refined=refined,
    )


def release_ends(
    repo: Repo,
    good_version: str,
    bad_version: str,
    *,
    py_repo: Repo | None = None,
    build_env: dict | None = None,
    bin_root: Path | None = None,
) -> tuple[ReleaseCommit, ReleaseCommit]:
    """The vendored llama.cpp commits of two releases. A release whose llama-server is already
    built from its sdist, with the very tree of its commit, lends that binary to the commit."""
    from matrix.env import builds

    ends = (
        gitsrc.release_commit(repo, good_version, "good", py_repo=py_repo),
        gitsrc.release_commit(repo, bad_version, "bad", py_repo=py_repo),
    )
    for end in ends:
        exe = builds.server_built(end.version, build_env, root=bin_root)
        sdist = end.sdist or builds.cached_sdist(PACKAGE, end.version)
        if exe is None or sdist is None or gitsrc.git_bin() is None:
            continue
        tree = gitsrc.vendored_tree(sdist).tree
        if tree == repo.tree_of(end.commit):
            builds.link_tree(tree, build_env, exe.parent, root=bin_root)
    return ends


def narrow_releases(
    repo: Repo,
    good_version: str,
    bad_version: str,
    test: CommitTest,
    *,
    py_repo: Repo | None = None,
    jobs: int = 1,
    repro: str = "",
) -> NarrowResult:
    """Narrow ``llama-cpp-python`` ``good_version``..``bad_version`` to llama.cpp commits."""
    ends = release_ends(
        repo, good_version, bad_version, py_repo=py_repo, build_env=test.build_env, bin_root=test.bin_root
    )
    if ends[0].commit == ends[1].commit:
        res = NarrowResult("same-commit", [repo.candidate(ends[0].commit)], [], None, None, repo=repo.source)
        res.releases = ends
        return res
    res = narrow(repo, Candidate(ends[0].commit), Candidate(ends[1].commit), test, jobs=jobs, repro=repro)
    res.releases = ends
    return res


# ----------------------------------------------------------------------------- the pipeline's step


def pipeline_narrower(
    finding: dict, bisection: dict, *, source: str | None = None, python_source: str | None = None
) -> dict:
    """For the regression pipeline: narrow a finding bisected to two adjacent llama-cpp-python
    releases, when a llama.cpp git source is configured. Returns a ``bisections`` row for
    component ``llama.cpp``: the narrowed range, or ``not narrowed: <why>``. Never raises."""
    started = _now()
    if bisection.get("status") != "found":
        return not_narrowed(f"the release bisection did not find a range ({bisection.get('status')})", started)
    source = gitsrc.configured(source)
    if source is None:
        return not_narrowed(NOT_CONFIGURED, started)
    stage, case = finding["stage"], finding["case_id"]
    if stage not in SERVER_STAGES:
        return not_narrowed(f"stage {stage} is not checked through the native llama-server", started)
    try:
        from matrix.plan.cells import Cell

        model = Cell.parse(finding.get("first_bad_cell", "")).model if finding.get("first_bad_cell") else "tiny-qwen2"
        repo = gitsrc.open_repo(source)
        py_source = gitsrc.configured(python_source, gitsrc.ENV_PYTHON_GIT)
        py_repo = gitsrc.open_repo(py_source, what=gitsrc.ENV_PYTHON_GIT) if py_source else None
        test = CommitTest(repo, case_check(case, stage, model=model), _build_env())
        res = narrow_releases(repo, bisection["last_good"], bisection["first_bad"], test, py_repo=py_repo)
        if res.found and res.last_good is not None and res.first_bad is not None:
            res.repro = repro_command(
                res.last_good.ref,
                res.first_bad.ref,
                git=source,
                case=case,
                stage=stage,
                model=model,
                python_git=py_source,
            )
        return res.bisection(started)
    except Exception as exc:  # noqa: BLE001 - a failed narrowing never loses the release finding
        return not_narrowed(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}", started)


def _build_env() -> dict | None:
    """The build flags of the matrix's llama-cpp-python component (what its cells' server used)."""
    try:
        from matrix.declare import loader

        comp = loader.load_default().component("engine", PACKAGE)
        return dict(comp.build) if comp.build else None
    except Exception:  # noqa: BLE001 - no such component: the defaults
        return None


# ----------------------------------------------------------------------------- command line


def cmd_narrow(args) -> int:
    """``llmcompat bisect llama.cpp GOOD..BAD [SCRIPT] (--case C --stage S) --git PATH``: exit 0
    found, 1 not found, 2 usage or configuration error, 3 aborted by the check."""
    from matrix.errors import LlmcompatError

    source = gitsrc.configured(getattr(args, "git", None))
    if source is None:
        print(f"llmcompat bisect: error: {NOT_CONFIGURED}", file=sys.stderr)
        return 2
    good, sep, bad = args.range.partition("..")
    if not sep or not good or not bad:
        print(
            f"llmcompat bisect: error: range {args.range!r}: give GOOD..BAD (build tags, commits, "
            f"or {PACKAGE} versions)",
            file=sys.stderr,
        )
        return 2
    if bool(args.script) == bool(getattr(args, "case", None)):
        print("llmcompat bisect: error: give either a check script or --case (with --stage)", file=sys.stderr)
        return 2
    py_source = gitsrc.configured(getattr(args, "python_git", None), gitsrc.ENV_PYTHON_GIT)
    try:
        repo = gitsrc.open_repo(source)
        py_repo = gitsrc.open_repo(py_source, what=gitsrc.ENV_PYTHON_GIT) if py_source else None
        timeout = getattr(args, "timeout", CHECK_TIMEOUT)
        check = (
            script_check(args.script, timeout=timeout)
            if args.script
            else case_check(args.case, args.stage, model=args.model)
        )
        test = CommitTest(repo, check)
        repro = repro_command(
            good,
            bad,
            git=source,
            script=args.script,
            case=getattr(args, "case", None),
            stage=getattr(args, "stage", None),
            model=args.model if getattr(args, "case", None) and args.model != "tiny-qwen2" else None,
            python_git=py_source,
        )
        with killing_checks_on_signals():
            if not repo.has(good) and not repo.has(bad) and _is_version(good) and _is_version(bad):
                result = narrow_releases(repo, good, bad, test, py_repo=py_repo, jobs=args.jobs, repro=repro)
            else:
                result = narrow(repo, good, bad, test, jobs=args.jobs, repro=repro)
    except BisectAborted as exc:
        print(f"llmcompat bisect: aborted: {exc}\n{exc.output}", file=sys.stderr)
        return 3
    except (CheckInterrupted, KeyboardInterrupt) as exc:
        print(
            f"llmcompat bisect: aborted: {exc or 'interrupted'}; the running check's process group was killed",
            file=sys.stderr,
        )
        return 3
    except (GitSourceError, LlmcompatError, ValueError) as exc:
        print(f"llmcompat bisect: error: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "json", False):
        print(json.dumps(result.to_json(), indent=1))
    else:
        print(format_result(result))
    return 0 if result.found else 1


def _is_version(s: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        Version(s)
        return True
    except InvalidVersion:
        return False
