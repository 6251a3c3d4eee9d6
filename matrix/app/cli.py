"""Command line: ``llmcompat run|aa|bisect|plan|gha-matrix|ingest|goldens|report|endpoint``.

The nox sessions call these same functions; the CLI exists so that every result can be
reproduced from one printed command, with or without nox. Errors of llmcompat itself
(bad input, missing goldens) exit 2 with one line naming the file, field and value.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from pathlib import Path

from matrix.errors import LlmcompatError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--axes",
        type=Path,
        default=os.environ.get("LLMCOMPAT_AXES") or None,
        help="the matrix file (default: $LLMCOMPAT_AXES, else matrix/axes.yaml)",
    )
    p.add_argument("--offline", action="store_true", help="use the cached package index only")
    p.add_argument(
        "--with",
        dest="with_components",
        action="append",
        default=[],
        metavar="AXIS/NAME",
        help="add an opt-in component, e.g. engine/llama-cpp-python (repeatable)",
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="AXIS/NAME",
        help="on that axis, test just this component, e.g. client/openai (repeatable)",
    )
    p.add_argument("--runner", dest="runners", action="append", default=[], help="plan for this runner (repeatable)")
    p.add_argument("--model", dest="models", action="append", default=[], help="plan for this model (repeatable)")


def _options(args):
    from matrix.app.job import Options

    return Options(
        axes_file=args.axes,
        offline=args.offline,
        with_components=tuple(args.with_components),
        only=tuple(getattr(args, "only", ()) or ()),
        runners=tuple(args.runners),
        models=tuple(args.models),
        cells=tuple(getattr(args, "cells", ()) or ()),
        jobs=getattr(args, "jobs", 2),
        force=getattr(args, "force", False),
        page=not getattr(args, "no_page", False),
        regress=not getattr(args, "no_regress", False),
        bot_dry_run=getattr(args, "bot_dry_run", False),
        env=getattr(args, "env", None),
    )


def cmd_run(args) -> int:
    from matrix import paths
    from matrix.app.job import main_job
    from matrix.app.preflight import check_state

    check_state(cache=True, site=None if args.no_page else paths.site_dir())  # before any work starts
    return main_job(_options(args))


def cmd_images(args) -> int:
    from matrix.app.images import build_images

    return build_images(_options(args))


def cmd_aa(args) -> int:
    from matrix.app.job import aa_run
    from matrix.app.preflight import check_state

    check_state(cache=True)
    meta = aa_run(_options(args))
    print(f"A/A over {meta['cells']} cells: {meta['samples']} (case, stage) pairs, spurious rate {meta['aa_rate']:.4f}")
    return 0


def cmd_plan(args) -> int:
    from matrix.app.job import plan_cells
    from matrix.plan.planner import coverage_report

    opts = _options(args)
    planned = plan_cells(opts)
    matrix, components, versions, cells = planned.matrix, planned.components, planned.versions, planned.cells
    if args.json:
        print(json.dumps([c.to_json() for c in cells], indent=1))
    else:
        for (axis, name), vs in sorted(versions.items()):
            print(f"{axis}/{name}: {', '.join(vs)}")
        for c in cells:
            print(f"{c.id}    [{', '.join(c.reasons)}]")
    report = coverage_report(
        matrix, versions, cells, components=components, runners=opts.runners or None, models=opts.models or None
    )
    missing = report.get("missing") or []
    print(f"{len(cells)} cells; pairs covered {report.get('covered')}/{report.get('allowed')}", file=sys.stderr)
    return 1 if missing else 0


def cmd_gha_matrix(args) -> int:
    from matrix.app.job import known_cell_ids, plan_cells, seen_versions
    from matrix.plan.planner import github_matrix

    planned = plan_cells(_options(args), seen_versions())  # sweeps: releases the history has not seen
    cells = planned.cells
    if args.skip_known:
        known = known_cell_ids()
        cells = [c for c in cells if c.id not in known]
        print(
            f"{len(planned.cells) - len(cells)} of {len(planned.cells)} planned cells already have a result: skipped",
            file=sys.stderr,
        )
    matrices = github_matrix(cells, planned.matrix, max_jobs=args.max_jobs)
    if len(matrices) > args.shards:
        raise LlmcompatError(
            f"the plan needs {len(matrices)} matrices of at most {args.max_jobs} jobs; "
            f"the workflow has {args.shards} shard jobs: raise --shards and add jobs"
        )
    print(json.dumps(matrices, separators=(",", ":")))
    output = os.environ.get("GITHUB_OUTPUT")
    if output:  # one output per shard job; empty shards are skipped by the workflow
        with open(output, "a", encoding="utf-8") as f:
            for i in range(args.shards):
                m = matrices[i] if i < len(matrices) else {"include": []}
                f.write(f"shard-{i}={json.dumps(m, separators=(',', ':'))}\n")
            f.write(f"shards={len(matrices)}\n")
    return 0


def cmd_ingest(args) -> int:
    """Ingest result files made elsewhere (GitHub Actions shard jobs) as one run."""
    from matrix import paths
    from matrix.app.job import find_regressions, load_matrix, prepare, record_differences
    from matrix.app.preflight import check_state
    from matrix.cell.run import now_iso
    from reports.aggregate import ingest, result_files
    from reports.store import RunExists, Store

    opts = _options(args)
    files = result_files(args.dirs)  # a missing path, a file or an empty directory: exit 2, nothing stored
    check_state()
    run_id: str = args.run_id or unique_run_id("ingest")
    run = {"id": run_id, "started": now_iso(), "finished": now_iso(), "kind": "ingest", "meta": {"files": len(files)}}
    with Store(paths.store_path()) as store:
        if store.has_run(run_id):
            raise RunExists(run_id)
        known = store.reusable_keys()  # an infra result in the store is replaced, not "already known"
        new = [f for f in files if f.stem not in known]
        n = ingest(store, run, new, [f.stem for f in files if f.stem in known])
        print(f"ingested {n} new cell results ({len(files) - len(new)} already known) as run {run_id}")
        diffs = record_differences(load_matrix(opts), store, run_id)
        print(f"differences from the reference path: {len(diffs)} finding(s)")
        if args.regress:
            report = find_regressions(prepare(opts), opts, store, run_id)
            found = report.findings if report is not None else []
            print(f"regressions: {len(found)} finding(s)")
            for f in found:
                print(
                    f"  finding {f['fingerprint']}: {f['component']} {f['last_good']} -> {f['first_bad']} "
                    f"({f['stage']}, case {f['case_id']}) {f.get('compare_url') or ''}"
                )
            from rich.console import Console

            from matrix.app.job import before_filing

            before_filing(load_matrix(opts), opts, store, Console())  # triage, reproductions, time to fix (#15)
    return 0


def cmd_goldens(args) -> int:
    from matrix.app.goldens import regenerate

    return regenerate(_options(args), check=args.check)


def cmd_ttf(args) -> int:
    from bot.ttf import cmd_ttf as ttf

    return ttf(args)


def cmd_endpoint(args) -> int:
    """The user's path and the client stage against any OpenAI-compatible server (#16)."""
    from matrix.app import endpoint

    return endpoint.run(endpoint.from_args(args), as_json=args.json)


def cmd_report(args) -> int:
    from matrix import paths
    from matrix.app.preflight import check_state
    from reports.store import Store

    check_state(site=args.site or paths.site_dir())
    from matrix.app.job import Options, load_matrix, publish_page

    with Store(paths.store_path()) as store:
        # with the standalone reproductions (#15, repro/<fingerprint>.py) and the bot's time to fix
        site = publish_page(store, load_matrix(Options()), args.site or paths.site_dir())
    print(site / "index.html")
    return 0


def unique_run_id(kind: str) -> str:
    """A run id no other run gets, even two started in the same second: time plus a random part."""
    import time
    import uuid

    return f"{kind}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"


def cmd_store_rebuild(args) -> int:
    """A fresh store from the result files (results are files; the store derives from them).
    The old store, damaged or not, is kept aside under a new name, never overwritten."""
    from matrix import paths
    from matrix.app.preflight import check_state
    from matrix.cell.run import now_iso
    from reports.aggregate import rebuild

    check_state()
    results = args.results or paths.results_dir()
    run = {
        "id": unique_run_id("rebuild"),
        "started": now_iso(),
        "finished": now_iso(),
        "kind": "rebuild",
        "meta": {"results": str(results)},
    }
    aside, n, skipped = rebuild(paths.store_path(), results, run)
    for problem in skipped:
        print(f"skipped: {problem}", file=sys.stderr)
    print(
        f"rebuilt {paths.store_path()} from {n} result file(s) under {results} as run {run['id']}"
        + (f"; {len(skipped)} unreadable file(s) skipped" if skipped else "")
    )
    if aside is not None:
        print(
            f"the previous store is kept as {aside} (its findings, bisections and issues are not in the "
            f"result files: the next run finds the differences and regressions again)"
        )
    return 0


def cmd_history(args) -> int:
    """The store's durable history on a git data branch (GitHub Actions keeps nothing between runs)."""
    import subprocess

    from matrix import paths
    from reports import history

    remote = args.remote
    if args.action != "merge" and "/" not in remote and ":" not in remote:  # a remote's name in this checkout: its URL
        proc = subprocess.run(["git", "remote", "get-url", remote], capture_output=True, text=True)
        if proc.returncode:
            raise LlmcompatError(f"--remote {remote!r}: not a remote of this checkout ({proc.stderr.strip()})")
        remote = proc.stdout.strip()
    store = paths.store_path()
    if args.action == "merge":
        for other in args.stores:
            added = history.merge(store, other)
            print(f"merged {other}: {sum(added.values())} rows added")
        return 0
    if args.action == "pull":
        if store.exists() and not args.replace:
            raise LlmcompatError(f"{store} exists: pass --replace to rebuild it from {args.branch}")
        found = history.pull(remote, args.branch, store)
        print(f"store rebuilt from {args.branch}" if found else f"{args.branch} has no history yet: starting empty")
    else:
        if not store.exists():
            raise LlmcompatError(f"{store}: no store to push")
        sha = history.push(remote, args.branch, store, args.message or "llmcompat: store after run")
        print(f"{args.branch} at {sha}")
    return 0


def _run_id(store, run_id: str | None) -> str:
    runs = store.runs()
    if run_id is None:
        if not runs:
            raise LlmcompatError("the store has no run yet")
        return max(runs, key=lambda r: r["started"])["id"]
    if run_id not in {r["id"] for r in runs}:
        raise LlmcompatError(f"--run-id {run_id!r}: no such run in the store")
    return run_id


def _shard(text: str) -> tuple[int, int]:
    i, sep, n = text.partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 0 <= int(i) < int(n)):
        raise argparse.ArgumentTypeError(f"{text!r}: expected I/N with 0 <= I < N")
    return int(i), int(n)


def cmd_regress(args) -> int:
    """Confirm and bisect a run's candidate regressions: all of them, or one job's share."""
    from matrix import paths
    from matrix.app.actions import regress_matrix
    from matrix.app.job import find_regressions, prepare, regression_candidates
    from reports.store import Store

    opts = _options(args)
    with Store(paths.store_path()) as store:
        run_id = _run_id(store, args.run_id)
        if args.plan_jobs:
            m = regress_matrix(len(regression_candidates(store, run_id)), args.plan_jobs)
            print(json.dumps(m, separators=(",", ":")))
            if os.environ.get("GITHUB_OUTPUT"):
                with open(os.environ["GITHUB_OUTPUT"], "a", encoding="utf-8") as f:
                    f.write(f"regress={json.dumps(m, separators=(',', ':'))}\n")
            return 0
        report = find_regressions(prepare(opts), opts, store, run_id, shard=args.shard)
        found = report.findings if report is not None else []
        print(f"regressions (shard {args.shard[0]}/{args.shard[1]}): {len(found)} finding(s)")
    return 0


def cmd_summary(args) -> int:
    """A run's headline: printed, and in GitHub Actions the step summary and annotations."""
    from matrix import paths
    from matrix.app.actions import headline, markdown, workflow_commands
    from matrix.app.job import regression_candidates
    from reports.store import Store

    with Store(paths.store_path(), readonly=True) as store:
        run_id = _run_id(store, args.run_id)
        run = next(r for r in store.runs() if r["id"] == run_id)
        candidates = len(regression_candidates(store, run_id)) if args.regressed else None
        h = headline(run, store.cells(run_id), store.findings(), candidates)
    text = markdown(h)
    print(text)
    if args.github:
        for line in workflow_commands(h):
            print(line)
        if os.environ.get("GITHUB_STEP_SUMMARY"):
            with open(os.environ["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as f:
                f.write(text + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmcompat", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the planned matrix (or --cell ids), ingest, publish the page")
    _common(p)
    p.add_argument("--cell", dest="cells", action="append", default=[], help="run this cell id only (repeatable)")
    p.add_argument("--jobs", type=int, default=2, help="cells run at once (default 2)")
    p.add_argument("--force", action="store_true", help="run cells even when their key has a result")
    p.add_argument("--no-page", action="store_true", help="do not publish the page")
    p.add_argument("--no-regress", action="store_true", help="do not look for regressions after the run")
    p.add_argument(
        "--bot-dry-run", action="store_true", help="then print what the GitHub bot would file (no token, no network)"
    )
    p.add_argument(
        "--env",
        choices=["uv", "image"],
        help="run every cell in a uv environment or in its container image (default: the runner's)",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("images", help="build the planned cells' container images (or --cell ids) without running them")
    _common(p)
    p.add_argument("--cell", dest="cells", action="append", default=[], help="this cell id only (repeatable)")
    p.add_argument("--force", action="store_true", help="build again (through the layer cache) even when it exists")
    p.set_defaults(func=cmd_images)

    p = sub.add_parser("aa", help="A/A: run the planned cells twice to measure the spurious rate")
    _common(p)
    p.set_defaults(func=cmd_aa)

    p = sub.add_parser("bisect", help="bisect a package's releases with a check script (exit 0 good, 1 bad, 125 skip)")
    from bot.bisect_cmd import build_parser as bisect_parser
    from bot.bisect_cmd import cmd_bisect

    bisect_parser(p)
    p.set_defaults(func=cmd_bisect)

    p = sub.add_parser("plan", help="print the planned cells and check pair coverage")
    _common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("gha-matrix", help="print GitHub Actions matrices (JSON) for the plan")
    _common(p)
    p.add_argument("--max-jobs", type=int, default=256)
    p.add_argument("--shards", type=int, default=4, help="shard jobs in the workflow (default 4)")
    p.add_argument(
        "--skip-known",
        action="store_true",
        help="leave out cells whose id already has a result (not infra) in the store",
    )
    p.set_defaults(func=cmd_gha_matrix)

    p = sub.add_parser("ingest", help="ingest result files (from shard jobs) into the store as one run")
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--run-id")
    p.add_argument(
        "--regress",
        action="store_true",
        help="then look for regressions: confirm by re-running cells on this machine, and bisect",
    )
    _common(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("goldens", help="regenerate goldens with the reference path and print the diff")
    _common(p)
    p.add_argument("--check", action="store_true", help="fail (exit 1) when goldens would change")
    p.set_defaults(func=cmd_goldens)

    p = sub.add_parser("history", help="pull the store from, or push it to, the git data branch")
    p.add_argument("action", choices=["pull", "push", "merge"])
    p.add_argument("stores", nargs="*", type=Path, help="merge: stores whose rows to add (regress shards)")
    p.add_argument("--remote", default="origin", help="git remote name or URL (default: origin)")
    p.add_argument("--branch", default="llmcompat-data", help="the data branch (default: llmcompat-data)")
    p.add_argument("--message", help="commit message for push")
    p.add_argument("--replace", action="store_true", help="pull over an existing store")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("regress", help="confirm and bisect a run's candidate regressions (or one shard of them)")
    _common(p)
    p.add_argument("--run-id", help="the run (default: the latest)")
    p.add_argument("--shard", type=_shard, default=(0, 1), metavar="I/N", help="this job's share (default 0/1)")
    p.add_argument(
        "--plan-jobs",
        type=int,
        metavar="N",
        help="print the fan-out matrix for at most N jobs (GitHub output `regress`) and stop",
    )
    p.set_defaults(func=cmd_regress)

    p = sub.add_parser("summary", help="a run's headline; --github adds the step summary and annotations")
    p.add_argument("--run-id", help="the run (default: the latest)")
    p.add_argument("--regressed", action="store_true", help="count spurious candidates (after regress)")
    p.add_argument("--github", action="store_true")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("bot", help="file, update, close and reopen GitHub issues for the store's findings")
    from bot.github.run import build_parser as bot_parser
    from bot.github.run import cmd_bot

    bot_parser(p)
    p.set_defaults(func=cmd_bot)

    p = sub.add_parser("report", help="publish the page from the store")
    p.add_argument("--site", type=Path)
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "endpoint", help="check any OpenAI-compatible server on one of the project's models: user path, client SDKs"
    )
    from matrix.app.endpoint import build_parser as endpoint_parser

    endpoint_parser(p)
    p.set_defaults(func=cmd_endpoint)

    p = sub.add_parser("ttf", help="time to fix per project: exposure, detection delay, time to close (#15)")
    p.add_argument("--json", action="store_true", help="every finding's timeline and the per-project figures as JSON")
    p.add_argument("--axes", type=Path, help="the matrix file (default: matrix/axes.yaml): projects and packages")
    p.add_argument("--offline", action="store_true", help="use the cached package index only (upload times)")
    p.set_defaults(func=cmd_ttf)

    p = sub.add_parser("store", help="store maintenance: `store rebuild` re-ingests the result files")
    p.add_argument("action", choices=["rebuild"])
    p.add_argument("--results", type=Path, help="the result files (default: the state directory's results/)")
    p.set_defaults(func=cmd_store_rebuild)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LlmcompatError as exc:
        print(f"llmcompat: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("llmcompat: interrupted", file=sys.stderr)
        return 130
    except sqlite3.DatabaseError as exc:  # damage found after the store opened sound
        if type(exc) is not sqlite3.DatabaseError and "malformed" not in str(exc):
            raise
        from matrix import paths
        from reports.store import StoreDamaged

        print(f"llmcompat: error: {StoreDamaged(paths.store_path(), str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
