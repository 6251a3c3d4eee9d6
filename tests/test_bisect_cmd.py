"""``llmcompat bisect``: a real bisection over real releases of ``packaging`` in real uv environments.

packaging 22.0 removed LegacyVersion: ``packaging.version.parse("not-a-version")`` returned a
LegacyVersion before and raises InvalidVersion from 22.0 on. The check script sees exactly that.
"""

import math
from datetime import UTC, datetime

import pytest
from packaging.specifiers import SpecifierSet

from bot import links
from bot.bisect_cmd import (
    LEGACY_CHECK,
    BisectUsageError,
    PackageTest,
    main,
    parse_versions_arg,
    run_bisection,
    select_versions,
    versions_to_bisect,
)
from bot.check import BisectAborted, check_command, verdict_for_exit
from bot.search import Verdict, bisect_bound
from matrix.releases.versions import Release

RANGE = ">=20,<24"


# ------------------------------------------------------------------------- pure parts


def test_links():
    assert links.compare_url("pypa/packaging", "{version}", "21.3", "22.0") == \
        "https://github.com/pypa/packaging/compare/21.3...22.0"
    assert links.compare_url("huggingface/transformers", "v{version}", "4.46.0", "4.47.0").endswith(
        "/compare/v4.46.0...v4.47.0")
    with pytest.raises(ValueError):
        links.compare_url("not-a-repo", "v{version}", "1", "2")
    with pytest.raises(ValueError):
        links.tag("release", "1.0")
    cmd = links.repro_command("packaging", ">=20,<24", "check.py", extra_requirements=["six>1"],
                              good="20.0", repo="pypa/packaging", tag_format="{version}")
    assert cmd == ("llmcompat bisect packaging '>=20,<24' check.py --with 'six>1' --good 20.0 "
                   "--repo pypa/packaging --tag-format '{version}'")
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
    rels = [Release("19.2"), Release("20.0", t), Release("20.1", yanked=True), Release("21.0rc1"),
            Release("21.0", requires_python=">=3.12"), Release("21.1"), Release("24.0")]
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
    assert (parallel.last_good, parallel.first_bad) == (serial.last_good, serial.first_bad) == (
        versions[versions.index("22.0") - 1], "22.0")
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
        "import os, sys\n"
        f"if os.environ['LLMCOMPAT_BISECT_VERSION'] == {skipped!r}:\n"
        "    sys.exit(125)\n" + LEGACY_CHECK
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
