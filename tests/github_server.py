"""A local GitHub REST server for the bot's tests: stdlib ``http.server`` in a thread on 127.0.0.1.

It follows GitHub's documented REST behaviour for every endpoint the bot uses, so real PyGithub
talks to it over real HTTP (``base_url`` pointed here):

- ``GET/POST /repos/{o}/{r}/issues`` (``state``, ``labels`` (all must match, case-insensitive),
  ``creator``, ``since``, ``sort``/``direction``, ``per_page`` (default 30, at most 100), ``page``,
  ``Link`` headers with next/prev/first/last), ``GET/PATCH /repos/{o}/{r}/issues/{n}`` (``title``,
  ``body``, ``state``, ``state_reason``, ``labels``), ``GET/POST .../issues/{n}/comments``,
  ``GET/POST /repos/{o}/{r}/labels`` (422 ``already_exists``), ``GET /repos/{o}/{r}``, ``GET /user``,
  ``GET /app`` and ``POST /app/installations/{id}/access_tokens`` (App JWT checked against the
  App's public key), ``GET /rate_limit``;
- ``x-ratelimit-*`` headers on every answer; 401 without a known token; 404 and 422 bodies as GitHub
  writes them.

Faults are injected by configuration (:meth:`GitHub.fault`): 403 with ``Retry-After``, the primary
rate limit (403, ``x-ratelimit-remaining: 0``), the secondary rate limit (403 or 429 with GitHub's
message), 5xx, a connection reset before the request is carried out, or after it (the answer
lost). Every request is logged (method, path, query) without its headers.
"""

from __future__ import annotations

import io
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlsplit

SECONDARY_MESSAGE = (
    "You have exceeded a secondary rate limit. Please wait a few minutes before you try again. "
    "If you reach out to GitHub Support for help, please include the request ID."
)
PRIMARY_MESSAGE = "API rate limit exceeded for installation ID 1."
DOCS = "https://docs.github.com/rest"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Fault:
    method: str
    path: str
    """A regular expression the request path must match (searched)."""
    kind: str
    """retry-after | rate-limit | secondary | secondary-429 | 5xx | reset | reset-after"""
    times: int = 1
    status: int = 502
    retry_after: int = 1
    hits: int = 0


@dataclass
class Repo:
    issues: dict[int, dict] = field(default_factory=dict)
    comments: dict[int, list[dict]] = field(default_factory=dict)
    labels: dict[str, dict] = field(default_factory=dict)
    next_number: int = 1


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """Nothing: a client killed mid-request is expected here."""


class GitHub:
    """The server's state and its thread. ``with GitHub() as gh: gh.url`` is the API root."""

    def __init__(
        self,
        token: str = "ghp_test",
        login: str = "llmcompat-bot",
        app_public_key: str | None = None,
        app_slug: str = "llmcompat-app",
    ):
        self.tokens = {token} if token else set()
        self.login, self.app_public_key, self.app_slug = login, app_public_key, app_slug
        self.repos: dict[str, Repo] = {}
        self.faults: list[Fault] = []
        self.log: list[tuple[str, str, str]] = []
        self.lock = threading.RLock()
        self.ids = 1000
        self.remaining = 5000
        self.hook: Callable[[str, int, str, str], object] | None = None
        """Called as ``hook(phase, n, method, path)`` with phase ``before``/``after`` each request
        is carried out (n counts requests from 1): the soak benchmark kills the bot from there."""
        self.server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> GitHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- configuration and inspection
    def fault(self, method: str, path: str, kind: str, times: int = 1, **kw) -> Fault:
        f = Fault(method.upper(), path, kind, times, **kw)
        with self.lock:
            self.faults.append(f)
        return f

    def repo(self, name: str) -> Repo:
        with self.lock:
            return self.repos.setdefault(name.lower(), Repo())

    def issues(self, name: str) -> list[dict]:
        with self.lock:
            return [dict(i) for _, i in sorted(self.repo(name).issues.items())]

    def comments(self, name: str, number: int) -> list[dict]:
        with self.lock:
            return [dict(c) for c in self.repo(name).comments.get(number, [])]

    def add_comment(
        self,
        name: str,
        number: int,
        body: str,
        login: str = "a-person",
        created: str | None = None,
        user_type: str = "User",
    ) -> dict:
        """A comment as a person writes it (not through the API under test)."""
        with self.lock:
            return self._comment(self.repo(name), name, number, body, login, user_type, created or _now())

    def snapshot(self, name: str) -> dict:
        """Everything a user sees of a repository (for convergence checks): issues and comments."""
        with self.lock:
            r = self.repo(name)
            return {
                "issues": [
                    {k: i[k] for k in ("number", "title", "body", "state", "state_reason")}
                    | {"labels": sorted(lb["name"] for lb in i["labels"])}
                    for _, i in sorted(r.issues.items())
                ],
                "comments": {n: [c["body"] for c in cs] for n, cs in sorted(r.comments.items())},
                "labels": sorted(r.labels),
            }

    # ---- objects as GitHub writes them
    def _id(self) -> int:
        self.ids += 1
        return self.ids

    def _user(self, login: str, user_type: str = "User") -> dict:
        return {
            "login": login,
            "id": abs(hash(login)) % 10**7,
            "node_id": "U_x",
            "type": user_type,
            "url": f"{self.url}/users/{login}",
            "html_url": f"https://github.invalid/{login}",
            "site_admin": False,
        }

    def _label(self, name: str, color: str = "ededed", description: str | None = None) -> dict:
        return {
            "id": self._id(),
            "node_id": "LA_x",
            "url": f"{self.url}/repos/labels/{name}",
            "name": name,
            "color": color,
            "default": False,
            "description": description,
        }

    def _comment(self, r: Repo, repo: str, number: int, body: str, login: str, user_type: str, created: str) -> dict:
        cid = self._id()
        c = {
            "id": cid,
            "node_id": "IC_x",
            "url": f"{self.url}/repos/{repo}/issues/comments/{cid}",
            "html_url": f"https://github.invalid/{repo}/issues/{number}#issuecomment-{cid}",
            "body": body,
            "user": self._user(login, user_type),
            "created_at": created,
            "updated_at": created,
            "issue_url": f"{self.url}/repos/{repo}/issues/{number}",
            "author_association": "NONE",
        }
        r.comments.setdefault(number, []).append(c)
        r.issues[number]["comments"] += 1
        return c


def _handler(gh: GitHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        # ---- plumbing
        def _body(self) -> dict:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            try:
                return json.loads(raw) if raw else {}
            except ValueError:
                return {"__invalid__": True}

        def _send(self, status: int, data=None, headers: dict | None = None) -> None:
            payload = b"" if data is None else json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            with gh.lock:
                gh.remaining = max(0, gh.remaining - 1)
                remaining = gh.remaining
            reset = int(time.time()) + 3600
            for k, v in {
                "x-ratelimit-limit": "5000",
                "x-ratelimit-remaining": str(remaining),
                "x-ratelimit-reset": str(reset),
                "x-ratelimit-used": str(5000 - remaining),
                "x-ratelimit-resource": "core",
                "X-GitHub-Media-Type": "github.v3; format=json",
                **(headers or {}),
            }.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)

        def _error(self, status: int, message: str, headers: dict | None = None, errors=None) -> None:
            data = {"message": message, "documentation_url": DOCS, "status": str(status)}
            if errors:
                data["errors"] = errors
            self._send(status, data, headers)

        def _reset(self) -> None:
            """Close with RST: the client sees 'connection reset by peer'."""
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            self.wfile = io.BytesIO()

        def _fault(self, method: str, path: str) -> Fault | None:
            with gh.lock:
                for f in gh.faults:
                    if f.method in (method, "*") and re.search(f.path, path) and f.hits < f.times:
                        f.hits += 1
                        return f
            return None

        def _inject(self, f: Fault) -> bool:
            """Answer with the fault; True when the request must not be carried out."""
            if f.kind == "reset":
                self._reset()
            elif f.kind == "retry-after":
                self._error(
                    403, "You have triggered an abuse detection mechanism.", {"Retry-After": str(f.retry_after)}
                )
            elif f.kind == "rate-limit":
                self._error(
                    403,
                    PRIMARY_MESSAGE,
                    {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(int(time.time()) + f.retry_after)},
                )
            elif f.kind == "secondary":
                self._error(403, SECONDARY_MESSAGE)
            elif f.kind == "secondary-429":
                self._error(429, SECONDARY_MESSAGE, {"Retry-After": str(f.retry_after)})
            elif f.kind == "5xx":
                self._error(f.status, "Server Error")
            else:
                return False
            return True

        def _authorized(self, path: str) -> bool:
            auth = self.headers.get("Authorization", "")
            scheme, _, cred = auth.partition(" ")
            if path == "/app" or re.fullmatch(r"/app/installations/\d+/access_tokens", path):
                return scheme.lower() == "bearer" and _jwt_ok(cred, gh.app_public_key)
            return scheme.lower() in ("token", "bearer") and cred in gh.tokens

        def _handle(self, method: str) -> None:
            parts = urlsplit(self.path)
            path = parts.path.rstrip("/") or "/"
            if path.startswith("/api/v3"):
                path = path[len("/api/v3") :] or "/"
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            with gh.lock:
                gh.log.append((method, path, parts.query))
                n = len(gh.log)
            body = self._body() if method in ("POST", "PATCH", "PUT") else {}
            if gh.hook is not None:
                gh.hook("before", n, method, path)
            fault = self._fault(method, path)
            if fault is not None and self._inject(fault):
                return
            if not self._authorized(path):
                self._error(401, "Bad credentials")
                return
            try:
                self._route(method, path, query, body, parts)
            except _NotFound:
                self._error(404, "Not Found")
            if gh.hook is not None:
                gh.hook("after", n, method, path)
            if fault is not None and fault.kind == "reset-after":
                self._reset()

        do_GET = lambda self: self._handle("GET")  # noqa: E731
        do_POST = lambda self: self._handle("POST")  # noqa: E731
        do_PATCH = lambda self: self._handle("PATCH")  # noqa: E731

        # ---- endpoints
        def _route(self, method, path, query, body, parts) -> None:
            if path == "/user" and method == "GET":
                return self._send(200, gh._user(gh.login))
            if path == "/rate_limit":
                core = {"limit": 5000, "remaining": gh.remaining, "reset": int(time.time()) + 3600, "used": 0}
                return self._send(200, {"resources": {"core": core}, "rate": core})
            if path == "/app" and method == "GET":
                return self._send(
                    200,
                    {"id": 1, "slug": gh.app_slug, "name": gh.app_slug, "node_id": "A_x", "owner": gh._user("owner")},
                )
            m = re.fullmatch(r"/app/installations/(\d+)/access_tokens", path)
            if m and method == "POST":
                token = f"ghs_installation{m.group(1)}_{gh._id()}"
                with gh.lock:
                    gh.tokens.add(token)
                return self._send(
                    201,
                    {
                        "token": token,
                        "expires_at": "2099-01-01T00:00:00Z",
                        "permissions": {"issues": "write"},
                        "repository_selection": "all",
                    },
                )
            m = re.fullmatch(r"/repos/([^/]+)/([^/]+)(/.*)?", path)
            if not m:
                raise _NotFound
            name, rest = f"{m.group(1)}/{m.group(2)}", m.group(3) or ""
            if rest == "" and method == "GET":
                return self._send(
                    200,
                    {
                        "id": 1,
                        "name": m.group(2),
                        "full_name": name,
                        "url": f"{gh.url}/repos/{name}",
                        "owner": gh._user(m.group(1)),
                    },
                )
            if rest == "/issues":
                return self._list_issues(name, query, parts) if method == "GET" else self._create_issue(name, body)
            if rest == "/labels":
                return (
                    self._list(gh.repo(name).labels.values(), query, parts)
                    if method == "GET"
                    else self._create_label(name, body)
                )
            m2 = re.fullmatch(r"/issues/(\d+)(/comments)?", rest)
            if not m2:
                raise _NotFound
            number = int(m2.group(1))
            with gh.lock:
                issue = gh.repo(name).issues.get(number)
            if issue is None:
                raise _NotFound
            if m2.group(2):
                if method == "GET":
                    return self._list(gh.comments(name, number), query, parts)
                if not isinstance(body.get("body"), str):
                    return self._error(
                        422,
                        "Validation Failed",
                        errors=[{"resource": "IssueComment", "code": "missing_field", "field": "body"}],
                    )
                with gh.lock:
                    c = gh._comment(gh.repo(name), name, number, body["body"], self._who(), "Bot", _now())
                return self._send(201, c, {"Location": c["url"]})
            if method == "GET":
                return self._send(200, issue)
            return self._edit_issue(name, number, body)

        def _who(self) -> str:
            return gh.login

        def _list(self, items, query, parts) -> None:
            items = list(items)
            try:
                per_page = min(100, max(1, int(query.get("per_page", 30))))
                page = max(1, int(query.get("page", 1)))
            except ValueError:
                return self._error(422, "Validation Failed")
            last = max(1, -(-len(items) // per_page))
            chunk = items[(page - 1) * per_page : page * per_page]
            links = []

            def link(p: int, rel: str) -> str:
                q = {**{k: v[-1] for k, v in parse_qs(parts.query).items()}, "page": str(p), "per_page": str(per_page)}
                return f'<{gh.url}{parts.path}?{urlencode(q)}>; rel="{rel}"'

            if page < last:
                links += [link(page + 1, "next"), link(last, "last")]
            if page > 1:
                links += [link(1, "first"), link(page - 1, "prev")]
            self._send(200, chunk, {"Link": ", ".join(links)} if links else None)

        def _list_issues(self, name, query, parts) -> None:
            state = query.get("state", "open")
            if state not in ("open", "closed", "all"):
                return self._error(422, "Validation Failed")
            want = {x.strip().lower() for x in query.get("labels", "").split(",") if x.strip()}
            with gh.lock:
                items = list(gh.repo(name).issues.values())
            items = [i for i in items if state == "all" or i["state"] == state]
            items = [i for i in items if want <= {lb["name"].lower() for lb in i["labels"]}]
            if "creator" in query:
                items = [i for i in items if i["user"]["login"].lower() == query["creator"].lower()]
            if "since" in query:
                items = [i for i in items if i["updated_at"] >= query["since"]]
            key = {"created": "created_at", "updated": "updated_at", "comments": "comments"}.get(
                query.get("sort", "created"), "created_at"
            )
            items.sort(key=lambda i: (i[key], i["number"]), reverse=query.get("direction", "desc") == "desc")
            self._list(items, query, parts)

        def _labels_for(self, name: str, names) -> list[dict]:
            r = gh.repo(name)
            out = []
            for n in names or ():
                n = n["name"] if isinstance(n, dict) else str(n)
                lb = r.labels.get(n.lower())
                if lb is None:  # GitHub creates a label named on an issue by someone with push access
                    lb = r.labels[n.lower()] = gh._label(n)
                out.append(lb)
            return out

        def _create_issue(self, name, body) -> None:
            if not isinstance(body.get("title"), str) or not body["title"]:
                return self._error(
                    422, "Validation Failed", errors=[{"resource": "Issue", "code": "missing_field", "field": "title"}]
                )
            if len(body.get("body") or "") > 65536:
                return self._error(
                    422,
                    "Validation Failed",
                    errors=[
                        {
                            "resource": "Issue",
                            "code": "custom",
                            "field": "body",
                            "message": "body is too long (maximum is 65536 characters)",
                        }
                    ],
                )
            with gh.lock:
                r = gh.repo(name)
                number = r.next_number
                r.next_number += 1
                now = _now()
                issue = {
                    "id": gh._id(),
                    "node_id": "I_x",
                    "url": f"{gh.url}/repos/{name}/issues/{number}",
                    "repository_url": f"{gh.url}/repos/{name}",
                    "comments_url": f"{gh.url}/repos/{name}/issues/{number}/comments",
                    "html_url": f"https://github.invalid/{name}/issues/{number}",
                    "number": number,
                    "state": "open",
                    "state_reason": None,
                    "title": body["title"],
                    "body": body.get("body"),
                    "user": gh._user(gh.login, "Bot"),
                    "labels": self._labels_for(name, body.get("labels")),
                    "assignee": None,
                    "assignees": [],
                    "milestone": None,
                    "locked": False,
                    "comments": 0,
                    "created_at": now,
                    "updated_at": now,
                    "closed_at": None,
                    "author_association": "OWNER",
                }
                r.issues[number] = issue
            self._send(201, issue, {"Location": issue["url"]})

        def _edit_issue(self, name, number, body) -> None:
            if "state" in body and body["state"] not in ("open", "closed"):
                return self._error(
                    422, "Validation Failed", errors=[{"resource": "Issue", "code": "invalid", "field": "state"}]
                )
            if len(body.get("body") or "") > 65536:
                return self._error(422, "Validation Failed")
            with gh.lock:
                issue = gh.repo(name).issues[number]
                for k in ("title", "body"):
                    if k in body:
                        issue[k] = body[k]
                if "labels" in body:
                    issue["labels"] = self._labels_for(name, body["labels"])
                if "state" in body:
                    if body["state"] == "closed" and issue["state"] != "closed":
                        issue["closed_at"] = _now()
                    if body["state"] == "open":
                        issue["closed_at"] = None
                    issue["state"] = body["state"]
                    issue["state_reason"] = body.get("state_reason") or (
                        "completed" if body["state"] == "closed" else "reopened"
                    )
                issue["updated_at"] = _now()
                data = dict(issue)
            self._send(200, data)

        def _create_label(self, name, body) -> None:
            n = body.get("name")
            if not isinstance(n, str) or not n:
                return self._error(422, "Validation Failed")
            with gh.lock:
                r = gh.repo(name)
                if n.lower() in r.labels:
                    return self._error(
                        422,
                        "Validation Failed",
                        errors=[{"resource": "Label", "code": "already_exists", "field": "name"}],
                    )
                lb = r.labels[n.lower()] = gh._label(n, body.get("color", "ededed"), body.get("description"))
            self._send(201, lb)

    return Handler


class _NotFound(Exception):
    pass


def _jwt_ok(token: str, public_key: str | None) -> bool:
    if public_key is None:
        return False
    import jwt

    try:
        jwt.decode(token, public_key, algorithms=["RS256"], options={"verify_aud": False})
        return True
    except jwt.PyJWTError:
        return False
