"""Bisection over an ordered list of releases (old -> new), modelled on cargo-bisect-rustc's
``least_satisfying``.

Tests are the expensive part (a fresh environment, a re-run of a cell), so the search verifies
both ends first, never tests a version twice, and searches around versions that cannot be
tested (``UNKNOWN``) instead of guessing their verdict. It does not know how a test runs.

A search has a :class:`Direction`, as git bisect has terms: ``INTRODUCED`` looks for the first
bad release after a good one (old = good, new = bad), ``FIXED`` for the first good release
after a bad one (old = bad, new = good). The answer is a verified adjacent pair (last old,
first new), or a status that says why there is none. When the history is not monotone, the
search brackets the *latest* old -> new transition below the new end.

:func:`transitions` answers a range whose two ends agree that the check passes: it looks for a
bad release between them (given, or sampled with a bounded number of tests) and then searches
both transitions, introduced-in and fixed-in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from itertools import combinations
from typing import Any, Generic, TypeVar

T = TypeVar("T", bound=Hashable)


class Verdict(Enum):
    GOOD = "good"
    BAD = "bad"
    UNKNOWN = "unknown"
    """Cannot be installed or built, or the check said skip (git bisect's exit code 125)."""


class Direction(Enum):
    """Which transition a search looks for, in git bisect's terms old -> new."""

    INTRODUCED = "introduced"
    """Old releases pass, newer ones fail: the answer is (last good, first bad)."""
    FIXED = "fixed"
    """Old releases fail, newer ones pass: the answer is (last bad, first fixed)."""

    @property
    def old(self) -> Verdict:
        return Verdict.GOOD if self is Direction.INTRODUCED else Verdict.BAD

    @property
    def new(self) -> Verdict:
        return Verdict.BAD if self is Direction.INTRODUCED else Verdict.GOOD


FOUND = "found"
BOTH_OLD = "both-old"
"""The new end shows the old term too (nothing changed between the ends, as far as they show)."""
BOTH_NEW = "both-new"
"""The old end already shows the new term: the transition, if any, is older than the range."""
REVERSED = "reversed"
"""The old end shows the new term and the new end the old one: the range holds the other transition."""
NEW_END_UNKNOWN = "new-end-unknown"
NO_OLD_FOUND = "no-old-found"
"""The old end could not be tested and no tested release below the new end shows the old term."""


@dataclass
class BisectResult(Generic[T]):
    """One search's answer. ``found``: ``last_old`` and ``first_new`` are set, adjacent but for
    the untestable ``unknown_between``; otherwise both are None and ``status`` says why."""

    status: str
    last_old: T | None
    first_new: T | None
    probes: list[tuple[T, Verdict]]
    """Every test this search ran, in order: (version, verdict)."""
    unknown_between: list[T]
    """Untestable versions strictly between ``last_old`` and ``first_new``: the range is wider."""
    rounds: int
    """Calls to the test (sequential) or rounds of up to k tests (parallel)."""
    last_old_index: int | None = None
    first_new_index: int | None = None
    direction: Direction = Direction.INTRODUCED
    interval: tuple[int, int] = (0, 0)
    """Indices of the two ends searched between (the old end is 0 when none was given)."""

    @property
    def found(self) -> bool:
        return self.status == FOUND

    def pair(self) -> tuple[T, T]:
        """(last old, first new) of a found answer: (last good, first bad) for ``INTRODUCED``,
        (last bad, first fixed) for ``FIXED``."""
        if self.last_old is None or self.first_new is None:
            raise ValueError(f"no adjacent pair: {self.status}")
        return self.last_old, self.first_new

    @property
    def bound(self) -> int:
        """The promised worst case for the interval searched (both ends tested, no UNKNOWN)."""
        return bisect_bound(self.interval[1] - self.interval[0] + 1)

    @property
    def last_good(self) -> T | None:
        return self.last_old if self.direction is Direction.INTRODUCED else self.first_new

    @property
    def first_bad(self) -> T | None:
        return self.first_new if self.direction is Direction.INTRODUCED else self.last_old


def bisect(
    versions: Sequence[T],
    test: Callable[[T], Verdict],
    *,
    old: int | None = 0,
    new: int | None = None,
    direction: Direction = Direction.INTRODUCED,
) -> BisectResult[T]:
    """Find the adjacent (last old, first new) pair; ``old``/``new`` are indices into ``versions``
    (``new`` defaults to the newest, ``old=None`` means no old start is known: the search steps
    back from the new end in growing steps).

    Without UNKNOWNs and with both ends given: at most ceil(log2 n) + 2 tests, n the interval.
    """
    return _search(versions, lambda vs: {v: test(v) for v in vs}, 1, old, new, direction)


def bisect_parallel(
    versions: Sequence[T],
    test_many: Callable[[list[T]], Mapping[T, Verdict]],
    k: int,
    *,
    old: int | None = 0,
    new: int | None = None,
    direction: Direction = Direction.INTRODUCED,
) -> BisectResult[T]:
    """Like :func:`bisect`, but each round tests up to ``k`` versions at once (one per runner),
    splitting the current range into k+1 parts: ceil(log_{k+1} n) rounds plus the end checks."""
    if k < 1:
        raise ValueError("k must be at least 1")
    return _search(versions, test_many, k, old, new, direction)


def _search(versions, test_batch, k, good, bad, direction: Direction) -> BisectResult:
    """The search in old/new terms; ``good``/``bad`` here are the indices of the old/new ends."""
    n = len(versions)
    if len(set(versions)) != n:
        raise ValueError("versions must be distinct")
    bad = n - 1 if bad is None else (bad + n if bad < 0 else bad)
    if good is not None and good < 0:
        good += n
    if not 0 <= bad < n or (good is not None and not 0 <= good < bad):
        raise ValueError(f"need 0 <= old < new < {n}, got old={good} new={bad}")
    OLD, NEW = direction.old, direction.new

    seen: dict[int, Verdict] = {}
    probes: list = []
    rounds = 0

    def run(idxs: list[int]) -> None:
        nonlocal rounds
        idxs = [i for i in dict.fromkeys(idxs) if i not in seen]
        if not idxs:
            return
        rounds += 1
        got = test_batch([versions[i] for i in idxs])
        for i in idxs:
            if versions[i] not in got:
                raise ValueError(f"test gave no verdict for {versions[i]!r}")
            seen[i] = Verdict(got[versions[i]])
            probes.append((versions[i], seen[i]))

    def result(status, lo=None, hi=None) -> BisectResult:
        between = [versions[i] for i in range(lo + 1, hi)] if lo is not None else []
        return BisectResult(
            status,
            None if lo is None else versions[lo],
            None if hi is None else versions[hi],
            probes,
            between,
            rounds,
            lo,
            hi,
            direction,
            (0 if good is None else good, bad),
        )

    # 1. Verify both ends: a search that stops at one end cannot tell "bad at both ends" from
    #    "the other transition", and the user needs to know which.
    ends = [bad] if good is None else [good, bad]
    for start in range(0, len(ends), k):
        run(ends[start : start + k])
    end_old = None if good is None else seen[good]
    if seen[bad] is Verdict.UNKNOWN:
        return result(NEW_END_UNKNOWN)
    if seen[bad] is OLD:
        return result(REVERSED if end_old is NEW else BOTH_OLD)
    if end_old is NEW:
        return result(BOTH_NEW)

    # 2. No verified old start (none given, or it was UNKNOWN): step back 1, 2, 4, ... from new.
    if good is None or seen[good] is not OLD:
        gallop = list(dict.fromkeys(max(bad - (1 << j), 0) for j in range(bad.bit_length() + 1)))
        gallop = [i for i in gallop if i not in seen]
        while gallop and _latest(seen, OLD, bad) is None:
            run(gallop[:k])
            gallop = gallop[k:]

    # 3. Bisect: split (lo, hi) into k+1 parts, nearest untested index to each split point.
    #    If the list start was UNKNOWN, lo is a virtual old at -1 and the untested rest is searched.
    lo = _latest(seen, OLD, bad)
    lo = -1 if lo is None else lo
    hi = _first_after(seen, NEW, lo, bad)
    while True:
        untested = [i for i in range(lo + 1, hi) if i not in seen]
        if not untested:
            # never a "first new" that is only the oldest version tested
            return result(FOUND, lo, hi) if lo >= 0 else result(NO_OLD_FOUND)
        picks: list[int] = []
        for j in range(1, k + 1):
            target = lo + j * (hi - lo) / (k + 1)
            rest = [i for i in untested if i not in picks]
            if not rest:
                break
            picks.append(min(rest, key=lambda i: (abs(i - target), i)))
        run(sorted(picks))
        lo = max((i for i in range(lo, hi) if seen.get(i) is OLD), default=-1)
        hi = _first_after(seen, NEW, lo, hi)


def _latest(seen: dict[int, Verdict], term: Verdict, below: int) -> int | None:
    return max((i for i, v in seen.items() if v is term and i < below), default=None)


def _first_after(seen: dict[int, Verdict], term: Verdict, lo: int, hi: int) -> int:
    return min(i for i, v in seen.items() if v is term and lo < i <= hi)


# ----------------------------------------------------------------------------- both transitions


@dataclass
class Transitions(Generic[T]):
    """A range whose ends both pass, searched for a bad release and then both transitions.

    ``status``: ``found`` (``bad`` set, ``introduced`` and ``fixed`` searched from it: each has
    its own status), ``no-bad-found`` (every sampled release passed too), ``bad-end-good`` (the
    bad release given passes)."""

    status: str
    bad: T | None
    sampled: list[T]
    """Releases tested while looking for a bad one, in order (the given one, or the samples)."""
    sample_limit: int
    introduced: BisectResult[T] | None = None
    fixed: BisectResult[T] | None = None
    probes: list[tuple[T, Verdict]] = field(default_factory=list)
    """Every test run, ends included, each version once."""
    bound: int = 0
    """The worst case: the two ends, the samples, then both searches over their intervals."""

    @property
    def found(self) -> bool:
        return self.status == FOUND and bool(
            self.introduced and self.introduced.found and self.fixed and self.fixed.found
        )


def sample_order(lo: int, hi: int) -> list[int]:
    """The indices strictly between ``lo`` and ``hi``, coarse to fine: the middle first, then the
    quarters, then the eighths... so that a short bad stretch anywhere is met early."""
    inner = list(range(lo + 1, hi))
    order: list[int] = []
    parts = 2
    while len(order) < len(inner):
        for j in range(1, parts, 2):
            i = lo + round(j * (hi - lo) / parts)
            if lo < i < hi and i not in order:
                order.append(i)
        parts *= 2
        if parts > 4 * (hi - lo):
            order += [i for i in inner if i not in order]
    return order


def transitions(
    versions: Sequence[T],
    test: Callable[[T], Verdict],
    *,
    good: int = 0,
    good_end: int | None = None,
    bad: int | None = None,
    samples: int = 8,
) -> Transitions[T]:
    """Both ends ``good`` and ``good_end`` (default: the newest) pass (they are tested, once):
    find a bad release between them, ``bad`` (an index, tested) or by testing up to ``samples``
    releases in :func:`sample_order`; then search introduced-in over (good, bad) and fixed-in over
    (bad, good_end). Each version is tested once across all of it."""
    n = len(versions)
    good_end = n - 1 if good_end is None else good_end
    if not 0 <= good < good_end < n or (bad is not None and not good < bad < good_end):
        raise ValueError(f"need 0 <= good < bad < good_end < {n}, got {good}, {bad}, {good_end}")
    seen: dict[T, Verdict] = {}
    order: list[tuple[T, Verdict]] = []

    def once(v: T) -> Verdict:
        if v not in seen:
            seen[v] = Verdict(test(v))
            order.append((v, seen[v]))
        return seen[v]

    once(versions[good]), once(versions[good_end])
    candidates = [bad] if bad is not None else sample_order(good, good_end)[: max(0, samples)]
    limit = len(candidates)
    sampled: list[T] = []
    found_bad = None
    for i in candidates:
        sampled.append(versions[i])
        if once(versions[i]) is Verdict.BAD:
            found_bad = i
            break
    out = Transitions(
        "no-bad-found" if bad is None else "bad-end-good", None, sampled, limit, probes=order, bound=2 + limit
    )
    if found_bad is None:
        return out
    out.status, out.bad = FOUND, versions[found_bad]
    out.introduced = bisect(versions, once, old=good, new=found_bad)
    out.fixed = bisect(versions, once, old=found_bad, new=good_end, direction=Direction.FIXED)
    out.bound = 2 + limit + (out.introduced.bound - 2) + (out.fixed.bound - 2)
    return out


def isolate_axis(
    changed: Mapping[str, tuple[Any, Any]],
    test: Callable[[Mapping[str, Any]], Verdict],
) -> list[str]:
    """Which axes, of several that changed between the last good and first bad cell, are guilty.

    ``changed`` maps axis -> (old value, new value); ``test`` gets a value for every changed axis.
    Each axis's new value is tried alone on the old cell (all that reproduce are returned); if
    none does, each pair; if no pair does, the failure needs them all together and all are
    returned. One changed axis is guilty without a test (the first bad cell is known BAD).
    """
    axes = list(changed)
    if len(axes) <= 1:
        return axes

    def reproduces(group: tuple[str, ...]) -> bool:
        cell = {a: changed[a][1] if a in group else changed[a][0] for a in axes}
        return test(cell) is Verdict.BAD

    singles = [a for a in axes if reproduces((a,))]
    if singles:
        return singles
    if len(axes) > 2:
        pairs = [p for p in combinations(axes, 2) if reproduces(p)]
        if pairs:
            return [a for a in axes if any(a in p for p in pairs)]
    return axes


def bisect_bound(n: int) -> int:
    """The promised worst case for an interval of n releases, both ends given, no UNKNOWN:
    ceil(log2 n) + 2 tests."""
    return math.ceil(math.log2(max(n, 1))) + 2


def bench_probe_counts(n: int = 40) -> list[int]:
    """Tests used for every change point of n releases; element i is first bad = index i + 1."""
    counts = []
    for first_bad in range(1, n):

        def test(v: int, fb: int = first_bad) -> Verdict:
            return Verdict.GOOD if v < fb else Verdict.BAD

        res = bisect(range(n), test)
        assert res.first_bad == first_bad
        counts.append(len(res.probes))
    return counts
