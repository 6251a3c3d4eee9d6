"""One bot run: gather the store's findings and evidence, list the issues, decide, apply, record.

The decision is :func:`bot.github.decide.decide`; this module only collects its inputs and
carries out its actions through :class:`bot.github.client.Remote`, recording each in the store
right after GitHub confirmed it. ``--dry-run`` reads the issues from the store's cache instead
(no token, no network) and prints the actions: one line per action starting with its word (then
the title), the body indented below it.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path

from bot.differences import owners_of
from bot.github import body as bodies
from bot.github.connection import Connection
from bot.github.decide import Context, Issue, Plan, Settings, decide, digest
from bot.github.evidence import evidence
from matrix import scratch
from matrix.errors import LlmcompatError

__all__ = ["BotOptions", "build_parser", "cmd_bot", "contexts", "run"]


@dataclass
class BotOptions:
    repo: str | None = None
    dry_run: bool = False
    max_new: int = 5
    label: str = "llmcompat"
    page_url: str | None = None
    app_id: str | None = None
    app_key_file: str | None = None
    installation_id: str | None = None
    conn: Connection = field(default_factory=Connection)


def _now() -> str:
    from matrix.cell.run import now_iso

    return now_iso()


def _triage_of(f):
    """The stored triage of ``f`` (``triage``/``triage_reason`` columns), else None."""
    verdict = getattr(f, "triage", "") or ""
    if not verdict:
        return None
    from bot.triage import Triage

    try:
        return Triage(verdict, getattr(f, "triage_reason", "") or "", verdict == "component-bug")
    except ValueError:
        return None


def _script(f, cell_row) -> str | None:
    """The standalone reproduction (bot.repro); None where it cannot be made here."""
    try:
        from bot import repro
    except ImportError:
        return None
    try:
        return repro.script(f, cell_row=cell_row)
    except Exception:  # noqa: BLE001 - a finding it cannot script has no script, not a failed run
        return None


def _decoded(f, cell_row) -> dict[str, str]:
    """The divergence's token ids as text, decoded by the cell model's own tokenizer file (where
    ``tokenizers`` and the built tiny model are here; else nothing)."""
    d = bodies.divergence(f.detail)
    if d is None or cell_row is None or not d.expected.startswith("["):
        return {}
    try:
        from tokenizers import Tokenizer

        from bot.repro import _model_dir_for  # the one lookup of a built model by its hash

        model_dir = _model_dir_for(cell_row.get("model_hash") or "", cell_row.get("model") or "")
        if model_dir is None:
            return {}
        tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    except Exception:  # noqa: BLE001 - no tokenizer here: ids without text
        return {}
    out = {}
    for text in (d.expected, d.actual):
        try:
            out[text] = tok.decode([int(i) for i in json.loads(text)], skip_special_tokens=False)
        except (ValueError, TypeError, OverflowError):
            continue
    return out


def contexts(store, matrix, findings, triages=None) -> dict[str, Context]:
    """Per finding: its evidence from the run history, triage and standalone reproduction."""
    kinds = {r["id"]: r["kind"] for r in store.runs()}
    ev = evidence(findings, store.case_rows(), owners_of(matrix), kinds)
    triages = triages or {}
    cells = {c["key"]: c for c in store.cells()}
    return {
        f.fingerprint: Context(
            evidence=ev[f.fingerprint],
            triage=triages.get(f.fingerprint) or _triage_of(f),
            flake=f.flake or None,
            script=_script(f, cells.get(f.bad_key)) if f.status == "open" else None,
            decoded=_decoded(f, cells.get(f.bad_key)) if f.status == "open" else {},
        )
        for f in findings
    }


def _cached(store) -> tuple[list[Issue], dict[str, set[str]], list[tuple[str, str]]]:
    """What the store remembers of GitHub: issues (as markers), labels, the queue."""
    issues, queued = [], []
    try:
        rows, labels = store.bot_states(), store.bot_labels()
    except sqlite3.OperationalError:  # a read-only store from before the bot's migration: nothing cached
        return [], {}, []
    for row in rows:
        if row["queued"]:
            queued.append((row["fingerprint"], row["repo"]))
        if row["number"] is not None:
            body = bodies.marker("finding", {"fp": row["fingerprint"], "state": row["state"]})
            issues.append(
                Issue(
                    row["repo"],
                    row["number"],
                    row["title"],
                    body,
                    row["issue_state"],
                    tuple(row["labels"]),
                    digest=row["state_hash"] or None,
                )
            )
    return issues, labels, queued


def _own_repo(opts: BotOptions, env) -> str:
    repo = opts.repo or env.get("GITHUB_REPOSITORY")
    if not repo:
        if opts.dry_run:
            return "OWNER/NAME"
        raise LlmcompatError("no repository: give --repo OWNER/NAME or set GITHUB_REPOSITORY")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise LlmcompatError(f"--repo: {repo!r} is not OWNER/NAME")
    return repo


def settings_for(matrix, opts: BotOptions, env, now: str) -> Settings:
    upstream = {c.name: c.repo for comps in matrix.axes.values() for c in comps if c.upstream_issues and c.repo}
    return Settings(
        repo=_own_repo(opts, env),
        now=now,
        label=opts.label,
        close_after=matrix.bot.close_after,
        max_new=opts.max_new,
        page_url=opts.page_url,
        upstream=upstream,
    )


def print_plan(plan: Plan, settings: Settings, out) -> None:
    for a in plan.actions:
        if a.verb == "label-create":
            print(f"label-create {a.repo}: {a.title}", file=out)
            continue
        where = f"{a.repo}#{a.number}" if a.number else a.repo
        print(f"{a.verb} {where}: {a.title}", file=out)
        for line in a.body.splitlines():
            print(f"    {line}", file=out)
    for fp, repo in plan.queued:
        print(f"queued {repo}: finding {fp} (over the cap of {settings.max_new} new issues per run)", file=out)


def run(store, matrix, opts: BotOptions, out=None, env=None, remote=None) -> Plan:
    """One bot run over ``store``; returns the plan it carried out (or, dry, printed)."""
    out = out or sys.stdout
    env = os.environ if env is None else env
    now = _now()
    settings = settings_for(matrix, opts, env, now)
    findings = store.findings()
    untriaged = [f for f in findings if f.status == "open" and not getattr(f, "triage", "")]
    triages = _live_triage(store, matrix, untriaged, out) if untriaged and not opts.dry_run else None
    ctx = contexts(store, matrix, findings, triages)
    if opts.dry_run:
        issues, labels, queued = _cached(store)
        plan = decide(findings, ctx, issues, labels, queued, settings)
        print_plan(plan, settings, out)
        return plan
    states = {(r["fingerprint"], r["repo"]): r for r in store.bot_states()}
    if remote is None:
        from bot.github.client import Remote, auth_from_env, connect

        auth = auth_from_env(env, opts.app_id, opts.app_key_file, opts.installation_id)
        remote = Remote(connect(auth, opts.conn), opts.conn, auth)
    repos = {settings.repo} | set(settings.upstream.values())
    issues, labels = [], {}
    for repo in sorted(repos):
        own = repo == settings.repo
        if (
            not own
            and not any(st["repo"] == repo for st in states.values())
            and not _may_go(findings, ctx, settings, repo)
        ):
            continue
        issues += remote.issues(repo, settings.label if own else None, None if own else remote.login)
        labels[repo] = remote.labels(repo) if own else set()
    queued = [(r["fingerprint"], r["repo"]) for r in states.values() if r["queued"]]
    plan = decide(findings, ctx, issues, labels, queued, settings)
    _record_found(store, plan, states, now)
    _apply(store, remote, plan, settings, states, ctx, out, now)
    return plan


def _may_go(findings, ctx, settings, repo) -> bool:
    from bot.github.decide import targets

    return any(r == repo for f in findings for r, _ in targets(f, ctx[f.fingerprint], settings))


def _live_triage(store, matrix, findings, out):
    try:
        from bot.triage import triage_store

        return triage_store(store, matrix, findings)
    except Exception as exc:  # noqa: BLE001 - no triage is "not triaged", not a failed run
        print(f"bot: triage skipped: {type(exc).__name__}: {exc}", file=out)
        return None


def _record_found(store, plan: Plan, states, now: str) -> None:
    """Issues the markers name that the store does not know (a crash came after creating one)."""
    rows = []
    for (fp, repo), issue in plan.found.items():
        st = states.get((fp, repo))
        if st is None or st["number"] != issue.number:
            store.add_issue(fp, repo, issue.number, issue.url, now, issue.state)
            rows.append(_row(fp, repo, issue, now))
    store.save_bot_state(rows)


def _row(fp: str, repo: str, issue: Issue, now: str, **extra) -> dict:
    m = issue.marker or {}
    return {
        "fingerprint": fp,
        "repo": repo,
        "number": issue.number,
        "title": issue.title,
        "state": m.get("state", {}),
        "state_hash": digest(issue.body),
        "issue_state": issue.state,
        "labels": list(issue.labels),
        "queued": 0,
        "updated": now,
        **extra,
    }


def _apply(store, remote, plan: Plan, settings: Settings, states, ctx, out, now: str) -> None:
    for a in plan.actions:
        where = f"{a.repo}#{a.number}" if a.number else a.repo
        if a.verb == "label-create":
            remote.create_label(a)
            store.save_bot_state([], [(a.repo, a.title)])
            print(f"label-create {a.repo}: {a.title}", file=out)
            continue
        fp = a.need_fingerprint()
        streak = ctx[fp].evidence.passing_runs
        if a.verb == "create":
            own = a.repo == settings.repo
            issue = remote.create(a, settings.label if own else None, None if own else remote.login)
            store.add_issue(fp, a.repo, issue.number, issue.url, now)
            store.save_bot_state([_row(fp, a.repo, issue, now, passing_runs=streak)])
            where = f"{a.repo}#{issue.number}"
        elif a.verb == "comment":
            remote.comment(a)
        else:
            remote.edit(a)
            issue_state = "closed" if a.verb == "close" else "open"
            if a.verb == "close":
                store.close_issue(a.repo, a.number, now)
            elif a.verb == "reopen":
                store.reopen_issue(a.repo, a.number)
            st = states.get((a.fingerprint, a.repo)) or {}
            labels = list(a.labels) if a.labels is not None else st.get("labels", [])
            issue = Issue(a.repo, a.need_number(), a.title, a.body, issue_state, tuple(labels))
            store.save_bot_state([_row(fp, a.repo, issue, now, passing_runs=streak)])
        print(f"{a.verb} {where}: {a.title}", file=out)
    since = {(r["fingerprint"], r["repo"]): r.get("queued_since") for r in states.values()}
    store.save_bot_state(
        [
            {"fingerprint": fp, "repo": repo, "queued": 1, "queued_since": since.get((fp, repo)) or now, "updated": now}
            for fp, repo in plan.queued
        ]
    )
    for fp, repo in plan.queued:
        print(f"queued {repo}: finding {fp} (over the cap of {settings.max_new} new issues per run)", file=out)


def _readable(path):
    """The store for a dry run, never written: read-only, or, when it predates this llmcompat's
    migrations, a migrated copy in a temporary file."""
    import tempfile

    from reports.store import MIGRATIONS, Store

    store = Store(path, readonly=True)
    if store.version >= len(MIGRATIONS):
        return store
    copy = Path(tempfile.mkdtemp(prefix="llmcompat-bot-dry-", dir=scratch.directory())) / "store.sqlite"
    target = sqlite3.connect(copy)
    store.db.backup(target)
    target.close()
    store.close()
    return Store(copy)


# ---- command line -----------------------------------------------------------------------------
def build_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", help="the bot's own repository OWNER/NAME (default: $GITHUB_REPOSITORY)")
    p.add_argument("--api-url", default=None, help="REST API root, for GitHub Enterprise (https://HOST/api/v3)")
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be created, updated, commented, closed or reopened; no token, no network",
    )
    p.add_argument("--max-new", type=int, default=5, help="new issues per run at most; the rest wait (default 5)")
    p.add_argument("--label", default="llmcompat", help="the bot's own label (default llmcompat)")
    p.add_argument("--page-url", help="the published page's URL, for links to findings")
    p.add_argument("--app-id", help="GitHub App id (with --app-key-file and --installation-id; else $GITHUB_TOKEN)")
    p.add_argument("--app-key-file", help="the App's private key (PEM file)")
    p.add_argument("--installation-id", help="the App's installation id")
    p.add_argument("--axes", help="the matrix file (default: matrix/axes.yaml)")
    p.add_argument("--backoff", type=float, default=1.0, help="retry backoff factor in seconds (default 1)")
    p.add_argument(
        "--secondary-wait",
        type=float,
        default=60.0,
        help="seconds to wait on GitHub's secondary rate limit without Retry-After (default 60)",
    )
    p.add_argument(
        "--no-throttle",
        action="store_true",
        help="no pause between requests (GitHub asks for 1 s between writes; for local servers)",
    )


def options_from(args) -> BotOptions:
    conn = Connection(
        api_url=args.api_url or os.environ.get("GITHUB_API_URL") or Connection.api_url,
        backoff=args.backoff,
        secondary_wait=args.secondary_wait,
        throttle=not args.no_throttle,
    )
    return BotOptions(
        repo=args.repo,
        dry_run=args.dry_run,
        max_new=args.max_new,
        label=args.label,
        page_url=args.page_url,
        app_id=args.app_id,
        app_key_file=args.app_key_file,
        installation_id=args.installation_id,
        conn=conn,
    )


def cmd_bot(args) -> int:
    from github import GithubException

    from matrix import paths
    from matrix.declare.loader import load, load_default
    from reports.store import Store

    opts = options_from(args)
    matrix = load(args.axes) if args.axes else load_default()
    if opts.dry_run:
        if not paths.store_path().exists():
            print("bot: no store yet: nothing to file", file=sys.stderr)
            return 0
        store = _readable(paths.store_path())
    else:
        store = Store(paths.store_path())
    with store:
        try:
            run(store, matrix, opts)
        except GithubException as exc:  # the status and GitHub's message; never the request's headers
            message = exc.data.get("message") if isinstance(exc.data, dict) else exc.data
            raise LlmcompatError(f"GitHub answered {exc.status}: {message}") from None
    return 0


__all__ += ["options_from", "print_plan", "settings_for"]
