"""The results store: SQLite, one writer (the aggregator), migrations by ``user_version``.

Every ingestion is one transaction: a run killed half-way leaves the store as it was before
that run. Readers (the page, the bot) open it read-only.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Mapping
from contextlib import contextmanager
from dataclasses import fields, replace
from datetime import UTC
from pathlib import Path

from matrix.errors import LlmcompatError
from matrix.outcome import Bisection, Finding, failure_class

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
    # 2: the bot's state: findings (by fingerprint), bisections, filed issues, time-to-fix
    #    events, quarantined cells/cases.
    """
    CREATE TABLE findings (
        fingerprint TEXT PRIMARY KEY,
        case_id TEXT NOT NULL,
        stage TEXT NOT NULL,
        component TEXT NOT NULL,
        axis TEXT NOT NULL,
        last_good TEXT,
        first_bad TEXT,
        good_key TEXT NOT NULL DEFAULT '',
        bad_key TEXT NOT NULL DEFAULT '',
        compare_url TEXT NOT NULL DEFAULT '',
        repro TEXT NOT NULL DEFAULT '',
        status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'fixed')),
        first_seen TEXT NOT NULL,
        last_seen TEXT NOT NULL,
        fixed_in TEXT
    );
    CREATE TABLE bisections (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        fingerprint TEXT REFERENCES findings(fingerprint),
        component TEXT NOT NULL,
        versions TEXT NOT NULL DEFAULT '[]',
        probes TEXT NOT NULL DEFAULT '[]',
        last_good TEXT,
        first_bad TEXT,
        status TEXT NOT NULL,
        started TEXT NOT NULL,
        finished TEXT
    );
    CREATE INDEX bisections_by_finding ON bisections(fingerprint);
    CREATE TABLE issues (
        fingerprint TEXT NOT NULL REFERENCES findings(fingerprint),
        repo TEXT NOT NULL,
        number INTEGER NOT NULL,
        url TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL DEFAULT 'open',
        created TEXT NOT NULL,
        closed TEXT,
        PRIMARY KEY (repo, number)
    );
    CREATE INDEX issues_by_finding ON issues(fingerprint);
    CREATE TABLE ttf_events (
        fingerprint TEXT NOT NULL REFERENCES findings(fingerprint),
        event TEXT NOT NULL CHECK (event IN
            ('introduced', 'released', 'detected', 'filed', 'fixed', 'fix-released')),
        time TEXT NOT NULL,
        version TEXT,
        PRIMARY KEY (fingerprint, event)
    );
    CREATE TABLE quarantine (
        subject TEXT PRIMARY KEY,
        reason TEXT NOT NULL,
        until TEXT NOT NULL
    );
    """,
    # 3: differences (issue: findings between implementations now, not only regressions over
    #    time): a finding's kind, the check and failure class, a sample detail, the cases and the
    #    component versions it was seen with, and in how many cells.
    """
    ALTER TABLE findings ADD COLUMN kind TEXT NOT NULL DEFAULT 'regression'
        CHECK (kind IN ('regression', 'difference'));
    ALTER TABLE findings ADD COLUMN check_name TEXT NOT NULL DEFAULT '';
    ALTER TABLE findings ADD COLUMN klass TEXT NOT NULL DEFAULT '';
    ALTER TABLE findings ADD COLUMN detail TEXT NOT NULL DEFAULT '';
    ALTER TABLE findings ADD COLUMN cases TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE findings ADD COLUMN versions TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE findings ADD COLUMN cells INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX findings_by_kind ON findings(kind, status);
    """,
    # 4: a bisection's own compare link and reproduction (a llama.cpp narrowing has a range
    #    of its own, in another repository than the finding's).
    """
    ALTER TABLE bisections ADD COLUMN compare_url TEXT NOT NULL DEFAULT '';
    ALTER TABLE bisections ADD COLUMN repro TEXT NOT NULL DEFAULT '';
    """,
    # 5 (#15: triage, standalone reproductions, time-to-fix): a finding's triage verdict
    #    (component-bug | matrix-configuration | undetermined) and its reason; whether its
    #    standalone reproduction showed the problem in the bad (and not in the good) environment
    #    (NULL: none, or it could not run) and what the runs printed. ttf_events gains 'closed'
    #    (the issue's close time); SQLite cannot alter a CHECK, so that table is rebuilt.
    """
    ALTER TABLE findings ADD COLUMN triage TEXT NOT NULL DEFAULT '';
    ALTER TABLE findings ADD COLUMN triage_reason TEXT NOT NULL DEFAULT '';
    ALTER TABLE findings ADD COLUMN repro_verified INTEGER;
    ALTER TABLE findings ADD COLUMN repro_detail TEXT NOT NULL DEFAULT '';
    CREATE TABLE ttf_events_v5 (
        fingerprint TEXT NOT NULL REFERENCES findings(fingerprint),
        event TEXT NOT NULL CHECK (event IN
            ('introduced', 'released', 'detected', 'filed', 'fixed', 'fix-released', 'closed')),
        time TEXT NOT NULL,
        version TEXT,
        PRIMARY KEY (fingerprint, event)
    );
    INSERT INTO ttf_events_v5 (fingerprint, event, time, version)
        SELECT fingerprint, event, time, version FROM ttf_events;
    DROP TABLE ttf_events;
    ALTER TABLE ttf_events_v5 RENAME TO ttf_events;
    """,
    # 6 (#15, the GitHub bot): its cache per (fingerprint, target repository): the issue number,
    #    the state last posted (and its hash), the passing streak seen, whether it waits in the
    #    queue (over the per-run cap) and since when; the labels known to exist per repository.
    #    The issue's hidden marker stays the source of truth; this is what a dry run reads.
    """
    CREATE TABLE bot_state (
        fingerprint TEXT NOT NULL,
        repo TEXT NOT NULL,
        number INTEGER,
        title TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL DEFAULT '{}',
        state_hash TEXT NOT NULL DEFAULT '',
        issue_state TEXT NOT NULL DEFAULT 'open',
        labels TEXT NOT NULL DEFAULT '[]',
        passing_runs INTEGER NOT NULL DEFAULT 0,
        queued INTEGER NOT NULL DEFAULT 0,
        queued_since TEXT,
        updated TEXT NOT NULL,
        PRIMARY KEY (fingerprint, repo)
    );
    CREATE TABLE bot_labels (
        repo TEXT NOT NULL,
        name TEXT NOT NULL,
        PRIMARY KEY (repo, name)
    );
    """,
    # 7 (#10, bisection in both directions): a bisection's direction ('introduced': last good ->
    #    first bad; 'fixed': last bad -> first fixed, last_good then holding the first fixed release
    #    and first_bad the last bad one) and a finding's last bad release before its fixed_in.
    """
    ALTER TABLE bisections ADD COLUMN direction TEXT NOT NULL DEFAULT 'introduced'
        CHECK (direction IN ('introduced', 'fixed'));
    ALTER TABLE findings ADD COLUMN last_bad TEXT;
    """,
    # 8 (#15, the issue body's flake rate): a regression's confirmation re-runs, in words.
    """
    ALTER TABLE findings ADD COLUMN flake TEXT NOT NULL DEFAULT '';
    """,
]

CELL_COLUMNS = (
    "key",
    "cell_id",
    "runner",
    "model",
    "model_hash",
    "engine",
    "engine_version",
    "tokenizer",
    "tokenizer_version",
    "template",
    "template_version",
    "client",
    "client_version",
    "outcome",
    "reason",
    "lock",
    "facts",
    "duration_s",
    "finished",
    "repro",
)


class StoreDamaged(LlmcompatError):
    """The store file is not a sound SQLite database (issue 12). Results are files, so the way
    out is ``llmcompat store rebuild``: a fresh store from them, the damaged file kept aside."""

    def __init__(self, path: Path, detail: str):
        super().__init__(
            f"{path}: the store is damaged ({detail}); the results are files, so "
            f"`llmcompat store rebuild` makes a fresh store from them and keeps the damaged "
            f"file aside (findings, bisections and issues recorded in it are not in the files)"
        )


class RunExists(LlmcompatError):
    """A run id that the store already holds (issue 12): refused, never an IntegrityError."""

    def __init__(self, run_id: str):
        super().__init__(
            f"--run-id: {run_id!r}: the store already holds a run with this id; "
            f"choose another id or leave --run-id out for a unique one"
        )


class Store:
    """A handle on the SQLite store. ``readonly`` handles never migrate or write."""

    db: sqlite3.Connection

    def __init__(self, path: Path | str, readonly: bool = False):
        self.path = Path(path)
        try:
            self._open(readonly)
        except sqlite3.DatabaseError as exc:
            if getattr(self, "db", None) is not None:
                self.db.close()
            if type(exc) is sqlite3.DatabaseError or "malformed" in str(exc):  # not a db / corrupt pages
                raise StoreDamaged(self.path, str(exc)) from None
            raise LlmcompatError(
                f"{self.path}: cannot open the store: {exc} (is {self.path.parent} writable, with space left?)"
            ) from None
        self.db.row_factory = sqlite3.Row

    def _open(self, readonly: bool) -> None:
        if readonly:
            self.db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
        problems = [r[0] for r in self.db.execute("PRAGMA quick_check(3)")]  # every page read once
        if problems != ["ok"]:
            raise StoreDamaged(self.path, "; ".join(problems)[:300])
        if not readonly:
            self.migrate()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
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
    def keys(self) -> set[str]:
        return {r[0] for r in self.db.execute("SELECT key FROM cells")}

    def reusable_keys(self) -> set[str]:
        """Keys whose result stands: every key but those of ``infra`` results, which are retried."""
        return {r[0] for r in self.db.execute("SELECT key FROM cells WHERE outcome != 'infra'")}

    def has_run(self, run_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is not None

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
        # one query per table, grouped here, in the order the per-key reads give (#11: 10,000 cells)
        stages: dict[str, dict[str, str]] = {}
        for key, stage, outcome in self.db.execute(
            "SELECT key, stage, outcome FROM stage_outcomes ORDER BY key, stage"
        ):
            stages.setdefault(key, {})[stage] = outcome
        results: dict[str, list[dict]] = {}
        rows = self.db.execute("SELECT * FROM results ORDER BY key, case_id, stage, check_name")
        names = [d[0] for d in rows.description]
        for row in rows:
            r = dict(zip(names, tuple(row)))
            if r["outcome"] == "fail":
                r["class"] = failure_class(r["klass"], r["stage"]).value
            results.setdefault(r["key"], []).append(r)
        cells = []
        for cell in self.cells():
            cell["lock"] = json.loads(cell["lock"])
            cell["facts"] = json.loads(cell["facts"])
            cell["stages"] = stages.get(cell["key"], {})
            cell["results"] = results.get(cell["key"], [])
            cells.append(cell)
        return {
            "schema_version": self.version,
            "runs": self.runs(),
            "cells": cells,
            "findings": [{**f.as_dict(), "class": failure_class(f.klass, f.stage).value} for f in self.findings()],
            "bisections": [b.as_dict() for b in self.bisections()],
            "issues": self.issues(),
            "ttf_events": self.ttf_events(),
            "quarantine": list(self.quarantine().values()),
        }

    # ---- the single writer ---------------------------------------------------------------
    def ingest_run(self, run: dict, results: Iterable[dict], reused: Iterable[str], releases=()) -> None:
        """Record one run atomically: its new cell results, the reused keys, releases seen.
        A run id the store already holds is refused (:class:`RunExists`) and nothing is written."""
        with self.transaction() as db:
            if self.has_run(run["id"]):
                raise RunExists(run["id"])
            db.execute(
                "INSERT INTO runs (id, started, finished, kind, meta) VALUES (?, ?, ?, ?, ?)",
                (
                    run["id"],
                    run["started"],
                    run.get("finished"),
                    run.get("kind", "matrix"),
                    json.dumps(run.get("meta", {}), sort_keys=True),
                ),
            )
            for result in results:
                _insert_cell(db, result)
                db.execute(
                    "INSERT OR IGNORE INTO run_cells (run_id, key, reused) VALUES (?, ?, 0)", (run["id"], result["key"])
                )
            for key in reused:
                db.execute("INSERT OR IGNORE INTO run_cells (run_id, key, reused) VALUES (?, ?, 1)", (run["id"], key))
            db.executemany(
                "INSERT OR REPLACE INTO releases (package, version, upload_time) VALUES (?, ?, ?)",
                list(releases),
            )

    # ---- the bot's state (migration 2) -----------------------------------------------------
    def case_rows(self, run_id: str | None = None) -> list[dict]:
        """One row per (run, cell, case, stage, check): the cell's axes, the run's time, the check's
        outcome and detail; a cell without per-case results gives one row with ``case_id`` NULL."""
        sql = (
            "SELECT run_cells.run_id, runs.started AS run_started, runs.finished AS run_finished,"
            " run_cells.reused, cells.key, cells.cell_id, cells.runner, cells.model,"
            " cells.engine, cells.engine_version, cells.tokenizer, cells.tokenizer_version,"
            " cells.template, cells.template_version, cells.client, cells.client_version,"
            " cells.outcome AS cell_outcome, cells.reason, cells.finished, cells.repro,"
            " results.case_id, results.stage, results.check_name, results.outcome, results.klass,"
            " results.detail"
            " FROM run_cells JOIN runs ON runs.id = run_cells.run_id JOIN cells USING (key)"
            " LEFT JOIN results ON results.key = cells.key"
        )
        params: tuple = ()
        if run_id is not None:
            sql += " WHERE run_cells.run_id = ?"
            params = (run_id,)
        sql += " ORDER BY runs.started, cells.cell_id, results.case_id, results.stage, results.check_name"
        return [dict(r) for r in self.db.execute(sql, params)]

    def release_time(self, package: str, version: str) -> str | None:
        row = self.db.execute(
            "SELECT upload_time FROM releases WHERE package = ? AND version = ?", (package, version)
        ).fetchone()
        return row[0] if row else None

    def _select(self, table: str, order: str, **where) -> list[dict]:
        """Rows of ``table`` where each given column equals its value (None: any), in ``order``."""
        given = {c: v for c, v in where.items() if v is not None}
        sql = f"SELECT * FROM {table}"
        if given:
            sql += " WHERE " + " AND ".join(f"{c} = ?" for c in given)
        return [dict(row) for row in self.db.execute(f"{sql} ORDER BY {order}", list(given.values()))]

    def finding(self, fingerprint: str) -> Finding | None:
        rows = self._select("findings", "fingerprint", fingerprint=fingerprint)
        return Finding.from_row(rows[0]) if rows else None

    def findings(self, status: str | None = None, kind: str | None = None) -> list[Finding]:
        rows = self._select("findings", "first_seen, fingerprint", status=status, kind=kind)
        return [Finding.from_row(r) for r in rows]

    def bisections(self, fingerprint: str | None = None) -> list[Bisection]:
        return [Bisection.from_row(r) for r in self._select("bisections", "id", fingerprint=fingerprint)]

    def issues(self, fingerprint: str | None = None) -> list[dict]:
        return self._select("issues", "created, repo, number", fingerprint=fingerprint)

    def ttf_events(self, fingerprint: str | None = None) -> list[dict]:
        return self._select("ttf_events", "fingerprint, time", fingerprint=fingerprint)

    def quarantine(self, now: str | None = None) -> dict[str, dict]:
        """Quarantine entries by subject; with ``now``, only those still in force (``until`` > now)."""
        rows = [dict(r) for r in self.db.execute("SELECT * FROM quarantine ORDER BY subject")]
        if now is not None:
            from datetime import datetime

            def _dt(t: str) -> datetime:
                d = datetime.fromisoformat(t)
                return d if d.tzinfo else d.replace(tzinfo=UTC)

            rows = [r for r in rows if _dt(r["until"]) > _dt(now)]
        return {r["subject"]: r for r in rows}

    def save_finding(
        self, finding: Finding | Mapping, bisection: Bisection | Mapping | None = None, events: Iterable[dict] = ()
    ) -> None:
        """Upsert a finding (first_seen kept, last_seen and the range updated, reopened if it was
        fixed), with its bisection and time-to-fix events (the first of each kind is kept), in one
        transaction."""
        self.save_regressions([(finding, bisection, list(events))])

    def save_regressions(
        self,
        items: Iterable[tuple[Finding | Mapping, Bisection | Mapping | None, list[dict]]],
        quarantine: Iterable[dict] = (),
    ) -> None:
        """Several (finding, bisection, events) and quarantine entries, all in one transaction.
        Records or mappings with their fields (extra keys are left out)."""
        with self.transaction() as db:
            for item, bisection, events in items:
                finding = _finding(item)
                _upsert_finding(db, finding)
                if bisection is not None:
                    _insert_bisection(db, finding.fingerprint, _bisection(bisection))
                _insert_events(db, finding.fingerprint, events)
            for q in quarantine:
                db.execute(
                    "INSERT OR REPLACE INTO quarantine (subject, reason, until) VALUES (?, ?, ?)",
                    (q["subject"], q["reason"], q["until"]),
                )

    def mark_fixed(self, fingerprint: str, fixed_in: str, time: str) -> None:
        with self.transaction() as db:
            _mark_fixed(db, fingerprint, fixed_in, time)

    def save_differences(self, current: Iterable[Finding | Mapping], fixed: Mapping[str, str], time: str) -> None:
        """The latest run's differences (upserted: first_seen kept, reopened if they were fixed,
        ``detected`` recorded once) and those it no longer shows (fixed), in one transaction."""
        with self.transaction() as db:
            for item in current:
                finding = replace(
                    _finding(item), kind="difference", status="open", fixed_in=None, first_seen=time, last_seen=time
                )
                _upsert_finding(db, finding)
                _insert_events(db, finding.fingerprint, [{"event": "detected", "time": time}])
            for fp, version in fixed.items():
                _mark_fixed(db, fp, version, time)

    def add_issue(self, fingerprint: str, repo: str, number: int, url: str, created: str, state: str = "open") -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO issues (fingerprint, repo, number, url, state, created, closed)"
                " VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (fingerprint, repo, number, url, state, created),
            )
            _insert_events(db, fingerprint, [{"event": "filed", "time": created}])

    def close_issue(self, repo: str, number: int, closed: str) -> None:
        """The issue closed at ``closed``; its finding's time-to-fix gets the ``closed`` event."""
        with self.transaction() as db:
            db.execute(
                "UPDATE issues SET state = 'closed', closed = ? WHERE repo = ? AND number = ?", (closed, repo, number)
            )
            for (fp,) in db.execute(
                "SELECT fingerprint FROM issues WHERE repo = ? AND number = ?", (repo, number)
            ).fetchall():
                _insert_events(db, fp, [{"event": "closed", "time": closed}])

    def reopen_issue(self, repo: str, number: int) -> None:
        """The issue open again: not closed, and its finding's ``closed`` event is withdrawn."""
        with self.transaction() as db:
            db.execute("UPDATE issues SET state = 'open', closed = NULL WHERE repo = ? AND number = ?", (repo, number))
            db.execute(
                "DELETE FROM ttf_events WHERE event = 'closed' AND fingerprint IN"
                " (SELECT fingerprint FROM issues WHERE repo = ? AND number = ?)",
                (repo, number),
            )

    def add_ttf_event(self, fingerprint: str, event: str, time: str, version: str | None = None) -> None:
        with self.transaction() as db:
            _insert_events(db, fingerprint, [{"event": event, "time": time, "version": version}])

    def set_triage(self, verdicts: Mapping[str, tuple[str, str]]) -> None:
        """Findings' triage (fingerprint -> (verdict, reason)), in one transaction (bot.triage)."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE findings SET triage = ?, triage_reason = ? WHERE fingerprint = ?",
                [(v, r, fp) for fp, (v, r) in verdicts.items()],
            )

    def set_repro(self, results: Mapping[str, tuple[bool | None, str]]) -> None:
        """Findings' standalone-reproduction results (fingerprint -> (verified, detail)), in one
        transaction (bot.repro); verified None: no reproduction, or it could not run."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE findings SET repro_verified = ?, repro_detail = ? WHERE fingerprint = ?",
                [(None if v is None else int(bool(v)), d, fp) for fp, (v, d) in results.items()],
            )

    def set_quarantine(self, subject: str, reason: str, until: str) -> None:
        self.save_regressions([], [{"subject": subject, "reason": reason, "until": until}])

    # ---- the GitHub bot's cache (migration 6, #15) ---------------------------------------
    def bot_states(self) -> list[dict]:
        """The bot's rows per (fingerprint, repo), ``state`` and ``labels`` decoded."""
        rows = [dict(r) for r in self.db.execute("SELECT * FROM bot_state ORDER BY queued_since, fingerprint, repo")]
        for r in rows:
            r["state"], r["labels"] = json.loads(r["state"]), json.loads(r["labels"])
        return rows

    def bot_labels(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for repo, name in self.db.execute("SELECT repo, name FROM bot_labels"):
            out.setdefault(repo, set()).add(name)
        return out

    def save_bot_state(self, rows: Iterable[Mapping], labels: Iterable[tuple[str, str]] = ()) -> None:
        """Upsert the bot's rows (a row's missing columns keep their stored value) and known
        labels, in one transaction."""
        columns = (
            "number",
            "title",
            "state",
            "state_hash",
            "issue_state",
            "labels",
            "passing_runs",
            "queued",
            "queued_since",
            "updated",
        )
        with self.transaction() as db:
            for row in rows:
                given = {c: row[c] for c in columns if c in row}
                for c in ("state", "labels"):
                    if c in given:
                        given[c] = json.dumps(given[c], sort_keys=True)
                names = ["fingerprint", "repo", *given]
                db.execute(
                    f"INSERT INTO bot_state ({', '.join(names)}) VALUES ({', '.join('?' for _ in names)})"
                    " ON CONFLICT (fingerprint, repo) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in given),
                    [row["fingerprint"], row["repo"], *given.values()],
                )
            db.executemany("INSERT OR IGNORE INTO bot_labels (repo, name) VALUES (?, ?)", list(labels))


FINDING_COLUMNS = tuple(f.name for f in fields(Finding))
_SET_BY_OWN_STEP = ("triage", "triage_reason", "repro_verified", "repro_detail")
"""Written by set_triage/set_repro (#15) after the finding is saved: an upsert keeps them."""
_UPDATED_ON_CONFLICT = tuple(
    c for c in FINDING_COLUMNS if c not in ("fingerprint", "first_seen", "kind") and c not in _SET_BY_OWN_STEP
)
BISECTION_COLUMNS = tuple(f.name for f in fields(Bisection) if f.name != "id")


def _finding(f: Finding | Mapping) -> Finding:
    return f if isinstance(f, Finding) else Finding.from_row(f)


def _bisection(b: Bisection | Mapping) -> Bisection:
    return b if isinstance(b, Bisection) else Bisection.from_row(b)


def _upsert_finding(db: sqlite3.Connection, finding: Finding) -> None:
    row = finding.as_row()
    row["last_seen"] = row["last_seen"] or row["first_seen"]
    db.execute(
        f"INSERT INTO findings ({', '.join(FINDING_COLUMNS)}) VALUES ({', '.join('?' for _ in FINDING_COLUMNS)})"
        " ON CONFLICT (fingerprint) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in _UPDATED_ON_CONFLICT),
        [row[c] for c in FINDING_COLUMNS],
    )


def _mark_fixed(db: sqlite3.Connection, fingerprint: str, fixed_in: str, time: str) -> None:
    db.execute(
        "UPDATE findings SET status = 'fixed', fixed_in = ?, last_seen = ? WHERE fingerprint = ?",
        (fixed_in, time, fingerprint),
    )
    _insert_events(db, fingerprint, [{"event": "fixed", "time": time, "version": fixed_in}])


def _insert_bisection(db: sqlite3.Connection, fingerprint: str, b: Bisection) -> None:
    """A new bisection row of ``fingerprint`` (its own ``id`` and ``fingerprint`` are not used)."""
    row = {**b.as_row(), "fingerprint": fingerprint}
    db.execute(
        f"INSERT INTO bisections ({', '.join(BISECTION_COLUMNS)}) VALUES ({', '.join('?' for _ in BISECTION_COLUMNS)})",
        [row[c] for c in BISECTION_COLUMNS],
    )


def _insert_events(db: sqlite3.Connection, fingerprint: str, events: Iterable[dict]) -> None:
    db.executemany(
        "INSERT INTO ttf_events (fingerprint, event, time, version) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (fingerprint, event) DO NOTHING",
        [(fingerprint, e["event"], e["time"], e.get("version")) for e in events],
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
            (
                result["key"],
                r["case"],
                r["stage"],
                r["check"],
                r["outcome"],
                r.get("klass") or "",
                r.get("detail") or "",
            )
            for r in result.get("records", [])
        ],
    )


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
