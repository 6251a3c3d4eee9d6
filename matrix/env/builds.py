"""Compiled engines, built once per version and build flags (the adapter).

Some engines ship only as source (llama-cpp-python compiles llama.cpp when installed). uv caches
what it builds, but its cache does not key on ``CMAKE_ARGS``: two cells that differ only in build
flags would share one wheel, and every fresh machine would compile again. Here a build is keyed
on everything that changes the binary (package, version, the build flags, the Python, the
platform, the C compiler) and done once per key:

- :func:`wheel` builds the wheel of a source-only package into ``cache_dir()/wheels/<key>/`` and
  returns that directory, which a cell hands to uv as ``--find-links``: uv then installs the
  prebuilt wheel of that exact version instead of compiling.
- :func:`llama_server` builds llama.cpp's native ``llama-server`` (target ``llama-server``, or
  ``server`` in older vendored trees) from the sources vendored in a llama-cpp-python sdist,
  into ``cache_dir()/bin/<key>/llama-server``.

Each build runs under a temporary name and is renamed into place, so a killed build never leaves
a half-made result that looks whole; a lock file per key makes a second build of the same key
wait for the first and take its result. Source distributions are fetched once from the index pip
is configured with (hash-checked where the index gives one) into ``cache_dir()/sdists/``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from packaging.utils import canonicalize_name

from matrix import atomic, scratch
from matrix.env import gitsrc
from matrix.env import uv as envs
from matrix.releases import sources

MARKER = "llmcompat-build.json"
KEY_FORMAT = 1
"""Version of the key document and layout; a change builds everything afresh."""

DEFAULT_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
    "-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF"
)
DEFAULT_BUILD_ENV = {"CMAKE_ARGS": DEFAULT_CMAKE_ARGS, "CMAKE_BUILD_PARALLEL_LEVEL": "2"}
"""Portable (no -march=native), library only: what a cell's llama-cpp-python is built with."""

SERVER_CMAKE_ARGS = (
    "-DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF "
    "-DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release"
)
"""Appended after the build flags for the native server (later -D wins in cmake): the server
lives under examples/ (0.2.x) or tools/ (newer); static, so the binary stands alone."""

NOT_IN_KEY = frozenset({"CMAKE_BUILD_PARALLEL_LEVEL", "MAKEFLAGS", "NINJAFLAGS"})
"""Build variables that change how fast, never what is built."""

SERVER_TARGETS = ("llama-server", "server")
BUILD_TIMEOUT = 3600.0
LOCK_WAIT = 3 * 3600.0


class BuildError(Exception):
    """The build failed (compiler, cmake, missing sdist): ``log`` holds the tail of its output."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message + (f"\n--- build log (tail) ---\n{log}" if log else ""))
        self.log = log


# --------------------------------------------------------------------------- keys (pure)


def build_env_of(build_env: dict | None) -> dict[str, str]:
    """The build variables: the defaults, overridden entry by entry by ``build_env``."""
    return {**DEFAULT_BUILD_ENV, **{k: str(v) for k, v in (build_env or {}).items()}}


def flags_of(build_env: dict | None) -> dict[str, str]:
    """What of the build variables changes the binary: all but the parallelism; ``CMAKE_ARGS``
    with its whitespace normalized (order is kept: a later ``-D`` wins in cmake)."""
    out = {}
    for k, v in sorted(build_env_of(build_env).items()):
        if k in NOT_IN_KEY:
            continue
        out[k] = " ".join(shlex.split(v)) if k.endswith("CMAKE_ARGS") else v
    return out


def key_doc(
    kind: str, package: str, version: str, build_env: dict | None, *, python: str, platform_tag: str, compiler: str
) -> dict:
    return {
        "v": KEY_FORMAT,
        "kind": kind,
        "package": str(canonicalize_name(package)),
        "version": str(version),
        "flags": flags_of(build_env),
        "python": python,
        "platform": platform_tag,
        "compiler": compiler,
    }


def key_of(doc: dict) -> str:
    raw = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(raw.encode()).hexdigest()


# --------------------------------------------------------------------------- machine facts


def platform_tag() -> str:
    """OS, machine and C library: a wheel built here runs on machines that share these."""
    libc, libc_version = platform.libc_ver()
    return f"{sys.platform}-{platform.machine()}-{libc or 'libc'}{libc_version}"


_COMPILER: dict[str, str] = {}


def compiler_id() -> str:
    """First line of ``$CC --version`` (``cc`` by default): another compiler, another binary."""
    cc = os.environ.get("CC") or "cc"
    if cc not in _COMPILER:
        try:
            out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
            _COMPILER[cc] = (out.splitlines() or ["unknown"])[0].strip()
        except (OSError, subprocess.SubprocessError):
            _COMPILER[cc] = "none"
    return _COMPILER[cc]


def default_python() -> str:
    return "{}.{}".format(*sys.version_info[:2])


# --------------------------------------------------------------------------- locking and layout


@contextlib.contextmanager
def _locked(lock_path: Path, wait: float = LOCK_WAIT):
    """:func:`matrix.atomic.locked`, a wait too long a build error."""
    try:
        with atomic.locked(lock_path, wait):
            yield
    except TimeoutError as exc:
        raise BuildError(str(exc)) from None


def _build_once(root: Path, doc: dict, build) -> tuple[Path, bool]:
    """``root/<key>``, built by ``build(tmp_dir)`` unless already there (:func:`matrix.atomic.build_once`);
    the marker holds the key, its inputs, the seconds it took and what ``build`` returned. (path, built now)."""
    key = key_of(doc)
    path = root / key[:24]

    def timed(tmp: Path) -> dict:
        started = time.perf_counter()
        info = build(tmp) or {}
        return {
            "key": key,
            "inputs": doc,
            "seconds": round(time.perf_counter() - started, 1),
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **info,
        }

    try:
        built = atomic.build_once(path, timed, marker=MARKER, lock_path=root / f".{key[:24]}.lock", wait=LOCK_WAIT)
    except TimeoutError as exc:
        raise BuildError(str(exc)) from None
    return path, built


def info(path: Path) -> dict:
    """The marker of a finished build: its key, inputs, seconds, file names."""
    return json.loads((Path(path) / MARKER).read_text())


# --------------------------------------------------------------------------- source distributions

cached_sdist = sources.cached_sdist


def sdist(package: str, version: str, root: Path | None = None) -> Path:
    """:func:`matrix.releases.sources.sdist`, its failure a build error (no sources, no build)."""
    try:
        return sources.sdist(package, version, root)
    except sources.SdistError as exc:
        raise BuildError(str(exc)) from None


def _cache() -> Path:
    from matrix.paths import cache_dir

    return cache_dir()


# --------------------------------------------------------------------------- wheels


def wheel_key(package: str, version: str, build_env: dict | None = None, python: str | None = None) -> str:
    """The full key of a wheel build (the directory is named by its first 24 characters)."""
    return key_of(
        key_doc(
            "wheel",
            package,
            version,
            build_env,
            python=python or default_python(),
            platform_tag=platform_tag(),
            compiler=compiler_id(),
        )
    )


def wheel(
    package: str,
    version: str,
    build_env: dict | None = None,
    *,
    python: str | None = None,
    root: Path | None = None,
    timeout: float = BUILD_TIMEOUT,
) -> Path:
    """The directory holding ``package==version``'s wheel built with ``build_env`` (defaults:
    :data:`DEFAULT_BUILD_ENV`, overridden per entry), for ``python`` (``major.minor``, default
    this interpreter's). Built once per key with ``uv build --wheel`` on the sdist; pass the
    directory to uv as ``--find-links`` and it installs this wheel instead of compiling."""
    python = python or default_python()
    doc = key_doc(
        "wheel", package, version, build_env, python=python, platform_tag=platform_tag(), compiler=compiler_id()
    )

    def build(tmp: Path) -> dict:
        src = sdist(package, version)
        env = envs._uv_env()
        env.update(build_env_of(build_env))
        out = tmp / ".out"
        cmd = [
            envs.uv_bin(),
            "build",
            "--wheel",
            "--no-build-logs",
            "--out-dir",
            str(out),
            "--python",
            envs.interpreter(python),
            *envs._index_args(),
            str(src),
        ]
        log = _run(cmd, env, timeout, f"uv build --wheel {package}=={version}")
        wheels = sorted(out.glob("*.whl"))
        if len(wheels) != 1:
            raise BuildError(f"uv build gave {len(wheels)} wheels for {package}=={version}", log)
        os.rename(wheels[0], tmp / wheels[0].name)
        shutil.rmtree(out, ignore_errors=True)
        return {"wheel": wheels[0].name, "sdist": src.name, "build_env": build_env_of(build_env)}

    path, _ = _build_once(root or _cache() / "wheels", doc, build)
    return path


def find_links_args(dirs) -> list[str]:
    """``--find-links DIR`` for each built wheel directory (for ``uv pip install``/``compile``)."""
    out: list[str] = []
    for d in dirs:
        out += ["--find-links", str(d)]
    return out


def _run(cmd: list[str], env: dict, timeout: float, what: str, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=cwd)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"")[-4000:] if isinstance(exc.stdout, bytes) else (exc.stdout or "")[-4000:]
        raise BuildError(f"{what}: timed out after {timeout:.0f}s", str(tail)) from None
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise BuildError(f"{what}: exited {proc.returncode}", log[-6000:])
    return log


# --------------------------------------------------------------------------- the native llama-server


def server_key(version: str, build_env: dict | None = None, package: str = "llama-cpp-python") -> str:
    return key_of(
        key_doc(
            "llama-server", package, version, build_env, python="", platform_tag=platform_tag(), compiler=compiler_id()
        )
    )


def _publish_server(bdir: Path, target: str, tmp: Path, log: str) -> None:
    """Copy the built server binary (where CMake put it: bin/, the build root, or the old
    examples/server/) into the build's temporary directory as ``llama-server``."""
    places = (bdir / "bin" / target, bdir / target, bdir / "examples" / "server" / target)
    exe = next((p for p in places if p.is_file()), None)
    if exe is None:
        raise BuildError(f"built {target}, but found no binary under {bdir}", log[-3000:])
    shutil.copy2(exe, tmp / "llama-server")


def llama_server(
    version: str,
    build_env: dict | None = None,
    *,
    package: str = "llama-cpp-python",
    root: Path | None = None,
    timeout: float = BUILD_TIMEOUT,
) -> Path:
    """llama.cpp's native ``llama-server`` from the sources vendored in ``package==version``'s
    sdist (``vendor/llama.cpp``), built once per (version, flags): ``build_env``'s ``CMAKE_ARGS``
    (the library defaults) followed by :data:`SERVER_CMAKE_ARGS`; only the server target is
    compiled (``llama-server``, or ``server`` in older trees). Returns the binary's path."""
    doc = key_doc(
        "llama-server", package, version, build_env, python="", platform_tag=platform_tag(), compiler=compiler_id()
    )
    benv = build_env_of(build_env)

    def build(tmp: Path) -> dict:
        src_archive = sdist(package, version)
        with tempfile.TemporaryDirectory(prefix="llmcompat-llama-src-", dir=scratch.directory()) as work_name:
            work = Path(work_name)
            try:
                src = gitsrc.extract_vendored(src_archive, work)
            except gitsrc.GitSourceError as exc:
                raise BuildError(str(exc)) from None
            bdir = work / "build"
            tree = _tree_hash(src, work / "tree.git")
            env = dict(os.environ)
            env.update(benv)
            env.pop("CMAKE_ARGS", None)  # given on the command line instead
            args = shlex.split(benv.get("CMAKE_ARGS", "")) + shlex.split(SERVER_CMAKE_ARGS)
            gen = ["-G", "Ninja"] if shutil.which("ninja") else []
            log = _run(["cmake", "-S", str(src), "-B", str(bdir), *gen, *args], env, timeout, "cmake configure")
            targets = _run(["cmake", "--build", str(bdir), "--target", "help"], env, 120, "cmake targets")
            names = set(re.findall(r"^(?:\.\.\. )?([\w.+-]+)(?::| |$)", targets, re.M))
            target = next((t for t in SERVER_TARGETS if t in names), None)
            if target is None:
                raise BuildError(
                    f"no server target ({', '.join(SERVER_TARGETS)}) in llama.cpp of {package}=={version}", log[-3000:]
                )
            jobs = benv.get("CMAKE_BUILD_PARALLEL_LEVEL") or "2"
            log += _run(
                ["cmake", "--build", str(bdir), "--target", target, "-j", jobs],
                env,
                timeout,
                f"cmake --build --target {target}",
            )
            _publish_server(bdir, target, tmp, log)
        return {"target": target, "sdist": src_archive.name, "build_env": benv, "cmake_args": args, "tree": tree}

    root = root or _cache() / "bin"
    path, _ = _build_once(root, doc, build)
    tree = info(path).get("tree")
    if tree:  # a llama.cpp commit with this very tree reuses this binary (bot/narrow.py)
        link_tree(tree, build_env, path, root=root)
    return path / "llama-server"


def server_built(
    version: str, build_env: dict | None = None, *, package: str = "llama-cpp-python", root: Path | None = None
) -> Path | None:
    """The binary of an already finished :func:`llama_server` build, or None (never builds)."""
    path = (root or _cache() / "bin") / server_key(version, build_env, package)[:24]
    return path / "llama-server" if (path / MARKER).is_file() else None


# --------------------------------------------------------------------------- llama-server at a llama.cpp commit

WORKTREE_SLOTS = 4
"""Build worktrees per flags: one per concurrent build (parallel narrowing), each incremental."""
COMPILED = re.compile(r"Building (?:C|CXX) object ")


def tree_key(tree: str, build_env: dict | None = None) -> str:
    """Key of a llama-server built from the llama.cpp source tree ``tree`` (a git tree hash): the
    content, not the commit, so equal trees (a vendored sdist, a revert) share one binary."""
    return key_of(
        key_doc(
            "llama-server-tree",
            "llama.cpp",
            tree,
            build_env,
            python="",
            platform_tag=platform_tag(),
            compiler=compiler_id(),
        )
    )


def _alias(root: Path, tree: str, build_env: dict | None) -> Path:
    return root / "trees" / f"{tree_key(tree, build_env)[:24]}.json"


def link_tree(tree: str, build_env: dict | None, built: Path, *, root: Path | None = None) -> None:
    """Record that the finished build ``built`` (a directory under ``root``) was made from
    ``tree`` with ``build_env``: :func:`llama_server_tree` then reuses it (atomic write)."""
    root = root or _cache() / "bin"
    built = Path(built) if Path(built).is_dir() else Path(built).parent
    if not (built / MARKER).is_file() or built.parent != root:
        raise BuildError(f"{built} is not a finished build under {root}")
    alias = _alias(root, tree, build_env)
    if not alias.is_file():
        atomic.write_json(alias, {"tree": tree, "build": built.name})


def tree_built(tree: str, build_env: dict | None = None, *, root: Path | None = None) -> Path | None:
    """The llama-server binary already built for ``tree`` (by commit or from an sdist), or None."""
    root = root or _cache() / "bin"
    direct = root / tree_key(tree, build_env)[:24]
    if (direct / MARKER).is_file():
        return direct / "llama-server"
    alias = _alias(root, tree, build_env)
    try:
        name = json.loads(alias.read_text(encoding="utf-8"))["build"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    target = root / str(name)
    return target / "llama-server" if (target / MARKER).is_file() and "/" not in str(name) else None


def _tree_hash(directory: Path, git_dir: Path) -> str | None:
    """The git tree hash of ``directory``'s files (None without git): the content key."""
    if shutil.which("git") is None:
        return None
    try:
        return gitsrc.tree_of_dir(directory, git_dir).tree
    except gitsrc.GitSourceError:
        return None


def _git_run(args: list[str], cwd: Path, timeout: float = 1800.0) -> str:
    """git's stdout alone (a warning on stderr never mixes into a hash): gitsrc's runner, with
    its failures and timeouts as build errors."""
    what = f"git {' '.join(args[:2])}"
    try:
        return gitsrc._git(args, cwd=cwd, timeout=timeout, what=what)
    except gitsrc.GitSourceError as exc:
        raise BuildError(str(exc)) from None
    except subprocess.TimeoutExpired:
        raise BuildError(f"{what}: timed out after {timeout:.0f}s") from None


@contextlib.contextmanager
def _worktree(build_env: dict | None, work_root: Path | None):
    """A build worktree for these flags, held exclusively: the first free slot, else slot 0
    once free. Its object files persist, so the next commit recompiles only what changed."""
    flags_key = key_of(
        {"v": KEY_FORMAT, "flags": flags_of(build_env), "platform": platform_tag(), "compiler": compiler_id()}
    )[:16]
    base = (work_root or _cache() / "llama-worktrees") / flags_key
    base.mkdir(parents=True, exist_ok=True)
    for i in range(WORKTREE_SLOTS):
        f = open(base / f"slot-{i}.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        try:
            yield base / f"slot-{i}"
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()
        return
    with _locked(base / "slot-0.lock"):
        yield base / "slot-0"


def llama_server_tree(
    repo: Path | str,
    commit: str,
    tree: str,
    build_env: dict | None = None,
    *,
    root: Path | None = None,
    work_root: Path | None = None,
    timeout: float = BUILD_TIMEOUT,
) -> tuple[Path, dict]:
    """llama.cpp's ``llama-server`` at ``commit`` of the git repository ``repo``, keyed by the
    commit's source ``tree`` and the flags (see :func:`llama_server`), built at most once per key.

    Builds happen in a persistent worktree per flags (``cache_dir()/llama-worktrees``): the
    commit is fetched into it and checked out, so git rewrites only the files that differ from
    the previous build there and ninja (or make) recompiles only those translation units.
    Returns (binary, how): ``how`` holds ``reused`` (``tree`` or ``sdist`` build, or False),
    ``seconds``, ``compiled`` (translation units compiled now) and ``incremental``."""
    root = root or _cache() / "bin"
    found = tree_built(tree, build_env, root=root)
    if found is not None:
        kind = "tree" if info(found.parent).get("kind") == "tree" else "sdist"
        return found, {"reused": kind, "seconds": 0.0, "compiled": 0}
    doc = key_doc(
        "llama-server-tree",
        "llama.cpp",
        tree,
        build_env,
        python="",
        platform_tag=platform_tag(),
        compiler=compiler_id(),
    )
    benv = build_env_of(build_env)
    how: dict = {"reused": False}

    def build(tmp: Path) -> dict:
        with _worktree(build_env, work_root) as slot:
            src, bdir = slot / "src", slot / "build"
            if not (src / ".git").exists():
                shutil.rmtree(src, ignore_errors=True)
                src.mkdir(parents=True)
                _git_run(["init", "--quiet"], src)
            try:
                _git_run(["cat-file", "-e", f"{commit}^{{commit}}"], src, 60)
            except BuildError:
                _git_run(["fetch", "--quiet", "--no-tags", str(repo), commit], src)
            _git_run(["checkout", "--quiet", "--force", "--detach", commit], src)
            _git_run(["clean", "-ffdxq"], src)
            got = _git_run(["rev-parse", "HEAD^{tree}"], src).strip()
            if got != tree:
                raise BuildError(f"{commit[:12]} has tree {got[:12]}, expected {tree[:12]}")
            env = dict(os.environ)
            env.update(benv)
            env.pop("CMAKE_ARGS", None)
            args = shlex.split(benv.get("CMAKE_ARGS", "")) + shlex.split(SERVER_CMAKE_ARGS)
            incremental = (bdir / "CMakeCache.txt").is_file()
            log = ""
            if not incremental:
                shutil.rmtree(bdir, ignore_errors=True)
                gen = ["-G", "Ninja"] if shutil.which("ninja") else []
                try:
                    log = _run(["cmake", "-S", str(src), "-B", str(bdir), *gen, *args], env, timeout, "cmake configure")
                except BuildError:
                    shutil.rmtree(bdir, ignore_errors=True)
                    raise
            try:
                targets = _run(["cmake", "--build", str(bdir), "--target", "help"], env, 300, "cmake targets")
            except BuildError:
                shutil.rmtree(bdir, ignore_errors=True)  # a broken configure: start afresh next time
                raise
            names = set(re.findall(r"^(?:\.\.\. )?([\w.+-]+)(?::| |$)", targets, re.M))
            target = next((t for t in SERVER_TARGETS if t in names), None)
            if target is None:
                raise BuildError(f"no server target ({', '.join(SERVER_TARGETS)}) at llama.cpp {commit[:12]}")
            jobs = benv.get("CMAKE_BUILD_PARALLEL_LEVEL") or "2"
            for stale in (bdir / "bin" / target, bdir / target):
                stale.unlink(missing_ok=True)  # never take a previous commit's binary
            out = _run(
                ["cmake", "--build", str(bdir), "--target", target, "-j", jobs],
                env,
                timeout,
                f"cmake --build --target {target} at {commit[:12]}",
            )
            log += out
            _publish_server(bdir, target, tmp, log)
            how.update(compiled=len(COMPILED.findall(out)), incremental=incremental, worktree=slot.name)
        return {
            "kind": "tree",
            "commit": commit,
            "tree": tree,
            "target": target,
            "build_env": benv,
            "cmake_args": args,
            **{k: v for k, v in how.items() if k != "reused"},
        }

    path, built_now = _build_once(root, doc, build)
    if not built_now:
        how = {"reused": "tree", "compiled": 0}
    how["seconds"] = info(path)["seconds"] if built_now else 0.0
    return path / "llama-server", how
