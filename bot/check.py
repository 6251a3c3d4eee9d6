"""A bisection's test through a user's check: git bisect's exit protocol, and running the check
so that nothing it starts outlives it.

Exit codes follow ``git bisect run``: 0 GOOD; 125 UNKNOWN (skip); 1..127 BAD; 128 and above, or
death by a signal, aborts the bisection (:class:`BisectAborted`). The check runs in its own
process group (a new session): on timeout, and when the bisection itself gets SIGTERM or SIGINT
(:func:`killing_checks_on_signals`), that whole group is killed, so the children a check spawned
(a server, a pool of workers) go with it.

Shared by :mod:`bot.bisect_cmd` (package releases) and :mod:`bot.narrow` (llama.cpp commits);
it imports neither.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bot.search import Verdict

SKIP = 125
ABORT_FROM = 128
CHECK_TIMEOUT = 900.0
"""Seconds a check may run at one version before its process group is killed (``--timeout``)."""
TAIL_LINES = 12
"""Lines of a check's output kept for the report (``-v``, and ends that disagree)."""
TERM_GRACE = 3.0
"""Seconds between SIGTERM and SIGKILL to a check's process group."""


class BisectAborted(RuntimeError):
    """The check exited with 128 or more, was killed, or timed out: git bisect stops there, so do we."""

    def __init__(self, version: str, code: int, output: str = "", why: str = ""):
        self.version = version
        self.code = code
        self.output = output
        super().__init__(why or f"check exited {code} at {version}: bisection aborted (exit codes >= 128 abort)")


class CheckInterrupted(BaseException):
    """The bisection got SIGTERM/SIGINT; every running check's process group was killed."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def verdict_for_exit(code: int) -> Verdict | None:
    """git bisect's convention: 0 GOOD, 125 UNKNOWN, 1..127 BAD, None (abort) for >= 128 or < 0."""
    if code == 0:
        return Verdict.GOOD
    if code == SKIP:
        return Verdict.UNKNOWN
    if 0 < code < ABORT_FROM:
        return Verdict.BAD
    return None


def check_command(script: str) -> list[str]:
    """How to run ``script``: a ``.py`` file with the environment's ``python``, another existing file
    directly (or with ``sh`` when not executable), anything else as a shell command line."""
    path = Path(script)
    if path.is_file():
        if path.suffix == ".py":
            return ["python", str(path.resolve())]
        if os.access(path, os.X_OK):
            return [str(path.resolve())]
        return ["sh", str(path.resolve())]
    return ["sh", "-c", script]


def missing_script(script: str) -> str | None:
    """Why ``script`` names a check file that is not there (None when it is there, or when it is a
    shell command line): a single word that looks like a path or a script name must exist."""
    words = shlex.split(script) if script.strip() else []
    if not words:
        return "the check is empty"
    if len(words) > 1 or Path(script).is_file():
        return None
    looks_like_file = os.sep in script or script.endswith((".py", ".sh", ".bash"))
    if looks_like_file:
        return f"check script {script!r} does not exist"
    return None


@dataclass(frozen=True)
class CheckRun:
    """One run of the check: its exit code (negative: killed by that signal), the tail of its
    output, and whether it was killed for running past the timeout."""

    code: int
    output: str
    timed_out: bool = False

    def tail(self, lines: int = TAIL_LINES) -> str:
        return "\n".join(self.output.rstrip().splitlines()[-lines:])


_live: set[int] = set()
_live_lock = threading.Lock()


def run_check(cmd: Sequence[str], *, env: Mapping[str, str], timeout: float, cwd: Path | None = None) -> CheckRun:
    """Run ``cmd`` in a new session (its own process group) and wait for it, not for its output:
    a child that keeps the output open cannot hold the bisection. When the check ends, times out,
    or this returns early for any reason (an interrupt included), its whole group is killed."""
    with tempfile.TemporaryFile(mode="w+b") as out:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )
        with _live_lock:
            _live.add(proc.pid)
        timed_out = False
        try:
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                kill_group(proc.pid)
                code = proc.wait()
        finally:
            kill_group(proc.pid)  # whatever it left behind in its group goes too
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            with _live_lock:
                _live.discard(proc.pid)
        out.seek(0, os.SEEK_END)
        size = out.tell()
        out.seek(max(0, size - 8000))
        text = out.read().decode("utf-8", errors="replace")
    return CheckRun(code, text, timed_out)


def kill_group(pgid: int, grace: float = TERM_GRACE) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left of it after ``grace`` seconds."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    for _ in range(int(grace / 0.05)):
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return
        threading.Event().wait(0.05)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_all_checks() -> None:
    with _live_lock:
        groups = list(_live)
    for pgid in groups:
        kill_group(pgid, grace=0.5)


@contextmanager
def killing_checks_on_signals() -> Iterator[None]:
    """While inside, SIGTERM and SIGINT kill every running check's process group, then raise
    :class:`CheckInterrupted` in the main thread. Only from the main thread; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        kill_all_checks()
        raise CheckInterrupted(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def verdict_of_run(run: CheckRun, version: str, timeout: float) -> Verdict:
    """The test's verdict for one check run; aborts (raises) as git bisect does."""
    if run.timed_out:
        raise BisectAborted(
            version,
            run.code,
            run.tail(),
            f"check timed out after {timeout:g}s at {version}; its process group was killed "
            f"(raise --timeout, or make the check exit 125 to skip a version that hangs)",
        )
    verdict = verdict_for_exit(run.code)
    if verdict is None:
        raise BisectAborted(version, run.code, run.tail())
    return verdict
