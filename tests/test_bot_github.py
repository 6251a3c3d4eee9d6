"""The GitHub bot against a local GitHub REST server (tests/github_server.py), with real PyGithub
over real HTTP and a real store filled by the main job's differences pipeline."""

from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bot.github import body as bodies
from bot.github.connection import Connection
from bot.github.run import BotOptions, run
from tests import bot_scenario as sc
from tests.github_server import GitHub

REPO = "llmcompat/bot-home"
TOKEN = "ghp_s3cretTOKENvalue0123456789abcdefABCD"
ROOT = Path(__file__).resolve().parent.parent
VERBS = ("label-create", "create", "update", "comment", "close", "reopen")


@pytest.fixture
def gh():
    with GitHub(token=TOKEN) as server:
        yield server


def conn(gh: GitHub, **kw) -> Connection:
    return Connection(
        **{
            "api_url": gh.url,
            "per_page": 2,
            "backoff": 0.01,
            "backoff_max": 0.05,
            "secondary_wait": 0.3,
            "throttle": False,
            **kw,
        }
    )


def bot(store, gh: GitHub, matrix=sc.MATRIX, **kw):
    out = io.StringIO()
    opts = BotOptions(repo=REPO, conn=conn(gh), **kw)
    plan = run(store, matrix, opts, out=out, env={"GITHUB_TOKEN": TOKEN})
    return plan, out.getvalue()


def markers(gh: GitHub, repo: str = REPO) -> list[str]:
    found = [bodies.parse_marker(i["body"]) for i in gh.issues(repo)]
    assert all(m is not None for m in found), "an issue without the finding marker"
    return [m["fp"] for m in found if m is not None]


def bot_comments(gh: GitHub, number: int, repo: str = REPO) -> list[str]:
    return [c["body"] for c in gh.comments(repo, number) if "llmcompat:comment" in c["body"]]


def _iso(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- one issue per fingerprint, quiet when nothing changed ------------------------------------------


def test_one_issue_per_fingerprint_across_reruns(gh, tmp_path):
    store = sc.broken_store(tmp_path / "store.sqlite")
    fps = sorted(f.fingerprint for f in store.findings())
    assert len(fps) == 2
    for _ in range(3):
        bot(store, gh)
    assert sorted(markers(gh)) == fps
    assert len(gh.issues(REPO)) == 2
    # listing used the label filter (never the search API) and paginated (per_page 2 over Link headers)
    lists = [q for m, p, q in gh.log if m == "GET" and p == f"/repos/{REPO}/issues"]
    assert lists and all("labels=llmcompat" in q for q in lists)
    assert not any(p.startswith("/search") for _, p, _ in gh.log)
    # the store knows both issues (the cache), and filed events went to time-to-fix
    assert sorted(i["fingerprint"] for i in store.issues()) == fps
    assert {e["event"] for e in store.ttf_events()} >= {"filed"}


def test_no_comment_or_edit_on_unchanged_run_comment_on_new_cells(gh, tmp_path):
    store = sc.broken_store(tmp_path / "store.sqlite", checks=("tokenizers:incremental",))
    bot(store, gh)
    (issue,) = gh.issues(REPO)
    writes = len([1 for m, _, _ in gh.log if m in ("POST", "PATCH")])
    plan, _ = bot(store, gh)
    assert plan.actions == []
    assert len([1 for m, _, _ in gh.log if m in ("POST", "PATCH")]) == writes
    assert gh.comments(REPO, issue["number"]) == []
    # a later run sees the same problem in more cells and in a newer version: one comment, body rewritten
    sc.scheduled_run(
        store,
        [sc.cell(v, {"tokenizers:incremental": "fail"}, n) for n, v in enumerate(["0.23.3", "0.23.3", "0.23.4"])],
        2,
    )
    bot(store, gh)
    bot(store, gh)
    (comment,) = bot_comments(gh, issue["number"])
    assert "New affected cells: now 3 (was 2)" in comment and "`0.23.4`" in comment
    (after,) = gh.issues(REPO)
    assert bodies.parse_marker(after["body"])["state"]["cells"] == 3
    assert "### Affected cells (3)" in after["body"]


# ---- closing on evidence ------------------------------------------------------------------------


def _pass_runs(store, version: str, n: int, first_day: int) -> None:
    for d in range(n):
        sc.scheduled_run(store, [sc.cell(version, {"tokenizers:incremental": "pass"})], first_day + d)


def test_close_after_n_passing_runs_on_a_newer_release_only(gh, tmp_path):
    store = sc.broken_store(tmp_path / "store.sqlite", checks=("tokenizers:incremental",))
    assert sc.MATRIX.bot.close_after == 3
    bot(store, gh)
    _pass_runs(store, "0.23.3", 3, 2)  # the same version passing again (a flake, a re-run): no evidence
    bot(store, gh)
    _pass_runs(store, "0.23.4", 2, 5)  # a newer release passes twice: not yet
    for _ in range(3):  # re-running the bot over the same runs counts nothing twice
        bot(store, gh)
    assert gh.issues(REPO)[0]["state"] == "open"
    _pass_runs(store, "0.23.4", 1, 7)
    plan, _ = bot(store, gh)
    (issue,) = gh.issues(REPO)
    assert issue["state"] == "closed" and issue["state_reason"] == "completed"
    assert [a.verb for a in plan.actions] == ["comment", "close"]
    comment = bot_comments(gh, issue["number"])[-1]
    assert "Closing: `0.23.4`" in comment and "3 consecutive scheduled runs" in comment
    assert not any("0.23.3" in c and "Fixed" in c for c in bot_comments(gh, issue["number"]))
    state = bodies.parse_marker(issue["body"])["state"]
    assert state["status"] == "closed" and state["fixed_in"] == "0.23.4"
    assert store.issues()[0]["state"] == "closed"
    assert "closed" in {e["event"] for e in store.ttf_events()}
    plan, _ = bot(store, gh)  # closed stays closed, quietly
    assert plan.actions == [] and gh.issues(REPO)[0]["state"] == "closed"


def test_old_versions_failing_do_not_break_the_streak_newer_failing_does(gh, tmp_path):
    store = sc.broken_store(tmp_path / "store.sqlite", checks=("tokenizers:incremental",))
    bot(store, gh)

    def both(day, new):
        cells = [
            sc.cell("0.23.3", {"tokenizers:incremental": "fail"}),
            sc.cell("0.23.4", {"tokenizers:incremental": new}),
        ]
        return sc.scheduled_run(store, cells, day)

    both(2, "pass")
    both(3, "fail")  # the newer release fails too: the streak starts again
    both(4, "pass")
    both(5, "pass")
    bot(store, gh)
    assert gh.issues(REPO)[0]["state"] == "open"
    both(6, "pass")
    bot(store, gh)
    assert gh.issues(REPO)[0]["state"] == "closed"


@pytest.mark.parametrize("how", ["recent-comment", "keep-open"])
def test_not_closed_with_a_recent_human_comment_or_keep_open(gh, tmp_path, how):
    store = sc.broken_store(tmp_path / "store.sqlite", checks=("tokenizers:incremental",))
    bot(store, gh)
    (issue,) = gh.issues(REPO)
    if how == "recent-comment":
        gh.add_comment(REPO, issue["number"], "still broken for me @bot", created=_iso(-timedelta(days=3)))
    else:
        gh.repo(REPO).issues[issue["number"]]["labels"].append(gh._label("keep-open"))
    _pass_runs(store, "0.23.4", 3, 2)
    bot(store, gh)
    assert gh.issues(REPO)[0]["state"] == "open"
    if how == "recent-comment":  # a comment older than 14 days no longer holds it open
        gh.repo(REPO).comments[issue["number"]][0]["created_at"] = _iso(-timedelta(days=20))
        bot(store, gh)
        assert gh.issues(REPO)[0]["state"] == "closed"


# ---- reopening ------------------------------------------------------------------------------------


def test_reopen_only_on_failure_at_or_after_the_fixing_release(gh, tmp_path):
    store = sc.broken_store(tmp_path / "store.sqlite", checks=("tokenizers:incremental",))
    bot(store, gh)
    _pass_runs(store, "0.23.4", 3, 2)
    bot(store, gh)
    (issue,) = gh.issues(REPO)
    assert issue["state"] == "closed"
    # an old release failing again (a re-run of the bad version) never reopens
    sc.scheduled_run(store, [sc.cell("0.23.3", {"tokenizers:incremental": "fail"})], 10)
    plan, _ = bot(store, gh)
    assert gh.issues(REPO)[0]["state"] == "closed" and plan.actions == []
    # the fixing release itself failing does
    sc.scheduled_run(store, [sc.cell("0.23.4", {"tokenizers:incremental": "fail"})], 11)
    plan, _ = bot(store, gh)
    assert [a.verb for a in plan.actions] == ["comment", "reopen"]
    (issue,) = gh.issues(REPO)
    assert issue["state"] == "open" and issue["state_reason"] == "reopened"
    assert "Reopening: fails again at `0.23.4`" in bot_comments(gh, issue["number"])[-1]
    assert store.issues()[0]["state"] == "open"
    assert len(gh.issues(REPO)) == 1
    plan, _ = bot(store, gh)
    assert [a.verb for a in plan.actions] in ([], ["update"])
    assert not [a for a in bot(store, gh)[0].actions]


def test_a_person_reopening_a_bot_closed_issue_is_not_closed_again(gh, tmp_path):
    store = sc.broken_store(tmp_path / "store.sqlite", checks=("tokenizers:incremental",))
    bot(store, gh)
    _pass_runs(store, "0.23.4", 3, 2)
    bot(store, gh)
    number = gh.issues(REPO)[0]["number"]
    gh.repo(REPO).issues[number]["state"] = "open"
    _pass_runs(store, "0.23.4", 3, 5)
    bot(store, gh)
    bot(store, gh)
    assert gh.issues(REPO)[0]["state"] == "open"


# ---- cap, queue, labels, routing -------------------------------------------------------------------


def test_cap_and_queue(gh, tmp_path):
    checks = tuple(f"tokenizers:c{i}" for i in range(7))
    store = sc.broken_store(tmp_path / "store.sqlite", checks=checks)
    assert len(store.findings()) == 7
    plan, out = bot(store, gh)
    assert len(gh.issues(REPO)) == 5 and len(plan.queued) == 2
    assert out.count("queued ") == 2
    queued = {fp for fp, _ in plan.queued}
    assert {r["fingerprint"] for r in store.bot_states() if r["queued"]} == queued
    plan, _ = bot(store, gh, max_new=1)  # queued ones go first
    assert [a.fingerprint for a in plan.actions if a.verb == "create"][0] in queued
    bot(store, gh)
    assert len(gh.issues(REPO)) == 7 and not [r for r in store.bot_states() if r["queued"]]
    assert sorted(markers(gh)) == sorted(f.fingerprint for f in store.findings())


def test_labels_created_when_missing_and_only_then(gh, tmp_path):
    gh.repo(REPO).labels["stage:postprocess"] = gh._label("Stage:Postprocess")  # a person made it, other case
    store = sc.broken_store(tmp_path / "store.sqlite")
    plan, _ = bot(store, gh)
    made = [a.title for a in plan.actions if a.verb == "label-create"]
    assert "stage:postprocess" not in made
    assert {
        "llmcompat",
        "keep-open",
        "stage:tokenize",
        "axis:tokenizer",
        "component:tokenizers",
        "class:backend-specific",
    } <= set(made)
    posts = [p for m, p, _ in gh.log if m == "POST" and p.endswith("/labels")]
    assert len(posts) == len(made)
    for issue in gh.issues(REPO):
        names = {lb["name"] for lb in issue["labels"]}
        assert {"llmcompat", "axis:tokenizer", "component:tokenizers", "class:backend-specific"} <= names
    plan, _ = bot(store, gh)
    assert not [a for a in plan.actions if a.verb == "label-create"]


def _allowlisted(matrix):
    axes = dict(matrix.axes)
    axes["tokenizer"] = tuple(
        dataclasses.replace(c, upstream_issues=True) if c.name == "tokenizers" else c for c in axes["tokenizer"]
    )
    return dataclasses.replace(matrix, axes=axes)


@pytest.mark.parametrize(
    "verified,verdict,upstream",
    [
        (True, "component-bug", True),
        (False, "component-bug", False),
        (None, "component-bug", False),
        (True, "matrix-configuration", False),
    ],
)
def test_upstream_only_allowlisted_component_bugs_with_a_verified_reproduction(
    gh, tmp_path, verified, verdict, upstream
):
    store = sc.broken_store(tmp_path / "store.sqlite", checks=("tokenizers:incremental",))
    (f,) = store.findings()
    store.set_triage({f.fingerprint: (verdict, "the package's own metadata does not explain it")})
    store.set_repro({f.fingerprint: (verified, "FAIL in bad, PASS in good")})
    matrix = _allowlisted(sc.MATRIX)
    bot(store, gh, matrix=matrix)
    bot(store, gh, matrix=matrix)
    assert markers(gh) == [f.fingerprint]  # the own repository always
    up = gh.issues("huggingface/tokenizers")
    assert len(up) == (1 if upstream else 0)
    if upstream:
        assert up[0]["labels"] == []  # no labels imposed on someone else's repository
        assert up[0]["user"]["login"] == gh.login
    # never upstream without the allowlist
    store2 = sc.broken_store(tmp_path / "s2.sqlite", checks=("tokenizers:incremental",))
    (f2,) = store2.findings()
    store2.set_triage({f2.fingerprint: ("component-bug", "x")})
    store2.set_repro({f2.fingerprint: (True, "x")})
    with GitHub(token=TOKEN) as gh2:
        bot(store2, gh2)
        assert gh2.issues("huggingface/tokenizers") == []


# ---- dry run -------------------------------------------------------------------------------------------


def test_dry_run_prints_actions_and_makes_no_request(gh, tmp_path):
    store = sc.broken_store(tmp_path / "store.sqlite")
    out = io.StringIO()
    plan = run(store, sc.MATRIX, BotOptions(repo=REPO, dry_run=True, conn=conn(gh)), out=out, env={})
    text = out.getvalue()
    assert gh.log == []
    heads = [line for line in text.splitlines() if not line.startswith("    ")]
    assert heads and all(h.split(" ", 1)[0] in VERBS + ("queued",) for h in heads)
    assert sum(h.startswith("create ") for h in heads) == 2
    assert "[llmcompat] tokenizers: tokenizers:incremental (mismatch) at postprocess" in text
    assert "    <!-- llmcompat:finding" in text and "**Triage:**" in text
    assert store.bot_states() == [] and store.issues() == []
    # after a live run the dry run reads the cache: nothing to do, still no request
    bot(store, gh)
    n = len(gh.log)
    out = io.StringIO()
    plan = run(store, sc.MATRIX, BotOptions(repo=REPO, dry_run=True, conn=conn(gh)), out=out, env={})
    assert plan.actions == [] and len(gh.log) == n


def test_cli_dry_run_needs_no_token_and_the_main_job_flag_exists(tmp_path):
    sc.broken_store(tmp_path / "store.sqlite").close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GITHUB_")}
    env.update(LLMCOMPAT_HOME=str(tmp_path), GITHUB_API_URL="http://127.0.0.1:9")  # nothing listens there
    p = subprocess.run(
        [sys.executable, "-m", "matrix.app.cli", "bot", "--dry-run"],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert "create OWNER/NAME: [llmcompat] tokenizers" in p.stdout
    p = subprocess.run(
        [sys.executable, "-m", "matrix.app.cli", "bot", "--repo", REPO],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2 and "GITHUB_TOKEN" in p.stderr
    p = subprocess.run(
        [sys.executable, "-m", "matrix.app.cli", "run", "--help"],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "--bot-dry-run" in p.stdout


# ---- faults: rate limits, 5xx, resets; crash between create and record --------------------------------


@pytest.mark.parametrize(
    "method,path,kind",
    [
        ("GET", r"/issues$", "retry-after"),
        ("POST", r"/issues$", "retry-after"),
        ("GET", r"/labels$", "secondary"),
        ("POST", r"/labels$", "secondary-429"),
        ("GET", r"/issues$", "5xx"),
        ("GET", r"/issues$", "reset"),
        ("POST", r"/issues$", "5xx"),
        ("POST", r"/issues$", "reset"),
        ("PATCH", r"/issues/\d+$", "5xx"),
        ("POST", r"/comments$", "5xx"),
        ("GET", r"/issues$", "rate-limit"),
    ],
)
def test_retries_leave_exactly_one_issue(gh, tmp_path, method, path, kind):
    store = sc.broken_store(tmp_path / "store.sqlite", checks=("tokenizers:incremental",))
    f = gh.fault(method, path, kind, times=2)
    bot(store, gh)
    sc.scheduled_run(
        store,
        [sc.cell(v, {"tokenizers:incremental": "fail"}, n) for n, v in enumerate(["0.23.3", "0.23.3", "0.23.4"])],
        2,
    )
    bot(store, gh)
    assert f.hits >= 1
    assert markers(gh) == [store.findings()[0].fingerprint]
    assert len(bot_comments(gh, gh.issues(REPO)[0]["number"])) == 1


def test_retry_after_is_honoured(gh, tmp_path):
    import time

    store = sc.broken_store(tmp_path / "store.sqlite", checks=("tokenizers:incremental",))
    gh.fault("GET", r"/issues$", "retry-after", times=1, retry_after=1)
    t = time.monotonic()
    bot(store, gh)
    assert time.monotonic() - t >= 1.0  # it waited as told, then carried on
    assert len(gh.issues(REPO)) == 1


def test_answer_lost_after_create_never_duplicates(gh, tmp_path):
    """The server creates the issue and the connection dies before the answer: the marker is found."""
    store = sc.broken_store(tmp_path / "store.sqlite")
    gh.fault("POST", r"/issues$", "reset-after", times=2)
    gh.fault("POST", r"/comments$", "reset-after", times=1)
    bot(store, gh)
    assert len(gh.issues(REPO)) == 2
    assert {i["number"] for i in store.issues()} == {i["number"] for i in gh.issues(REPO)}


def test_crash_between_create_and_record_never_duplicates(gh, tmp_path):
    """The store lost what the bot filed (a kill after GitHub answered): the markers are the truth."""
    store = sc.broken_store(tmp_path / "store.sqlite")
    bot(store, gh)
    before = gh.snapshot(REPO)
    with store.transaction() as db:
        db.execute("DELETE FROM bot_state")
        db.execute("DELETE FROM bot_labels")
        db.execute("DELETE FROM issues")
    plan, _ = bot(store, gh)
    assert not [a for a in plan.actions if a.verb in ("create", "comment")]
    assert gh.snapshot(REPO)["issues"] == before["issues"]
    assert {i["number"] for i in store.issues()} == {i["number"] for i in gh.issues(REPO)}


# ---- auth, secrets -----------------------------------------------------------------------------------


def test_github_app_installation_auth(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    (tmp_path / "app.pem").write_text(pem)
    store = sc.broken_store(tmp_path / "store.sqlite", checks=("tokenizers:incremental",))
    with GitHub(token="", app_public_key=public) as server:
        opts = BotOptions(
            repo=REPO, conn=conn(server), app_id="12345", app_key_file=str(tmp_path / "app.pem"), installation_id="678"
        )
        run(store, sc.MATRIX, opts, out=io.StringIO(), env={})
        assert len(server.issues(REPO)) == 1
        assert any(p == "/app/installations/678/access_tokens" for _, p, _ in server.log)


def test_token_never_in_output_or_store(gh, tmp_path):
    home = tmp_path / "home"
    store = sc.broken_store(home / "store.sqlite")
    store.close()
    argv, env = sc.bot_command(home, gh.url, REPO, TOKEN, secondary_wait=0.2)
    gh.fault("POST", r"/issues$", "5xx", times=1)
    gh.fault("GET", r"/labels$", "secondary", times=1)
    outs = []
    p = subprocess.run(argv, cwd=ROOT, env=env, check=False, capture_output=True, text=True, timeout=300)
    outs += [p.stdout, p.stderr]
    assert p.returncode == 0, p.stderr
    gh.fault("GET", r"/issues$", "5xx", times=50, status=503)  # a run that fails: its error must not leak it
    p = subprocess.run(argv, cwd=ROOT, env=env, check=False, capture_output=True, text=True, timeout=300)
    outs += [p.stdout, p.stderr]
    assert p.returncode != 0
    p = subprocess.run(
        argv + ["--dry-run"], cwd=ROOT, env=env, check=False, capture_output=True, text=True, timeout=300
    )
    outs += [p.stdout, p.stderr]
    assert len(gh.issues(REPO)) == 2
    for text in outs:
        assert TOKEN not in text and TOKEN[4:20] not in text
    for f in home.iterdir():
        if f.name.startswith("store.sqlite"):
            data = f.read_bytes()
            assert TOKEN.encode() not in data and TOKEN.encode("utf-16-le") not in data


def test_divergence_ids_carry_their_decoded_text(tmp_path):
    from bot.repro import _model_dir_for

    model = _model_dir_for("", "tiny-qwen2")
    if model is None:
        pytest.skip("the tiny model is not built here (nox -s matrix builds it)")
    from tokenizers import Tokenizer

    want = Tokenizer.from_file(str(model / "tokenizer.json")).decode([68, 702, 220], skip_special_tokens=False)
    store = sc.broken_store(tmp_path / "store.sqlite", checks=("tokenizers",))
    plan = run(store, sc.MATRIX, BotOptions(repo=REPO, dry_run=True), out=io.StringIO(), env={})
    (create,) = [a for a in plan.actions if a.verb == "create"]
    assert f"- expected: `[68, 702, 220]` ({escape_code(want)})" in create.body


def escape_code(text: str) -> str:
    from bot.github.escape import code

    return code(text)
