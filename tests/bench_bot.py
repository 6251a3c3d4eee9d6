"""The bot's soak benchmark (``python -m tests.bench bot-soak``): faults and kills, then convergence.

1. Faults: the bot runs 5 times over one store (which gains cells between runs, so bodies change
   and comments are due) against the local GitHub server with faults injected on every run (5xx,
   resets before and after the server acted, secondary rate limits, 403 Retry-After, 429). Goal:
   exactly one issue per fingerprint and no lost update: the server ends exactly as it does after
   the same 5 runs without faults (bodies, comments, labels, states).
2. Kills: the bot as its command line (``llmcompat bot``) in a subprocess, SIGKILLed at 20 random
   points (a random request of the uninterrupted run, before or after the server carried it
   out), then re-run until it has nothing left to do. Goal: every trial converges to the state of
   the uninterrupted runs, on GitHub and in the store, with no duplicate issue or comment.
"""

from __future__ import annotations

import io
import os
import random
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPO = "llmcompat/bot-home"
TOKEN = "ghp_soakTOKEN0123456789abcdefghijklmnopqrs"
CHECKS = tuple(f"tokenizers:soak{i}" for i in range(8))
KINDS = ("5xx", "reset", "reset-after", "secondary", "secondary-429", "retry-after")
ENDPOINTS = (
    ("GET", r"/issues$"),
    ("POST", r"/issues$"),
    ("PATCH", r"/issues/\d+$"),
    ("GET", r"/comments$"),
    ("POST", r"/comments$"),
    ("GET", r"/labels$"),
    ("POST", r"/labels$"),
)


def _store(path: Path):
    from tests import bot_scenario as sc

    return sc.broken_store(path, checks=CHECKS, cells=1)


def _grow(store, day: int) -> None:
    """A later run: two thirds of the checks now fail in more cells and in a newer version."""
    from tests import bot_scenario as sc

    failing = {c: "fail" for i, c in enumerate(CHECKS) if i % 3 != day % 3}
    sc.scheduled_run(store, [sc.cell(v, failing, n) for n, v in enumerate(["0.23.3"] * day + ["0.23.4"])], day)


def _bot_in_process(store, gh) -> list:
    from bot.github.connection import Connection
    from bot.github.run import BotOptions, run
    from tests import bot_scenario as sc

    conn = Connection(api_url=gh.url, per_page=3, backoff=0.01, backoff_max=0.05, secondary_wait=0.05, throttle=False)
    return run(
        store, sc.MATRIX, BotOptions(repo=REPO, conn=conn), out=io.StringIO(), env={"GITHUB_TOKEN": TOKEN}
    ).actions


def _one_per_fingerprint(gh, store) -> int:
    """The most issues any fingerprint has (goal 1), counting every issue's marker."""
    from bot.github import body as bodies

    counts: dict[str | None, int] = {}  # None: an issue without the marker
    for issue in gh.issues(REPO):
        fp = (bodies.parse_marker(issue["body"]) or {}).get("fp")
        counts[fp] = counts.get(fp, 0) + 1
    missing = {f.fingerprint for f in store.findings()} - set(counts)
    return max(counts.values(), default=0) if not missing else -len(missing)


def soak_faults(report, runs: int = 5, seed: int = 15) -> None:
    from tests.github_server import GitHub

    rng = random.Random(seed)
    results = {}
    t0 = time.perf_counter()
    hits = injected = 0
    for faulty in (False, True):
        with tempfile.TemporaryDirectory(prefix="llmcompat-soak-") as tmp, GitHub(token=TOKEN) as gh:
            store = _store(Path(tmp, "store.sqlite"))
            for i in range(runs):
                if i:
                    _grow(store, i + 1)
                if faulty:
                    faults = [
                        gh.fault(m, p, rng.choice(KINDS), times=rng.randint(1, 2), retry_after=1)
                        for m, p in rng.sample(ENDPOINTS, 4)
                    ]
                    injected += len(faults)
                _bot_in_process(store, gh)
                if faulty:
                    hits += sum(f.hits for f in faults)
            results[faulty] = (gh.snapshot(REPO), _one_per_fingerprint(gh, store), len(gh.log))
            store.close()
    seconds = time.perf_counter() - t0
    (clean, _, clean_req), (dirty, dirty_max, dirty_req) = results[False], results[True]
    lost = sum(a != b for a, b in zip(clean["issues"], dirty["issues"])) + abs(
        len(clean["issues"]) - len(dirty["issues"])
    )
    comments_differ = clean["comments"] != dirty["comments"]
    report(
        "bot soak: 5 runs with faults",
        dirty_max == 1 and lost == 0 and not comments_differ,
        f"{len(dirty['issues'])} issues for {len(CHECKS)} fingerprints (at most {dirty_max} per fingerprint, goal 1); "
        f"{lost} issues differ from the fault-free runs (goal 0), their "
        f"{sum(len(c) for c in dirty['comments'].values())} comments {'differ' if comments_differ else 'equal'}; "
        f"{injected} faults configured, {hits} hit; {dirty_req} requests vs {clean_req} without faults "
        f"({dirty_req / max(1, clean_req):.2f}x); {seconds:.1f}s for both",
    )


# ---- kills -------------------------------------------------------------------------------------------


_RUNNING: dict[Path, subprocess.Popen] = {}
"""The bot process now running for each trial's home (what a kill hook kills)."""


def _cli(home: Path, gh) -> subprocess.Popen:
    from tests import bot_scenario as sc

    argv, env = sc.bot_command(home, gh.url, REPO, TOKEN, secondary_wait=0.05)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    p = _RUNNING[home] = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return p


def _acted(stdout: str) -> bool:
    verbs = ("label-create ", "create ", "update ", "comment ", "close ", "reopen ")
    return any(line.startswith(verbs) for line in stdout.splitlines())


def _converge(home: Path, gh, limit: int = 6) -> int:
    """Run the bot until a run has nothing to do; the number of runs it took."""
    for n in range(1, limit + 1):
        p = _cli(home, gh)
        out, err = p.communicate(timeout=300)
        if p.returncode == -signal.SIGKILL:  # killed by the benchmark: the next run is the re-run
            continue
        if p.returncode != 0:
            raise RuntimeError(f"bot exited {p.returncode}: {err[-2000:]}")
        if not _acted(out):
            return n
    raise RuntimeError(f"no convergence in {limit} runs")


def _store_state(home: Path) -> tuple:
    db = sqlite3.connect(home / "store.sqlite")
    issues = sorted(db.execute("SELECT fingerprint, repo, number, state FROM issues"))
    bot = sorted(db.execute("SELECT fingerprint, repo, number, queued, issue_state FROM bot_state"))
    db.close()
    return issues, bot


def _copy_store(src: Path, home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    a, b = sqlite3.connect(src), sqlite3.connect(home / "store.sqlite")
    a.backup(b)
    a.close()
    b.close()


def _scenario(home: Path, gh) -> list[int]:
    """The scheduled sequence: the bot until it has nothing left to do, a matrix run that changes
    the findings, the bot again until done. A killed run is simply followed by the next run (the
    re-run), as the next schedule would. Returns the runs each phase took."""
    from reports.store import Store

    first = _converge(home, gh)
    with Store(home / "store.sqlite") as store:
        _grow(store, 3)
    return [first, _converge(home, gh)]


def soak_kills(report, trials: int = 20, seed: int = 20) -> None:
    from tests.github_server import GitHub

    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="llmcompat-kill-") as tmp:
        base = Path(tmp, "base.sqlite")
        _store(base).close()
        with GitHub(token=TOKEN) as gh:  # the uninterrupted reference
            home = Path(tmp, "ref")
            _copy_store(base, home)
            ref_runs = _scenario(home, gh)
            total = len(gh.log)
            reference, ref_store = gh.snapshot(REPO), _store_state(home)
        converged = duplicates = killed = 0
        reruns, points = [], []
        t0 = time.perf_counter()
        for trial in range(trials):
            at, phase = rng.randint(1, total), rng.choice(("before", "after"))
            points.append(f"{phase[0]}{at}")
            with GitHub(token=TOKEN) as gh:
                home = Path(tmp, f"t{trial}")
                _copy_store(base, home)
                fired = threading.Event()

                def hook(ph, n, method, path, at=at, phase=phase, home=home, fired=fired):
                    if ph == phase and n == at and not fired.is_set():
                        fired.set()
                        os.kill(_RUNNING[home].pid, signal.SIGKILL)
                        time.sleep(0.05)

                gh.hook = hook
                reruns.append(sum(_scenario(home, gh)))
                gh.hook = None
                killed += fired.is_set()
                snap = gh.snapshot(REPO)
                fps = [i["body"].split("\n", 1)[0] for i in gh.issues(REPO)]
                duplicates += len(fps) - len(set(fps))
                if snap == reference and _store_state(home) == ref_store:
                    converged += 1
        seconds = time.perf_counter() - t0
    comments = sum(len(c) for c in reference["comments"].values())
    report(
        "bot soak: killed at 20 random points",
        converged == trials == killed and duplicates == 0,
        f"{killed} kills; {converged}/{trials} trials converged to the uninterrupted state on GitHub and in the store (goal all), "
        f"{duplicates} duplicate issues (goal 0); kill points (request index of {total} over the runs, "
        f"b/a = before/after the server carried it out): {' '.join(points)}; bot runs in all: mean "
        f"{sum(reruns) / len(reruns):.1f}, max {max(reruns)} (uninterrupted: {sum(ref_runs)}); "
        f"{len(reference['issues'])} issues, {comments} comments; {seconds:.0f}s",
    )


def run(report) -> None:
    soak_faults(report)
    soak_kills(report)
