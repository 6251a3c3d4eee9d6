"""The results store: SQLite, one writer (the aggregator), migrations by ``user_version``.

Every ingestion is one transaction: a run killed half-way leaves the store as it was before
that run. Readers (the page, the bot) open it read-only.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

MIGRATIONS: list[str] = [
    # 1: runs, cells (by key), per-case results, stage outcomes, releases seen.
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        started TEXT NOT NULL,
        finished TEXT,
        kind TEXT NOT NULL DEFAULT 'matrix',
        meta TEXT NOT NULL DEFAULT '{}'
    );
    CREATE TABLE cells (
        key TEXT PRIMARY KEY,
        cell_id TEXT NOT NULL,
        runner TEXT NOT NULL,
        model TEXT NOT NULL,
        model_hash TEXT NOT NULL,
        engine TEXT NOT NULL, engine_version TEXT NOT NULL,
        tokenizer TEXT NOT NULL, tokenizer_version TEXT NOT NULL,
        template TEXT NOT NULL, template_version TEXT NOT NULL,
        client TEXT NOT NULL, client_version TEXT NOT NULL,
        outcome TEXT NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        lock TEXT NOT NULL DEFAULT '{}',
        facts TEXT NOT NULL DEFAULT '{}',
        duration_s REAL,
        finished TEXT NOT NULL,
        repro TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX cells_by_id ON cells(cell_id);
    CREATE TABLE run_cells (
        run_id TEXT NOT NULL REFERENCES runs(id),
        key TEXT NOT NULL REFERENCES cells(key),
        reused INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run_id, key)
    );
    CREATE TABLE stage_outcomes (
        key TEXT NOT NULL REFERENCES cells(key),
        stage TEXT NOT NULL,
        outcome TEXT NOT NULL,
        PRIMARY KEY (key, stage)
    );
    CREATE TABLE results (
        key TEXT NOT NULL REFERENCES cells(key),
        case_id TEXT NOT NULL,
        stage TEXT NOT NULL,
        check_name TEXT NOT NULL,
        outcome TEXT NOT NULL,
        klass TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (key, case_id, stage, check_name)
    );
    CREATE TABLE releases (
        package TEXT NOT NULL,
        version TEXT NOT NULL,
        upload_time TEXT,
        PRIMARY KEY (package, version)
    );
    """,
]

CELL_COLUMNS = (
    "key", "cell_id", "runner", "model", "model_hash",
    "engine", "engine_version", "tokenizer", "tokenizer_version",
    "template", "template_version", "client", "client_version",
    "outcome", "reason", "lock", "facts", "duration_s", "finished", "repro",
)


class Store:
    """A handle on the SQLite store. ``readonly`` handles never migrate or write."""

    def __init__(self, path: Path | str, readonly: bool = False):
        self.path = Path(path)
        if readonly:
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.migrate()
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        """Apply pending migrations, each in its own transaction with its version bump."""
        for number, script in enumerate(MIGRATIONS, start=1):
            if self.version >= number:
                continue
            with self.transaction():
                for statement in _statements(script):
                    self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version = {number}")

    @contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE .. COMMIT, rolled back on any exception (and by SQLite on a kill)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    # ---- reads -------------------------------------------------------------------------
    def has_key(self, key: str) -> bool:
        return self.db.execute("SELECT 1 FROM cells WHERE key = ?", (key,)).fetchone() is not None

    def keys(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT key FROM cells")}

    def cells(self, run_id: str | None = None) -> list[dict]:
        if run_id is None:
            rows = self.db.execute("SELECT * FROM cells ORDER BY cell_id, finished")
        else:
            rows = self.db.execute(
                "SELECT cells.*, run_cells.reused FROM cells JOIN run_cells USING (key)"
                " WHERE run_cells.run_id = ? ORDER BY cell_id",
                (run_id,),
            )
        return [dict(r) for r in rows]

    def stage_outcomes(self, key: str) -> dict[str, str]:
        rows = self.db.execute("SELECT stage, outcome FROM stage_outcomes WHERE key = ?", (key,))
        return {r["stage"]: r["outcome"] for r in rows}

    def results(self, key: str) -> list[dict]:
        rows = self.db.execute("SELECT * FROM results WHERE key = ? ORDER BY case_id, stage, check_name", (key,))
        return [dict(r) for r in rows]

    def runs(self) -> list[dict]:
        return [dict(r) for r in self.db.execute("SELECT * FROM runs ORDER BY started")]

    def latest_run(self) -> dict | None:
        row = self.db.execute(
            "SELECT * FROM runs WHERE finished IS NOT NULL ORDER BY finished DESC LIMIT 1"
        ).fetchone()
        return dict(row) if row else None

    def seen_versions(self) -> dict[tuple[str, str], set[str]]:
        """Versions of each (axis, component) that some earlier cell already ran."""
        seen: dict[tuple[str, str], set[str]] = {}
        for axis in ("engine", "tokenizer", "template", "client"):
            rows = self.db.execute(f"SELECT DISTINCT {axis}, {axis}_version FROM cells")
            for name, version in rows:
                seen.setdefault((axis, name), set()).add(version)
        return seen

    def export(self) -> dict:
        """The whole store as plain JSON-able data (the page's JSON export derives from it)."""
        cells = []
        for cell in self.cells():
            cell["lock"] = json.loads(cell["lock"])
            cell["facts"] = json.loads(cell["facts"])
            cell["stages"] = self.stage_outcomes(cell["key"])
            cell["results"] = self.results(cell["key"])
            cells.append(cell)
        return {"schema_version": self.version, "runs": self.runs(), "cells": cells}

    # ---- the single writer ---------------------------------------------------------------
    def ingest_run(self, run: dict, results: Iterable[dict], reused: Iterable[str], releases=()) -> None:
        """Record one run atomically: its new cell results, the reused keys, releases seen."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO runs (id, started, finished, kind, meta) VALUES (?, ?, ?, ?, ?)",
                (run["id"], run["started"], run.get("finished"), run.get("kind", "matrix"),
                 json.dumps(run.get("meta", {}), sort_keys=True)),
            )
            for result in results:
                _insert_cell(db, result)
                db.execute("INSERT OR IGNORE INTO run_cells (run_id, key, reused) VALUES (?, ?, 0)",
                           (run["id"], result["key"]))
            for key in reused:
                db.execute("INSERT OR IGNORE INTO run_cells (run_id, key, reused) VALUES (?, ?, 1)",
                           (run["id"], key))
            db.executemany(
                "INSERT OR REPLACE INTO releases (package, version, upload_time) VALUES (?, ?, ?)",
                list(releases),
            )


def _insert_cell(db: sqlite3.Connection, result: dict) -> None:
    cell = result["cell"]
    choices = cell["choices"]
    row = {
        "key": result["key"],
        "cell_id": cell["id"],
        "runner": cell["runner"],
        "model": cell["model"],
        "model_hash": result.get("model_hash", ""),
        "outcome": result["outcome"],
        "reason": result.get("reason", ""),
        "lock": json.dumps(result.get("lock", {}), sort_keys=True),
        "facts": json.dumps(result.get("facts", {}), sort_keys=True),
        "duration_s": result.get("duration_s"),
        "finished": result["finished"],
        "repro": result.get("repro", ""),
    }
    for axis in ("engine", "tokenizer", "template", "client"):
        row[axis] = choices[axis]["component"]
        row[f"{axis}_version"] = choices[axis]["version"]
    placeholders = ", ".join("?" for _ in CELL_COLUMNS)
    db.execute(
        f"INSERT OR REPLACE INTO cells ({', '.join(CELL_COLUMNS)}) VALUES ({placeholders})",
        [row[c] for c in CELL_COLUMNS],
    )
    db.execute("DELETE FROM stage_outcomes WHERE key = ?", (result["key"],))
    db.execute("DELETE FROM results WHERE key = ?", (result["key"],))
    db.executemany(
        "INSERT INTO stage_outcomes (key, stage, outcome) VALUES (?, ?, ?)",
        [(result["key"], stage, s["outcome"]) for stage, s in result.get("stages", {}).items()],
    )
    db.executemany(
        "INSERT OR REPLACE INTO results (key, case_id, stage, check_name, outcome, klass, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (result["key"], r["case"], r["stage"], r["check"], r["outcome"], r.get("klass", ""), r.get("detail", ""))
            for r in result.get("records", [])
        ],
    )


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
