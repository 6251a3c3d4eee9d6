"""llama.cpp's git history, for narrowing a llama-cpp-python release range to commits (the adapter).

A llama-cpp-python release vendors one llama.cpp commit (``vendor/llama.cpp``). Bisection over
releases ends at two adjacent releases; this module turns them into the llama.cpp commits between
their vendored commits, so that :mod:`bot.narrow` can build and probe those.

Where the git sources come from (configuration):

- ``LLMCOMPAT_LLAMACPP_GIT`` (or ``--git``): a llama.cpp repository, a local path or a URL (a URL
  is mirrored once into ``cache_dir()/git/`` and fetched again on use).
- ``LLMCOMPAT_LLAMACPP_PYTHON_GIT`` (or ``--python-git``), optional: a llama-cpp-python
  repository. Its tag ``v<version>`` points its ``vendor/llama.cpp`` submodule (a gitlink) at the
  exact vendored commit: the preferred, exact route.

Without a llama-cpp-python repository the vendored commit is found from the release's source
distribution (cached under ``cache_dir()/sdists``): the tree hash of its ``vendor/llama.cpp``
directory (as ``git write-tree`` computes it, the ``.git`` pointer file left out) is looked up among
llama.cpp's first-parent commits; an sdist that leaves files out (docs, models) matches no commit
exactly, so then the commits whose build-relevant subtrees (:data:`BUILD_PATHS`) all equal the
sdist's are taken: for the last good end the newest of them, for the first bad end the oldest,
which keeps the range tight and never drops the change (those commits build the same binary).

Candidates between two commits are the first-parent line from good to bad; where llama.cpp's
build tags (``b<N>``, one per merged change) point into it, the tagged commits are the candidates
(both ends always kept), and a range between adjacent tags that spans untagged commits is refined
over those commits afterwards.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from matrix import atomic, scratch
from matrix.errors import LlmcompatError
from matrix.releases import sources
from matrix.releases import tags as release_tags

ENV_GIT = "LLMCOMPAT_LLAMACPP_GIT"
ENV_PYTHON_GIT = "LLMCOMPAT_LLAMACPP_PYTHON_GIT"
LLAMACPP_REPO = "ggml-org/llama.cpp"
"""GitHub owner/name of llama.cpp (compare links)."""
BUILD_TAG = re.compile(r"^b(\d+)$")
VENDOR_PATH = "vendor/llama.cpp"
PYTHON_TAG_FORMAT = "v{version}"
BUILD_PATHS = ("CMakeLists.txt", "cmake", "common", "src", "include", "ggml", "examples/server", "tools/server")
"""What makes the llama-server binary: the files under these paths (those present) are compared."""
QUICK_PATHS = ("CMakeLists.txt", "cmake", "common", "src", "include", "examples/server", "tools/server")
"""Build paths that hold no submodule: their subtree hashes can be compared directly (fast)."""
GIT_TIMEOUT = 600.0


class GitSourceError(LlmcompatError):
    """A git source is missing, unreadable, or does not hold what was asked for (names which)."""


# --------------------------------------------------------------------------- pure parts


@dataclass(frozen=True)
class Candidate:
    """One llama.cpp commit to probe; ``tag`` is its build tag (``b4589``) when it has one."""

    commit: str
    tag: str | None = None

    @property
    def ref(self) -> str:
        """How links and commands name it: the build tag, else the full commit id."""
        return self.tag or self.commit

    @property
    def short(self) -> str:
        return self.tag or self.commit[:12]

    def __str__(self) -> str:
        return self.tag or self.commit[:12]


def build_tag_number(name: str) -> int | None:
    """``b4589`` -> 4589; anything else (``v1.0``, ``b12a``) -> None."""
    m = BUILD_TAG.match(name)
    return int(m.group(1)) if m else None


def build_tag(names: Iterable[str]) -> str | None:
    """The build tag among a commit's tag names (the highest number if several)."""
    tagged = [(build_tag_number(n), n) for n in names]
    tagged = [t for t in tagged if t[0] is not None]
    return max(tagged)[1] if tagged else None


def order_candidates(commits: Sequence[str], tags: Mapping[str, Iterable[str]]) -> list[Candidate]:
    """The candidates of a first-parent line ``commits`` (good first, bad last): the build-tagged
    commits, both ends always; all commits when none in between is tagged. Order is the line's
    (a build tag number that disagrees with it is ignored for ordering, never trusted over git)."""
    if len(commits) < 2:
        raise ValueError("need at least the good and the bad commit")
    cands = [Candidate(c, build_tag(tags.get(c, ()))) for c in commits]
    if not any(c.tag for c in cands[1:-1]):
        return cands
    return [c for i, c in enumerate(cands) if c.tag or i in (0, len(cands) - 1)]


def compare_url(good: Candidate | str, bad: Candidate | str, repo: str = LLAMACPP_REPO) -> str:
    """``https://github.com/<repo>/compare/<good>...<bad>`` with build tags where the commits have
    them, else commit ids (GitHub's compare view takes both)."""
    g = good.ref if isinstance(good, Candidate) else str(good)
    b = bad.ref if isinstance(bad, Candidate) else str(bad)
    return release_tags.compare_url(repo, "{version}", g, b)


def is_url(source: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*://", source)) or bool(re.match(r"^[\w.-]+@[\w.-]+:", source))


# --------------------------------------------------------------------------- git


def git_bin() -> str | None:
    return shutil.which("git")


def _git(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    input: str | None = None,
    timeout: float = GIT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    what: str = "",
) -> str:
    exe = git_bin()
    if exe is None:
        raise GitSourceError("git is not installed (needed to narrow llama.cpp to commits)")
    full_env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C", **(env or {})}
    proc = subprocess.run(
        [exe, *args], cwd=cwd, input=input, capture_output=True, text=True, timeout=timeout, env=full_env
    )
    if proc.returncode != 0:
        raise GitSourceError(f"{what or 'git ' + ' '.join(args[:2])}: {proc.stderr.strip()[:600]}")
    return proc.stdout


@dataclass(frozen=True)
class Repo:
    """A local git repository (a llama.cpp clone, a mirror, or a llama-cpp-python clone)."""

    path: Path
    source: str = ""
    """What the configuration named (path or URL), for messages and reproduction commands."""

    def git(self, *args: str, input: str | None = None, what: str = "") -> str:
        return _git(
            ["-C", str(self.path), *args],
            input=input,
            what=what or f"git {' '.join(args[:2])} in {self.source or self.path}",
        )

    def commit_of(self, ref: str) -> str:
        """The commit id ``ref`` (tag, branch, id) names; a clear error naming ``ref`` if none."""
        try:
            return self.git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip()
        except GitSourceError:
            raise GitSourceError(f"{self.source or self.path}: {ref!r} names no commit") from None

    def has(self, ref: str) -> bool:
        try:
            self.commit_of(ref)
            return True
        except GitSourceError:
            return False

    def tree_of(self, commit: str) -> str:
        return self.git("rev-parse", f"{commit}^{{tree}}").strip()

    def first_parent_line(self, good: str, bad: str) -> list[str]:
        """Commits from ``good`` to ``bad`` along ``bad``'s first parents, good first. Raises when
        ``good`` is not on that line (a range across branches has no order to bisect)."""
        line = self.git("rev-list", "--first-parent", "--reverse", f"{good}..{bad}").split()
        if not line:
            raise GitSourceError(f"{self.source or self.path}: {bad[:12]} is not after {good[:12]}")
        parent = self.git("rev-parse", f"{line[0]}^").strip() if len(line) else ""
        if parent != good:
            raise GitSourceError(
                f"{self.source or self.path}: {good[:12]} is not on the first-parent "
                f"line of {bad[:12]}: cannot order the commits between them"
            )
        return [good, *line]

    def tags(self) -> dict[str, list[str]]:
        """commit id -> tag names (annotated tags peeled)."""
        out: dict[str, list[str]] = {}
        fmt = "%(objectname) %(*objectname) %(refname:short)"
        for line in self.git("for-each-ref", f"--format={fmt}", "refs/tags").splitlines():
            parts = line.split()
            if len(parts) == 3:
                obj, peeled, name = parts
            elif len(parts) == 2:
                obj, name = parts
                peeled = ""
            else:
                continue
            out.setdefault(peeled or obj, []).append(name)
        return out

    def candidates(self, good: str, bad: str) -> list[Candidate]:
        """The ordered candidates from ``good`` to ``bad`` (see :func:`order_candidates`)."""
        return order_candidates(self.first_parent_line(self.commit_of(good), self.commit_of(bad)), self.tags())

    def between(self, good: Candidate, bad: Candidate) -> list[Candidate]:
        """Every first-parent commit from ``good`` to ``bad``, with their build tags."""
        tags = self.tags()
        return [Candidate(c, build_tag(tags.get(c, ()))) for c in self.first_parent_line(good.commit, bad.commit)]

    def candidate(self, ref: str) -> Candidate:
        commit = self.commit_of(ref)
        return Candidate(commit, build_tag(self.tags().get(commit, ())))

    def subtrees(self, commits: Sequence[str], paths: Sequence[str] = QUICK_PATHS) -> dict[str, dict[str, str]]:
        """commit -> {path: object id} for the ``paths`` present in each commit (one git call)."""
        queries = [f"{c}:{p}" for c in commits for p in paths]
        out = self.git("cat-file", "--batch-check=%(objectname) %(objecttype)", input="\n".join(queries) + "\n")
        result: dict[str, dict[str, str]] = {c: {} for c in commits}
        for q, line in zip(queries, out.splitlines()):
            c, _, p = q.partition(":")
            parts = line.split()
            if len(parts) == 2 and parts[1] in ("tree", "blob"):
                result[c][p] = parts[0]
        return result

    def build_files(self, treeish: str, paths: Sequence[str] = BUILD_PATHS) -> dict[str, str]:
        """path -> blob id of every file under ``paths`` in ``treeish`` (gitlinks left out)."""
        out = self.git("ls-tree", "-r", "--full-tree", treeish, "--", *paths)
        files = {}
        for line in out.splitlines():
            meta, _, path = line.partition("\t")
            parts = meta.split()
            if len(parts) == 3 and parts[1] == "blob":
                files[path] = parts[2]
        return files

    def first_parent_history(self, ref: str = "HEAD", limit: int = 20000) -> list[tuple[str, str]]:
        """(commit, tree) along ``ref``'s first parents, oldest first."""
        out = self.git("log", "--first-parent", f"--max-count={limit}", "--format=%H %T", ref)
        return [tuple(line.split()) for line in reversed(out.splitlines()) if line.strip()]  # type: ignore[misc]


def configured(explicit: str | None = None, env: str = ENV_GIT) -> str | None:
    """The configured git source: ``explicit`` (a command-line option), else the variable ``env``."""
    value = explicit if explicit is not None else os.environ.get(env)
    return value.strip() if value and value.strip() else None


def open_repo(source: str, *, cache: Path | None = None, what: str = ENV_GIT) -> Repo:
    """A :class:`Repo` for a path (used in place, never written to) or a URL (mirrored into
    ``cache_dir()/git/<hash>.git`` atomically, then fetched on each use)."""
    if not is_url(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise GitSourceError(f"{what}: {source!r}: no such directory")
        try:
            top = _git(["-C", str(path), "rev-parse", "--git-dir"], what=f"{what}: {source!r}").strip()
        except GitSourceError:
            raise GitSourceError(f"{what}: {source!r}: not a git repository") from None
        return Repo((path / top).resolve() if not Path(top).is_absolute() else Path(top), source)
    if cache is None:
        from matrix.paths import cache_dir

        cache = cache_dir() / "git"
    mirror = cache / (hashlib.sha256(source.encode()).hexdigest()[:16] + ".git")
    if (mirror / "HEAD").is_file():
        _git(["-C", str(mirror), "fetch", "--prune", "--tags", "origin"], what=f"{what}: fetching {source}")
    else:

        def clone(tmp: Path) -> None:  # git writes HEAD: the marker of a finished mirror
            _git(["clone", "--mirror", "--quiet", source, str(tmp)], what=f"{what}: cloning {source}")

        atomic.build_once(mirror, clone, marker="HEAD")
    return Repo(mirror, source)


# --------------------------------------------------------------------------- vendored commits


def vendored_commit(py_repo: Repo, version: str, tag_format: str = PYTHON_TAG_FORMAT, path: str = VENDOR_PATH) -> str:
    """The llama.cpp commit llama-cpp-python ``version`` vendors: its tag's submodule pointer."""
    tag = release_tags.tag(tag_format, version)
    out = py_repo.git("ls-tree", tag, path, what=f"git ls-tree {tag} {path}").split()
    if len(out) < 3 or out[1] != "commit":
        raise GitSourceError(f"{py_repo.source or py_repo.path}: tag {tag} has no submodule at {path}")
    return out[2]


@dataclass(frozen=True)
class VendoredTree:
    """What a source distribution's ``vendor/llama.cpp`` holds, as git hashes: the whole tree,
    the :data:`QUICK_PATHS` subtrees, and path -> blob of every file under :data:`BUILD_PATHS`."""

    tree: str
    subtrees: dict[str, str]
    files: dict[str, str] = field(default_factory=dict)


def vendored_tree(sdist: Path, *, cache: bool = True) -> VendoredTree:
    """:func:`tree_of_dir` of ``sdist``'s ``vendor/llama.cpp``, cached beside the sdist as
    ``<sdist>.llama-tree.json``."""
    import json

    sdist = Path(sdist)
    memo = sdist.with_name(sdist.name + ".llama-tree.json")
    if cache and memo.is_file():
        try:
            doc = json.loads(memo.read_text(encoding="utf-8"))
            return VendoredTree(doc["tree"], dict(doc["subtrees"]), dict(doc["files"]))
        except (OSError, ValueError, KeyError):
            pass
    with tempfile.TemporaryDirectory(prefix="llmcompat-vendored-", dir=scratch.directory()) as work:
        src = extract_vendored(sdist, Path(work) / "x")
        result = tree_of_dir(src, Path(work) / "git")
    if cache:
        atomic.write_json(
            memo, {"tree": result.tree, "subtrees": result.subtrees, "files": result.files, "sdist": sdist.name}
        )
    return result


def extract_vendored(sdist: Path, dest: Path) -> Path:
    """Extract only ``*/vendor/llama.cpp/`` of ``sdist`` under ``dest``; return that directory."""
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name + "/"]
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, members=members, filter="data")
        else:  # pragma: no cover - Pythons before the extraction filters
            tar.extractall(dest, members=members)
    found = sorted(dest.glob("*/vendor/llama.cpp/CMakeLists.txt"))
    if not found:
        raise GitSourceError(f"{sdist.name} vendors no llama.cpp (vendor/llama.cpp/CMakeLists.txt)")
    return found[0].parent


def nested_checkouts(directory: Path) -> list[str]:
    """Relative paths of checked-out submodules inside ``directory`` (a ``.git`` entry of their own):
    upstream they are gitlinks, whose commit a source distribution does not record."""
    return sorted(
        str(p.parent.relative_to(directory)) for p in Path(directory).rglob(".git") if p.parent != Path(directory)
    )


def tree_of_dir(directory: Path, git_dir: Path) -> VendoredTree:
    """The tree hash git would record for ``directory``: every file (ignore rules overridden), the
    ``.git`` pointer file and checked-out submodules (:func:`nested_checkouts`) left out; computed
    in a scratch repository at ``git_dir``."""
    env = {"GIT_DIR": str(git_dir), "GIT_WORK_TREE": str(directory), "GIT_INDEX_FILE": str(git_dir / "index")}
    _git(["init", "--quiet", "--bare", str(git_dir)], what="git init (scratch)")
    excludes = [f":(exclude){p}" for p in nested_checkouts(directory)]
    _git(["add", "--all", "--force", "--", ".", *excludes], cwd=directory, env=env, what=f"git add {directory}")
    tree = _git(["write-tree"], cwd=directory, env=env, what="git write-tree").strip()
    repo = Repo(Path(git_dir), "scratch")
    subs = repo.subtrees([tree], QUICK_PATHS)[tree]
    return VendoredTree(tree, subs, repo.build_files(tree))


def match_vendored(repo: Repo, vendored: VendoredTree, end: str, ref: str = "HEAD") -> str | None:
    """The llama.cpp commit (on ``ref``'s first-parent line) that ``vendored`` came from: an exact
    tree match first; else the commits whose :data:`QUICK_PATHS` subtrees and then every file
    under :data:`BUILD_PATHS` equal it, the newest of them for ``end="good"``, the oldest for
    ``end="bad"``. None when nothing matches."""
    history = repo.first_parent_history(ref)
    pick = (lambda cs: cs[-1]) if end == "good" else (lambda cs: cs[0])
    exact = [c for c, t in history if t == vendored.tree]
    if exact:
        return pick(exact)
    if not vendored.subtrees:
        return None
    commits = [c for c, _ in history]
    subs = repo.subtrees(commits, tuple(vendored.subtrees))
    close = [c for c in commits if subs[c] == vendored.subtrees]
    if vendored.files:
        close = [c for c in close if repo.build_files(c) == vendored.files]
    return pick(close) if close else None


@dataclass(frozen=True)
class ReleaseCommit:
    """How a release was mapped to its vendored llama.cpp commit (for the report)."""

    version: str
    commit: str
    how: str
    """``submodule`` (exact), ``sdist tree`` (exact) or ``sdist subtrees`` (build-relevant parts)."""
    sdist: Path | None = None


def release_commit(
    repo: Repo,
    version: str,
    end: str,
    *,
    py_repo: Repo | None = None,
    sdist: Path | None = None,
    package: str = "llama-cpp-python",
) -> ReleaseCommit:
    """The llama.cpp commit that ``package==version`` vendors (see the module docstring)."""
    if py_repo is not None:
        commit = vendored_commit(py_repo, version)
        if not repo.has(commit):
            raise GitSourceError(
                f"{repo.source or repo.path}: has no commit {commit[:12]} "
                f"(vendored by {package} {version}): fetch it or point {ENV_GIT} at a newer clone"
            )
        return ReleaseCommit(version, commit, "submodule")
    if sdist is None:
        sdist = sources.cached_sdist(package, version)
        if sdist is None:
            try:
                sdist = sources.sdist(package, version)
            except sources.SdistError as exc:
                raise GitSourceError(
                    f"{package} {version}: no llama-cpp-python repository configured "
                    f"({ENV_PYTHON_GIT}) and no source distribution: {str(exc).splitlines()[0]}"
                ) from None
    vt = vendored_tree(sdist)
    matched = match_vendored(repo, vt, end)
    if matched is None:
        raise GitSourceError(
            f"{repo.source or repo.path}: no commit matches the llama.cpp vendored by "
            f"{package} {version} (tree {vt.tree[:12]}); set {ENV_PYTHON_GIT} to a "
            f"llama-cpp-python clone for the exact submodule commit"
        )
    exact = repo.tree_of(matched) == vt.tree
    return ReleaseCommit(version, matched, "sdist tree" if exact else "sdist subtrees", sdist)
