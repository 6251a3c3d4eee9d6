"""Pure version selection: ordering, rules, explicit lists, sweeps (unit tests + properties)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.version import Version

from matrix.declare.config import VersionRule
from matrix.releases.versions import (
    EmptyVersionSet,
    InvalidRule,
    Release,
    UnknownVersion,
    describe_rule,
    newer_than,
    order,
    previous,
    select,
)


def rels(*versions: str, yanked: tuple[str, ...] = (), py: dict[str, str] | None = None) -> list[Release]:
    py = py or {}
    return [Release(v, None, v in yanked, py.get(v)) for v in versions]


# ----------------------------------------------------------------------------- order


def test_order_is_pep440_and_drops_invalid():
    got = order(rels("1.10.0", "1.9.0", "not a version", "1.0rc1", "1.0", "1.0.post1", "0.9.dev3"))
    assert [r.version for r in got] == ["0.9.dev3", "1.0rc1", "1.0", "1.0.post1", "1.9.0", "1.10.0"]


# ----------------------------------------------------------------------------- rules


def test_latest_per_release_skips_yanked_and_prereleases():
    releases = rels("4.38.0", "4.39.0", "4.40.0", "4.41.0rc1", "4.41.0", "4.41.1", yanked=("4.41.1",))
    assert select(releases, VersionRule(latest=3)) == ["4.39.0", "4.40.0", "4.41.0"]


def test_all_when_latest_is_none():
    assert select(rels("1.0", "0.5", "2.0"), VersionRule()) == ["0.5", "1.0", "2.0"]


def test_prereleases_when_asked():
    releases = rels("1.0", "2.0rc1", "2.0.dev1")
    assert select(releases, VersionRule(latest=2, prereleases=True)) == ["2.0.dev1", "2.0rc1"]
    assert select(releases, VersionRule(latest=2)) == ["1.0"]


def test_floor_and_below():
    releases = rels("3.9", "4.0", "4.5", "5.0rc1", "5.0", "5.1")
    assert select(releases, VersionRule(floor="4.0", below="5")) == ["4.0", "4.5"]
    # "<5" excludes pre-releases of 5 even when pre-releases are allowed (PEP 440 semantics)
    assert select(releases, VersionRule(floor="4.0", below="5", prereleases=True)) == ["4.0", "4.5"]
    assert select(releases, VersionRule(floor="5.0")) == ["5.0", "5.1"]


def test_per_minor_and_major_keep_newest_of_each_group():
    releases = rels("1.0.0", "1.0.5", "1.1.0", "1.1.2", "2.0.0", "2.3.1", "2.3.4", "3.0.0rc1")
    assert select(releases, VersionRule(per="minor")) == ["1.0.5", "1.1.2", "2.0.0", "2.3.4"]
    assert select(releases, VersionRule(per="minor", latest=2)) == ["2.0.0", "2.3.4"]
    assert select(releases, VersionRule(per="major")) == ["1.1.2", "2.3.4"]
    assert select(releases, VersionRule(per="major", latest=1)) == ["2.3.4"]


def test_post_release_supersedes_its_release():
    releases = rels("0.9", "1.0", "1.0.post1", "1.0.post2", "1.1")
    assert select(releases, VersionRule()) == ["0.9", "1.0.post2", "1.1"]
    assert select(releases, VersionRule(latest=2)) == ["1.0.post2", "1.1"]
    # a yanked post-release does not hide the release it amends
    assert select(rels("1.0", "1.0.post1", yanked=("1.0.post1",)), VersionRule()) == ["1.0"]
    # 1.0.0 and 1.0 are the same release
    assert select(rels("1.0.0", "1.0.post1"), VersionRule()) == ["1.0.post1"]


def test_local_build_only_when_public_release_absent():
    assert select(rels("2.0", "2.0+cpu", "2.1+cpu"), VersionRule()) == ["2.0", "2.1+cpu"]


def test_requires_python_excludes():
    releases = rels("1.0", "2.0", "3.0", "4.0", py={"2.0": ">=3.12", "3.0": "<3.11", "4.0": ">=3.8, <4"})
    assert select(releases, VersionRule()) == ["1.0", "4.0"]
    assert select(releases, VersionRule(), python="3.12") == ["1.0", "2.0", "4.0"]
    # unparsable metadata is not a reason to drop a release
    assert select(rels("1.0", py={"1.0": ">=3.6garbage"}), VersionRule()) == ["1.0"]


def test_empty_set_message_states_rule():
    releases = rels("1.0", "2.0b1", "3.0", yanked=("3.0",))
    with pytest.raises(EmptyVersionSet) as info:
        select(releases, VersionRule(latest=2, floor="1.5", per="minor"))
    err = info.value
    assert isinstance(err, ValueError)
    msg = str(err)
    assert "latest 2 per minor" in msg and ">=1.5" in msg and "no pre-releases" in msg and "3.11" in msg
    assert err.dropped["yanked"] == 1 and err.dropped["pre-release"] == 1 and err.dropped["below floor"] == 1
    assert err.total == 3
    with pytest.raises(EmptyVersionSet):
        select([], VersionRule(latest=1))


def test_invalid_rule_fields():
    with pytest.raises(InvalidRule) as info:
        select(rels("1.0"), VersionRule(per="patch"))
    assert info.value.field == "per"
    with pytest.raises(InvalidRule):
        select(rels("1.0"), VersionRule(latest=0))
    with pytest.raises(InvalidRule) as info:
        select(rels("1.0"), VersionRule(floor="one"))
    assert info.value.field == "floor" and isinstance(info.value, ValueError)


# ----------------------------------------------------------------------------- explicit


def test_explicit_returns_published_strings_ascending_and_allows_yanked():
    releases = rels("4.40.0", "4.41.0", "4.42.0", yanked=("4.41.0",))
    rule = VersionRule(explicit=("4.42.0", "4.40", "4.41.0", "4.40.0"))
    assert select(releases, rule) == ["4.40.0", "4.41.0", "4.42.0"]


def test_explicit_unknown_names_version_and_nearby():
    releases = rels("1.0", "1.1", "1.2", "1.4", "1.5", "1.6", "1.7", "2.0")
    with pytest.raises(UnknownVersion) as info:
        select(releases, VersionRule(explicit=("1.2", "1.3")))
    err = info.value
    assert isinstance(err, ValueError)
    assert err.version == "1.3" and "'1.3'" in str(err)
    assert err.known_nearby == ("1.0", "1.1", "1.2", "1.4", "1.5", "1.6")
    with pytest.raises(UnknownVersion) as info:
        select(releases, VersionRule(explicit=("banana",)))
    assert info.value.version == "banana" and info.value.known_nearby[-1] == "2.0"


def test_explicit_empty_list():
    with pytest.raises(EmptyVersionSet, match="explicit"):
        select(rels("1.0"), VersionRule(explicit=()))


# ----------------------------------------------------------------------------- sweeps


def test_newer_than():
    selected = ["1.0", "1.2", "1.10", "2.0"]
    assert newer_than(selected, ["1.2", "1.0"]) == ["1.10", "2.0"]
    assert newer_than(selected, []) == ["1.0", "1.2", "1.10", "2.0"]
    assert newer_than(selected, ["3.0"]) == []
    assert newer_than(["2.0", "1.10"], ["1.9"]) == ["1.10", "2.0"]


def test_previous():
    selected = ["1.10", "1.2", "2.0"]
    assert previous(selected, "2.0") == "1.10"
    assert previous(selected, "1.10") == "1.2"
    assert previous(selected, "1.2") is None
    assert previous(selected, "1.5") == "1.2"
    assert previous(selected, "nonsense") is None


def test_describe_rule():
    assert describe_rule(VersionRule(latest=3, per="minor", floor="4.40", below="5")) == (
        "latest 3 per minor, >=4.40, <5, no pre-releases"
    )
    assert describe_rule(VersionRule(explicit=("1.0", "2.0"))) == "explicit 1.0, 2.0"


# ----------------------------------------------------------------------------- properties

_pre = st.one_of(st.none(), st.tuples(st.sampled_from(["a", "b", "rc"]), st.integers(0, 2)))
_version = st.builds(
    lambda major, minor, micro, pre, post, dev: (
        f"{major}.{minor}.{micro}"
        + (f"{pre[0]}{pre[1]}" if pre else "")
        + (f".post{post}" if post is not None else "")
        + (f".dev{dev}" if dev is not None else "")
    ),
    st.integers(0, 3),
    st.integers(0, 3),
    st.integers(0, 2),
    _pre,
    st.one_of(st.none(), st.integers(1, 2)),
    st.one_of(st.none(), st.integers(0, 1)),
)
_release = st.builds(
    Release,
    version=_version,
    upload_time=st.one_of(st.none(), st.just(datetime(2025, 1, 1, tzinfo=UTC))),
    yanked=st.booleans(),
    requires_python=st.sampled_from([None, ">=3.8", ">=3.12", "<3.11", "not a spec"]),
)
_releases = st.lists(_release, max_size=30).map(lambda rs: list({Version(r.version): r for r in rs}.values()))
_rules = st.builds(
    VersionRule,
    latest=st.one_of(st.none(), st.integers(1, 5)),
    floor=st.one_of(st.none(), st.sampled_from(["0.5", "1.0", "2.1"])),
    below=st.one_of(st.none(), st.sampled_from(["1.0", "2.0", "3.1.1"])),
    prereleases=st.booleans(),
    per=st.sampled_from(["release", "minor", "major"]),
)


def _eligible(releases, rule, python="3.11"):
    from matrix.releases.versions import _python_ok

    out = []
    for r in releases:
        v = Version(r.version)
        if r.yanked or (v.is_prerelease and not rule.prereleases) or not _python_ok(r.requires_python, Version(python)):
            continue
        if rule.floor and v < Version(rule.floor):
            continue
        if rule.below and not (
            v < Version(rule.below) and not (v.is_prerelease and Version(v.base_version) == Version(rule.below))
        ):
            continue
        out.append(r)
    return out


@settings(max_examples=150, deadline=None)
@given(_releases, _rules)
def test_rule_properties(releases, rule):
    eligible = _eligible(releases, rule)
    if not eligible:
        with pytest.raises(EmptyVersionSet):
            select(releases, rule)
        return
    got = select(releases, rule)
    versions = [Version(v) for v in got]
    by_string = {r.version: r for r in releases}
    assert versions == sorted(versions) and len(set(versions)) == len(versions)  # ascending, unique
    assert set(got) <= set(by_string)  # a subset of the input, as published
    assert all(not by_string[v].yanked for v in got)  # never yanked
    assert rule.prereleases or not any(v.is_prerelease for v in versions)
    assert rule.latest is None or len(got) <= rule.latest
    assert max(versions) == max(Version(r.version) for r in eligible)  # the newest eligible is kept
    if rule.per == "major":
        assert len({v.major for v in versions}) == len(versions)
    if rule.per == "minor":
        assert len({(v.major, v.minor) for v in versions}) == len(versions)
    if rule.per == "release":  # a post-release supersedes the release it amends
        assert len(
            {(v.release + (0,) * (3 - len(v.release)), v.pre, v.dev if v.post is None else None) for v in versions}
        ) == len(versions)
        for v in versions:
            if v.post is None:
                assert not any(
                    Version(r.version).post is not None
                    and Version(Version(r.version).base_version) == v
                    and Version(r.version).pre == v.pre
                    for r in eligible
                )


@settings(max_examples=100, deadline=None)
@given(_releases, st.data())
def test_explicit_properties(releases, data):
    known = [r.version for r in releases]
    wanted = data.draw(st.lists(st.sampled_from(known), max_size=5) if known else st.just([]))
    missing = data.draw(_version)
    if wanted:
        got = select(releases, VersionRule(explicit=tuple(wanted)))
        assert got == sorted(set(wanted), key=Version)  # yanked included, ascending
    if Version(missing) not in {Version(v) for v in known}:
        with pytest.raises(UnknownVersion) as info:
            select(releases, VersionRule(explicit=(*wanted, missing)))
        assert info.value.version == missing and missing in str(info.value)


@settings(max_examples=100, deadline=None)
@given(st.lists(_version, max_size=15), st.lists(_version, max_size=5))
def test_newer_than_and_previous_properties(selected, seen):
    got = newer_than(selected, seen)
    assert [Version(v) for v in got] == sorted(Version(v) for v in got)
    assert all(Version(v) > Version(s) for v in got for s in seen)
    assert set(got) <= set(selected)
    for v in selected:
        p = previous(selected, v)
        older = [Version(s) for s in selected if Version(s) < Version(v)]
        assert (p is None) == (not older)
        if p is not None:
            assert Version(p) == max(older)
