"""The main job: discover versions, plan, run every cell, aggregate, publish.

This is the shell around the pure core: it wires the index, uv, the models, the probe,
the store and the page together, shows progress, and prints a summary. Cells that fail
are results, not errors: the exit code is non-zero only for errors of llmcompat itself.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from matrix import paths
from matrix.cell.run import CellReport, CellRunner, ModelRef, SuiteRef, now_iso
from matrix.declare.config import AXES, Matrix
from matrix.errors import ConfigError, LlmcompatError
from matrix.outcome import Finding, Outcome
from matrix.plan.cells import Cell

if TYPE_CHECKING:
    from bot.regress import RegressReport


@dataclass
class Options:
    """What the user asked for on the command line (all optional)."""

    axes_file: Path | None = None
    offline: bool = False
    with_components: tuple[str, ...] = ()
    """Opt-in components as ``axis/name`` (e.g. ``engine/llama-cpp-python``)."""
    only: tuple[str, ...] = ()
    """A component subset as ``axis/name``: on each axis named, just these components."""
    runners: tuple[str, ...] = ()
    models: tuple[str, ...] = ()
    cells: tuple[str, ...] = ()
    """Run exactly these cell ids instead of the plan."""
    jobs: int = 2
    force: bool = False
    suite: str = "core"
    page: bool = True
    regress: bool = True
    """After ingesting, look for regressions against history, confirm and bisect them."""
    bot_dry_run: bool = False
    """Then print what the GitHub bot would file (``--bot-dry-run``)."""
    env: str | None = None
    """``uv`` or ``image``: where every cell runs (``--env``); None: each runner's ``environment``."""


@dataclass
class Prepared:
    """Everything loaded once per process before cells run."""

    matrix: Matrix
    versions: dict
    releases: list
    cells: list[Cell]
    suites: dict[str, SuiteRef]
    models: dict[str, ModelRef]
    seen: dict = field(default_factory=dict)


def load_matrix(opts: Options) -> Matrix:
    from matrix.declare import loader

    return loader.load(opts.axes_file) if opts.axes_file else loader.load_default()


def package_index(offline: bool):
    from matrix.releases.index import PackageIndex

    return PackageIndex(paths.cache_dir() / "index", offline=offline)


def _component_arg(matrix: Matrix, option: str, item: str) -> tuple[str, str]:
    axis, sep, name = item.partition("/")
    if not sep or axis not in matrix.axes:
        raise ConfigError(option, "component", item, f"expected axis/name with axis in {sorted(matrix.axes)}")
    if name not in {c.name for c in matrix.axes[axis]}:
        known = ", ".join(c.name for c in matrix.axes[axis])
        raise ConfigError(matrix.source, f"axes.{axis}", name, f"unknown component (known: {known})")
    return axis, name


def selected_components(matrix: Matrix, with_components, only=()) -> set[tuple[str, str]]:
    """Default components plus the opt-in ones, narrowed to ``only`` on each axis it names;
    unknown names are errors naming the value."""
    chosen = {(axis, c.name) for axis, comps in matrix.axes.items() for c in comps if c.default}
    chosen |= {_component_arg(matrix, "--with", item) for item in with_components}
    subset = {_component_arg(matrix, "--only", item) for item in only}
    narrowed = {axis for axis, _ in subset}
    return {(a, n) for a, n in chosen if a not in narrowed} | subset


def discover(matrix: Matrix, components, index, python: str = "3.11"):
    """Version sets of the chosen components, from the index (cached) and their rules."""
    from matrix.releases import npm
    from matrix.releases.versions import EmptyVersionSet, InvalidRule, UnknownVersion, select

    comps = [matrix.component(a, n) for a, n in components]
    fetched = index.releases_many(sorted({c.primary for c in comps if c.ecosystem in ("pypi", "corpus")}))
    for c in comps:
        if c.ecosystem == "npm":
            fetched[c.primary] = npm.releases(c.primary, paths.cache_dir(), ttl=index.ttl, offline=index.offline)
    versions, releases = {}, []
    for axis, name in sorted(components):
        comp = matrix.component(axis, name)
        rels = fetched[comp.primary]
        field_path = f"axes.{axis}.{name}.versions"
        try:
            versions[(axis, name)] = select(rels, comp.versions, python)
        except UnknownVersion as exc:
            raise matrix.error(field_path + ".explicit", exc.version, str(exc)) from None
        except (EmptyVersionSet, InvalidRule) as exc:
            raise matrix.error(field_path, name, str(exc)) from None
        wanted = set(versions[(axis, name)])
        releases += [
            (comp.primary, r.version, r.upload_time.isoformat() if r.upload_time else None)
            for r in rels
            if r.version in wanted
        ]
    return versions, releases


MODEL_PARTS = ("tokenizer", "weights", "gguf")


def build_model(matrix: Matrix, name: str) -> ModelRef:
    from matrix import tinymodel

    model = next((m for m in matrix.models if m.name == name), None)
    if model is None:
        raise ConfigError(matrix.source, "models", name, "unknown model")
    if model.kind != "tiny":
        if not model.hub_id:
            raise ConfigError(matrix.source, f"models.{name}.hub_id", None, "a hub model names its hub_id")
        built = tinymodel.ensure_hub(model.hub_id)
    else:
        if not model.arch:
            raise ConfigError(matrix.source, f"models.{name}.arch", None, "a tiny model names its arch")
        # every part, always: goldens and cells must see the same model hash
        built = tinymodel.ensure(arch=model.arch, parts=MODEL_PARTS, reference=matrix.reference)
    return ModelRef(name, Path(built.path), built.model_hash)


def suite_for(suite_name: str, model: ModelRef):
    from matrix import suites

    suite = suites.load(suite_name)
    goldens = suites.load_goldens(suite, model.name)
    if goldens is None or goldens.model_hash != model.hash:
        what = "missing" if goldens is None else f"made for model hash {goldens.model_hash[:12]}"
        raise LlmcompatError(
            f"goldens for suite {suite.name!r} and model {model.name!r} are {what}, the model is "
            f"{model.hash[:12]}: run `nox -s goldens` and review its diff"
        )
    cases = suites.cases_with_goldens(suite, goldens)
    return SuiteRef(suite.name, suites.suite_digest(suite, goldens), tuple(cases), dict(goldens.tricky))


@dataclass
class Planned:
    """The matrix, the selected components, their version sets and the planned cells."""

    matrix: Matrix
    components: set
    versions: dict
    releases: list
    cells: list[Cell]


def plan_cells(opts: Options, seen: dict | None = None) -> Planned:
    """Load the matrix, select components, discover their versions and plan the cells."""
    from matrix.plan.planner import plan

    matrix = load_matrix(opts)
    components = selected_components(matrix, opts.with_components, opts.only)
    versions, releases = discover(matrix, components, package_index(opts.offline))
    cells = plan(
        matrix,
        versions,
        components=components,
        runners=opts.runners or None,
        models=opts.models or None,
        seen=seen or {},
    )
    return Planned(matrix, components, versions, releases, cells)


def seen_versions() -> dict:
    """Versions earlier runs covered, read without creating or migrating a store."""
    from reports.store import Store

    path = paths.store_path()
    if not path.is_file():
        return {}
    with Store(path, readonly=True) as store:
        return store.seen_versions()


def known_cell_ids() -> set[str]:
    """Cell ids with a stored result other than infra (which is always retried)."""
    from reports.store import Store

    path = paths.store_path()
    if not path.is_file():
        return set()
    with Store(path, readonly=True) as store:
        return {c["cell_id"] for c in store.cells() if c["outcome"] != "infra"}


def prepare(opts: Options) -> Prepared:
    """Load, discover and plan; build the models the cells need; check goldens.

    Writes nothing of the run's state: bad input stops here with nothing written.
    """
    seen = seen_versions()
    if opts.cells:
        matrix = load_matrix(opts)
        cells = [_parse_cell(matrix, c) for c in opts.cells]
        versions, releases = {}, []
    else:
        planned = plan_cells(opts, seen)
        matrix, versions, releases, cells = planned.matrix, planned.versions, planned.releases, planned.cells
    models = {name: build_model(matrix, name) for name in sorted({c.model for c in cells})}
    suites = {name: suite_for(opts.suite, m) for name, m in models.items()}
    suites = with_corpus(matrix, opts, versions, models, suites)
    return Prepared(matrix, versions, releases, cells, suites, models, seen)


def with_corpus(matrix: Matrix, opts: Options, versions: dict, models: dict, suites: dict) -> dict:
    """Each model's suite carrying the run's template corpus (matrix/app/corpus.py), if one is selected."""
    from matrix.app import corpus

    selected = selected_components(matrix, opts.with_components)
    found = corpus.load(matrix, selected, versions, offline=opts.offline)
    names = [c.name for c in corpus.components(matrix, selected)]
    return {name: corpus.attach(matrix, models[name], s, found, names) for name, s in suites.items()}


def _parse_cell(matrix: Matrix, cell_id: str) -> Cell:
    try:
        cell = Cell.parse(cell_id)
    except ValueError as exc:
        raise ConfigError("--cell", "cell", cell_id, str(exc)) from None
    for axis, choice in cell.choices:
        try:
            matrix.component(axis, choice.component)
        except KeyError:
            raise ConfigError(matrix.source, f"axes.{axis}", choice.component, "unknown component") from None
    if cell.runner not in {r.name for r in matrix.runners}:
        raise ConfigError(matrix.source, "runners", cell.runner, "unknown runner")
    return cell


@dataclass
class RunSummary:
    run_id: str
    reports: list[CellReport]
    seconds: float
    regressions: RegressReport | None = None
    """The :class:`bot.regress.RegressReport` of this run, when it had candidates."""
    differences: list[Finding] = field(default_factory=list)
    """Difference findings of this run (:func:`record_differences`)."""
    findings: dict = field(default_factory=dict)
    """How many findings are new, fixed (in this run) and open after it."""

    @property
    def counts(self) -> Counter:
        c = Counter(r.outcome.value for r in self.reports if not r.reused)
        c["reused"] = sum(r.reused for r in self.reports)
        c["executed"] = sum(1 for r in self.reports if not r.reused and r.outcome is not Outcome.UNRESOLVABLE)
        return c


def run_cells(prep: Prepared, opts: Options, store, console=None) -> RunSummary:
    """Resolve and run every cell with progress, then ingest the run in one transaction."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from reports.aggregate import ingest

    started_at, started = now_iso(), time.perf_counter()
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    runner = CellRunner(
        prep.matrix,
        prep.suites,
        prep.models,
        known_keys=store.reusable_keys(),  # infra: retried
        env=opts.env,
    )
    reports: list[CellReport] = []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[current]}"),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("cells", total=len(prep.cells), current="")
        with ThreadPoolExecutor(max_workers=max(1, opts.jobs)) as pool:
            futures = {pool.submit(_one, runner, cell, opts.force): cell for cell in prep.cells}
            for fut in as_completed(futures):
                report = fut.result()
                reports.append(report)
                tag = "reused" if report.reused else report.outcome.value
                progress.update(task, advance=1, current=f"{tag:>12}  {report.cell.id}")
    reports.sort(key=lambda r: r.cell.id)
    new_files = [r.path for r in reports if r.path is not None and not r.reused]
    reused = [r.key for r in reports if r.reused and r.key in runner.known_keys]
    reused_files = [r.path for r in reports if r.reused and r.key not in runner.known_keys and r.path]
    run = {
        "id": run_id,
        "started": started_at,
        "finished": now_iso(),
        "kind": "matrix",
        "meta": {"cells": len(prep.cells), "offline": opts.offline},
    }
    ingest(store, run, new_files + reused_files, reused, prep.releases)
    return RunSummary(run_id, reports, time.perf_counter() - started)


def _one(runner: CellRunner, cell: Cell, force: bool) -> CellReport:
    """One cell, its infra retried once; whatever goes wrong stays this cell's (issue 12)."""
    try:
        report = runner.execute(cell, force=force)
        if report.outcome is Outcome.INFRA and not report.reused:  # infra is retried once, never filed
            report = runner.execute(cell, force=True)
        return report
    except Exception as exc:  # noqa: BLE001 - execute already turns a cell's errors into infra
        return CellReport(cell, Outcome.INFRA, reason=f"llmcompat error in this cell: {type(exc).__name__}: {exc}")


def print_summary(summary: RunSummary, console, site: Path | None) -> None:
    """Plain lines that fit an 80-column log (reports.terminal): no table to wrap or clip."""
    from reports.terminal import cell_lines, final_line

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    say(f"run {summary.run_id}")
    rows = [
        {
            "runner": r.cell.runner,
            "model": r.cell.model,
            **{a: (r.cell.choice(a).component, r.cell.choice(a).version) for a in AXES},
            "outcome": r.outcome.value,
            "reused": r.reused,
            "seconds": r.seconds,
            "stages": {k: (v or {}).get("outcome", "skipped") for k, v in (r.stages or {}).items()},
        }
        for r in summary.reports
    ]
    for line in cell_lines(rows) if rows else []:
        say(line)
    c = summary.counts
    console.print(
        f"[bold]summary[/]: {len(summary.reports)} cells in {summary.seconds:.1f}s: "
        + ", ".join(f"{k} {c.get(k, 0)}" for k in ("pass", "fail", "unresolvable", "infra", "flaky", "skipped"))
        + f", reused {c['reused']}, executed {c['executed']}"
    )
    for r in summary.reports:
        if r.outcome in (Outcome.UNRESOLVABLE, Outcome.INFRA) and not r.reused and r.reason:
            console.print(f"  {r.outcome.value}: {r.cell.id}: {r.reason.splitlines()[-1][:300]}", markup=False)
    if summary.differences:
        console.print(f"differences from the reference path: {len(summary.differences)} finding(s)")
        for f in summary.differences:
            console.print(
                f"  difference {f.fingerprint}: {f.component} {', '.join(f.versions)} ({f.stage}, "
                f"check {f.check_name}, {f.klass}, {len(f.cases)} case(s))",
                markup=False,
            )
    reg = summary.regressions
    if reg is not None:
        console.print(
            f"regressions: {len(reg.findings)} finding(s), {len(reg.flaky)} flaky (quarantined), "
            f"{len(reg.not_reproduced)} not reproduced, {len(reg.requeue)} requeued (infra)"
        )
        for row in reg.findings:
            console.print(
                f"  finding {row['fingerprint']}: {row['component']} {row['last_good']} -> "
                f"{row['first_bad']} ({row['stage']}, case {row['case_id']}) {row.get('compare_url') or ''}",
                markup=False,
            )
    counts = summary.findings or {"new": 0, "fixed": 0, "open": 0}
    say(final_line(str(site / "index.html") if site else None, counts))


def run_job(opts: Options, console=None) -> tuple[RunSummary, Path | None]:
    """Plan, run, ingest and publish; returns the run's summary and the page's directory."""
    from reports.store import Store

    prep = prepare(opts)
    if console is not None:
        console.print(
            f"planned {len(prep.cells)} cells over "
            f"{len({c.runner for c in prep.cells})} runner(s) and {len(prep.models)} model(s)"
        )
    with Store(paths.store_path()) as store:
        summary = run_cells(prep, opts, store, console)
        summary.differences = record_differences(prep.matrix, store, summary.run_id)
        if opts.regress:
            summary.regressions = find_regressions(prep, opts, store, summary.run_id)
            fix_differences(prep, opts, store)
        before_filing(prep.matrix, opts, store, console)
        site = publish_page(store, prep.matrix) if opts.page else None
        summary.findings = finding_counts(store, summary.run_id)
    return summary, site


def finding_counts(store, run_id: str) -> dict[str, int]:
    """New, fixed (both in run ``run_id``) and open findings, for the summary's last line."""
    from reports.terminal import finding_counts as counts

    started = next((r["started"] for r in store.runs() if r["id"] == run_id), "")
    return counts(store.findings(), started)


NOISY_LOGGERS_BELOW = logging.WARNING


def quiet_third_party_logs() -> None:
    """nox sets the root logger to DEBUG: keep other libraries' (urllib3, httpx, filelock...)
    debug and info lines out of the main job's output; warnings and ours still show."""
    ours = ("matrix", "bot", "reports", "llmcompat", "nox")

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= NOISY_LOGGERS_BELOW or record.name.split(".")[0] in ours

    root = logging.getLogger()
    for handler in root.handlers:
        if not any(getattr(f, "llmcompat_quiet", False) for f in handler.filters):
            keep.llmcompat_quiet = True  # type: ignore[attr-defined]
            handler.addFilter(keep)
    for name in ("urllib3", "httpx", "httpcore", "filelock", "huggingface_hub", "fsspec", "asyncio", "docker"):
        logging.getLogger(name).setLevel(max(logging.getLogger(name).level, NOISY_LOGGERS_BELOW))


def before_filing(matrix: Matrix, opts: Options, store, console=None) -> dict:
    """What the bot needs before it files (#15): every open finding triaged against its failing
    package's own metadata, its standalone reproduction run in its bad and good environments
    (again only when its cells changed), and its time-to-fix events (the upload times of the bad
    and the fix release). Returns fingerprint -> :class:`bot.triage.Triage`."""
    from bot import repro, triage, ttf

    verdicts = triage.triage_store(store, matrix)
    repro.verify_store(store, stale_only=True)
    ttf.record(store, matrix, package_index(opts.offline))
    if console is not None and verdicts:
        console.print(f"triage of {len(verdicts)} open finding(s) (only component bugs go upstream):")
        for f in store.findings(status="open"):
            shown = {True: "reproduced", False: "NOT reproduced", None: "no standalone reproduction"}
            console.print(f"  {f.triage} {f.fingerprint} ({shown[f.repro_verified]}): {f.triage_reason}", markup=False)
    return verdicts


def publish_page(store, matrix: Matrix | None = None, site: Path | None = None) -> Path:
    """The site from the store, with the bot's time to fix per project and the standalone
    reproductions (``repro/``) built into it before it is swapped in (reports never import bot)."""
    from bot import ttf
    from reports import page

    stats = [s.as_dict() for s in ttf.summarize(ttf.collect(store, matrix))]
    return page.publish(
        store,
        site or paths.site_dir(),
        ttf=stats,
        results_dir=paths.results_dir(),
        extra=lambda new: write_repro_scripts(store, new),
    )


def write_repro_scripts(store, site: Path) -> dict:
    """Each open finding's standalone reproduction beside the page: ``repro/<fingerprint>.py``."""
    from bot import repro

    cells = {c["key"]: c for c in store.cells()}
    return repro.write_scripts(repro.checked(store, store.findings(status="open")), site / "repro", cells)


def record_differences(matrix: Matrix, store, run_id: str) -> list[Finding]:
    """The run's disagreements with the reference path, as findings (one per component, stage,
    check and class); open differences it ran but no longer shows are marked fixed."""
    from bot.differences import differences, owners_of, resolved

    owners = owners_of(matrix)
    rows = store.case_rows(run_id)
    current = differences(rows, owners)
    fixed = resolved(store.findings(status="open", kind="difference"), rows, current, owners)
    store.save_differences(current, fixed, now_iso())
    return current


def rerun_plan(store, candidates: int) -> tuple[int, int]:
    """(need, of) for confirmation: 2 of 3, raised when the last A/A run measured noise."""
    from bot.confirm import noise_from_aa, plan_reruns

    aa = store.db.execute("SELECT meta FROM runs WHERE kind = 'aa' ORDER BY started DESC LIMIT 1").fetchone()
    if aa is None or candidates == 0:
        return 2, 3
    meta = json.loads(aa[0])
    noise = noise_from_aa(meta.get("aa_rate", 0.0), meta.get("samples", 0))
    return plan_reruns(noise, candidates)


def regression_candidates(store, run_id: str) -> list:
    """The run's candidate regressions: a case that passed in history and fails now."""
    from bot.detect import detect
    from bot.regress import history_records

    records = history_records(store.case_rows())
    current = [r for r in records if r["run"] == run_id and not r["reused"]]
    return [c for c in detect(records, current).candidates if c.kind == "regression"]


def find_regressions(prep: Prepared, opts: Options, store, run_id: str, shard: tuple[int, int] = (0, 1)):
    """Detection against history, confirmation by re-runs, bisection: findings into the store.
    Quarantined cell cases are re-tested too (their reused keys would never run again).
    ``shard`` ``(i, n)``: this job's share of the candidates when n jobs confirm and bisect."""
    from bot.narrow import pipeline_narrower
    from bot.regress import cell_rerunner, index_releases, regress, repo_links, retest_quarantine

    candidates = regression_candidates(store, run_id)[shard[0] :: shard[1]]
    if not candidates and (shard[0] or not store.quarantine(now_iso())):
        return None
    rerun = cell_rerunner(CellRunner(prep.matrix, prep.suites, prep.models))
    try:
        report = None
        if candidates:
            need, of = rerun_plan(store, len(candidates))
            report = regress(
                store,
                run_id,
                rerun=rerun,
                releases=index_releases(prep.matrix, package_index(opts.offline)),
                repos=repo_links(prep.matrix),
                need=need,
                of=of,
                shard=shard,
                narrow=pipeline_narrower,
            )
        if shard[0] == 0:  # one job re-tests the quarantine
            retest_quarantine(store, rerun)
        return report
    finally:
        rerun.cleanup()


def fix_differences(prep: Prepared, opts: Options, store) -> list[dict]:
    """Difference findings this run no longer shows, bisected to their first fixed release on the
    cell they failed in (:func:`bot.regress.bisect_fixes`); the bisection rows stored."""
    from bot.regress import bisect_fixes, cell_rerunner, index_releases, repo_links

    if all(f.last_bad for f in store.findings(status="fixed", kind="difference")):
        return []
    rerun = cell_rerunner(CellRunner(prep.matrix, prep.suites, prep.models), checks=True)
    try:
        return bisect_fixes(
            store,
            rerun=rerun,
            releases=index_releases(prep.matrix, package_index(opts.offline)),
            repos=repo_links(prep.matrix),
        )
    finally:
        rerun.cleanup()


def aa_run(opts: Options, console=None) -> dict:
    """A/A: run every planned cell twice, fresh; the spurious rate is stored for confirmation."""
    from bot.confirm import aa_spurious_rate
    from bot.regress import cell_rerunner
    from reports.store import Store

    prep = prepare(opts)
    rerun = cell_rerunner(CellRunner(prep.matrix, prep.suites, prep.models))
    pairs = []
    try:
        for cell in prep.cells:
            a, b = rerun(cell.id), rerun(cell.id)
            if isinstance(a, dict) and isinstance(b, dict):
                pairs.append((a, b))
    finally:
        rerun.cleanup()
    samples = sum(len(a.keys() & b.keys()) for a, b in pairs)
    meta = {"aa_rate": aa_spurious_rate(pairs), "samples": samples, "cells": len(prep.cells)}
    run_id = "aa-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    with Store(paths.store_path()) as store:
        store.ingest_run(
            {"id": run_id, "started": now_iso(), "finished": now_iso(), "kind": "aa", "meta": meta}, [], []
        )
    return meta


def bot_dry_run(opts: Options, out=None) -> None:
    """What the GitHub bot would file after this run (``--bot-dry-run``): no token, no network."""
    from bot.github.run import BotOptions, run
    from reports.store import Store

    with Store(paths.store_path(), readonly=True) as store:
        run(store, load_matrix(opts), BotOptions(dry_run=True), out=out)


def main_job(opts: Options, console=None) -> int:
    """The README's first command ends here: run the default matrix and publish the page."""
    from rich.console import Console

    console = console or Console()
    quiet_third_party_logs()
    summary, site = run_job(opts, console)
    print_summary(summary, console, site)
    if opts.bot_dry_run:
        bot_dry_run(opts)
    if os.environ.get("GITHUB_STEP_SUMMARY"):
        with Path(os.environ["GITHUB_STEP_SUMMARY"]).open("a") as f:
            f.write(json.dumps(dict(summary.counts), sort_keys=True) + "\n")
    return 0
