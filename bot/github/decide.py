"""What to file, update, comment, close and reopen: one pure function of plain data.

Inputs: the store's findings (typed records), per finding what the bot knows beside it
(:class:`Context`: evidence from the run history, triage, the standalone reproduction), the
issues listed from GitHub (:class:`Issue`, found by the bot's label or as its own, and matched to
findings by the hidden marker in the body, never by the search API), the labels each repository
has, and the bot's queue. Output: the ordered :class:`Action` list and the new queue.

Rules (issue #15):

- one issue per fingerprint per target repository; the body is rewritten to the current state;
- a comment only when the state changes (a new or narrowed range, new affected cells or versions,
  fixed, failing again, reopened, closed), never on an unchanged run; a comment carries a marker
  of the change it reports, so a crash between commenting and rewriting the body never posts
  it twice (the comment goes first, then the body: nothing is lost either);
- close on evidence only (:mod:`bot.github.evidence`): N consecutive scheduled runs in which a
  release newer than first bad passed; not while a person commented in the last 14 days, nor
  with the keep-open label;
- reopen only a bot-closed issue, and only on a failure seen at or after the fixing release,
  in a run after the close;
- routing: the bot's own repository always; an upstream repository too only when the component
  is allowlisted in axes.yaml, triage says ``component-bug`` and the standalone reproduction was
  verified;
- at most ``max_new`` issues created per run, the rest queued (queued ones go first next time);
- missing labels (stage, axis, component, failure class, the bot's own, keep-open) created first.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bot.github import body as bodies
from bot.github import escape
from bot.github.evidence import Evidence, newer, vkey
from bot.triage import Triage
from matrix.outcome import failure_class

__all__ = [
    "Action",
    "Comment",
    "Context",
    "Issue",
    "Plan",
    "Settings",
    "changes",
    "decide",
    "labels_for",
    "state_of",
    "targets",
]

VERBS = ("label-create", "create", "update", "comment", "close", "reopen")
STATE_VERSIONS = 50


@dataclass(frozen=True)
class Comment:
    author: str
    body: str
    created: str
    is_bot: bool = False


@dataclass(frozen=True)
class Issue:
    """One issue as listed from GitHub (plain data)."""

    repo: str
    number: int
    title: str
    body: str
    state: str = "open"
    labels: tuple[str, ...] = ()
    comments: tuple[Comment, ...] = ()
    closed_at: str | None = None
    url: str = ""
    digest: str | None = None
    """The body's :func:`digest` when the body itself is not at hand (a dry run reads the store's cache)."""

    @property
    def marker(self) -> dict | None:
        return bodies.parse_marker(self.body, "finding")


@dataclass(frozen=True)
class Context:
    """What the bot knows about a finding besides the store's row."""

    evidence: Evidence = field(default_factory=Evidence)
    triage: Triage | None = None
    """The finding's triage (verdict, reason, upstream_ok) or None (not triaged)."""
    script: str | None = None
    """The standalone reproduction (:func:`bot.repro.script`)."""
    flake: str | None = None
    decoded: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    repo: str
    """The bot's own repository ``owner/name``: every finding is tracked there."""
    now: str
    label: str = "llmcompat"
    keep_open: str = "keep-open"
    close_after: int = 3
    max_new: int = 5
    human_days: int = 14
    page_url: str | None = None
    upstream: Mapping[str, str] = field(default_factory=dict)
    """Allowlisted components -> their repository (``upstream_issues: true`` in axes.yaml)."""


@dataclass(frozen=True)
class Action:
    verb: str
    repo: str
    number: int | None = None
    fingerprint: str | None = None
    title: str = ""
    body: str = ""
    labels: tuple[str, ...] | None = None
    state_reason: str | None = None
    color: str = ""
    description: str = ""
    version: str | None = None
    """close: the fixing release; reopen: the version seen failing."""

    def __post_init__(self):
        if self.verb not in VERBS:
            raise ValueError(f"unknown action {self.verb!r}")

    def need_number(self) -> int:
        """The issue this acts on (``label-create`` and ``create`` have none yet)."""
        if self.number is None:
            raise ValueError(f"{self.verb} action on {self.repo} names no issue number")
        return self.number

    def need_fingerprint(self) -> str:
        """The fingerprint of the finding this acts for (``label-create`` has none)."""
        if self.fingerprint is None:
            raise ValueError(f"{self.verb} action on {self.repo} names no finding")
        return self.fingerprint


@dataclass
class Plan:
    actions: list[Action]
    queued: list[tuple[str, str]]
    """(fingerprint, repo) waiting for a later run (over the cap)."""
    found: dict[tuple[str, str], Issue]
    """(fingerprint, repo) -> the issue the marker names (what the store should know)."""


def _dt(t: str | None) -> datetime | None:
    return _when(t) if t else None


def _when(t: str) -> datetime:
    """An ISO time (``Z`` or an offset; naive means UTC) as an aware datetime."""
    d = datetime.fromisoformat(t.replace("Z", "+00:00"))
    return d if d.tzinfo else d.replace(tzinfo=UTC)


def state_of(f, ctx: Context, status: str | None = None) -> dict:
    """The state an issue shows (bounded: versions capped, so the marker stays small)."""
    versions = sorted({str(v)[:64] for v in f.versions}, key=vkey)[-STATE_VERSIONS:]
    bar = f.first_bad or max(f.versions, key=vkey, default=None)
    fixed = f.fixed_in if f.status == "fixed" and f.fixed_in and newer(f.fixed_in, bar) else None  # a re-run: no fix
    return {
        "kind": f.kind,
        "last_good": f.last_good,
        "first_bad": f.first_bad,
        "fixed_in": fixed,
        "cells": max(int(f.cells or 0), len(ctx.evidence.cell_ids)),
        "versions": versions,
        "status": status or ("fixed" if f.status == "fixed" else "open"),
    }


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _same_body(issue: Issue, body: str) -> bool:
    return body == issue.body or (issue.digest is not None and issue.digest == digest(body))


def _hash(state: dict) -> str:
    """The state's identity for comment markers (the close time left out: a re-run after a crash
    closes later, and must still recognise its own comment)."""
    stable = {k: v for k, v in state.items() if k != "closed"}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


def changes(old: dict | None, new: dict) -> list[str]:
    """The changes of state worth a comment (plain Markdown lines, values escaped)."""
    if old is None:
        return []
    c = escape.code
    out = []
    if new.get("first_bad") and (old.get("last_good"), old.get("first_bad")) != (new["last_good"], new["first_bad"]):
        word = "narrowed" if old.get("first_bad") else "found"
        out.append(
            f"Range {word}: last good {c(new['last_good'] or 'unknown')} → first bad {c(new['first_bad'])}"
            + (f" (was {c(old.get('last_good') or 'unknown')} → {c(old['first_bad'])})" if old.get("first_bad") else "")
        )
    added = [v for v in new["versions"] if v not in set(old.get("versions") or ())]
    if new["cells"] > int(old.get("cells") or 0) or added:
        out.append(
            f"New affected cells: now {new['cells']} (was {int(old.get('cells') or 0)})"
            + (f"; newly failing at {', '.join(c(v) for v in added[:10])}" if added else "")
        )
    if new.get("fixed_in") and new["fixed_in"] != old.get("fixed_in"):
        out.append(f"Fixed: passes again at {c(new['fixed_in'])}.")
    if old.get("status") == "fixed" and new["status"] == "open":
        out.append("Failing again after it passed.")
    return out


def _comment(fp: str, old: dict | None, new: dict, lines: list[str]) -> str:
    key = {"fp": fp, "from": _hash(old) if old else None, "to": _hash(new)}
    return bodies.marker("comment", key) + "\n" + "\n".join(f"- {line}" for line in lines) + "\n"


def _already_commented(issue: Issue, text: str) -> bool:
    """The latest bot comment already reports this change (a crash came between it and the body)."""
    want = bodies.parse_marker(text, "comment")
    for cm in reversed(issue.comments):
        got = bodies.parse_marker(cm.body, "comment")
        if got is not None:
            return got == want
    return False


def labels_for(f, settings: Settings) -> tuple[str, ...]:
    klass = failure_class(f.klass, f.stage).value
    names = (settings.label, f"stage:{f.stage}", f"axis:{f.axis}", f"component:{f.component}", f"class:{klass}")
    return tuple(n[:50] for n in names)


LABEL_COLORS = {"stage": "1d76db", "axis": "5319e7", "component": "0e8a16", "class": "d93f0b"}


def _label_action(repo: str, name: str, settings: Settings) -> Action:
    prefix = name.split(":", 1)[0]
    color = LABEL_COLORS.get(prefix, "fbca04" if name == settings.keep_open else "ededed")
    desc = {settings.label: "Filed by llmcompat", settings.keep_open: "llmcompat: never close automatically"}.get(
        name, f"llmcompat {prefix}"
    )
    return Action("label-create", repo, title=name, color=color, description=desc)


def targets(f, ctx: Context, settings: Settings) -> list[tuple[str, bool]]:
    """(repository, upstream?) where ``f`` is tracked: the own one, and upstream when allowed."""
    out = [(settings.repo, False)]
    up = settings.upstream.get(f.component)
    t = ctx.triage
    if (
        up
        and up.lower() != settings.repo.lower()
        and t is not None
        and t.verdict == "component-bug"
        and getattr(t, "upstream_ok", True)
        and getattr(f, "repro_verified", None) is True
    ):
        out.append((up, True))
    return out


def _repro_state(f) -> str:
    v = getattr(f, "repro_verified", None)
    if v is None:
        return "not run"
    return (
        "verified: fails in the bad environment, passes in the good one"
        if v
        else "did not show the problem (not filed upstream)"
    )


def _body(f, ctx: Context, settings: Settings, state: dict) -> str:
    page = None
    if settings.page_url:  # the finding's own page (reports/web: findings/<slug>.html; a hex fingerprint is its slug)
        safe = re.fullmatch(r"[0-9A-Za-z_-]+", f.fingerprint or "")
        page = settings.page_url.rstrip("/") + (f"/findings/{f.fingerprint}.html" if safe else "/findings.html")
    view = bodies.IssueView(
        finding=f,
        state=state,
        triage=ctx.triage,
        cell_ids=ctx.evidence.cell_ids,
        flake=ctx.flake,
        repro_state=_repro_state(f),
        script=ctx.script,
        page_url=page,
        fixed_in=state.get("fixed_in"),
        decoded=dict(ctx.decoded),
    )
    return bodies.render(view)


def _human_recently(issue: Issue, settings: Settings) -> bool:
    since = _when(settings.now) - timedelta(days=settings.human_days)
    return any(not c.is_bot and (_dt(c.created) or since) > since for c in issue.comments)


def decide(
    findings: Iterable,
    contexts: Mapping[str, Context],
    issues: Iterable[Issue],
    labels: Mapping[str, Iterable[str]],
    queued: Iterable[tuple[str, str]],
    settings: Settings,
) -> Plan:
    """The actions of one run, in order: labels, then per existing issue its comment before its
    edit, then the creations (queued ones first, at most ``max_new``)."""
    by_marker: dict[tuple[str, str], Issue] = {}
    for listed in sorted(issues, key=lambda i: i.number):
        m = listed.marker
        if m and isinstance(m.get("fp"), str):
            by_marker.setdefault((m["fp"], listed.repo.lower()), listed)
    order = {k: i for i, k in enumerate(queued)}
    actions: list[Action] = []
    creates: list[tuple[tuple[int, str, str, str], Action]] = []
    found: dict[tuple[str, str], Issue] = {}
    wanted_labels: dict[str, set[str]] = {}
    for f in findings:
        ctx = contexts.get(f.fingerprint, Context())
        for repo, upstream in targets(f, ctx, settings):
            issue = by_marker.get((f.fingerprint, repo.lower()))
            want = () if upstream else labels_for(f, settings)
            if issue is None:
                if f.status != "open":
                    continue
                state = state_of(f, ctx)
                act = Action(
                    "create",
                    repo,
                    fingerprint=f.fingerprint,
                    title=bodies.title(f),
                    body=_body(f, ctx, settings, state),
                    labels=want,
                )
                rank = order.get((f.fingerprint, repo), len(order))
                creates.append(((rank, f.first_seen or "", f.fingerprint, repo), act))
                if want:
                    wanted_labels.setdefault(repo, set()).update(want + (settings.keep_open,))
                continue
            found[(f.fingerprint, repo)] = issue
            acts = _existing(f, ctx, issue, want, settings)
            if acts and want:
                wanted_labels.setdefault(repo, set()).update(want + (settings.keep_open,))
            actions.extend(acts)
    creates.sort(key=lambda x: x[0])
    chosen = [a for _, a in creates[: max(0, settings.max_new)]]
    rest = [(fp, repo) for (_, _, fp, repo), _ in creates[max(0, settings.max_new) :]]
    label_acts = _missing_labels(wanted_labels, labels, chosen, actions, settings)
    return Plan(label_acts + actions + chosen, rest, found)


def _missing_labels(
    wanted: dict[str, set[str]],
    have: Mapping[str, Iterable[str]],
    creates: list[Action],
    actions: list[Action],
    settings: Settings,
) -> list[Action]:
    used = {a.repo for a in creates + actions}
    out = []
    for repo in sorted(wanted):
        if repo not in used:
            continue
        known = {n.lower() for n in have.get(repo, ())}
        out += [_label_action(repo, n, settings) for n in sorted(wanted[repo]) if n.lower() not in known]
    return out


def _existing(f, ctx: Context, issue: Issue, want: tuple[str, ...], settings: Settings) -> list[Action]:
    old = (issue.marker or {}).get("state")
    t = bodies.title(f)
    if issue.state == "closed":
        return _reopen(f, ctx, issue, old, want, settings)
    ev = ctx.evidence
    labels = tuple(sorted(set(issue.labels) | set(want))) if not set(want) <= set(issue.labels) else None
    held = bool(old and (old.get("status") == "closed" or old.get("held")))  # a person reopened it: not again
    if (
        ev.passing_runs >= settings.close_after
        and settings.keep_open not in issue.labels
        and not held
        and not _human_recently(issue, settings)
    ):
        fixed = ev.passing_version
        state = {**state_of(f, ctx, "closed"), "fixed_in": fixed, "closed": settings.now}
        note = (
            f"Closing: {escape.code(ev.passing_version)} (newer than first bad) passed the check on "
            f"{ev.passing_runs} consecutive scheduled runs."
        )
        acts = []
        text = _comment(f.fingerprint, old, state, [note])
        if not _already_commented(issue, text):
            acts.append(Action("comment", issue.repo, issue.number, f.fingerprint, t, text))
        acts.append(
            Action(
                "close",
                issue.repo,
                issue.number,
                f.fingerprint,
                t,
                _body(f, ctx, settings, state),
                labels,
                state_reason="completed",
                version=fixed,
            )
        )
        return acts
    state = state_of(f, ctx)
    if held and old:  # closed by the bot and reopened by a person: keep the fix known, never close it again
        state = {**state, "fixed_in": state["fixed_in"] or old.get("fixed_in"), "held": True}
    body = _body(f, ctx, settings, state)
    acts = []
    lines = changes(old, state)
    if lines:
        text = _comment(f.fingerprint, old, state, lines)
        if not _already_commented(issue, text):
            acts.append(Action("comment", issue.repo, issue.number, f.fingerprint, t, text))
    if not _same_body(issue, body) or labels is not None or t != issue.title:
        acts.append(Action("update", issue.repo, issue.number, f.fingerprint, t, body, labels))
    return acts


def _reopen(f, ctx: Context, issue: Issue, old: dict | None, want: tuple[str, ...], settings: Settings) -> list[Action]:
    """A bot-closed issue reopens on a failure at or after its fixing release, after the close."""
    if not old or old.get("status") != "closed" or not old.get("fixed_in"):
        return []
    fixed, closed = old["fixed_in"], _dt(issue.closed_at or old.get("closed"))
    seen = [
        v
        for started, v in ctx.evidence.failures
        if vkey(v) >= vkey(fixed) and (closed is None or (_dt(started) or closed) > closed)
    ]
    if not seen:
        return []
    version = max(seen, key=vkey)
    state = {**state_of(f, ctx, "open"), "fixed_in": None, "reopened": version}
    t = bodies.title(f)
    text = _comment(
        f.fingerprint,
        old,
        state,
        [f"Reopening: fails again at {escape.code(version)}, at or after the fixing release {escape.code(fixed)}."],
    )
    acts = []
    if not _already_commented(issue, text):
        acts.append(Action("comment", issue.repo, issue.number, f.fingerprint, t, text))
    labels = tuple(sorted(set(issue.labels) | set(want))) if not set(want) <= set(issue.labels) else None
    acts.append(
        Action(
            "reopen",
            issue.repo,
            issue.number,
            f.fingerprint,
            t,
            _body(f, ctx, settings, state),
            labels,
            version=version,
        )
    )
    return acts
