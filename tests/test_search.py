"""Bisection: the bound over the interval searched, correctness in both directions, UNKNOWNs, the
backward search, parallel rounds, both transitions of a range whose ends pass."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.search import (
    BisectResult,
    Direction,
    Verdict,
    bench_probe_counts,
    bisect,
    bisect_bound,
    bisect_parallel,
    isolate_axis,
    sample_order,
    transitions,
)

G, B, U = Verdict.GOOD, Verdict.BAD, Verdict.UNKNOWN


class Recorder:
    """A monotone history: versions before ``first_bad`` are good; ``unknown`` cannot be built."""

    def __init__(self, first_bad: int, unknown=frozenset()):
        self.first_bad, self.unknown = first_bad, set(unknown)
        self.calls: list[int] = []

    def __call__(self, v: int) -> Verdict:
        self.calls.append(v)
        if v in self.unknown:
            return U
        return G if v < self.first_bad else B

    def many(self, vs: list[int]) -> dict[int, Verdict]:
        return {v: self(v) for v in vs}


def assert_adjacent(res: BisectResult, first_bad: int) -> None:
    assert res.status == "found"
    assert (res.last_good, res.first_bad) == (first_bad - 1, first_bad)
    assert res.unknown_between == []


def test_bound_and_correctness_for_every_n_up_to_200_and_every_split():
    for n in range(2, 201):
        bound = math.ceil(math.log2(n)) + 2
        for first_bad in range(1, n):
            rec = Recorder(first_bad)
            res = bisect(range(n), rec)
            assert_adjacent(res, first_bad)
            assert len(res.probes) <= bound, (n, first_bad, len(res.probes))
            assert len(rec.calls) == len(set(rec.calls)) == len(res.probes)


@given(st.data())
def test_bound_property(data):
    n = data.draw(st.integers(2, 200))
    first_bad = data.draw(st.integers(1, n - 1))
    versions = [f"1.{i}.0" for i in range(n)]
    res = bisect(versions, lambda v: G if versions.index(v) < first_bad else B)
    assert (res.last_good, res.first_bad) == (versions[first_bad - 1], versions[first_bad])
    assert res.last_old_index + 1 == res.first_new_index == first_bad
    assert len(res.probes) <= bisect_bound(n)
    assert res.probes[0] == (versions[0], G) and res.probes[1] == (versions[-1], B)


@settings(max_examples=300)
@given(st.data())
def test_unknowns_still_bracket_the_change_point(data):
    n = data.draw(st.integers(2, 120))
    first_bad = data.draw(st.integers(1, n - 1))
    unknown = data.draw(st.sets(st.integers(1, max(1, n - 2)), max_size=n)) - {n - 1}
    rec = Recorder(first_bad, unknown)
    res = bisect(range(n), rec)
    assert res.status == "found"
    assert res.last_good < first_bad <= res.first_bad
    assert res.last_good not in unknown and res.first_bad not in unknown
    assert res.unknown_between == list(range(res.last_good + 1, res.first_bad))
    assert set(res.unknown_between) <= unknown
    assert len(rec.calls) == len(set(rec.calls))


def test_unknown_at_midpoint_probes_its_neighbour():
    rec = Recorder(first_bad=7, unknown={5})
    res = bisect(range(11), rec)
    assert rec.calls[:3] == [0, 10, 5]
    assert rec.calls[3] in (4, 6)
    assert_adjacent(res, 7)


def test_unknowns_widen_the_range():
    res = bisect(range(10), Recorder(first_bad=5, unknown={4, 5, 6}))
    assert (res.last_good, res.first_bad, res.unknown_between) == (3, 7, [4, 5, 6])


def test_ends_that_agree_stop_with_no_range_after_testing_both():
    res = bisect(range(10), Recorder(first_bad=0))
    assert (res.status, res.last_good, res.first_bad) == ("both-new", None, None)
    assert res.probes == [(0, B), (9, B)]  # both ends: "bad at both ends", not "good end bad"
    res = bisect(range(10), Recorder(first_bad=99))
    assert (res.status, res.last_good, res.first_bad) == ("both-old", None, None)
    assert res.probes == [(0, G), (9, G)]
    assert bisect(range(10), Recorder(5, {9})).status == "new-end-unknown"
    reversed_history = bisect(range(10), lambda v: B if v < 4 else G)
    assert reversed_history.status == "reversed" and reversed_history.first_new is None


def test_explicit_ends_and_negative_bad():
    rec = Recorder(first_bad=6)
    res = bisect(range(20), rec, old=3, new=-12)
    assert (res.last_good, res.first_bad) == (5, 6)
    assert min(rec.calls) == 3 and max(rec.calls) == 8
    with pytest.raises(ValueError):
        bisect(range(5), rec, old=4, new=2)
    with pytest.raises(ValueError):
        bisect([1, 1, 2], rec)


@given(st.data())
def test_backward_search_without_a_good_start(data):
    n = data.draw(st.integers(2, 300))
    first_bad = data.draw(st.integers(1, n - 1))
    rec = Recorder(first_bad)
    res = bisect(range(n), rec, old=None)
    assert_adjacent(res, first_bad)
    distance = n - first_bad
    # growing steps: about 2*log2(distance) probes, independent of how long the list is
    assert len(res.probes) <= 2 * math.ceil(math.log2(distance + 1)) + 2


def test_backward_search_steps_1_2_4():
    rec = Recorder(first_bad=80)
    bisect(range(101), rec, old=None)
    assert rec.calls[:5] == [100, 99, 98, 96, 92]


def test_no_good_found_and_unknown_good_end():
    res = bisect(range(10), Recorder(first_bad=0), old=None)
    # never a "first bad" that is only the oldest version tested
    assert (res.status, res.last_good, res.first_bad) == ("no-old-found", None, None)
    res = bisect(range(10), Recorder(first_bad=4, unknown={0}))  # good end cannot be built
    assert_adjacent(res, 4)


@given(st.data())
def test_parallel_matches_sequential_in_fewer_rounds(data):
    n = data.draw(st.integers(2, 200))
    k = data.draw(st.integers(1, 8))
    first_bad = data.draw(st.integers(1, n - 1))
    rec = Recorder(first_bad)
    res = bisect_parallel(range(n), rec.many, k)
    assert_adjacent(res, first_bad)
    rounds = 0
    while (k + 1) ** rounds < n - 1:
        rounds += 1
    assert res.rounds <= rounds + math.ceil(2 / k)
    assert len(rec.calls) == len(set(rec.calls))


@given(st.data())
def test_parallel_with_unknowns_and_no_good_start(data):
    n = data.draw(st.integers(2, 120))
    k = data.draw(st.integers(1, 5))
    first_bad = data.draw(st.integers(1, n - 1))
    unknown = data.draw(st.sets(st.integers(0, n - 2), max_size=n // 2))
    if not set(range(first_bad)) - unknown:
        unknown.discard(0)
    res = bisect_parallel(range(n), Recorder(first_bad, unknown).many, k, old=None)
    assert res.status == "found"
    assert res.last_good < first_bad <= res.first_bad
    assert set(res.unknown_between) <= unknown


def test_parallel_rounds_split_into_k_plus_1_parts():
    batches = []

    def many(vs):
        batches.append(vs)
        return {v: G if v < 50 else B for v in vs}

    res = bisect_parallel(range(101), many, 3)
    assert batches[0] == [0, 100]
    assert batches[1] == [25, 50, 75]
    assert (res.last_good, res.first_bad) == (49, 50)
    with pytest.raises(ValueError):
        bisect_parallel(range(5), many, 0)


def test_isolate_axis_single_pair_and_unbuildable():
    changed = {"engine": ("1", "2"), "tokenizer": ("a", "b"), "client": ("x", "y")}
    seen = []

    def engine_guilty(cell):
        seen.append(dict(cell))
        return B if cell["engine"] == "2" else G

    assert isolate_axis(changed, engine_guilty) == ["engine"]
    assert seen[0] == {"engine": "2", "tokenizer": "a", "client": "x"}
    assert len(seen) == 3

    def pair(cell):
        return B if (cell["engine"], cell["client"]) == ("2", "y") else G

    assert isolate_axis(changed, pair) == ["engine", "client"]

    def unbuildable_then_all(cell):
        if sum(cell[a] == changed[a][1] for a in changed) == 1:
            return U
        return G

    assert isolate_axis(changed, unbuildable_then_all) == ["engine", "tokenizer", "client"]
    assert isolate_axis({"engine": ("1", "2")}, lambda c: pytest.fail("no probe needed")) == ["engine"]


def test_bench_probe_counts_n40():
    counts = bench_probe_counts(40)
    assert len(counts) == 39
    assert max(counts) <= bisect_bound(40) == 8


# ------------------------------------------------------------------------- both directions


def history(n: int, bad: set[int], unknown=frozenset()):
    """A test over range(n): ``bad`` fail, ``unknown`` cannot be tested, the rest pass; it counts calls."""
    calls: list[int] = []

    def test(v: int) -> Verdict:
        calls.append(v)
        return U if v in unknown else B if v in bad else G

    test.calls = calls  # type: ignore[attr-defined]
    return test


def assert_verified_pair(res: BisectResult, verdicts: dict, direction: Direction) -> None:
    """A found answer is an adjacent pair (but for untestable versions) whose verdicts were seen."""
    assert res.found
    assert res.last_old is not None and res.first_new is not None
    assert res.last_old_index is not None and res.first_new_index is not None
    assert verdicts[res.last_old] is direction.old and verdicts[res.first_new] is direction.new
    assert res.last_old_index < res.first_new_index
    assert res.unknown_between == list(range(res.last_old + 1, res.first_new))
    assert all(verdicts.get(v, U) is U for v in res.unknown_between)


@settings(max_examples=300)
@given(st.data())
def test_both_directions_within_the_bound_of_the_interval_searched(data):
    n = data.draw(st.integers(2, 300))
    direction = data.draw(st.sampled_from(Direction))
    old = data.draw(st.integers(0, n - 2))
    new = data.draw(st.integers(old + 1, n - 1))
    change = data.draw(st.integers(old + 1, new))  # the first index showing the new term
    bad = set(range(change, n)) if direction is Direction.INTRODUCED else set(range(change))
    test = history(n, bad)
    res = bisect(range(n), test, old=old, new=new, direction=direction)
    assert res.found and (res.last_old, res.first_new) == (change - 1, change)
    assert len(res.probes) <= math.ceil(math.log2(new - old + 1)) + 2 == res.bound
    assert len(test.calls) == len(set(test.calls)) == len(res.probes)
    assert res.interval == (old, new) and min(test.calls) == old and max(test.calls) == new
    if direction is Direction.FIXED:
        assert (res.first_bad, res.last_good) == (change - 1, change)  # last bad, first fixed


@settings(max_examples=300)
@given(st.data())
def test_any_history_gets_a_verified_pair_or_an_honest_none(data):
    """Arbitrary (not monotone) histories with untestable versions, both directions, parallel or not:
    the answer is a verified adjacent pair, or no pair at all with a status that says why."""
    n = data.draw(st.integers(2, 80))
    verdicts = dict(enumerate(data.draw(st.lists(st.sampled_from(Verdict), min_size=n, max_size=n))))
    direction = data.draw(st.sampled_from(Direction))
    k = data.draw(st.integers(1, 4))
    old = data.draw(st.one_of(st.none(), st.integers(0, n - 2)))

    def many(vs):
        return {v: verdicts[v] for v in vs}

    res = bisect_parallel(range(n), many, k, old=old, direction=direction)
    seen = dict(res.probes)
    assert len(res.probes) == len(seen)  # each version tested once
    assert all(seen[v] is verdicts[v] for v in seen)
    if res.found:
        assert_verified_pair(res, seen, direction)
    else:
        assert res.last_old is None and res.first_new is None
        new_end = seen[n - 1]
        expected = {U: "new-end-unknown"}.get(new_end)
        if expected:
            assert res.status == expected
        elif new_end is direction.old:
            assert res.status in ("both-old", "reversed")
        elif old is not None and seen[old] is direction.new:
            assert res.status == "both-new"
        else:  # no tested version below the new end shows the old term
            assert res.status == "no-old-found"
            assert not any(v is direction.old for i, v in seen.items() if i < n - 1)


def test_fix_direction_names_last_bad_and_first_fixed():
    versions = ["1.0", "1.1", "1.2", "1.3", "1.4"]
    res = bisect(versions, lambda v: B if v < "1.3" else G, direction=Direction.FIXED)
    assert (res.status, res.last_old, res.first_new) == ("found", "1.2", "1.3")
    assert res.probes[:2] == [("1.0", B), ("1.4", G)]
    # the same history asked the other way round is "reversed", with both ends tested
    other = bisect(versions, lambda v: B if v < "1.3" else G)
    assert (other.status, len(other.probes)) == ("reversed", 2)


# ------------------------------------------------------------------------- both transitions


def test_sample_order_is_coarse_to_fine_and_complete():
    assert sample_order(0, 8) == [4, 2, 6, 1, 3, 5, 7]
    for lo, hi in [(0, 2), (3, 20), (0, 101)]:
        order = sample_order(lo, hi)
        assert sorted(order) == list(range(lo + 1, hi))


@settings(max_examples=300)
@given(st.data())
def test_transitions_find_introduced_and_fixed_within_their_bound(data):
    n = data.draw(st.integers(3, 200))
    start = data.draw(st.integers(1, n - 2))
    stop = data.draw(st.integers(start, n - 2))  # bad from start to stop inclusive
    samples = data.draw(st.integers(1, 10))
    given_bad = data.draw(st.one_of(st.none(), st.integers(start, stop)))
    test = history(n, set(range(start, stop + 1)))
    res = transitions(range(n), test, bad=given_bad, samples=samples)
    assert len(test.calls) == len(set(test.calls)) == len(res.probes) <= res.bound
    if res.status == "no-bad-found":
        assert given_bad is None and len(res.sampled) == res.sample_limit == min(samples, n - 2)
        assert not set(res.sampled) & set(range(start, stop + 1))
        return
    assert res.found and start <= res.bad <= stop
    assert (res.introduced.last_good, res.introduced.first_bad) == (start - 1, start)
    assert (res.fixed.first_bad, res.fixed.last_good) == (stop, stop + 1)
    assert res.introduced.direction is Direction.INTRODUCED and res.fixed.direction is Direction.FIXED


def test_transitions_sample_a_short_bad_stretch_and_a_given_bad_that_passes():
    test = history(17, {11, 12})
    res = transitions(range(17), test, samples=8)
    assert res.sampled == [8, 4, 12] and res.bad == 12
    assert (res.introduced.first_bad, res.fixed.last_good) == (11, 13)
    res = transitions(range(17), history(17, {11, 12}), bad=5)
    assert (res.status, res.sampled, res.introduced) == ("bad-end-good", [5], None)
    with pytest.raises(ValueError):
        transitions(range(5), test, good=3, good_end=2)
