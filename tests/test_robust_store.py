"""The store and its front door never crash on what a user feeds them (issue 12): result files
checked against ``reports/result.schema.json``, unique run ids, ``ingest`` refusing paths that
are not directories of result files, a damaged store reported with the way out (``llmcompat store
rebuild``), a read-only or full state directory reported before any work starts.

Everything goes through the real CLI (``matrix.app.cli.main``) on a real SQLite store."""

from __future__ import annotations

import copy
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from matrix.app.cli import main
from reports.aggregate import read_result
from reports.store import Store

ROOT = Path(__file__).resolve().parent.parent


def result(key="k1", outcome="pass", engine_version="5.0.0", cases=2) -> dict:
    choices = {
        "engine": {"component": "transformers", "version": engine_version},
        "tokenizer": {"component": "tokenizers", "version": "0.23.3"},
        "template": {"component": "hf-jinja2", "version": "3.1.6"},
        "client": {"component": "openai", "version": "3.51.0"},
    }
    return {
        "schema": 1,
        "key": key,
        "outcome": outcome,
        "finished": "2026-11-24T00:00:00+00:00",
        "reason": "",
        "cell": {
            "id": f"cpu/tiny-qwen2/transformers@{engine_version}/tokenizers@0.23.3/hf-jinja2@3.1.6/openai@3.51.0",
            "runner": "cpu",
            "model": "tiny-qwen2",
            "choices": choices,
            "reasons": [],
        },
        "stages": {"template": {"outcome": outcome, "counts": {outcome: cases}}, "tokenize": {"outcome": "pass"}},
        "records": [
            {"case": f"c{i}", "stage": "template", "check": "jinja2", "outcome": outcome, "detail": "d", "klass": None}
            for i in range(cases)
        ],
        "lock": {"python": "3.11", "pins": {"jinja2": "3.1.6"}},
        "model_hash": "mh",
        "facts": {"a": {"b": [1]}},
        "versions": {"jinja2": "3.1.6", "absent": None},
        "duration_s": 1.5,
        "repro": "nox -s cell(x)",
        "log": "",
    }


def write(d: Path, data, name: str | None = None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{name or data['key']}.json"
    p.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return p


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("LLMCOMPAT_HOME", str(h))
    monkeypatch.delenv("LLMCOMPAT_SITE", raising=False)
    monkeypatch.delenv("LLMCOMPAT_MIN_FREE_MB", raising=False)
    return h


def runs(home: Path) -> list[dict]:
    if not (home / "store.sqlite").is_file():
        return []
    with Store(home / "store.sqlite", readonly=True) as s:
        return s.runs()


def cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


# ---- result files: every nested field the store reads -------------------------------------------


def _set(data: dict, path: tuple, value) -> dict:
    data = copy.deepcopy(data)
    target = data
    for p in path[:-1]:
        target = target[p]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


_DELETE = object()
# each of these was a traceback in issue 12 (KeyError 'choices', AttributeError on .items(), KeyError
# 'case', TypeError string indices, IntegrityError on cells.finished, TypeError on None)
BAD = [
    (("cell", "choices"), _DELETE, "cell", "'choices' is a required property"),
    (("stages",), ["template"], "stages", "is not of type 'object'"),
    (("records", 1, "case"), _DELETE, "records[1]", "'case' is a required property"),
    (("cell",), "cpu/tiny", "cell", "is not of type 'object'"),
    (("finished",), None, "finished", "is not of type 'string'"),
    (("records",), None, "records", "is not of type 'array'"),
    (("cell", "choices", "engine", "version"), 5, "cell.choices.engine.version", "is not of type 'string'"),
    (("stages", "template", "outcome"), "exploded", "stages.template.outcome", "is not one of"),
    (("stages", "bogus-stage"), {"outcome": "pass"}, "stages", "bogus-stage"),
    (("duration_s",), 10**30, "duration_s", "is greater than the maximum"),
    (("records", 0, "detail"), "\ud800", "records[0].detail", "lone surrogate"),
    (("lock", "pins"), [], "lock.pins", "is not of type 'object'"),
]


@pytest.mark.parametrize("path,value,where,words", BAD, ids=[w for _, _, w, _ in BAD])
def test_wrong_nested_types_exit_2_naming_file_path_and_value(home, tmp_path, capsys, path, value, where, words):
    good, bad = result("k1"), _set(result("k2"), path, value)
    d = tmp_path / "in"
    write(d, good)
    bad_file = d / "k2.json"
    bad_file.write_text(json.dumps(bad))
    rc, out, err = cli(capsys, "ingest", str(d))
    assert rc == 2, (out, err)
    assert f"{bad_file}: {where}:" in err and words in err and "Traceback" not in err
    assert runs(home) == []  # nothing of the run was stored, not even the good file


def test_the_schema_holds_the_vocabulary():
    from matrix.outcome import STAGES, Outcome
    from reports.aggregate import SCHEMA_PATH

    defs = json.loads(SCHEMA_PATH.read_text())["$defs"]
    assert defs["outcome"]["enum"] == [o.value for o in Outcome]
    assert defs["stage"]["enum"] == [s.value for s in STAGES]


def test_a_real_result_file_is_valid(tmp_path):
    """What matrix/cell/run.py writes passes (the store test's minimal file too)."""
    p = write(tmp_path, result("abc"))
    assert read_result(p)["key"] == "abc"


@pytest.mark.parametrize(
    "text,words",
    [
        ("{", "not valid JSON"),
        ("[1]", "is not of type 'object'"),
        ("[" * 100_000, "nested too deeply"),
        (b"\xff\xfe", "not UTF-8"),
    ],
)
def test_not_json_at_all(home, tmp_path, capsys, text, words):
    d = tmp_path / "in"
    d.mkdir()
    f = d / "k.json"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    rc, _, err = cli(capsys, "ingest", str(d))
    assert rc == 2 and str(f) in err and words in err and "Traceback" not in err
    assert runs(home) == []


# ---- run ids --------------------------------------------------------------------------------------


def test_two_ingests_in_the_same_second_get_two_runs(home, tmp_path, capsys):
    d = tmp_path / "in"
    write(d, result("k1"))
    assert cli(capsys, "ingest", str(d))[0] == 0
    assert cli(capsys, "ingest", str(d))[0] == 0
    ids = [r["id"] for r in runs(home)]
    assert len(ids) == 2 and len(set(ids)) == 2


def test_a_repeated_run_id_is_refused_with_exit_2(home, tmp_path, capsys):
    d = tmp_path / "in"
    write(d, result("k1"))
    assert cli(capsys, "ingest", str(d), "--run-id", "shard-7")[0] == 0
    write(d, result("k2", engine_version="5.1.0"))
    rc, _, err = cli(capsys, "ingest", str(d), "--run-id", "shard-7")
    assert rc == 2 and "'shard-7'" in err and "already holds a run" in err and "IntegrityError" not in err
    with Store(home / "store.sqlite", readonly=True) as s:
        assert [r["id"] for r in s.runs()] == ["shard-7"] and s.keys() == {"k1"}  # k2 was not stored


def test_the_store_refuses_a_repeated_run_id_itself(tmp_path):
    from reports.store import RunExists

    with Store(tmp_path / "s.sqlite") as s:
        s.ingest_run({"id": "r", "started": "2026-01-01T00:00:00"}, [], [])
        with pytest.raises(RunExists):
            s.ingest_run({"id": "r", "started": "2026-01-01T00:00:00"}, [result("k1")], [])
        assert s.keys() == set()


# ---- ingest paths -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "file", "empty"])
def test_ingest_refuses_what_is_not_a_directory_of_result_files(home, tmp_path, capsys, kind):
    target = tmp_path / "target"
    if kind == "file":
        target.write_text("{}")
    elif kind == "empty":
        (target / "sub").mkdir(parents=True)
        (target / "sub" / "notes.txt").write_text("x")
    rc, _, err = cli(capsys, "ingest", str(target))
    words = {"missing": "no such directory", "file": "is a file", "empty": "holds no result files"}[kind]
    assert rc == 2 and f"{target}: (path)" in err and words in err
    assert not (home / "store.sqlite").exists()  # nothing stored, not even an empty run


# ---- a damaged store ----------------------------------------------------------------------------


def _damage(store: Path) -> None:
    """Overwrite a table page in the middle of the file (what a torn disk write does)."""
    data = bytearray(store.read_bytes())
    page = 4096
    assert len(data) >= 3 * page, len(data)
    data[2 * page : 3 * page] = b"\xa5" * page
    store.write_bytes(bytes(data))


def _filled_store(home: Path, tmp_path: Path, capsys) -> Path:
    for i in range(30):
        write(home / "results", result(f"k{i:02d}", engine_version=f"5.{i}.0", cases=20))
    assert cli(capsys, "ingest", str(home / "results"))[0] == 0
    store = home / "store.sqlite"
    with sqlite3.connect(store) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return store


@pytest.mark.parametrize("damage", ["torn page", "not a database"])
def test_a_damaged_store_is_reported_with_the_way_out_and_rebuilt(home, tmp_path, capsys, damage):
    store = _filled_store(home, tmp_path, capsys)
    if damage == "torn page":
        _damage(store)
    else:
        store.write_bytes(b"this is not an SQLite file at all" * 200)
    original = store.read_bytes()
    for argv in (["report"], ["ingest", str(home / "results")]):
        rc, _, err = cli(capsys, *argv)
        assert rc == 2 and str(store) in err and "damaged" in err and "llmcompat store rebuild" in err, err
        assert "Traceback" not in err
    assert store.read_bytes() == original  # never written over
    rc, out, err = cli(capsys, "store", "rebuild")
    assert rc == 0, err
    aside = home / "store.sqlite.damaged"
    assert aside.read_bytes() == original and "kept as" in out and "from 30 result file(s)" in out
    with Store(store) as s:
        assert len(s.keys()) == 30 and [r["kind"] for r in s.runs()] == ["rebuild"]
        assert s.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert cli(capsys, "report")[0] == 0
    # a second rebuild keeps the first aside too: nothing is ever overwritten
    assert cli(capsys, "store", "rebuild")[0] == 0
    assert aside.read_bytes() == original and (home / "store.sqlite.damaged.1").is_file()


def test_rebuild_skips_unreadable_result_files_and_says_which(home, tmp_path, capsys):
    write(home / "results", result("k1"))
    write(home / "results", "{broken", name="k2")
    rc, out, err = cli(capsys, "store", "rebuild")
    assert rc == 0 and "k2.json" in err and "1 unreadable file(s) skipped" in out
    with Store(home / "store.sqlite") as s:
        assert s.keys() == {"k1"}


# ---- a read-only or full state directory ---------------------------------------------------------


def _in_private_mount(home: Path, options: str, argv: list[str], env: dict, fill: bool = False):
    """The CLI with ``home`` a small tmpfs mounted with ``options`` in a private mount namespace
    (root writes anywhere, so a read-only or full directory needs a real file system that is);
    ``fill`` writes to the tmpfs until it is full first. None where namespaces are not allowed."""
    import shlex
    import shutil

    if os.geteuid() != 0 or not shutil.which("unshare"):
        return None
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        return None
    script = f"mount -t tmpfs -o size=1m tmpfs {shlex.quote(str(home))} && mkdir {shlex.quote(str(home / 'results'))}"
    if fill:
        script += f" && (cat /dev/zero > {shlex.quote(str(home / 'ballast'))} 2>/dev/null; true)"
    if "ro" in options.split(","):
        script += f" && mount -o remount,ro {shlex.quote(str(home))}"
    cli_cmd = shlex.join([sys.executable, "-m", "matrix.app.cli", *argv])
    script += f" && {cli_cmd}; rc=$?; ls -A {shlex.quote(str(home))} >&2; exit $rc"
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )


def _env(home: Path, tmp_path: Path) -> dict:
    return dict(os.environ, LLMCOMPAT_HOME=str(home), PYTHONPATH=str(ROOT), LLMCOMPAT_CACHE=str(tmp_path / "cache"))


@pytest.mark.parametrize("argv", [["ingest", "IN"], ["report"], ["store", "rebuild"]], ids=lambda a: a[0])
def test_a_read_only_state_directory_is_reported_before_any_work(tmp_path, argv):
    home = tmp_path / "home"
    home.mkdir()
    write(tmp_path / "in", result("k1"))
    argv = [str(tmp_path / "in") if a == "IN" else a for a in argv]
    proc = _in_private_mount(home, "ro", argv, _env(home, tmp_path))
    if proc is None:  # not root: a plain read-only directory does it
        os.chmod(home, 0o555)
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "matrix.app.cli", *argv],
                capture_output=True,
                text=True,
                env=_env(home, tmp_path),
                cwd=ROOT,
                timeout=120,
            )
        finally:
            os.chmod(home, 0o755)
    assert proc.returncode == 2, proc.stderr
    assert f"{home}: the state directory is not writable" in proc.stderr, proc.stderr
    assert "read-only file system" in proc.stderr or "permission denied" in proc.stderr
    assert "Traceback" not in proc.stderr and "store.sqlite" not in proc.stderr  # nothing was made


def test_a_truly_full_state_directory_is_reported_before_any_work(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    write(tmp_path / "in", result("k1"))
    proc = _in_private_mount(home, "rw", ["ingest", str(tmp_path / "in")], _env(home, tmp_path), fill=True)
    if proc is None:
        pytest.skip("needs root and mount namespaces (unshare -m) to make a full file system")
    assert proc.returncode == 2, proc.stderr
    assert f"{home}: the state directory is" in proc.stderr and "no space left" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "store.sqlite" not in proc.stderr


def test_a_full_state_directory_is_reported_before_any_work(home, tmp_path, capsys, monkeypatch):
    d = tmp_path / "in"
    write(d, result("k1"))
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    monkeypatch.setenv("LLMCOMPAT_MIN_FREE_MB", str(free // 2**20 + 1024))  # more than the disk has
    rc, _, err = cli(capsys, "ingest", str(d))
    assert rc == 2 and f"{home}: the state directory is full:" in err and "MiB needed" in err
    assert not (home / "store.sqlite").exists()


def test_a_full_device_is_named(tmp_path):
    """ENOSPC on the probe write (here /dev/full stands in for the file) reads as "no space"."""
    import errno

    from matrix.app.preflight import _why

    assert _why(OSError(errno.ENOSPC, "No space left on device")) == "no space left on the device"
