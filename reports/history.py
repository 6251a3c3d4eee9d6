"""Durable history: the store as a text dump on a git data branch, merged on a concurrent push.

Scheduled runs on GitHub Actions start from empty machines, and the Actions cache is evicted
after a week without access; the history that regressions and time-to-fix depend on must not
live there. After each run the aggregator commits ``store.sql`` (an SQL dump of the store,
which rebuilds it exactly) to a data branch; the next run starts from it.

Two writers can race (a scheduled run and a manual one). A rejected push is never forced:
the other side's dump is fetched, merged into ours (runs and content-addressed cells are
disjoint or identical; a finding keeps its most recently seen row), and the push is retried
on top of their commit. Git and SQLite do the work; this module only sequences them.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import tempfile
from pathlib import Path

from matrix import scratch
from matrix.errors import LlmcompatError

__all__ = ["DUMP", "HistoryError", "dump", "load", "merge", "pull", "push"]

DUMP = "store.sql"
_IDENTITY = ("-c", "user.name=llmcompat", "-c", "user.email=llmcompat@users.noreply.github.com")


class HistoryError(LlmcompatError):
    """The data branch could not be read or written (the message says which git step failed)."""


# ---- the dump ---------------------------------------------------------------------------
def dump(store_path: Path | str) -> str:
    """The store as SQL text: schema, rows and the migration version (which iterdump omits)."""
    db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        return f"PRAGMA user_version = {version};\n" + "\n".join(db.iterdump()) + "\n"
    finally:
        db.close()


def load(sql: str, store_path: Path | str) -> None:
    """Rebuild a store from a dump, atomically: a new file swapped in, never a half-loaded one."""
    target = Path(store_path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".store-", suffix=".sqlite", dir=target.parent)
    os.close(fd)
    try:
        db = sqlite3.connect(tmp)
        try:
            db.executescript(sql)
        finally:
            db.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def merge(into: Path | str, other: Path | str) -> dict[str, int]:
    """Add ``other``'s rows to ``into`` in one transaction; returns rows added per table.

    Rows are matched by primary key. A table with ``last_seen`` (findings) takes the other
    row when it was seen later; an autoincrement ``id`` table (bisections) adds the rows whose
    other columns it does not hold yet; every other table keeps its own row on a clash (runs,
    cells and results are immutable once written).
    """
    db = sqlite3.connect(into, isolation_level=None)
    added: dict[str, int] = {}
    try:
        db.execute("ATTACH DATABASE ? AS other", (str(other),))
        if db.execute("PRAGMA other.user_version").fetchone()[0] != db.execute("PRAGMA user_version").fetchone()[0]:
            raise HistoryError(f"cannot merge stores of different schema versions: {into} and {other}")
        db.execute("BEGIN IMMEDIATE")
        try:
            for table in _tables(db):
                added[table] = _merge_table(db, table)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
    finally:
        db.close()
    return added


def _tables(db: sqlite3.Connection) -> list[str]:
    """Tables in creation order, so rows that others reference are merged first."""
    rows = db.execute(
        "SELECT name FROM other.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY rowid"
    ).fetchall()
    mine = {r[0] for r in db.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'")}
    return [r[0] for r in rows if r[0] in mine]


def _merge_table(db: sqlite3.Connection, table: str) -> int:
    info = db.execute(f'PRAGMA main.table_info("{table}")').fetchall()
    columns = [c[1] for c in info]
    keys = [c[1] for c in sorted(info, key=lambda c: c[5]) if c[5]]
    quoted = ", ".join(f'"{c}"' for c in columns)
    before = db.total_changes
    if not db.execute(f'SELECT EXISTS (SELECT 1 FROM other."{table}")').fetchone()[0]:
        return 0  # (an empty INSERT .. SELECT would still touch sqlite_sequence)
    if keys == ["id"] and info[[c[1] for c in info].index("id")][2].upper() == "INTEGER":
        rest = [c for c in columns if c != "id"]
        cols = ", ".join(f'"{c}"' for c in rest)
        same = " AND ".join(f'm."{c}" IS o."{c}"' for c in rest)
        db.execute(
            f'INSERT INTO main."{table}" ({cols}) SELECT {cols} FROM other."{table}" o '
            f'WHERE NOT EXISTS (SELECT 1 FROM main."{table}" m WHERE {same}) ORDER BY o.id'
        )
    elif "last_seen" in columns and keys:
        match = " AND ".join(f'm."{k}" = o."{k}"' for k in keys)
        db.execute(
            f'INSERT OR REPLACE INTO main."{table}" ({quoted}) SELECT {quoted} FROM other."{table}" o '
            f'WHERE NOT EXISTS (SELECT 1 FROM main."{table}" m WHERE {match} '
            f"AND m.last_seen >= o.last_seen)"
        )
    else:
        db.execute(f'INSERT OR IGNORE INTO main."{table}" ({quoted}) SELECT {quoted} FROM other."{table}"')
    return db.total_changes - before


# ---- the data branch --------------------------------------------------------------------
def _git(work: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["git", "-C", str(work), *_IDENTITY, *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )
    if check and proc.returncode:
        raise HistoryError(f"git {args[0]} failed: {proc.stderr.strip()[-500:]}")
    return proc


def _fetch(work: Path, remote: str, branch: str) -> str | None:
    """The branch's tip checked out in ``work`` (a scratch repository), or None if it has none."""
    if not (work / ".git").exists():
        work.mkdir(parents=True, exist_ok=True)
        _git(work, "init", "-q")
    proc = _git(work, "fetch", "-q", "--depth=1", remote, f"refs/heads/{branch}", check=False)
    if proc.returncode:
        if "couldn't find remote ref" in proc.stderr or "not found" in proc.stderr.lower():
            return None
        raise HistoryError(f"git fetch {branch} failed: {proc.stderr.strip()[-500:]}")
    _git(work, "checkout", "-q", "--force", "--detach", "FETCH_HEAD")
    return _git(work, "rev-parse", "HEAD").stdout.strip()


def pull(remote: str, branch: str, store_path: Path | str) -> bool:
    """Start from the data branch: rebuild the store from its dump. False when the branch is new."""
    with tempfile.TemporaryDirectory(prefix="llmcompat-history-", dir=scratch.directory()) as tmp:
        work = Path(tmp) / "data"
        if _fetch(work, remote, branch) is None or not (work / DUMP).exists():
            return False
        load((work / DUMP).read_text(encoding="utf-8"), store_path)
        return True


def push(remote: str, branch: str, store_path: Path | str, message: str, attempts: int = 5) -> str:
    """Commit the store's dump to the data branch; on a concurrent push, merge theirs and retry.

    Returns the pushed commit. The local store ends up holding both sides' history.
    """
    with tempfile.TemporaryDirectory(prefix="llmcompat-history-", dir=scratch.directory()) as tmp:
        work = Path(tmp) / "data"
        for _ in range(attempts):
            tip = _fetch(work, remote, branch)
            theirs = work / DUMP
            if tip is not None and theirs.exists():
                other = Path(tmp) / "theirs.sqlite"
                load(theirs.read_text(encoding="utf-8"), other)
                merge(store_path, other)
            elif tip is None:
                _git(work, "checkout", "-q", "--orphan", branch)
            theirs.write_text(dump(store_path), encoding="utf-8")
            _git(work, "add", DUMP)
            if _git(work, "diff", "--cached", "--quiet", check=False).returncode == 0 and tip is not None:
                return tip  # nothing new to record
            _git(work, "commit", "-q", "-m", message)
            sha = _git(work, "rev-parse", "HEAD").stdout.strip()
            if _git(work, "push", "-q", remote, f"HEAD:refs/heads/{branch}", check=False).returncode == 0:
                return sha
        raise HistoryError(f"could not push {branch} after {attempts} attempts: others kept pushing")
