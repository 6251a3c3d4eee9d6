"""The pairwise covering array and its checker: pure, no I/O."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matrix.plan.covering import allowed_pairs, bench, complete, lower_bound, pairs_of, pairwise, uncovered

# ---------------------------------------------------------------------------------------------
# Brute force reference: enumerate every complete row.


def brute_required(factors, allowed=None):
    required = set()
    for row in itertools.product(*factors):
        if allowed is None or allowed(dict(enumerate(row))):
            required |= pairs_of(row)
    return required


def brute_uncovered(factors, rows, allowed=None):
    covered = set()
    for row in rows:
        covered |= pairs_of(tuple(row))
    return brute_required(factors, allowed) - covered


def excluding(constraints):
    """``allowed`` for exclusion constraints: each a {factor index: value} that must not all hold."""

    def allowed(partial):
        return not any(all(i in partial and partial[i] == v for i, v in c.items()) for c in constraints)

    return allowed


@st.composite
def problems(draw, max_factors=5, max_values=4, max_constraints=5):
    sizes = draw(st.lists(st.integers(1, max_values), min_size=1, max_size=max_factors))
    factors = [[f"{chr(97 + i)}{x}" for x in range(s)] for i, s in enumerate(sizes)]
    constraints = []
    for _ in range(draw(st.integers(0, max_constraints))):
        idx = draw(st.lists(st.integers(0, len(factors) - 1), min_size=1, max_size=3, unique=True))
        constraints.append({i: draw(st.sampled_from(factors[i])) for i in idx})
    return factors, constraints


# ---------------------------------------------------------------------------------------------
# The checker against brute force.


@settings(max_examples=200, deadline=None)
@given(problems(), st.data())
def test_uncovered_matches_brute_force(problem, data):
    factors, constraints = problem
    allowed = excluding(constraints)
    product = list(itertools.product(*factors))
    rows = data.draw(st.lists(st.sampled_from(product), max_size=8))
    assert uncovered(factors, rows, allowed) == brute_uncovered(factors, rows, allowed)
    assert allowed_pairs(factors, allowed) == brute_required(factors, allowed)
    assert uncovered(factors, rows) == brute_uncovered(factors, rows)


def test_uncovered_needs_a_completion_not_just_an_allowed_pair():
    # Value 0 of factor 0 is accepted in every pair, but no complete row can hold it.
    factors = [[0, 1], [0, 1], [0, 1]]
    allowed = excluding([{0: 0, 2: 0}, {0: 0, 2: 1}])
    assert allowed({0: 0, 1: 0})
    required = allowed_pairs(factors, allowed)
    assert ((0, 0), (1, 0)) not in required
    assert required == brute_required(factors, allowed)
    rows = pairwise(factors, allowed)
    assert all(r[0] == 1 for r in rows)
    assert uncovered(factors, rows, allowed) == set()


def test_uncovered_lists_missing_pairs():
    factors = [["a", "b"], [1, 2]]
    assert uncovered(factors, [("a", 1), ("b", 2)]) == {((0, "a"), (1, 2)), ((0, "b"), (1, 1))}
    assert uncovered(factors, list(itertools.product(*factors))) == set()


# ---------------------------------------------------------------------------------------------
# The covering array.


@settings(max_examples=200, deadline=None)
@given(problems())
def test_pairwise_covers_every_allowed_pair_and_respects_allowed(problem):
    factors, constraints = problem
    allowed = excluding(constraints)
    rows = pairwise(factors, allowed)
    assert brute_uncovered(factors, rows, allowed) == set()
    assert uncovered(factors, rows, allowed) == set()
    assert all(allowed(dict(enumerate(r))) for r in rows)
    assert all(len(r) == len(factors) and all(v in f for v, f in zip(r, factors)) for r in rows)
    assert len(set(rows)) == len(rows)
    full = [r for r in itertools.product(*factors) if allowed(dict(enumerate(r)))]
    assert len(rows) <= len(full)
    assert (rows == []) == (full == [])
    assert pairwise(factors, allowed) == rows  # deterministic


@settings(max_examples=150, deadline=None)
@given(problems(), st.data())
def test_seed_rows_come_first_and_count_as_covered(problem, data):
    factors, constraints = problem
    allowed = excluding(constraints)
    full = [r for r in itertools.product(*factors) if allowed(dict(enumerate(r)))]
    if not full:
        return
    picked = data.draw(st.lists(st.sampled_from(full), min_size=1, max_size=3))
    keep = data.draw(st.lists(st.booleans(), min_size=len(factors), max_size=len(factors)))
    partial = data.draw(st.booleans())
    seeds = [{i: v for i, v in enumerate(r) if keep[i] or not partial} for r in picked]
    rows = pairwise(factors, allowed, seed_rows=seeds)
    for seed, row in zip(seeds, rows):
        assert all(row[i] == v for i, v in seed.items())
    assert uncovered(factors, rows, allowed) == set()
    assert all(allowed(dict(enumerate(r))) for r in rows)
    rest = rows[len(seeds) :]
    assert len(set(rest)) == len(rest) and not set(rest) & set(rows[: len(seeds)])
    assert pairwise(factors, allowed, seed_rows=seeds) == rows


def test_seed_pairs_are_not_covered_twice():
    factors = [[0, 1], [0, 1]]
    rows = pairwise(factors, seed_rows=[{0: 1, 1: 1}, {0: 0, 1: 0}])
    assert rows[:2] == [(1, 1), (0, 0)]
    assert sorted(rows[2:]) == [(0, 1), (1, 0)]


def test_bad_seeds_are_errors():
    with pytest.raises(ValueError, match="seed_rows\\[0\\]"):
        pairwise([[0, 1], [0, 1]], seed_rows=[{0: 7}])
    with pytest.raises(ValueError, match="factor index"):
        pairwise([[0, 1], [0, 1]], seed_rows=[{5: 0}])
    with pytest.raises(ValueError, match="not allowed"):
        pairwise([[0, 1], [0, 1]], excluding([{0: 0, 1: 0}]), seed_rows=[{0: 0, 1: 0}])


def test_rows_keep_the_given_factor_order():
    factors = [["x", "y"], [1, 2, 3, 4, 5], ["p", "q", "r"]]  # not sorted by size
    rows = pairwise(factors)
    assert all(r[0] in "xy" and r[1] in range(1, 6) and r[2] in "pqr" for r in rows)
    assert len(rows) == 15
    assert uncovered(factors, rows) == set()


def test_small_edge_cases():
    assert pairwise([]) == []
    assert pairwise([[1, 2, 3]]) == [(1,), (2,), (3,)]
    assert pairwise([[1, 2, 3]], excluding([{0: 2}])) == [(1,), (3,)]
    assert pairwise([[1, 2], []]) == []
    assert pairwise([[1, 1, 2], [3]]) == [(1, 3), (2, 3)]  # repeated values count once
    assert pairwise([[0, 1], [0, 1]], excluding([{0: 0}, {0: 1}])) == []


def test_complete_prefers_and_backtracks():
    factors = [[0, 1], [0, 1], [0, 1]]
    assert complete(factors, {}) == (0, 0, 0)
    assert complete(factors, {1: 1}, prefer={0: 1, 2: 1}) == (1, 1, 1)
    allowed = excluding([{0: 0, 2: 0}, {0: 1, 1: 1}])
    assert complete(factors, {1: 1}, allowed) == (0, 1, 1)
    assert complete(factors, {0: 0, 2: 0}, allowed) is None
    assert complete(factors, {}, excluding([{0: 0}, {0: 1}])) is None


def test_lower_bound():
    assert lower_bound([[1] * 1, [1, 2, 3], [1, 2], [1, 2, 3, 4]]) == 12
    assert lower_bound([[1, 2, 3]]) == 3
    assert lower_bound([]) == 0


# ---------------------------------------------------------------------------------------------
# Quality and speed.


def test_5x4x4x3_is_close_to_the_bound():
    factors = [[f"f{i}v{x}" for x in range(s)] for i, s in enumerate((5, 4, 4, 3))]
    rows = pairwise(factors)
    assert uncovered(factors, rows) == set()
    assert len(rows) <= 22  # 1.1 x lower bound (20)


@pytest.mark.parametrize("sizes", [(3, 3, 3), (4, 4, 4, 4, 4), (6, 5, 4, 3, 2), (4, 3, 3, 2, 2, 2), (7, 7, 3, 3, 3, 3)])
def test_mixed_sizes_stay_close_to_the_bound(sizes):
    factors = [list(range(s)) for s in sizes]
    rows = pairwise(factors)
    assert uncovered(factors, rows) == set()
    assert len(rows) <= 1.1 * lower_bound(factors)


def test_ten_factors_of_ten_values_are_fast():
    factors = [list(range(10)) for _ in range(10)]
    start = time.process_time()  # CPU time: robust against a busy machine
    rows = pairwise(factors)
    seconds = time.process_time() - start
    assert seconds < 1.0
    assert len(rows) <= 1.8 * lower_bound(factors)
    assert uncovered(factors, rows) == set()


def test_bench():
    result = bench()
    assert result["lower_bound"] == 20
    assert result["rows"] <= 22
    assert result["ratio"] == pytest.approx(result["rows"] / 20, abs=1e-3)
    assert result["coverage"] == 1.0
    assert result["seconds"] < 1.0
