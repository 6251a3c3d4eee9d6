"""``llmcompat endpoint URL``: the user's path and the client stage against any OpenAI-compatible server.

A user who runs LM Studio, LocalAI, TGI, a hosted endpoint or an engine of their own on one of
the project's models can ask what that server does with the suite's conversations: the probe's
client stage alone (:mod:`stage_client`, with :mod:`user_path`) runs against the URL with the
model's golden cases, so the server's ``usage.prompt_tokens`` is compared with the reference
prompt's length, its greedy text under defaults with the reference's generation, and
llama-server's ``/apply-template`` render where it has one; each client SDK is judged against
what the server really sent. The server is not a cell's: nothing is stored, one summary is printed.

Pure core (:func:`check_url`, :func:`choose_clients`, :func:`build_job`, :func:`verdict`,
:func:`summary_lines`, :func:`redact`) and a thin shell (:func:`run`: build the model, check that
the URL answers, run the probe with this Python, print). The API key stays in the environment
variable ``--api-key-env`` names: the probe reads it there, and it is redacted from anything
printed even if a server echoes it back.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import textwrap
import urllib.parse
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from matrix.app.job import Options, build_model, load_matrix, suite_for
from matrix.cell.run import PROBE_LIMITS, ModelRef, SuiteRef, run_probe
from matrix.errors import ConfigError, LlmcompatError
from matrix.outcome import severity, worst
from matrix.probe import servers
from matrix.probe.stage_client import CLIENTS

DEFAULT_MODEL = "tiny-qwen2"
DEFAULT_NAME = "endpoint"
CLIENT_PACKAGES = {"openai": "openai", "litellm": "litellm", "ollama": "ollama"}
"""The Python package each client SDK needs in the host environment (raw-http needs none)."""
WIDTH = 80
REACH_SECONDS = 15
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SHOWN = {"pass": "pass", "fail": "FAIL", "infra": "INFRA", "flaky": "FLAKY", "skipped": "skip", "xfail": "xfail"}


@dataclass(frozen=True)
class Endpoint:
    """What the user asked to check (validated)."""

    url: str
    model: str = DEFAULT_MODEL
    served_model: str | None = None
    api_key_env: str | None = None
    clients: tuple[str, ...] = ("raw-http",)
    name: str = DEFAULT_NAME
    constrained: bool = False
    """The server constrains decoding (llama-server's grammar): run the forced tool-call cases."""


# --------------------------------------------------------------------------- the pure core


def check_url(url: str) -> str:
    """The URL, if it is an http(s) URL with a host and no credentials in it; else a ConfigError."""
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigError("URL", "url", url, f"not a URL ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("URL", "url", url, "expected an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise ConfigError(
            "URL",
            "url",
            f"{parts.scheme}://***@{parts.hostname}",
            "credentials in the URL would be printed: put the key in an environment variable "
            "and name it with --api-key-env",
        )
    if parts.query or parts.fragment or any(c.isspace() for c in url):
        raise ConfigError("URL", "url", url, "expected the server's base URL, without query or fragment")
    return url.rstrip("/")


def check_name(name: str) -> str:
    """The server's name in check names (``server:<name>:...``): letters, digits, ``.``, ``_``, ``-``."""
    if not _NAME.fullmatch(name):
        raise ConfigError("--name", "name", name, "expected letters, digits, '.', '_' or '-' (at most 64)")
    return name


def check_model(name: str, known: Sequence[str]) -> str:
    if name not in known:
        raise ConfigError("--model", "model", name, f"unknown model (known: {', '.join(known)})")
    return name


def check_key_env(var: str | None, environ: Mapping[str, str]) -> str | None:
    """The variable's name when it is set (its value is never looked at here beyond being non-empty)."""
    if var is None:
        return None
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", var):
        raise ConfigError("--api-key-env", "variable", var, "expected an environment variable's name")
    if not environ.get(var):
        raise ConfigError("--api-key-env", "variable", var, "is not set (or empty) in the environment")
    return var


def choose_clients(requested: Sequence[str], installed: Collection[str]) -> tuple[str, ...]:
    """The clients to run: those asked for (each known, its package installed), else ``raw-http``
    plus every SDK the host environment has (``installed``: package names)."""
    if not requested:
        return ("raw-http", *(c for c in CLIENTS if c in CLIENT_PACKAGES and CLIENT_PACKAGES[c] in installed))
    for name in requested:
        if name not in CLIENTS:
            raise ConfigError("--client", "client", name, f"unknown client (known: {', '.join(CLIENTS)})")
        package = CLIENT_PACKAGES.get(name)
        if package and package not in installed:
            raise ConfigError(
                "--client", "client", name, f"the {package} package is not installed in this Python ({sys.executable})"
            )
    return tuple(dict.fromkeys(requested))


def build_job(endpoint: Endpoint, model: ModelRef, suite: SuiteRef) -> dict:
    """The probe's job: the client stage only, against the URL, with the model's golden cases
    (the user path compares the server's prompt and greedy text with their goldens)."""
    target: dict = {"base_url": endpoint.url, "name": endpoint.name}
    if endpoint.served_model:
        target["model"] = endpoint.served_model
    if endpoint.api_key_env:
        target["api_key_env"] = endpoint.api_key_env
    return {
        "mode": "check",
        "model_dir": str(model.path),
        "stages": ["client"],
        "clients": list(endpoint.clients),
        "client_target": target,
        **({"client_constrained": True} if endpoint.constrained else {}),
        "cases": list(suite.cases),
        "max_new_tokens": 16,
        "limits": dict(PROBE_LIMITS),
        "report_versions": sorted({CLIENT_PACKAGES[c] for c in endpoint.clients if c in CLIENT_PACKAGES}),
    }


def redact(value, secret: str | None):
    """``value`` with every occurrence of ``secret`` replaced (strings inside dicts and lists too)."""
    if not secret:
        return value
    if isinstance(value, str):
        return value.replace(secret, "***")
    if isinstance(value, Mapping):
        return {redact(k, secret): redact(v, secret) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, secret) for v in value]
    return value


def verdict(result: Mapping) -> str:
    """The run's outcome: the worst of every record. Not the probe's stage summary: the user
    path's records carry the stage they judge (template, tokenize, inference), which this job
    does not list as stages. ``skipped`` when nothing was checked."""
    return str(worst(r.get("outcome", "fail") for r in result.get("records") or []))


def exit_code(outcome: str) -> int:
    """0 when something was checked and nothing failed; 1 for a failure, infra, or nothing checked."""
    return 0 if outcome in ("pass", "xfail") else 1


def _wrap(text: str, indent: int, lines: int = 4, hang: int = 0) -> list[str]:
    """``text`` on at most ``lines`` lines of :data:`WIDTH` columns, continuation lines ``hang`` further in."""
    flat = " ".join(str(text).split())
    first, rest = " " * indent, " " * (indent + hang)
    out = textwrap.wrap(flat, WIDTH, initial_indent=first, subsequent_indent=rest, break_on_hyphens=False)
    out = out or [first]
    if len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1][: WIDTH - 1] + "…"
    return out


def _head(label: str, text: str) -> list[str]:
    body = _wrap(text, 11, lines=6)
    return [f"{label:<10} {body[0].lstrip()}", *body[1:]]


def _tally(records: Sequence[Mapping]) -> str:
    counts = Counter(str(r.get("outcome")) for r in records)
    return ", ".join(f"{n} {o}" for o, n in sorted(counts.items(), key=lambda kv: severity(kv[0])))


def _check_lines(records: Sequence[Mapping]) -> list[str]:
    """Per check (in the order first seen): the counts, then its cases worst first: each failure
    with its detail, skips grouped by their reason, passes as one list of cases."""
    by_check: dict[str, list[Mapping]] = {}
    for r in records:
        by_check.setdefault(str(r.get("check")), []).append(r)
    lines = []
    for check, recs in by_check.items():
        lines += _wrap(f"{check} [{recs[0].get('stage')}]: {_tally(recs)}", 2, lines=2, hang=4)
        groups: dict[tuple, list[str]] = {}
        for r in sorted(recs, key=lambda r: severity(str(r.get("outcome")))):
            outcome = str(r.get("outcome"))
            if outcome == "pass":
                continue
            # failures one by one; skips (and the like) share their reason
            key = (outcome, r.get("klass"), r.get("detail") or "", r.get("case") if outcome == "fail" else None)
            groups.setdefault(key, []).append(str(r.get("case")))
        for (outcome, klass, detail, _), cases in groups.items():
            label = f"{SHOWN.get(outcome, outcome):<5} " + ", ".join(cases) + (f" ({klass})" if klass else "")
            lines += _wrap(label, 4, lines=12, hang=5)
            if detail:
                lines += _wrap(detail, 9, lines=4 if outcome != "skipped" else 3)
        passed = [str(r.get("case")) for r in recs if r.get("outcome") == "pass"]
        if passed:
            lines += _wrap("pass " + ", ".join(passed), 4, lines=40, hang=5)
    return lines


def _user_path_facts(result: Mapping) -> list[str]:
    """What the user path found, counted per check: prompt lengths, renders, ids, greedy text."""
    records = [r for r in result.get("records") or [] if str(r.get("check", "")).startswith("server:")]
    words = {
        "prompt_tokens": "prompt lengths as the reference prompt's",
        "apply-template": "/apply-template renders identical",
        "tokenize": "/tokenize ids identical",
        "defaults": "greedy texts under defaults as the reference's",
    }
    parts = []
    for what, said in words.items():
        recs = [r for r in records if str(r["check"]).endswith(":" + what)]
        judged = [r for r in recs if r.get("outcome") in ("pass", "fail")]
        if judged:
            parts.append(f"{sum(r['outcome'] == 'pass' for r in judged)} of {len(judged)} {said}")
        elif not recs and what in ("apply-template", "tokenize"):
            parts.append(f"no {what} endpoint")
    bos = Counter(r.get("klass") for r in records if r.get("outcome") == "fail")
    if bos.get("double-bos"):
        parts.append(f"{bos['double-bos']} double BOS")
    return parts


def _not_made(clients: Mapping[str, Mapping]) -> list[str]:
    """The client checks the probe could not make (a request the server refused, a case the SDK's
    API cannot express): facts, not records, grouped by their reason."""
    by_reason: dict[str, list[str]] = {}
    for info in clients.values():
        for what, why in (info.get("skipped_checks") or {}).items():
            by_reason.setdefault(str(why), []).append(str(what))
    lines = []
    for why, what in by_reason.items():
        lines += _wrap("not made: " + ", ".join(what), 2, lines=3, hang=10) + _wrap(why, 12, lines=2)
    return lines


def summary_lines(result: Mapping, endpoint: Endpoint) -> list[str]:
    """The readable summary for an 80-column log: target, clients, checks, user path, verdict."""
    facts = result.get("facts") or {}
    client = facts.get("client") or {}
    target = client.get("target") or {}
    served = target.get("model") or "(the server's default: it listed no model)"
    lines = _head("endpoint", f"{endpoint.url} (called {endpoint.name} in check names)")
    lines += _head("model", f"{endpoint.model} (goldens from the reference path); served model: {served}")
    shown = []
    for name, info in (client.get("clients") or {}).items():
        if info.get("skipped"):
            shown.append(f"{name} skipped: {info['skipped']}")
        else:
            refused = len(info.get("skipped_checks") or {})
            shown.append(
                f"{name} {info.get('version') or ''}".strip() + (f" ({refused} checks not made)" if refused else "")
            )
    lines += _head("clients", "; ".join(shown) or "none ran")
    lines += _not_made(client.get("clients") or {})
    records = result.get("records") or []
    lines.append("checks")
    lines += _check_lines(records) or ["  (no check ran)"]
    lines += _head("user path", "; ".join(_user_path_facts(result)) or "no user-path check ran")
    if client.get("constrained_cases"):
        lines += _head("note", str(client["constrained_cases"]))
    outcome = verdict(result)
    said = {"pass": "nothing failed", "skipped": "nothing could be checked", "fail": "checks failed"}.get(
        outcome, f"{outcome} checks"
    )
    lines += _head("result", f"{outcome}: {said} ({_tally(records) or 'no checks'}); exit {exit_code(outcome)}")
    return lines


# --------------------------------------------------------------------------- the shell


def installed_packages() -> set[str]:
    """The client SDK packages this Python (the probe's) can import."""
    return {p for p in CLIENT_PACKAGES.values() if importlib.util.find_spec(p) is not None}


def _ask(method: str, url: str, body: dict | None, headers: dict, timeout: float) -> tuple[int, object, str]:
    """(HTTP status, JSON answer or None, why there was no answer) of one request
    (:func:`servers.request_json`); status 0 when no HTTP answer came."""
    try:
        return 200, servers.request_json(method, url, body, timeout=timeout, headers=headers), ""
    except servers.HTTPStatusError as exc:
        return exc.status, None, ""
    except servers.NotJSON:
        return 200, None, ""
    except servers.TransportError as exc:
        return 0, None, str(exc)


def reach(url: str, api_key: str | None, served_model: str | None = None, timeout: float = REACH_SECONDS) -> str | None:
    """Why the endpoint cannot be checked, or None: no HTTP answer at all, or the key refused
    (401/403 to ``GET /v1/models`` or to a one-token chat request: some servers, llama-server
    among them, list models without a key). Any other answer means a server is there."""
    base = url[:-3] if url.endswith("/v1") else url
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    how = "the API key from --api-key-env" if api_key else "no API key: name its variable with --api-key-env"
    status, listed, why = _ask("GET", base + "/v1/models", None, headers, timeout)
    if status == 0:
        return f"is unreachable: no HTTP answer ({why})"
    if status in (401, 403):
        return f"refused the request (HTTP {status} to GET /v1/models; {how})"
    model = served_model
    if model is None and isinstance(listed, dict) and isinstance(listed.get("data"), list) and listed["data"]:
        first = listed["data"][0]
        model = first.get("id") if isinstance(first, dict) else None
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, **({"model": model} if model else {})}
    status, _, why = _ask("POST", base + "/v1/chat/completions", chat, headers, float(PROBE_LIMITS["request_seconds"]))
    if status == 0:
        return f"is unreachable: no HTTP answer ({why})"
    if status in (401, 403):
        return f"refused the request (HTTP {status} to POST /v1/chat/completions; {how})"
    return None


def prepare(endpoint: Endpoint) -> tuple[ModelRef, SuiteRef]:
    """The model's built files and its golden suite, as the main job gives them to cells."""
    matrix = load_matrix(Options())
    check_model(endpoint.model, [m.name for m in matrix.models])
    model = build_model(matrix, endpoint.model)
    return model, suite_for(Options().suite, model)


def run(endpoint: Endpoint, *, as_json: bool = False, out=None, err=None) -> int:
    """Check the endpoint and print the summary (or the result JSON); the exit code."""
    out, err = out or sys.stdout, err or sys.stderr
    secret = os.environ.get(endpoint.api_key_env) if endpoint.api_key_env else None
    model, suite = prepare(endpoint)
    problem = reach(endpoint.url, secret, endpoint.served_model)
    if problem is not None:
        message = redact(f"endpoint {endpoint.url} {problem}: infra, nothing was checked", secret)
        if as_json:
            print(json.dumps({"endpoint": endpoint.url, "outcome": "infra", "reason": message}), file=out)
        print(f"llmcompat: {message}", file=err)
        return 1
    pass_env = (endpoint.api_key_env,) if endpoint.api_key_env else ()
    result, log = run_probe(Path(sys.executable), build_job(endpoint, model, suite), pass_env=pass_env)
    if result is None:
        message = redact(f"the probe died against {endpoint.url} (infra): {log[-2000:]}", secret)
        if as_json:
            print(json.dumps({"endpoint": endpoint.url, "outcome": "infra", "reason": message}), file=out)
        print(f"llmcompat: {message}", file=err)
        return 1
    result = redact(result, secret)
    outcome = verdict(result)
    if as_json:
        print(json.dumps({**result, "outcome": outcome, "endpoint": endpoint.url}, indent=1, sort_keys=True), file=out)
    else:
        print("\n".join(summary_lines(result, endpoint)), file=out)
    return exit_code(outcome)


def build_parser(p) -> None:
    """The sub-command's options (``llmcompat endpoint``)."""
    p.add_argument("url", metavar="URL", help="the server's base URL, e.g. http://127.0.0.1:8080 (or .../v1)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="the project's model it serves (default: tiny-qwen2)")
    p.add_argument("--served-model", help="the model name to send (default: the first of GET /v1/models)")
    p.add_argument("--api-key-env", metavar="VAR", help="the environment variable holding the API key")
    p.add_argument(
        "--client",
        dest="clients",
        action="append",
        default=[],
        metavar="NAME",
        help="a client SDK to check (repeatable; default: raw-http, plus openai when installed)",
    )
    p.add_argument("--name", default=DEFAULT_NAME, help="the server's name in check names (default: endpoint)")
    p.add_argument(
        "--constrained",
        action="store_true",
        help="the server constrains decoding (llama-server): run the forced tool-call and JSON-schema cases",
    )
    p.add_argument("--json", action="store_true", help="print the probe's result JSON")


def from_args(args) -> Endpoint:
    """The command line's options, checked (every error names the option and its value)."""
    if not args.url:
        raise LlmcompatError("URL: the endpoint's base URL is required")
    return Endpoint(
        url=check_url(args.url),
        model=args.model,
        served_model=args.served_model or None,
        api_key_env=check_key_env(args.api_key_env, os.environ),
        clients=choose_clients(args.clients or (), installed_packages()),
        name=check_name(args.name),
        constrained=bool(args.constrained),
    )
