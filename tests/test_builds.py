"""Compiled engines built once per (version, flags): keys, locking and atomicity with fake builds;
sdists from a local index; the native-server build on a fake vendored tree (old target name);
and, slow, llama-cpp-python 0.2.90's real wheel, installed by uv from --find-links without
compiling, rendering the tiny model's template through the probe against the goldens."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from matrix.env import builds
from matrix.releases.index import IndexConfig
from tests.conftest import or_skip as _or_skip

LLAMA_CPP = "0.2.90"


# --------------------------------------------------------------------------- keys (pure)


def _doc(**kw):
    base = dict(
        kind="wheel",
        package="llama-cpp-python",
        version="0.2.90",
        build_env=None,
        python="3.11",
        platform_tag="linux-x86_64-glibc2.36",
        compiler="cc 12",
    )
    base.update(kw)
    return builds.key_doc(base.pop("kind"), base.pop("package"), base.pop("version"), base.pop("build_env"), **base)


def test_the_key_covers_version_flags_python_platform_and_compiler_but_not_parallelism():
    k = builds.key_of(_doc())
    assert builds.key_of(_doc(package="Llama_CPP.python")) == k  # names are canonical
    assert builds.key_of(_doc(build_env={"CMAKE_BUILD_PARALLEL_LEVEL": "16"})) == k
    assert builds.key_of(_doc(build_env={"CMAKE_ARGS": "  " + builds.DEFAULT_CMAKE_ARGS.replace(" ", "   ")})) == k
    others = [
        _doc(version="0.2.89"),
        _doc(python="3.12"),
        _doc(platform_tag="linux-aarch64-glibc2.36"),
        _doc(compiler="clang 18"),
        _doc(kind="llama-server"),
        _doc(build_env={"CMAKE_ARGS": builds.DEFAULT_CMAKE_ARGS + " -DGGML_BLAS=ON"}),
        _doc(build_env={"CMAKE_ARGS": "-DGGML_NATIVE=ON"}),
        _doc(build_env={"FORCE_CMAKE": "1"}),
    ]
    keys = {builds.key_of(d) for d in others}
    assert k not in keys and len(keys) == len(others)


def test_build_env_defaults_are_overridden_entry_by_entry():
    env = builds.build_env_of({"CMAKE_BUILD_PARALLEL_LEVEL": 4})
    assert env == {"CMAKE_ARGS": builds.DEFAULT_CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": "4"}
    assert "-DGGML_NATIVE=OFF" in builds.DEFAULT_CMAKE_ARGS and "-DLLAMA_BUILD_SERVER=OFF" in builds.DEFAULT_CMAKE_ARGS
    assert builds.wheel_key("llama-cpp-python", LLAMA_CPP) != builds.wheel_key(
        "llama-cpp-python", LLAMA_CPP, {"CMAKE_ARGS": "-DGGML_NATIVE=ON"}
    )
    assert builds.wheel_key("llama-cpp-python", LLAMA_CPP) != builds.server_key(LLAMA_CPP)


# --------------------------------------------------------------------------- once, atomically


def test_a_key_builds_once_even_when_two_builds_race(tmp_path):
    calls = []

    def build(tmp: Path):
        calls.append(1)
        time.sleep(0.3)
        (tmp / "artifact").write_text("x")
        return {"artifact": "artifact"}

    doc = _doc()
    out = []
    threads = [threading.Thread(target=lambda: out.append(builds._build_once(tmp_path, doc, build))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(b for _, b in out) == [False, False, True]
    path = out[0][0]
    assert path.name == builds.key_of(doc)[:24] and (path / "artifact").read_text() == "x"
    info = builds.info(path)
    assert info["key"] == builds.key_of(doc) and info["inputs"] == doc and info["artifact"] == "artifact"
    # only the published build is left: no temporary directories
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [path.name]


def test_a_failed_build_leaves_nothing_that_looks_built(tmp_path):
    def broken(tmp: Path):
        (tmp / "half").write_text("half")
        raise builds.BuildError("compiler exploded", "log tail")

    with pytest.raises(builds.BuildError, match="compiler exploded"):
        builds._build_once(tmp_path, _doc(), broken)
    assert [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
    # a stale directory without a marker (a crash from before atomic renames) is rebuilt
    stale = tmp_path / builds.key_of(_doc())[:24]
    stale.mkdir()
    (stale / "junk").write_text("")
    path, built = builds._build_once(tmp_path, _doc(), lambda tmp: (tmp / "ok").write_text("ok") and None)
    assert built and (path / "ok").is_file() and not (path / "junk").exists()


def test_processes_wait_for_each_other_on_the_lock_file(tmp_path):
    """flock works across processes: a second process blocks until the first releases."""
    lock = tmp_path / "k.lock"
    code = (
        "import sys, time; sys.path.insert(0, sys.argv[2]); from matrix.env import builds; from pathlib import Path\n"
        "with builds._locked(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(1.0)\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    p = subprocess.Popen([sys.executable, "-c", code, str(lock), root], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    t = time.monotonic()
    with builds._locked(lock):
        waited = time.monotonic() - t
    p.wait(10)
    assert waited > 0.5


# --------------------------------------------------------------------------- sdists from the index pip names


def _make_sdist(directory: Path, name: str, version: str, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name.replace('-', '_')}-{version}.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for rel, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name.replace('-', '_')}-{version}/{rel}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return path


def _local_index(monkeypatch, tmp_path, *, find_links=(), indexes=()):
    cfg = IndexConfig(
        index_url=indexes[0] if indexes else "file:///nonexistent-index",
        extra_index_urls=tuple(indexes[1:]),
        find_links=tuple(str(f) for f in find_links),
        no_index=False,
        cert=None,
        client_cert=None,
        timeout=10.0,
        origin="test",
    )
    monkeypatch.setattr("matrix.releases.index.pip_config", lambda: cfg)
    monkeypatch.setenv("LLMCOMPAT_CACHE", str(tmp_path / "cache"))


def test_sdist_comes_from_a_file_index_once_and_its_hash_is_checked(tmp_path, monkeypatch):
    files = tmp_path / "files"
    src = _make_sdist(files, "fake-engine", "1.0", {"README": "hi"})
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    index = tmp_path / "simple"
    (index / "fake-engine").mkdir(parents=True)
    page = f'<html><body><a href="{src.as_uri()}#sha256={digest}">{src.name}</a></body></html>'
    (index / "fake-engine" / "index.html").write_text(page)
    _local_index(monkeypatch, tmp_path, indexes=[index.as_uri()])
    got = builds.sdist("fake-engine", "1.0")
    assert got.read_bytes() == src.read_bytes() and got.parent == tmp_path / "cache" / "sdists"
    src.unlink()  # cached: the index is not read again
    assert builds.sdist("Fake_Engine", "1.0") == got
    with pytest.raises(builds.BuildError, match="no source distribution of fake-engine==2.0"):
        builds.sdist("fake-engine", "2.0")
    bad = _make_sdist(files, "other", "1.0", {"README": "x"})
    (index / "other").mkdir()
    (index / "other" / "index.html").write_text(f'<a href="{bad.as_uri()}#sha256={"0" * 64}">{bad.name}</a>')
    with pytest.raises(builds.BuildError, match="does not match"):
        builds.sdist("other", "1.0")
    assert not list((tmp_path / "cache" / "sdists").glob("other*"))


# --------------------------------------------------------------------------- the native server build

FAKE_SERVER_CMAKE = """cmake_minimum_required(VERSION 3.14)
project(fakellama C)
option(LLAMA_BUILD_SERVER "server" OFF)
option(LLAMA_BUILD_EXAMPLES "examples" OFF)
add_executable(other other.c)
if (LLAMA_BUILD_SERVER AND LLAMA_BUILD_EXAMPLES)
  add_executable(server server.c)
  set_target_properties(server PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
endif()
"""


@pytest.mark.skipif(not shutil.which("cmake") or not shutil.which("cc"), reason="needs cmake and a C compiler")
def test_the_native_server_builds_the_old_target_name_once(tmp_path, monkeypatch):
    """A vendored tree whose server target is still called ``server`` (llama.cpp before mid-2024):
    only that target is built (``other`` does not compile), once per flags."""
    files = tmp_path / "links"
    _make_sdist(
        files,
        "llama-cpp-python",
        "0.0.1",
        {
            "vendor/llama.cpp/CMakeLists.txt": FAKE_SERVER_CMAKE,
            "vendor/llama.cpp/server.c": '#include <stdio.h>\nint main(void){printf("fake server %d\\n", FLAVOUR);return 0;}\n',
            "vendor/llama.cpp/other.c": "#error this target must not be built\n",
        },
    )
    _local_index(monkeypatch, tmp_path, find_links=[files])
    env = {"CMAKE_ARGS": "-DCMAKE_C_FLAGS=-DFLAVOUR=1"}
    exe = builds.llama_server("0.0.1", env)
    assert exe.name == "llama-server" and exe.parent.parent == tmp_path / "cache" / "bin"
    assert subprocess.run([str(exe)], capture_output=True, text=True).stdout == "fake server 1\n"
    info = builds.info(exe.parent)
    assert info["target"] == "server" and "-DLLAMA_BUILD_SERVER=ON" in info["cmake_args"]
    mtime = exe.stat().st_mtime
    assert builds.llama_server("0.0.1", {**env, "CMAKE_BUILD_PARALLEL_LEVEL": "1"}) == exe  # same key
    assert exe.stat().st_mtime == mtime
    other = builds.llama_server("0.0.1", {"CMAKE_ARGS": "-DCMAKE_C_FLAGS=-DFLAVOUR=2"})
    assert other != exe and subprocess.run([str(other)], capture_output=True, text=True).stdout == "fake server 2\n"


def test_a_tree_without_a_server_target_is_a_build_error(tmp_path, monkeypatch):
    if not shutil.which("cmake") or not shutil.which("cc"):
        pytest.skip("needs cmake and a C compiler")
    files = tmp_path / "links"
    _make_sdist(
        files,
        "llama-cpp-python",
        "0.0.2",
        {"vendor/llama.cpp/CMakeLists.txt": "cmake_minimum_required(VERSION 3.14)\nproject(x C)\n"},
    )
    _local_index(monkeypatch, tmp_path, find_links=[files])
    with pytest.raises(builds.BuildError, match="no server target"):
        builds.llama_server("0.0.2")
    assert not [p for p in (tmp_path / "cache" / "bin").iterdir() if not p.name.endswith(".lock")]


# --------------------------------------------------------------------------- the real wheel (slow)


@pytest.fixture(scope="module")
def llama_wheel_dir():
    t = time.perf_counter()
    path = _or_skip(builds.wheel, "llama-cpp-python", LLAMA_CPP)
    print(
        f"builds.wheel llama-cpp-python=={LLAMA_CPP}: {time.perf_counter() - t:.1f}s "
        f"(build recorded {builds.info(path)['seconds']}s)"
    )
    return path


def install_with_find_links(wheel_dir: Path, requirements: list[str], dest: Path) -> Path:
    """What a cell with llama-cpp-python does: resolve and install with ``--find-links`` to the
    built wheel and ``--no-build``: uv takes the prebuilt wheel, it cannot compile."""
    from matrix.env import uv as envs

    env = envs._uv_env()
    extra = builds.find_links_args([wheel_dir])
    req = dest.parent / "req.in"
    req.write_text("".join(r + "\n" for r in requirements))
    out = subprocess.run(
        [
            envs.uv_bin(),
            "pip",
            "compile",
            str(req),
            "--quiet",
            "--no-header",
            "--no-annotate",
            "--python-version",
            "3.11",
            *extra,
            *envs._index_args(),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if out.returncode != 0:
        pytest.skip(f"no package index: {out.stderr.strip().splitlines()[-1:]}")
    lock = dest.parent / "lock.txt"
    lock.write_text(out.stdout)
    subprocess.run(
        [envs.uv_bin(), "venv", "--quiet", "--python", envs.interpreter("3.11"), str(dest)],
        check=True,
        env=env,
        capture_output=True,
    )
    proc = subprocess.run(
        [
            envs.uv_bin(),
            "pip",
            "install",
            "--no-deps",
            "--no-build",
            "--python",
            str(dest / "bin" / "python"),
            *extra,
            *envs._index_args(),
            "-r",
            str(lock),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dest / "bin" / "python"


@pytest.mark.slow
def test_the_wheel_is_built_once_and_installed_from_find_links_without_compiling(llama_wheel_dir, tmp_path):
    info = builds.info(llama_wheel_dir)
    wheels = list(llama_wheel_dir.glob("*.whl"))
    assert [w.name for w in wheels] == [info["wheel"]] and info["wheel"].startswith(f"llama_cpp_python-{LLAMA_CPP}-")
    assert info["inputs"]["flags"]["CMAKE_ARGS"] == builds.DEFAULT_CMAKE_ARGS
    t = time.perf_counter()
    again = builds.wheel("llama-cpp-python", LLAMA_CPP, {"CMAKE_BUILD_PARALLEL_LEVEL": "1"})
    assert again == llama_wheel_dir and time.perf_counter() - t < 5  # cached: no rebuild
    assert builds.info(again)["built"] == info["built"]
    assert builds.wheel_key("llama-cpp-python", LLAMA_CPP, {"CMAKE_ARGS": "-DGGML_NATIVE=ON"})[:24] != again.name
    t = time.perf_counter()
    python = install_with_find_links(llama_wheel_dir, [f"llama-cpp-python=={LLAMA_CPP}"], tmp_path / "venv")
    seconds = time.perf_counter() - t
    out = subprocess.run(
        [
            str(python),
            "-c",
            "import llama_cpp, os; print(llama_cpp.__version__); "
            "print(os.listdir(os.path.join(os.path.dirname(llama_cpp.__file__), 'lib')))",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and out.stdout.splitlines()[0] == LLAMA_CPP, out.stderr[-2000:]
    assert "libllama.so" in out.stdout
    print(f"install from --find-links: {seconds:.1f}s")


# Where llama-cpp-python's own formatter disagrees with the reference (jinja2 as transformers
# runs it) on the tiny model's template: real findings, not tuned goldens.
LLAMA_CPP_PYTHON_DISAGREES = {
    # jinja2's built-in tojson (sort_keys=True, HTML-safe, ASCII-escaped) instead of transformers'
    # json.dumps(ensure_ascii=False) in insertion order: every tool list comes out in another order
    "tools-defined",
    "tools-multiple",
    "system-with-tools",
    "cap-tools",
    "tool-call-and-result",
    "tool-call-string-arguments",
    "parallel-tool-calls",
    "parallel-tool-calls-mixed-arguments",
    "tool-results-then-answer",
    # object arguments: sorted keys and "Zoë" written as "Zo\\u00eb" (15 characters longer)
    "tool-call-nested-arguments",
    # no reasoning aliasing (reasoning / thinking -> reasoning_content): the thought is dropped
    "reasoning-field-alias",
}


@pytest.fixture(scope="module")
def llama_python(llama_wheel_dir, tmp_path_factory):
    from matrix.declare import loader

    ref = loader.load_default().reference
    return install_with_find_links(
        llama_wheel_dir,
        [f"llama-cpp-python=={LLAMA_CPP}", f"jinja2=={ref['jinja2']}"],
        tmp_path_factory.mktemp("llama-env") / "venv",
    )


@pytest.mark.slow
def test_llama_cpp_python_renders_the_tiny_template_through_the_probe(llama_python):
    from matrix import suites, tinymodel
    from matrix.cell.run import run_probe
    from matrix.declare import loader

    model = tinymodel.ensure(
        arch="qwen2", parts=("tokenizer", "weights", "gguf"), reference=loader.load_default().reference
    )
    suite = suites.load("core")
    cases = suites.cases_with_goldens(suite, suites.load_goldens(suite, "tiny-qwen2"))
    job = {
        "mode": "check",
        "model_dir": str(model.path),
        "stages": ["template"],
        "template_sources": ["hf", "gguf"],
        "renderers": ["jinja2", "llama-cpp-python"],
        "cases": cases,
        "limits": {"render_seconds": 10, "render_chars": 1_000_000},
        "report_versions": ["llama-cpp-python"],
    }
    result, log = run_probe(llama_python, job)
    assert result is not None, log
    assert result["versions"]["llama-cpp-python"] == LLAMA_CPP
    recs = {(r["case"], r["check"]): r for r in result["records"]}
    # the reference renderer agrees with its own goldens in this environment
    assert all(r["outcome"] == "pass" for (c, chk), r in recs.items() if chk == "jinja2"), [
        r for (c, chk), r in recs.items() if chk == "jinja2" and r["outcome"] != "pass"
    ]
    outcome = {c: r["outcome"] for (c, chk), r in recs.items() if chk == "llama-cpp-python"}
    assert {c for c, o in outcome.items() if o == "skipped"} == {
        c["id"] for c in cases if c.get("continue_final_message")
    }
    failed = {c for c, o in outcome.items() if o == "fail"}
    print("llama-cpp-python disagrees with the reference on:", sorted(failed))
    for c in failed:
        print(f"  {c}: {recs[(c, 'llama-cpp-python')]['detail'][:200]}")
    assert failed == LLAMA_CPP_PYTHON_DISAGREES
    assert all(recs[(c, "llama-cpp-python")].get("klass") == "mismatch" for c in failed)
    # errors a template raises on purpose come through its raise_exception (ValueError here)
    assert outcome["unknown-role-raises"] == "pass"
    # the GGUF's embedded template renders the same way as the HF one with this formatter
    gguf = {c: r["outcome"] for (c, chk), r in recs.items() if chk == "gguf/llama-cpp-python"}
    assert gguf == outcome
