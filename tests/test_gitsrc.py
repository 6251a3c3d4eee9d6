"""llama.cpp's git history (matrix/gitsrc.py) and narrowing's search over it (bot/narrow.py), on
small real git repositories: no compiler here. The pure parts (candidate order, compare links,
the printed result) are plain unit tests, with hypothesis where properties matter."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot import narrow
from bot.search import Verdict
from matrix.env import gitsrc
from matrix.env.gitsrc import Candidate
from tests import narrow_demo

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
ENV = narrow_demo.DEMO_ENV


# --------------------------------------------------------------------------- pure


def test_build_tags_are_b_and_a_number():
    assert gitsrc.build_tag_number("b4589") == 4589
    assert [gitsrc.build_tag_number(t) for t in ("v1.0", "b12a", "b", "gguf-v0.1", "B12")] == [None] * 5
    assert gitsrc.build_tag(["v0.1", "b99", "b100", "b1000x"]) == "b100"
    assert gitsrc.build_tag(["v0.1"]) is None


commit_ids = st.lists(st.text("0123456789abcdef", min_size=8, max_size=8), min_size=2, max_size=30, unique=True)


@given(commit_ids, st.data())
def test_candidates_keep_both_ends_the_order_and_every_tagged_commit(commits, data):
    tagged = data.draw(st.sets(st.sampled_from(commits)))
    tags = {c: [f"b{i}"] for i, c in enumerate(commits) if c in tagged}
    cands = gitsrc.order_candidates(commits, tags)
    got = [c.commit for c in cands]
    assert got[0] == commits[0] and got[-1] == commits[-1]
    assert got == [c for c in commits if c in got]  # a subsequence, in the line's order
    middle_tagged = [c for c in commits[1:-1] if c in tagged]
    if middle_tagged:
        assert got[1:-1] == middle_tagged
    else:
        assert got == list(commits)
    assert all(c.tag == (tags[c.commit][0] if c.commit in tags else None) for c in cands)


def test_compare_url_uses_build_tags_else_commit_ids():
    a, b = Candidate("a" * 40, "b4000"), Candidate("c" * 40, "b4003")
    assert gitsrc.compare_url(a, b) == "https://github.com/ggml-org/llama.cpp/compare/b4000...b4003"
    assert (
        gitsrc.compare_url(a, Candidate("c" * 40))
        == f"https://github.com/ggml-org/llama.cpp/compare/b4000...{'c' * 40}"
    )
    assert str(Candidate("0123456789abcdef")) == "0123456789ab"


def test_the_printed_result_and_the_stored_row_name_range_probes_link_and_command():
    g, m, b = Candidate("1" * 40, "b10"), Candidate("2" * 40, "b11"), Candidate("3" * 40, "b12")
    res = narrow.NarrowResult(
        "found",
        [g, m, b],
        [(g, Verdict.GOOD), (b, Verdict.BAD), (m, Verdict.GOOD)],
        m,
        b,
        rounds=3,
        notes={
            b.commit: narrow.Tested("b12", Verdict.BAD, "fail", build={"reused": False, "seconds": 40, "compiled": 3})
        },
        repro=narrow.repro_command("b10", "b12", git="/src/llama.cpp", case="single-user", stage="inference"),
    )
    text = narrow.format_result(res)
    assert "last good:  b11 2222222222" in text and "first bad:  b12 3333333333" in text
    assert "tests:      3 (bound 4): b10 good, b12 bad [built 40s, 3 units], b11 good" in text
    assert "status:     found: the first bad commit is known" in text
    assert "compare:    https://github.com/ggml-org/llama.cpp/compare/b11...b12" in text
    assert (
        "reproduce:  llmcompat bisect llama.cpp b10..b12 --case single-user --stage inference --git /src/llama.cpp"
    ) in text
    row = res.bisection("2026-01-01T00:00:00+00:00")
    assert row["component"] == "llama.cpp" and row["versions"] == ["b10", "b11", "b12"]
    assert row["probes"] == [("b10", "good"), ("b12", "bad"), ("b11", "good")]
    assert (row["last_good"], row["first_bad"], row["status"]) == ("b11", "b12", "found")
    assert res.to_json()["first_bad"] == {"ref": "b12", "commit": b.commit, "tag": "b12"}
    assert narrow.not_narrowed("why")["status"] == "not narrowed: why"
    assert (
        narrow.repro_command("b1", "b2", git="g", script="check.py")
        == "llmcompat bisect llama.cpp b1..b2 check.py --git g"
    )


# --------------------------------------------------------------------------- small real repositories


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        text=True,
        env={**ENV, "PATH": "/usr/bin:/bin", "HOME": str(repo)},
    ).stdout.strip()


def commit(repo: Path, files: dict[str, str], msg: str, tag: str | None = None, annotated: bool = False) -> str:
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", msg)
    if tag:
        git(repo, "tag", *(["-a", "-m", tag] if annotated else []), tag)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def history(tmp_path):
    """A llama.cpp-like history: sparse build tags, a merged side branch, a bug from commit 5."""
    repo = tmp_path / "llama.cpp"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "master")
    ids = [
        commit(repo, {"CMakeLists.txt": "project(x)\n", "src/a.cpp": "int a = 0;\n", "README.md": "r\n"}, "c0", "b100")
    ]
    ids.append(commit(repo, {"README.md": "r1\n"}, "c1", "b101", annotated=True))
    ids.append(commit(repo, {"src/a.cpp": "int a = 0; // c2\n"}, "c2"))  # untagged
    git(repo, "checkout", "-q", "-b", "side")
    side = commit(repo, {"docs/side.md": "side\n"}, "side work")
    git(repo, "checkout", "-q", "master")
    ids.append(commit(repo, {"src/b.cpp": "int b;\n"}, "c3"))
    git(repo, "merge", "-q", "--no-ff", "-m", "merge side", "side")
    ids.append(git(repo, "rev-parse", "HEAD"))  # c4: the merge, untagged
    ids.append(commit(repo, {"src/a.cpp": "int a = 1; // BUG\n"}, "c5"))  # untagged: the bug
    ids.append(commit(repo, {"src/c.cpp": "int c;\n"}, "c6", "b106"))
    ids.append(commit(repo, {"README.md": "r7\n"}, "c7", "b107"))
    return repo, ids, side


@needs_git
def test_first_parent_line_tags_and_errors(history):
    path, ids, side = history
    repo = gitsrc.open_repo(str(path))
    assert repo.first_parent_line(ids[0], ids[-1]) == ids and side not in ids
    cands = repo.candidates("b100", "b107")
    assert [c.ref for c in cands] == ["b100", "b101", "b106", "b107"]  # the annotated tag is peeled
    assert [c.commit for c in repo.between(cands[1], cands[2])] == ids[1:7]
    with pytest.raises(gitsrc.GitSourceError, match="not on the first-parent line"):
        repo.first_parent_line(side, ids[-1])
    with pytest.raises(gitsrc.GitSourceError, match="'b999' names no commit"):
        repo.commit_of("b999")
    with pytest.raises(gitsrc.GitSourceError, match="no such directory"):
        gitsrc.open_repo(str(path / "nope"))
    (path.parent / "plain").mkdir()
    with pytest.raises(gitsrc.GitSourceError, match="not a git repository"):
        gitsrc.open_repo(str(path.parent / "plain"))


@needs_git
def test_narrowing_searches_the_build_tags_then_the_untagged_commits_between_them(history):
    path, ids, _ = history
    repo = gitsrc.open_repo(str(path))
    seen = []

    def probe(c: Candidate) -> Verdict:  # the "check" reads the source at the commit, as a build would
        seen.append(c.commit)
        src = repo.git("show", f"{c.commit}:src/a.cpp")
        return Verdict.BAD if "BUG" in src else Verdict.GOOD

    res = narrow.narrow(repo, "b100", "b107", probe)
    assert res.found and res.first_bad.commit == ids[5] and res.last_good.commit == ids[4]
    assert [c.ref for c in res.candidates] == ["b100", "b101", "b106", "b107"]
    assert [c.commit for c in res.refined] == ids[2:6]
    assert len(seen) == len(set(seen)) == len(res.probes)  # never a commit twice
    assert len(res.probes) <= res.bound
    assert res.compare_url == f"https://github.com/ggml-org/llama.cpp/compare/{ids[4]}...{ids[5]}"


@needs_git
def test_a_commit_that_does_not_build_is_searched_around(history):
    path, ids, _ = history
    repo = gitsrc.open_repo(str(path))
    broken = {ids[5]}

    def probe(c: Candidate) -> Verdict:
        if c.commit in broken:
            return Verdict.UNKNOWN
        return Verdict.BAD if "BUG" in repo.git("show", f"{c.commit}:src/a.cpp") else Verdict.GOOD

    res = narrow.narrow(repo, ids[0], ids[-1], probe)
    # the bug's own commit cannot be tested: the range is c4 -> b106 with c5 untested inside
    assert res.found and res.last_good.commit == ids[4] and res.first_bad.commit == ids[6]
    assert [c.commit for c in res.unknown_between] == [ids[5]]
    res = narrow.narrow(repo, ids[0], ids[-1], lambda c: Verdict.BAD)
    assert res.status == "both-new" and res.first_bad is None  # bad at both ends: no range
    assert "bad at both ends" in narrow.format_result(res)


@needs_git
def test_the_vendored_commit_from_a_submodule_pointer_and_from_the_sdist_tree(tmp_path, history):
    path, ids, _ = history
    repo = gitsrc.open_repo(str(path))
    py = tmp_path / "llama-cpp-python"
    narrow_demo.make_demo_python_repo(py, {"0.1.0": ids[1], "0.2.0": ids[6]})
    py_repo = gitsrc.open_repo(str(py))
    assert gitsrc.vendored_commit(py_repo, "0.1.0") == ids[1]
    with pytest.raises(gitsrc.GitSourceError, match="v9.9"):
        gitsrc.vendored_commit(py_repo, "9.9")
    got = gitsrc.release_commit(repo, "0.2.0", "bad", py_repo=py_repo)
    assert (got.commit, got.how) == (ids[6], "submodule")

    # an "sdist": the files of c3, with a checked-out submodule and a submodule pointer file
    src = tmp_path / "sdist" / "vendor" / "llama.cpp"
    src.mkdir(parents=True)
    out = subprocess.run(["git", "-C", str(path), "archive", ids[3]], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=out, check=True)
    (src / ".git").write_text("gitdir: ../../.git/modules/vendor/llama.cpp\n")
    (src / "ggml" / "kompute").mkdir(parents=True)
    (src / "ggml" / "kompute" / ".git").write_text("gitdir: nowhere\n")
    (src / "ggml" / "kompute" / "k.c").write_text("int k;\n")
    assert gitsrc.nested_checkouts(src) == ["ggml/kompute"]
    vt = gitsrc.tree_of_dir(src, tmp_path / "scratch.git")
    assert vt.tree == repo.tree_of(ids[3])  # the pointer file and the nested checkout left out
    assert gitsrc.match_vendored(repo, vt, "good") == ids[3]
    # an sdist that drops docs matches no tree exactly: the build files decide; c3 and the merge c4
    # (which only brought docs) build the same, so the good end takes the newest, the bad end the oldest
    shutil.rmtree(src / "ggml")
    (src / "README.md").unlink()
    vt = gitsrc.tree_of_dir(src, tmp_path / "scratch2.git")
    assert vt.tree not in {repo.tree_of(c) for c in ids}
    assert gitsrc.match_vendored(repo, vt, "good") == ids[4]
    assert gitsrc.match_vendored(repo, vt, "bad") == ids[3]


def test_without_a_configured_source_the_pipeline_says_why_it_did_not_narrow(monkeypatch):
    monkeypatch.delenv(gitsrc.ENV_GIT, raising=False)
    finding = {
        "component": "llama-cpp-python",
        "case_id": "single-user",
        "stage": "inference",
        "last_good": "0.3.7",
        "first_bad": "0.3.8",
    }
    found = {"status": "found", "last_good": "0.3.7", "first_bad": "0.3.8"}
    row = narrow.pipeline_narrower(finding, found)
    assert row["component"] == "llama.cpp"
    assert row["status"] == f"not narrowed: no llama.cpp git source configured (set {gitsrc.ENV_GIT} or pass --git)"
    assert narrow.pipeline_narrower(finding, {**found, "status": "both-new"})["status"].startswith(
        "not narrowed: the release bisection did not find a range"
    )
    row = narrow.pipeline_narrower({**finding, "stage": "client"}, found, source="/x")
    assert row["status"] == "not narrowed: stage client is not checked through the native llama-server"
