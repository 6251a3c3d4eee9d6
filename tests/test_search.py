"""Bisection: the probe bound, correctness, UNKNOWNs, the backward search, parallel rounds."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.search import (
    BisectResult,
    Verdict,
    bench_probe_counts,
    bisect,
    bisect_parallel,
    isolate_axis,
    probe_bound,
)

G, B, U = Verdict.GOOD, Verdict.BAD, Verdict.UNKNOWN


class Recorder:
    """A monotone history: versions before ``first_bad`` are good; ``unknown`` cannot be built."""

    def __init__(self, first_bad: int, unknown=frozenset()):
        self.first_bad, self.unknown, self.calls = first_bad, set(unknown), []

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
    assert res.last_good_index + 1 == res.first_bad_index == first_bad
    assert len(res.probes) <= probe_bound(n)
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


def test_good_end_bad_and_bad_end_good_stop_with_no_range():
    res = bisect(range(10), Recorder(first_bad=0))
    assert (res.status, res.last_good, res.first_bad) == ("good-end-bad", None, None)
    assert res.probes == [(0, B)]
    res = bisect(range(10), Recorder(first_bad=99))
    assert (res.status, res.last_good, res.first_bad) == ("bad-end-good", None, None)
    assert res.probes == [(0, G), (9, G)]
    assert bisect(range(10), Recorder(5, {9})).status == "bad-end-unknown"


def test_explicit_ends_and_negative_bad():
    rec = Recorder(first_bad=6)
    res = bisect(range(20), rec, good=3, bad=-12)
    assert (res.last_good, res.first_bad) == (5, 6)
    assert min(rec.calls) == 3 and max(rec.calls) == 8
    with pytest.raises(ValueError):
        bisect(range(5), rec, good=4, bad=2)
    with pytest.raises(ValueError):
        bisect([1, 1, 2], rec)


@given(st.data())
def test_backward_search_without_a_good_start(data):
    n = data.draw(st.integers(2, 300))
    first_bad = data.draw(st.integers(1, n - 1))
    rec = Recorder(first_bad)
    res = bisect(range(n), rec, good=None)
    assert_adjacent(res, first_bad)
    distance = n - first_bad
    # growing steps: about 2*log2(distance) probes, independent of how long the list is
    assert len(res.probes) <= 2 * math.ceil(math.log2(distance + 1)) + 2


def test_backward_search_steps_1_2_4():
    rec = Recorder(first_bad=80)
    bisect(range(101), rec, good=None)
    assert rec.calls[:5] == [100, 99, 98, 96, 92]


def test_no_good_found_and_unknown_good_end():
    res = bisect(range(10), Recorder(first_bad=0), good=None)
    assert (res.status, res.last_good, res.first_bad) == ("no-good-found", None, 0)
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
    res = bisect_parallel(range(n), Recorder(first_bad, unknown).many, k, good=None)
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
    assert max(counts) <= probe_bound(40) == 8
