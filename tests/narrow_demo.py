"""A real llama.cpp git history for the narrowing tests and benchmark (test scaffolding, not
shipped): the tree a cached llama-cpp-python sdist vendors, then a few commits, one of which
breaks greedy decoding, each tagged like llama.cpp's build tags; and a llama-cpp-python-like
repository whose release tags point their ``vendor/llama.cpp`` submodule at those commits."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from matrix.env import gitsrc
from matrix.env.gitsrc import GitSourceError

DEMO_FIRST_TAG = 5000
DEMO_BAD_TAG = "b5003"
DEMO_ENV = {
    "GIT_AUTHOR_NAME": "llmcompat",
    "GIT_AUTHOR_EMAIL": "llmcompat@localhost",
    "GIT_COMMITTER_NAME": "llmcompat",
    "GIT_COMMITTER_EMAIL": "llmcompat@localhost",
    "GIT_AUTHOR_DATE": "2025-03-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2025-03-01T00:00:00Z",
}
TOPK_GOOD = "return a.logit > b.logit;"
TOPK_BAD = "return a.logit < b.logit;"


def _break_top_k(text: str) -> str:
    """Flip the comparator of top-k's partial sort (not the softmax's): top-k 1 keeps the worst token."""
    at = text.index("static void llama_sampler_top_k_impl")
    return text[:at] + text[at:].replace(TOPK_GOOD, TOPK_BAD, 1)


def _demo_changes() -> list[tuple[str, str, Callable[[str], str]]]:
    """(message, file, edit) of the commits after the vendored tree; one of them breaks greedy
    decoding (top-k keeps the *lowest* logits), the others change nothing a check sees."""
    return [
        ("docs: a line in the README", "README.md", lambda t: t + "\nNarrowing demo.\n"),
        ("chat: comment", "src/llama-chat.cpp", lambda t: "// chat templates: see llama-chat.h\n" + t),
        ("sampling: top-k partial sort comparator", "src/llama-sampling.cpp", _break_top_k),
        ("adapter: comment", "src/llama-adapter.cpp", lambda t: "// LoRA and control vectors\n" + t),
    ]


def make_demo_repo(dest: Path, sdist: Path, *, python_repo: Path | None = None) -> dict:
    """A real llama.cpp git history in ``dest``: commit 1 is the tree vendored by ``sdist``
    (tagged ``b5000``), then one commit per :func:`_demo_changes` entry (``b5001``...), the
    third of which (``b5003``) breaks greedy decoding. Deterministic (fixed dates). With
    ``python_repo``, also a llama-cpp-python-like repository whose ``v0.3.8`` points its
    ``vendor/llama.cpp`` gitlink at ``b5000`` and ``v0.3.9`` at the last commit.
    Returns {"tags": [...], "commits": {tag: id}, "bad": tag}."""
    dest = Path(dest)
    if (dest / ".git").exists():
        shutil_rm(dest)
    tmp = dest.parent / f".{dest.name}-x"
    shutil_rm(tmp)
    src = gitsrc.extract_vendored(sdist, tmp)
    src.rename(dest)
    shutil_rm(tmp)
    (dest / ".git").unlink(missing_ok=True)  # the sdist's submodule pointer file
    for nested in gitsrc.nested_checkouts(dest):  # left out of the sdist's tree too (gitsrc.tree_of_dir)
        shutil_rm(dest / nested)

    def git(*args: str) -> str:
        return gitsrc._git(["-C", str(dest), *args], env=DEMO_ENV, what=f"git {' '.join(args[:2])} (demo)")

    git("init", "--quiet", "--initial-branch=master")
    git("add", "--all", "--force", ".")
    git("commit", "--quiet", "--no-verify", "-m", "llama.cpp as vendored by the sdist")
    tags = [f"b{DEMO_FIRST_TAG}"]
    git("tag", tags[0])
    for i, (msg, rel, edit) in enumerate(_demo_changes(), 1):
        path = dest / rel
        text = path.read_text(encoding="utf-8")
        new = edit(text)
        if new == text:
            raise GitSourceError(f"demo change {msg!r}: {rel} has no {TOPK_GOOD!r}")
        path.write_text(new, encoding="utf-8")
        git("commit", "--quiet", "--no-verify", "-am", msg)
        tags.append(f"b{DEMO_FIRST_TAG + i}")
        git("tag", tags[-1])
    commits = {t: git("rev-parse", f"{t}^{{commit}}").strip() for t in tags}
    if python_repo is not None:
        make_demo_python_repo(Path(python_repo), {"0.3.8": commits[tags[0]], "0.3.9": commits[tags[-1]]})
    return {"tags": tags, "commits": commits, "bad": DEMO_BAD_TAG}


def make_demo_python_repo(dest: Path, vendored: dict[str, str]) -> None:
    """A llama-cpp-python-like repository: per version, a commit tagged ``v<version>`` whose
    ``vendor/llama.cpp`` is a gitlink (submodule pointer) to the given commit."""
    shutil_rm(dest)
    dest.mkdir(parents=True)

    def git(*args: str, input: str | None = None) -> str:
        return gitsrc._git(["-C", str(dest), *args], env=DEMO_ENV, input=input, what=f"git {' '.join(args[:2])} (demo)")

    git("init", "--quiet", "--initial-branch=main")
    (dest / ".gitmodules").write_text(
        '[submodule "vendor/llama.cpp"]\n\tpath = vendor/llama.cpp\n\turl = https://github.com/ggml-org/llama.cpp.git\n'
    )
    git("add", ".gitmodules")
    for version, commit in vendored.items():
        git("update-index", "--add", "--cacheinfo", f"160000,{commit},{gitsrc.VENDOR_PATH}")
        git("commit", "--quiet", "--no-verify", "-m", f"release {version}")
        git("tag", f"v{version}")


def shutil_rm(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
