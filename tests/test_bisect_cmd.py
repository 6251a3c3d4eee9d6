"""``llmcompat bisect``: a real bisection over real releases of ``packaging`` in real uv environments.

packaging 22.0 removed LegacyVersion: ``packaging.version.parse("not-a-version")`` returned a
LegacyVersion before and raises InvalidVersion from 22.0 on. The check script sees exactly that.
"""

import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.specifiers import SpecifierSet

from bot import links
from bot.bisect_cmd import (
    LEGACY_CHECK,
    BisectUsageError,
    PackageTest,
    answer,
    main,
    parse_versions_arg,
    run_bisection,
    select_versions,
    versions_to_bisect,
)
from bot.check import BisectAborted, check_command, verdict_for_exit
from bot.search import Direction, Verdict, bisect_bound
from matrix.releases.versions import Release

RANGE = ">=20,<24"


# ------------------------------------------------------------------------- pure parts


def test_links():
    assert (
        links.compare_url("pypa/packaging", "{version}", "21.3", "22.0")
        == "https://github.com/pypa/packaging/compare/21.3...22.0"
    )
    assert links.compare_url("huggingface/transformers", "v{version}", "4.46.0", "4.47.0").endswith(
        "/compare/v4.46.0...v4.47.0"
    )
    with pytest.raises(ValueError):
        links.compare_url("not-a-repo", "v{version}", "1", "2")
    with pytest.raises(ValueError):
        links.tag("release", "1.0")
    cmd = links.repro_command(
        "packaging",
        ">=20,<24",
        "check.py",
        extra_requirements=["six>1"],
        good="20.0",
        repo="pypa/packaging",
        tag_format="{version}",
    )
    assert cmd == (
        "llmcompat bisect packaging '>=20,<24' check.py --with 'six>1' --good 20.0 "
        "--repo pypa/packaging --tag-format '{version}'"
    )
    cmd = links.repro_command("attrs", ">=20", "c.py", find_fix=True, samples=3, timeout=30.0, jobs=2, offline=True)
    assert cmd == "llmcompat bisect attrs '>=20' c.py --find-fix --samples 3 --timeout 30 --jobs 2 --offline"
    assert links.repro_command("p", ["1.0", "2.0"], "c.sh") == "llmcompat bisect p 1.0,2.0 c.sh"
    assert links.cell_repro("cpu/m/e@1/t@1/j@1/c@1") == 'nox -s "cell(cpu/m/e@1/t@1/j@1/c@1)"'


def test_exit_codes_follow_git_bisect():
    assert verdict_for_exit(0) is Verdict.GOOD
    assert verdict_for_exit(125) is Verdict.UNKNOWN
    assert all(verdict_for_exit(c) is Verdict.BAD for c in (1, 2, 124, 126, 127))
    assert all(verdict_for_exit(c) is None for c in (128, 129, 255, -9))


def test_select_versions():
    t = datetime(2020, 1, 1, tzinfo=UTC)
    rels = [
        Release("19.2"),
        Release("20.0", t),
        Release("20.1", yanked=True),
        Release("21.0rc1"),
        Release("21.0", requires_python=">=3.12"),
        Release("21.1"),
        Release("24.0"),
    ]
    # a yanked release inside a range is bisected (an exact pin installs it) and marked
    sel = select_versions(rels, ">=20,<24", python="3.11")
    assert sel.versions == ["20.0", "20.1", "21.1"] and sel.yanked == {"20.1"}
    assert sel.excluded == {"21.0": "requires Python >=3.12, not 3.11"}
    assert sel.excluded_between("20.1", "21.1") == sel.excluded and sel.excluded_between("20.0", "20.1") == {}
    assert sel.label("20.1") == "20.1 (yanked)" and sel.label(None) == "-"
    assert select_versions(rels, ">=20,<24", python="3.12").versions == ["20.0", "20.1", "21.0", "21.1"]
    assert select_versions(rels, SpecifierSet(">=21.0rc1,<21.1")).versions == ["21.0rc1"]
    explicit = select_versions(rels, "24.0,20.1,19.2")  # explicit: as given
    assert explicit.versions == ["19.2", "20.1", "24.0"] and explicit.yanked == {"20.1"}
    assert parse_versions_arg("20.0, 21.3") == ["20.0", "21.3"]
    with pytest.raises(BisectUsageError):
        parse_versions_arg(">>20")


def test_check_command(tmp_path):
    py = tmp_path / "c.py"
    py.write_text("")
    sh = tmp_path / "c.sh"
    sh.write_text("exit 0\n")
    assert check_command(str(py)) == ["python", str(py)]
    assert check_command(str(sh)) == ["sh", str(sh)]
    sh.chmod(0o755)
    assert check_command(str(sh)) == [str(sh)]
    assert check_command("python -c 'pass'") == ["sh", "-c", "python -c 'pass'"]


def test_run_bisection_with_plain_probe():
    versions = [f"1.{i}" for i in range(10)]
    res = run_bisection(versions, lambda v: Verdict.BAD if v >= "1.6" else Verdict.GOOD, good="1.2")
    assert (res.last_good, res.first_bad) == ("1.5", "1.6")
    with pytest.raises(BisectUsageError):
        run_bisection(versions, lambda v: Verdict.GOOD, bad="9.9")
    with pytest.raises(BisectUsageError, match="not older than"):
        run_bisection(versions, lambda v: Verdict.GOOD, good="1.6", bad="1.2")


@settings(max_examples=300)
@given(st.data())
def test_answer_over_any_good_bad_good_history(data):
    """A history good..bad..good (each stretch possibly empty), asked either way, with or without
    ends given: every version is tested once, within the bound printed, and a found answer is a
    verified adjacent pair of the direction it names."""
    n = data.draw(st.integers(2, 60))
    start = data.draw(st.integers(0, n))
    stop = data.draw(st.integers(start, n))  # bad: start <= i < stop
    versions = [f"1.{i}" for i in range(n)]
    verdict = {v: Verdict.BAD if start <= i < stop else Verdict.GOOD for i, v in enumerate(versions)}
    direction = data.draw(st.sampled_from(Direction))
    calls = []

    def test(v):
        calls.append(v)
        return verdict[v]

    res = answer(versions, test, direction=direction, samples=data.draw(st.integers(0, 6)))
    assert len(calls) == len(set(calls)) == len(res.probes) <= res.bound
    for r in (res.introduced, res.fixed):
        if r is not None and r.found:
            assert verdict[r.last_good] is Verdict.GOOD and verdict[r.first_bad] is Verdict.BAD
            assert abs(versions.index(r.last_good) - versions.index(r.first_bad)) == 1
    ends = (verdict[versions[0]], verdict[versions[-1]])
    if ends == (Verdict.BAD, Verdict.BAD):
        assert res.status == "bad-at-both-ends" and not res.found
    elif ends == (Verdict.GOOD, Verdict.GOOD):
        assert res.status in ("found-both", "good-at-both-ends")
        if res.status == "good-at-both-ends":
            assert not any(verdict[v] is Verdict.BAD for v in res.sampled)
        else:
            assert res.introduced.first_bad == versions[start] and res.fixed.last_good == versions[stop]
    elif (direction is Direction.INTRODUCED) == (ends == (Verdict.GOOD, Verdict.BAD)):
        assert res.status == "found" and res.found
    else:
        assert res.status == "reversed" and not res.found


# ------------------------------------------------------------------------- real bisection


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    from matrix.releases.index import IndexUnavailable, PackageIndex

    idx = PackageIndex(tmp_path_factory.mktemp("index"))
    try:
        idx.releases("packaging")
    except IndexUnavailable as exc:
        pytest.skip(f"no package index: {exc}")
    return idx


@pytest.fixture(scope="module")
def env_root(tmp_path_factory):
    return tmp_path_factory.mktemp("envs")


@pytest.fixture
def check(tmp_path):
    script = tmp_path / "check.py"
    script.write_text(LEGACY_CHECK)
    return script


@pytest.mark.network
@pytest.mark.slow
def test_real_bisection_finds_packaging_22(index, env_root, check, capsys):
    versions = versions_to_bisect("packaging", RANGE, index=index).versions
    assert versions[0].startswith("20.") and versions[-1].startswith("23.") and "22.0" in versions
    probe = PackageTest("packaging", str(check), env_root=env_root)
    res = run_bisection(versions, probe)
    before = versions[versions.index("22.0") - 1]
    assert res.found, res
    assert (res.last_good, res.first_bad) == (before, "22.0")
    n = len(versions)
    assert len(res.probes) <= math.ceil(math.log2(n)) + 2 == bisect_bound(n)
    assert all(note.reason == f"exit {0 if note.verdict is Verdict.GOOD else 1}" for note in probe.notes.values())


@pytest.mark.network
@pytest.mark.slow
def test_parallel_mode_probes_several_versions_per_round(index, env_root, check):
    versions = versions_to_bisect("packaging", RANGE, index=index).versions
    serial = run_bisection(versions, PackageTest("packaging", str(check), env_root=env_root))
    parallel = run_bisection(versions, PackageTest("packaging", str(check), env_root=env_root), jobs=3)
    assert (
        (parallel.last_good, parallel.first_bad)
        == (serial.last_good, serial.first_bad)
        == (versions[versions.index("22.0") - 1], "22.0")
    )
    assert parallel.rounds < serial.rounds  # three probes a round: fewer rounds, more probes


@pytest.mark.network
@pytest.mark.slow
def test_real_bisection_skips_unresolvable_and_125(index, env_root, check, tmp_path):
    versions = versions_to_bisect("packaging", RANGE, index=index).versions
    clean = run_bisection(versions, PackageTest("packaging", str(check), env_root=env_root))
    ends = {versions[0], versions[-1], clean.last_good, clean.first_bad}
    tested = [v for v, _ in clean.probes if v not in ends]
    assert tested, clean.probes
    unresolvable = tested[0]

    # 1. a conflicting extra requirement makes one probed version uninstallable: UNKNOWN, searched around
    probe = PackageTest("packaging", str(check), (f"packaging!={unresolvable}",), env_root=env_root)
    res = run_bisection(versions, probe)
    assert res.found and (res.last_good, res.first_bad) == (clean.last_good, "22.0")
    assert dict(res.probes)[unresolvable] is Verdict.UNKNOWN
    assert probe.notes[unresolvable].reason.startswith("unresolvable")
    assert len(res.probes) <= bisect_bound(len(versions)) + 1

    # 2. and the check says "skip" (exit 125) for another version that search then probes
    skipped = next(v for v, verdict in res.probes if verdict is not Verdict.UNKNOWN and v not in ends)
    skip_check = tmp_path / "skip.py"
    skip_check.write_text(
        f"import os, sys\nif os.environ['LLMCOMPAT_BISECT_VERSION'] == {skipped!r}:\n    sys.exit(125)\n" + LEGACY_CHECK
    )
    probe = PackageTest("packaging", str(skip_check), (f"packaging!={unresolvable}",), env_root=env_root)
    res = run_bisection(versions, probe)
    assert res.found and (res.last_good, res.first_bad) == (clean.last_good, "22.0")
    verdicts = dict(res.probes)
    assert verdicts[unresolvable] is Verdict.UNKNOWN
    assert verdicts[skipped] is Verdict.UNKNOWN and probe.notes[skipped].reason == "exit 125"
    assert len(res.probes) <= bisect_bound(len(versions)) + 2


@pytest.mark.network
@pytest.mark.slow
def test_cli_main_prints_result(index, env_root, check, capsys, monkeypatch):
    monkeypatch.setenv("LLMCOMPAT_CACHE", str(env_root.parent / "cli-cache"))
    rc = main(["packaging", RANGE, str(check), "--repo", "pypa/packaging", "--tag-format", "{version}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "first bad:  22.0" in out
    assert "compare:    https://github.com/pypa/packaging/compare/" in out and "...22.0" in out
    assert "reproduce:  llmcompat bisect packaging '>=20,<24'" in out
    assert "skipped:    none" in out
    assert "status:     found: the check first fails in 22.0" in out


@pytest.mark.network
@pytest.mark.slow
def test_exit_128_aborts(index, env_root, tmp_path):
    script = tmp_path / "abort.sh"
    script.write_text("exit 130\n")
    versions = versions_to_bisect("packaging", "21.3,22.0", index=index).versions
    with pytest.raises(BisectAborted) as err:
        run_bisection(versions, PackageTest("packaging", str(script), env_root=env_root))
    assert err.value.code == 130 and err.value.version == "21.3"


def test_compare_url_encodes_scoped_npm_tags():
    from bot.links import compare_url

    url = compare_url("huggingface/huggingface.js", "@huggingface/jinja@{version}", "0.5.10", "0.5.11")
    assert url.endswith("/compare/%40huggingface%2Fjinja%400.5.10...%40huggingface%2Fjinja%400.5.11")


# ------------------------------------------------------------------------- every form, for real
#
# attrs 21.1.0 made ``attr.evolve(outer, inner=Inner(...))`` raise TypeError (it evolved nested
# attrs instances recursively, #759); 21.2.0 reverted that (#806), and 21.1.0 was yanked from the
# index. So over attrs 20.2.0, 20.3.0, 21.1.0 (yanked), 21.2.0, 21.3.0 the check passes, passes,
# fails, passes, passes: a regression and its fix, both at a yanked release.

EVOLVE_CHECK = """\
import sys
import attr

@attr.s
class Inner:
    x = attr.ib()

@attr.s
class Outer:
    inner = attr.ib()

try:
    evolved = attr.evolve(Outer(Inner(1)), inner=Inner(2))
except TypeError as exc:
    print(f"attrs {attr.__version__}: evolve() with a new nested instance raised {exc}")
    sys.exit(1)
print(f"attrs {attr.__version__}: evolve() ok")
sys.exit(0 if evolved.inner == Inner(2) else 1)
"""


@pytest.fixture(scope="module")
def cli_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cli-cache")


@pytest.fixture
def cli(cli_cache, tmp_path, monkeypatch, capsys):
    """Run ``llmcompat bisect ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from matrix.releases.index import IndexUnavailable, PackageIndex

    monkeypatch.setenv("LLMCOMPAT_CACHE", str(cli_cache))
    try:
        PackageIndex(cli_cache / "index").releases("attrs")
    except IndexUnavailable as exc:
        pytest.skip(f"no package index: {exc}")
    evolve = tmp_path / "evolve.py"
    evolve.write_text(EVOLVE_CHECK)
    legacy = tmp_path / "legacy.py"
    legacy.write_text(LEGACY_CHECK)

    def run(*args: str):
        argv = [str(evolve) if a == "EVOLVE" else str(legacy) if a == "LEGACY" else a for a in args]
        rc = main(argv)
        out, err = capsys.readouterr()
        return rc, out, err

    return run


def _json(out: str) -> dict:
    import json

    return json.loads(out)


@pytest.mark.network
@pytest.mark.slow
def test_find_fix_finds_the_first_fixed_release_after_a_yanked_bad_one(cli):
    rc, out, err = cli("attrs", ">=21.1,<21.4", "EVOLVE", "--find-fix", "--json")
    res = _json(out)
    assert rc == 0 and res["status"] == "found" and res["direction"] == "fixed", (out, err)
    assert res["versions"] == ["21.1.0", "21.2.0", "21.3.0"] and res["yanked"] == ["21.1.0"]
    fixed = res["fixed"]
    assert (fixed["last_bad"], fixed["first_fixed"], fixed["yanked"]) == ("21.1.0", "21.2.0", ["21.1.0"])
    assert res["introduced"] is None
    assert len(res["tests"]) <= res["bound"] == math.ceil(math.log2(3)) + 2
    assert res["reproduce"].endswith("--find-fix")
    # the same in words
    rc, out, _ = cli("attrs", ">=21.1,<21.4", "EVOLVE", "--find-fix")
    assert rc == 0
    assert "last bad:   21.1.0 (yanked)" in out and "first fixed: 21.2.0" in out
    assert "status:     found: it passes again from 21.2.0 (it still fails in 21.1.0 (yanked))" in out


@pytest.mark.network
@pytest.mark.slow
def test_both_ends_good_finds_a_bad_release_then_introduced_and_fixed(cli):
    rc, out, err = cli("attrs", ">=20.2,<=21.3", "EVOLVE", "--json")
    res = _json(out)
    assert rc == 0 and res["status"] == "found-both", (out, err)
    assert res["ends"] == ["20.2.0", "21.3.0"] and res["bad"] == "21.1.0"
    assert res["sampled"] and res["sampled"][-1] == "21.1.0" and len(res["sampled"]) <= res["sample_limit"]
    assert (res["introduced"]["last_good"], res["introduced"]["first_bad"]) == ("20.3.0", "21.1.0")
    assert (res["fixed"]["last_bad"], res["fixed"]["first_fixed"]) == ("21.1.0", "21.2.0")
    versions = [t["version"] for t in res["tests"]]
    assert len(versions) == len(set(versions)) <= res["bound"]
    rc, out, _ = cli("attrs", ">=20.2,<=21.3", "EVOLVE")
    assert "sampled:" in out and "21.1.0 (yanked) bad" in out
    # the newer end passed where a bad end was expected: its output is shown, unasked
    assert "test 21.3.0: good" in out and "| attrs 21.3.0: evolve() ok" in out
    # a --bad inside the range: the search ends there, and the newest release is tested for a fix
    rc, out, err = cli("attrs", ">=20.2,<=21.3", "EVOLVE", "--bad", "21.1.0", "--json")
    res = _json(out)
    assert rc == 0 and res["status"] == "found-both", (out, err)
    assert res["newest"] == {"version": "21.3.0", "verdict": "good"}
    assert res["fixed"]["first_fixed"] == "21.2.0"


@pytest.mark.network
@pytest.mark.slow
def test_bad_at_both_ends_says_so_and_names_no_first_bad(cli):
    rc, out, err = cli("packaging", "22.0,23.0", "LEGACY")
    assert rc == 1, (out, err)
    assert "bad at both ends: no transition in this range (the check fails in 22.0 and in 23.0)" in out
    assert "--find-fix" in out  # the way on
    assert "first bad" not in out and "last good" not in out
    assert "test 22.0: bad (exit 1" in out  # the old end was expected good: shown
    res = _json(cli("packaging", "22.0,23.0", "LEGACY", "--json")[1])
    assert res["status"] == "bad-at-both-ends" and res["introduced"]["first_bad"] is None
    assert [(t["version"], t["verdict"]) for t in res["tests"]] == [("22.0", "bad"), ("23.0", "bad")]


@pytest.mark.network
@pytest.mark.slow
def test_a_yanked_release_is_the_first_bad(cli):
    rc, out, err = cli(
        "attrs", ">=20.2,<21.2", "EVOLVE", "-v", "--repo", "python-attrs/attrs", "--tag-format", "{version}"
    )
    assert rc == 0, (out, err)
    assert "last good:  20.3.0" in out and "first bad:  21.1.0 (yanked)" in out
    assert "compare:    https://github.com/python-attrs/attrs/compare/20.3.0...21.1.0" in out
    # -v: every test with the last lines of the check's output
    assert "| attrs 21.1.0: evolve() with a new nested instance raised" in out
    assert "| attrs 20.2.0: evolve() ok" in out
    assert "--repo python-attrs/attrs --tag-format '{version}'" in out
    # the reversed question says what the range holds and gives the command for it
    rc, out, _ = cli("attrs", "21.1.0,21.2.0", "EVOLVE")
    assert rc == 1 and "reversed: the check fails in the older end 21.1.0 (yanked)" in out
    assert "next:       find the fix: llmcompat bisect attrs 21.1.0,21.2.0" in out and "--find-fix" in out


@pytest.mark.network
def test_usage_errors_exit_2(cli, tmp_path):
    rc, _, err = cli("attrs", ">=20.2,<=21.3", "EVOLVE", "--good", "21.2.0", "--bad", "20.3.0")
    assert rc == 2 and "--good 21.2.0 is not older than --bad 20.3.0" in err and "--find-fix" in err
    rc, _, err = cli("attrs", ">=20.2,<=21.3", "EVOLVE", "--find-fix", "--good", "20.3.0", "--bad", "21.2.0")
    assert rc == 2 and "--bad 21.2.0 is not older than --good 20.3.0" in err
    rc, _, err = cli("attrs", ">=20.2,<=21.3", "EVOLVE", "--bad", "9.9")
    assert rc == 2 and "--bad 9.9 is not among the versions" in err
    rc, _, err = cli("attrs", ">=20.2,<=21.3", str(tmp_path / "nope.py"))
    assert rc == 2 and "does not exist" in err
    rc, _, err = cli("not a/package", ">=1", "EVOLVE")
    assert rc == 2 and "'not a/package' is not a valid package name" in err
    rc, _, err = cli("attrs", ">=20.2,<=21.3", "EVOLVE", "--timeout", "0")
    assert rc == 2 and "--timeout" in err


SPAWNER = """\
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
with open(os.environ["PIDFILE"], "w") as f:
    f.write(str(child.pid))
if os.environ.get("HANG"):
    time.sleep(300)
sys.exit(0)
"""


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its reaper is gone for our purposes
        return open(f"/proc/{pid}/stat").read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait_gone(pid: int, seconds: float = 10) -> bool:
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not _alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.network
@pytest.mark.slow
def test_timeout_and_sigterm_kill_the_checks_whole_process_group(cli, cli_cache, tmp_path, monkeypatch):
    import os
    import signal
    import subprocess
    import sys
    import time

    spawner = tmp_path / "spawner.py"
    spawner.write_text(SPAWNER)
    pidfile = tmp_path / "child.pid"
    monkeypatch.setenv("PIDFILE", str(pidfile))
    # 1. a check that exits at once but leaves a child behind: the child goes with its group
    rc, out, err = cli("packaging", "21.3,22.0", str(spawner), "--json")
    assert rc == 1 and _json(out)["status"] == "good-at-both-ends", (out, err)
    assert _wait_gone(int(pidfile.read_text()))
    # 2. a check that hangs: --timeout kills its group, the bisection aborts (exit 3)
    monkeypatch.setenv("HANG", "1")
    started = time.monotonic()
    rc, out, err = cli("packaging", "21.3,22.0", str(spawner), "--timeout", "2")
    assert rc == 3 and "timed out after 2s at 21.3" in err and "process group was killed" in err
    assert time.monotonic() - started < 60
    assert _wait_gone(int(pidfile.read_text()))
    # 3. SIGTERM or SIGINT to the bisection itself: the running check's group is killed, exit 3
    for sig in (signal.SIGTERM, signal.SIGINT):
        pidfile.unlink(missing_ok=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", "matrix.app.cli", "bisect", "packaging", "21.3,22.0", str(spawner)],
            env={**os.environ, "LLMCOMPAT_CACHE": str(cli_cache)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        while not pidfile.exists() or not pidfile.read_text():
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        child = int(pidfile.read_text())
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 3, (sig, out, err)
        assert f"interrupted by {sig.name}" in err
        assert _wait_gone(child)
