"""Pairwise covering arrays: few rows that together contain every allowed pair of values.

Pure functions over plain data. A *factor* is a sequence of hashable values (one axis of the
matrix); a *row* is a tuple with one value per factor, in factor order. A *pair* is
``((i, a), (j, b))`` with ``i < j``: value ``a`` of factor ``i`` together with value ``b`` of
factor ``j``.

``allowed(partial)`` receives a partial assignment ``{factor index: value}`` and says whether it
may still be completed. It must be monotone (a rejected assignment stays rejected when more
factors are added), which holds for exclusion constraints. A pair is *required* when ``allowed``
accepts it and some complete allowed row extends it (found by backtracking); pairs that no
allowed row can contain are not required.

:func:`pairwise` builds the rows with IPOG (in-parameter-order): factors largest first, so the
first two give their full product; each further factor is added horizontally, always taking the
(row, value) that covers most uncovered pairs over the whole array (IPOG-F), then vertically,
filling don't-care slots before adding rows. A cheap post-pass drops rows whose pairs all appear
elsewhere. A few tie-break orders (fixed, and pseudo-random from fixed seeds) are tried and the
smallest result kept, so the output is deterministic. :func:`uncovered` is the exhaustive checker
(tested against brute force).
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, TypeVar

V = TypeVar("V", bound=Hashable)
Allowed = Callable[[dict[int, Any]], bool]
Pair = tuple[tuple[int, Any], tuple[int, Any]]

__all__ = [
    "allowed_pairs",
    "bench",
    "complete",
    "lower_bound",
    "pairs_of",
    "pairwise",
    "uncovered",
]


def _distinct(factors: Sequence[Sequence[V]]) -> list[list[V]]:
    """Each factor's values, duplicates dropped, order kept."""
    return [list(dict.fromkeys(f)) for f in factors]


def _check_partial(factors: list[list[Any]], partial: Mapping[int, Any], what: str) -> None:
    for i, v in partial.items():
        if not isinstance(i, int) or not 0 <= i < len(factors):
            raise ValueError(f"{what}: factor index {i!r} out of range 0..{len(factors) - 1}")
        if v not in factors[i]:
            raise ValueError(f"{what}: {v!r} is not a value of factor {i}")


def _backtrack(
    factors: list[list[Any]],
    partial: Mapping[int, Any],
    allowed: Allowed | None,
    prefer: Mapping[int, Any] | None = None,
) -> dict[int, Any] | None:
    """A complete allowed assignment extending ``partial``, or None. Factors must be distinct lists."""
    if any(not f for f in factors):
        return None
    free = [i for i in range(len(factors)) if i not in partial]
    prefer = prefer or {}

    def candidates(i: int) -> list[Any]:
        p = prefer.get(i, _MISSING)
        if p is not _MISSING and p in factors[i]:
            return [p] + [v for v in factors[i] if v != p]
        return factors[i]

    current = dict(partial)
    if allowed is None:
        for i in free:
            current[i] = candidates(i)[0]
        return current
    if not allowed(dict(current)):
        return None

    # Iterative depth-first search: stack of candidate iterators, one per free factor.
    depth = 0
    iters = [iter(candidates(free[0]))] if free else []
    while 0 <= depth < len(free):
        i = free[depth]
        for v in iters[depth]:
            current[i] = v
            if allowed(dict(current)):
                depth += 1
                if depth < len(free):
                    iters.append(iter(candidates(free[depth])))
                break
        else:
            current.pop(i, None)
            iters.pop()
            depth -= 1
    return current if depth == len(free) else None


_MISSING = object()


def complete(
    factors: Sequence[Sequence[V]],
    partial: Mapping[int, V],
    allowed: Allowed | None = None,
    prefer: Mapping[int, V] | None = None,
) -> tuple[V, ...] | None:
    """The first complete allowed row extending ``partial`` (backtracking), or None.

    Free factors try ``prefer[i]`` first (when given), then their values in order.
    """
    fs = _distinct(factors)
    _check_partial(fs, partial, "partial")
    found = _backtrack(fs, partial, allowed, prefer)
    if found is None:
        return None
    return tuple(found[i] for i in range(len(fs)))


def pairs_of(row: Sequence[V]) -> set[Pair]:
    """Every pair ``((i, row[i]), (j, row[j]))``, ``i < j``, that ``row`` contains."""
    n = len(row)
    return {((i, row[i]), (j, row[j])) for i in range(n) for j in range(i + 1, n)}


def allowed_pairs(factors: Sequence[Sequence[V]], allowed: Allowed | None = None) -> set[Pair]:
    """Every required pair: accepted by ``allowed`` and extended by some complete allowed row."""
    fs = _distinct(factors)
    if any(not f for f in fs):
        return set()
    out: set[Pair] = set()
    for i in range(len(fs)):
        for j in range(i + 1, len(fs)):
            for a in fs[i]:
                for b in fs[j]:
                    if allowed is None or _backtrack(fs, {i: a, j: b}, allowed) is not None:
                        out.add(((i, a), (j, b)))
    return out


def uncovered(
    factors: Sequence[Sequence[V]],
    rows: Sequence[Sequence[V]],
    allowed: Allowed | None = None,
) -> set[Pair]:
    """The required pairs (see :func:`allowed_pairs`) that no row contains. Empty means covered."""
    covered: set[Pair] = set()
    for row in rows:
        covered |= pairs_of(tuple(row))
    return allowed_pairs(factors, allowed) - covered


def lower_bound(factors: Sequence[Sequence[Any]]) -> int:
    """Product of the two largest factor sizes: no pairwise array can have fewer rows."""
    sizes = sorted((len(set(f)) for f in factors), reverse=True)
    if not sizes:
        return 0
    if len(sizes) == 1:
        return sizes[0]
    return sizes[0] * sizes[1]


# --------------------------------------------------------------------------------------------
# IPOG over internal positions (factors sorted largest first) and value indices.


class _Problem:
    def __init__(self, factors: list[list[Any]], allowed: Allowed | None):
        self.factors = factors
        self.n = len(factors)
        self.order = sorted(range(self.n), key=lambda i: (-len(factors[i]), i))
        """Internal position -> original factor index."""
        self.values = [factors[i] for i in self.order]
        self.sizes = [len(v) for v in self.values]
        self.index = [{v: x for x, v in enumerate(vals)} for vals in self.values]
        self.allowed = allowed
        self._pair_cache: dict[tuple[int, int, int, int], bool] = {}

    def original(self, assign: Mapping[int, int]) -> dict[int, Any]:
        return {self.order[p]: self.values[p][x] for p, x in assign.items()}

    def feasible(self, assign: Mapping[int, int]) -> bool:
        """Whether the internal partial assignment has a complete allowed extension."""
        if self.allowed is None:
            return True
        return _backtrack(self.factors, self.original(assign), self.allowed) is not None

    def pair_ok(self, p: int, x: int, q: int, y: int) -> bool:
        if self.allowed is None:
            return True
        key = (p, x, q, y)
        hit = self._pair_cache.get(key)
        if hit is None:
            hit = self._pair_cache[key] = self.feasible({p: x, q: y})
        return hit


def _tiebreaks(tries: int) -> list[Callable[[int, int, int, int], Any]]:
    """Deterministic orders among (row, value) choices of equal gain: a few fixed ones, then
    pseudo-random ones from fixed seeds. The smallest result over all of them is kept."""

    def seeded(seed: int) -> Callable[[int, int, int, int], Any]:
        keys: dict[tuple[int, int, int], float] = {}
        rng = random.Random(seed)

        def key(i: int, b: int, k: int, size: int) -> Any:
            # Drawn in call order, which is itself deterministic.
            got = keys.get((i, b, k))
            if got is None:
                got = keys[i, b, k] = rng.random()
            return got

        return key

    fixed: list[Callable[[int, int, int, int], Any]] = [
        lambda i, b, k, size: (i, b),
        lambda i, b, k, size: ((b - i) % size, i),
        lambda i, b, k, size: (-i, b),
    ]
    return (fixed + [seeded(s) for s in range(1, max(tries - len(fixed), 0) + 1)])[: max(tries, 1)]


def _horizontal(
    prob: _Problem,
    rows: list[list[int | None]],
    unc: list[set[tuple[int, int]]],
    k: int,
    tiebreak: Callable[[int, int, int, int], Any],
) -> None:
    """Give rows a value of factor ``k``, always taking the (row, value) that covers most
    uncovered pairs over the whole array; rows that would cover nothing stay don't-cares."""
    size = prob.sizes[k]
    constrained = prob.allowed is not None
    gain: dict[tuple[int, int], int] = {}
    holders: dict[tuple[int, int], list[int]] = {}
    heap: list[tuple[int, Any, int, int]] = []
    for i, r in enumerate(rows):
        if r[k] is not None:
            continue
        known = [(j, val) for j in range(k) if (val := r[j]) is not None]
        for t in known:
            holders.setdefault(t, []).append(i)
        for b in range(size):
            u = unc[b]
            g = sum(1 for t in known if t in u)
            gain[i, b] = g
            if g:
                heap.append((-g, tiebreak(i, b, k, size), i, b))
    heapq.heapify(heap)
    while heap:
        g, tb, i, b = heapq.heappop(heap)
        r = rows[i]
        if r[k] is not None:
            continue
        now = gain[i, b]
        if now != -g:  # gains only fall: re-queue at the current gain
            if now > 0:
                heapq.heappush(heap, (-now, tb, i, b))
            continue
        if constrained:
            assign = {p: x for p, x in enumerate(r) if x is not None}
            assign[k] = b
            if not prob.feasible(assign):
                continue  # dropped from the queue for good
        r[k] = b
        u = unc[b]
        for j in range(k):
            if (val := r[j]) is None:
                continue
            t = (j, val)
            if t in u:
                u.discard(t)
                for i2 in holders[t]:
                    gain[i2, b] -= 1


def _ipog(
    prob: _Problem, seeds: list[list[int | None]], tiebreak: Callable[[int, int, int, int], Any]
) -> list[list[int]]:
    n = prob.n
    sizes = prob.sizes
    constrained = prob.allowed is not None
    rows: list[list[int | None]] = [list(s) for s in seeds]

    present = {r[0] for r in rows if r[0] is not None}
    for x in range(sizes[0]):
        if x not in present and prob.feasible({0: x}):
            rows.append([x] + [None] * (n - 1))

    for k in range(1, n):
        unc: list[set[tuple[int, int]]] = [set() for _ in range(sizes[k])]
        for j in range(k):
            for a in range(sizes[j]):
                for b in range(sizes[k]):
                    if prob.pair_ok(j, a, k, b):
                        unc[b].add((j, a))
        for r in rows:
            if (col := r[k]) is not None:
                for j in range(k):
                    if (val := r[j]) is not None:
                        unc[col].discard((j, val))

        _horizontal(prob, rows, unc, k, tiebreak)

        # Vertical growth: each pair still uncovered goes into the first row with room for
        # it (don't-care slots), else into a new row.
        pending = [(j, a, b) for b in range(sizes[k]) for (j, a) in sorted(unc[b])]
        for j, a, b in pending:
            if (j, a) not in unc[b]:
                continue
            for r in rows:
                rj, rk = r[j], r[k]
                if (rj is None or rj == a) and (rk is None or rk == b):
                    if constrained:
                        assign = {p: x for p, x in enumerate(r) if x is not None}
                        assign[j] = a
                        assign[k] = b
                        if not prob.feasible(assign):
                            continue
                    r[j] = a
                    if rk is None:
                        r[k] = b
                        unc[b].difference_update((i, r[i]) for i in range(k) if r[i] is not None)
                    else:
                        unc[b].discard((j, a))
                    break
            else:
                new: list[int | None] = [None] * n
                new[j] = a
                new[k] = b
                rows.append(new)
                unc[b].discard((j, a))

    # Fill the don't-cares with a complete allowed row.
    pos = {i: p for p, i in enumerate(prob.order)}
    out: list[list[int]] = []
    for r in rows:
        if any(x is None for x in r):
            assign = {p: x for p, x in enumerate(r) if x is not None}
            if constrained:
                full = _backtrack(prob.factors, prob.original(assign), prob.allowed)
                if full is None:  # cannot happen: every assignment was checked feasible
                    raise AssertionError(f"row {r} lost its completion")
                r = [None] * n
                for i, v in full.items():
                    r[pos[i]] = prob.index[pos[i]][v]
            else:
                r = [0 if x is None else x for x in r]
        out.append(r)  # type: ignore[arg-type]
    return out


def _units(row: Sequence[int]) -> list[tuple[int, int, int, int]]:
    n = len(row)
    if n == 1:
        return [(0, row[0], 0, row[0])]
    return [(i, row[i], j, row[j]) for i in range(n) for j in range(i + 1, n)]


def _prune(rows: list[list[int]], nseeds: int) -> list[list[int]]:
    """Drop every non-seed row whose pairs all appear in other rows (latest rows first)."""
    count: dict[tuple[int, int, int, int], int] = {}
    for r in rows:
        for u in _units(r):
            count[u] = count.get(u, 0) + 1
    drop: set[int] = set()
    for i in range(len(rows) - 1, nseeds - 1, -1):
        units = _units(rows[i])
        if all(count[u] >= 2 for u in units):
            drop.add(i)
            for u in units:
                count[u] -= 1
    return [r for i, r in enumerate(rows) if i not in drop]


_WORK_BUDGET = 300_000


def pairwise(
    factors: Sequence[Sequence[V]],
    allowed: Allowed | None = None,
    seed_rows: Sequence[Mapping[int, V]] = (),
) -> list[tuple[V, ...]]:
    """Rows (tuples in factor order) covering every required pair of every two factors.

    Output row ``s`` extends ``seed_rows[s]`` (``{factor index: value}``; factors a seed leaves
    out are filled in), so the seeds come first, in order, one row each; their pairs count as
    covered. The other rows are distinct and differ from the seeds. Every row is allowed.
    With one factor, every allowed value appears once. Raises ``ValueError`` for a seed naming
    an unknown factor or value, or one that no allowed row extends.
    """
    fs = _distinct(factors)
    n = len(fs)
    for s, seed in enumerate(seed_rows):
        _check_partial(fs, seed, f"seed_rows[{s}]")
        if allowed is not None and _backtrack(fs, seed, allowed) is None:
            raise ValueError(f"seed_rows[{s}]: {dict(seed)!r} is not allowed")
    if n == 0:
        return [()] if seed_rows else []
    if any(not f for f in fs):
        return []

    prob = _Problem(fs, allowed)
    pos = {i: p for p, i in enumerate(prob.order)}
    index = prob.index
    seeds: list[list[int | None]] = []
    for seed in seed_rows:
        r: list[int | None] = [None] * n
        for i, v in seed.items():
            r[pos[i]] = index[pos[i]][v]
        seeds.append(r)

    # Try a few deterministic tie-break orders, more for small matrices, keep the smallest.
    work = lower_bound(fs) * sum(prob.sizes) * n * (4 if allowed is not None else 1)
    enough = max(lower_bound(fs), len(seeds))  # no try can do better than this (unconstrained)
    best: list[list[int]] | None = None
    for tiebreak in _tiebreaks(max(3, min(16, _WORK_BUDGET // max(work, 1)))):
        rows = _prune(_ipog(prob, seeds, tiebreak), len(seeds))
        if best is None or len(rows) < len(best):
            best = rows
        if len(best) <= enough:
            break
    assert best is not None
    return [tuple(prob.values[pos[i]][r[pos[i]]] for i in range(n)) for r in best]


def bench(sizes: Sequence[int] = (5, 4, 4, 3)) -> dict:
    """Build an unconstrained covering array of the given factor sizes and measure it."""
    factors = [[f"f{i}v{x}" for x in range(s)] for i, s in enumerate(sizes)]
    start = time.perf_counter()
    rows = pairwise(factors)
    seconds = time.perf_counter() - start
    required = allowed_pairs(factors)
    missing = uncovered(factors, rows)
    bound = lower_bound(factors)
    return {
        "sizes": list(sizes),
        "rows": len(rows),
        "lower_bound": bound,
        "ratio": round(len(rows) / bound, 4) if bound else 1.0,
        "coverage": (len(required) - len(missing)) / len(required) if required else 1.0,
        "seconds": round(seconds, 4),
    }
