"""The thin PyGithub adapter: authentication, retries, listing, and applying one action.

- Auth: a token from ``$GITHUB_TOKEN`` (never an argument, so it stays out of process lists and
  shell history) or a GitHub App installation (app id, private key file, installation id) through
  PyGithub's ``Auth`` classes. The token is never printed, logged or stored: it lives in PyGithub's
  auth object only, and PyGithub masks it in its own debug logs.
- Retries: PyGithub's :class:`GithubRetry` (403 with ``Retry-After`` or a rate-limit message,
  primary limits until ``X-RateLimit-Reset``, the secondary limit for ``secondary_wait``), plus
  429, 5xx and connection resets with exponential backoff. A POST is not replayed blindly after a
  5xx or a reset (GitHub may have done it): :meth:`Remote.create` and :meth:`Remote.comment` look
  for their marker first, so a lost answer never duplicates an issue or a comment.
- Listing: the bot's issues by its label (never the search API, limited to 30 requests a minute),
  or in an upstream repository those the bot opened (``creator``); comments only of issues that
  have some.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import requests
from github import Auth, Github, GithubException, GithubIntegration, GithubRetry

from bot.github import body as bodies
from bot.github.connection import Connection
from bot.github.decide import Action, Comment, Issue
from matrix.errors import LlmcompatError

__all__ = ["BotAuthError", "Connection", "Remote", "auth_from_env", "connect"]


class BotAuthError(LlmcompatError):
    """No usable credentials (exit 2, naming what is missing; never the secret)."""


class _Retry(GithubRetry):
    """GithubRetry that never replays a POST the server may have carried out (5xx, reset)."""

    def is_retry(self, method, status_code, has_retry_after=False):
        if method == "POST" and status_code >= 500:
            return False
        return super().is_retry(method, status_code, has_retry_after)

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if method == "POST" and error is not None and not self._is_connection_error(error):
            raise error
        return super().increment(method, url, response, error, _pool, _stacktrace)


def auth_from_env(
    env=os.environ,
    app_id: str | None = None,
    key_file: str | Path | None = None,
    installation_id: str | int | None = None,
):
    """An ``Auth``: the App installation when an app id is given, else ``$GITHUB_TOKEN``."""
    app_id = app_id or env.get("GITHUB_APP_ID")
    if app_id:
        key_file = key_file or env.get("GITHUB_APP_PRIVATE_KEY_FILE")
        installation_id = installation_id or env.get("GITHUB_APP_INSTALLATION_ID")
        if not key_file or not installation_id:
            raise BotAuthError(
                "GitHub App auth needs --app-key-file and --installation-id "
                "(or GITHUB_APP_PRIVATE_KEY_FILE and GITHUB_APP_INSTALLATION_ID)"
            )
        try:
            key = Path(key_file).read_text()
        except OSError as exc:
            raise BotAuthError(f"{key_file}: cannot read the App's private key: {exc.strerror}") from None
        return Auth.AppAuth(int(app_id), key).get_installation_auth(int(installation_id))
    token = env.get("GITHUB_TOKEN")
    if not token:
        raise BotAuthError(
            "no credentials: set GITHUB_TOKEN, or give --app-id, --app-key-file and "
            "--installation-id (use --dry-run to see what would be filed without any)"
        )
    return Auth.Token(token)


def connect(auth, conn: Connection | None = None) -> Github:
    conn = conn or Connection()
    retry = _Retry(
        total=conn.total,
        backoff_factor=conn.backoff,
        backoff_max=conn.backoff_max,
        secondary_rate_wait=conn.secondary_wait,
        max_rate_limit_wait=conn.max_wait,
        status_forcelist=[429, *range(500, 600)],
        allowed_methods={"GET", "HEAD", "PATCH", "PUT", "DELETE", "POST"},
    )
    # throttled: PyGithub's own pauses between requests and writes (its defaults)
    pauses: dict[str, Any] = {} if conn.throttle else {"seconds_between_requests": None, "seconds_between_writes": None}
    base = conn.api_url.rstrip("/")
    return Github(
        auth=auth, base_url=base, per_page=conn.per_page, retry=retry, timeout=conn.timeout, lazy=True, **pauses
    )


def _iso(dt) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt else None


_TRANSIENT = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, _TRANSIENT) or (isinstance(exc, GithubException) and (exc.status or 0) >= 500)


class Remote:
    """The GitHub side of one bot run."""

    def __init__(self, gh: Github, conn: Connection | None = None, auth=None):
        self.gh, self.conn, self._auth = gh, conn or Connection(), auth
        self._lazy = gh  # connect() makes it lazy: get_repo costs no request
        self._login: str | None = None
        self._repos: dict = {}
        self._gh_issues: dict = {}
        self.attempts = 4

    def _repo(self, name: str):
        if name not in self._repos:
            self._repos[name] = self._lazy.get_repo(name)
        return self._repos[name]

    @property
    def login(self) -> str:
        """Who the bot is on GitHub (a token's user, or ``<app-slug>[bot]``)."""
        if self._login is None:
            if isinstance(self._auth, Auth.AppInstallationAuth):
                gi = GithubIntegration(auth=self._auth._app_auth, base_url=self.conn.api_url.rstrip("/"))
                self._login = f"{gi.get_app().slug}[bot]"
            else:
                self._login = self.gh.get_user().login
        return self._login

    # ---- reads
    def _read(self, fn):
        """A whole listing, again from the start when an answer broke off mid-way (urllib3 retries
        only what fails before the body arrives)."""
        for attempt in range(self.attempts):
            try:
                return fn()
            except Exception as exc:  # noqa: BLE001 - sorted by _again
                self._again(attempt, exc)
        raise AssertionError("unreachable")

    def issues(self, repo: str, label: str | None = None, creator: str | None = None) -> list[Issue]:
        """Every issue (open and closed) with the bot's label, or opened by ``creator``; pull requests left out."""
        return self._read(lambda: self._issues(repo, label, creator))

    def _issues(self, repo: str, label: str | None, creator: str | None) -> list[Issue]:
        kw = {"labels": [label]} if label else {"creator": creator}
        out = []
        for i in self._repo(repo).get_issues(state="all", **kw):
            if "/pull/" in (i.html_url or ""):
                continue
            self._gh_issues[(repo.lower(), i.number)] = i
            comments = tuple(self.comments(repo, i.number)) if i.comments else ()
            out.append(
                Issue(
                    repo,
                    i.number,
                    i.title,
                    i.body or "",
                    i.state,
                    tuple(lb.name for lb in i.labels),
                    comments,
                    _iso(i.closed_at),
                    i.html_url or "",
                )
            )
        return out

    def comments(self, repo: str, number: int) -> list[Comment]:
        return self._read(lambda: self._comments(repo, number))

    def _comments(self, repo: str, number: int) -> list[Comment]:
        out = []
        for c in self._issue(repo, number).get_comments():
            is_bot = bodies.parse_marker(c.body, "comment") is not None or (c.user and c.user.type == "Bot")
            out.append(Comment(c.user.login if c.user else "", c.body or "", _iso(c.created_at) or "", bool(is_bot)))
        return out

    def _issue(self, repo: str, number: int):
        """The PyGithub issue as listed or created (no extra GET), else fetched."""
        key = (repo.lower(), number)
        if key not in self._gh_issues:
            self._gh_issues[key] = self._repo(repo).get_issue(number)
        return self._gh_issues[key]

    def labels(self, repo: str) -> set[str]:
        return self._read(lambda: {lb.name for lb in self._repo(repo).get_labels()})

    def find(self, repo: str, fingerprint: str, label: str | None, creator: str | None) -> Issue | None:
        for issue in self.issues(repo, label, creator):
            m = issue.marker
            if m and m.get("fp") == fingerprint:
                return issue
        return None

    # ---- writes
    def _again(self, attempt: int, exc: BaseException) -> None:
        if not _transient(exc) or attempt + 1 >= self.attempts:
            raise exc
        time.sleep(min(self.conn.backoff_max, self.conn.backoff * 2**attempt))

    def create(self, a: Action, label: str | None, creator: str | None) -> Issue:
        """Create the issue, unless its marker is already there (an earlier answer got lost)."""
        fingerprint = a.need_fingerprint()
        for attempt in range(self.attempts):
            try:
                i = self._repo(a.repo).create_issue(title=a.title, body=a.body, labels=list(a.labels or ()))
                self._gh_issues[(a.repo.lower(), i.number)] = i
                return Issue(
                    a.repo,
                    i.number,
                    i.title,
                    i.body or "",
                    i.state,
                    tuple(lb.name for lb in i.labels),
                    (),
                    None,
                    i.html_url or "",
                )
            except Exception as exc:  # noqa: BLE001 - sorted by _again
                self._again(attempt, exc)
                found = self.find(a.repo, fingerprint, label, creator)
                if found is not None:
                    return found
        raise AssertionError("unreachable")

    def comment(self, a: Action) -> None:
        want = bodies.parse_marker(a.body, "comment")
        for attempt in range(self.attempts):
            try:
                self._issue(a.repo, a.need_number()).create_comment(a.body)
                return
            except Exception as exc:  # noqa: BLE001 - sorted by _again
                self._again(attempt, exc)
                if any(bodies.parse_marker(c.body, "comment") == want for c in self.comments(a.repo, a.need_number())):
                    return

    def edit(self, a: Action) -> None:
        """update, close and reopen: one PATCH (body, labels and state together); PATCH is idempotent,
        so GithubRetry replays it."""
        kw: dict = {"title": a.title, "body": a.body}
        if a.labels is not None:
            kw["labels"] = list(a.labels)
        if a.verb == "close":
            kw.update(state="closed", state_reason=a.state_reason or "completed")
        elif a.verb == "reopen":
            kw.update(state="open", state_reason="reopened")
        self._read(lambda: self._issue(a.repo, a.need_number()).edit(**kw))  # again when the answer broke off

    def create_label(self, a: Action) -> None:
        for attempt in range(self.attempts):
            try:
                self._repo(a.repo).create_label(a.title, a.color, a.description)
                return
            except GithubException as exc:
                if exc.status == 422:  # already exists (made by a person, or by a lost earlier answer)
                    return
                self._again(attempt, exc)
            except Exception as exc:  # noqa: BLE001 - sorted by _again
                self._again(attempt, exc)
            if a.title.lower() in {n.lower() for n in self.labels(a.repo)}:
                return
