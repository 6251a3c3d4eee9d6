"""Bisection over an ordered list of releases (old -> new), modelled on cargo-bisect-rustc's
``least_satisfying``.

Probes are the expensive part (a fresh environment, a re-run of a cell), so the search verifies
both ends first, never probes a version twice, and searches around versions that cannot be
tested (``UNKNOWN``) instead of guessing their verdict. It does not know how a probe runs.

When the history is not monotone, the search brackets the *latest* good -> bad transition
below the bad end (the one that explains the current failure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from itertools import combinations
from typing import Any, Callable, Generic, Hashable, Mapping, Sequence, TypeVar

T = TypeVar("T", bound=Hashable)


class Verdict(Enum):
    GOOD = "good"
    BAD = "bad"
    UNKNOWN = "unknown"
    """Cannot be installed or built, or the check said skip (git bisect's exit code 125)."""


@dataclass
class BisectResult(Generic[T]):
    """``status``: ``found`` (``last_good``/``first_bad`` set), ``good-end-bad``, ``bad-end-good``,
    ``no-good-found`` (``first_bad`` is the oldest BAD seen) or ``bad-end-unknown``."""

    status: str
    last_good: T | None
    first_bad: T | None
    probes: list[tuple[T, Verdict]]
    unknown_between: list[T]
    """Untestable versions strictly between ``last_good`` and ``first_bad``: the range is wider."""
    rounds: int
    """Calls to the probe (sequential) or rounds of up to k probes (parallel)."""
    last_good_index: int | None = None
    first_bad_index: int | None = None

    @property
    def found(self) -> bool:
        return self.status == "found"


def bisect(
    versions: Sequence[T],
    probe: Callable[[T], Verdict],
    *,
    good: int | None = 0,
    bad: int | None = None,
) -> BisectResult[T]:
    """Find the adjacent (last good, first bad) pair; ``good``/``bad`` are indices into
    ``versions`` (``bad`` defaults to the newest, ``good=None`` means no good start is known).

    Without UNKNOWNs and with both ends given: at most ceil(log2 n) + 2 probes.
    """
    return _search(versions, lambda vs: {v: probe(v) for v in vs}, 1, good, bad)


def bisect_parallel(
    versions: Sequence[T],
    probe_many: Callable[[list[T]], Mapping[T, Verdict]],
    k: int,
    *,
    good: int | None = 0,
    bad: int | None = None,
) -> BisectResult[T]:
    """Like :func:`bisect`, but each round probes up to ``k`` versions at once (one per runner),
    splitting the current range into k+1 parts: ceil(log_{k+1} n) rounds plus the end checks."""
    if k < 1:
        raise ValueError("k must be at least 1")
    return _search(versions, probe_many, k, good, bad)


def _search(versions, probe_batch, k, good, bad) -> BisectResult:
    n = len(versions)
    if len(set(versions)) != n:
        raise ValueError("versions must be distinct")
    bad = n - 1 if bad is None else (bad + n if bad < 0 else bad)
    if good is not None and good < 0:
        good += n
    if not 0 <= bad < n or (good is not None and not 0 <= good < bad):
        raise ValueError(f"need 0 <= good < bad < {n}, got good={good} bad={bad}")

    seen: dict[int, Verdict] = {}
    probes: list = []
    rounds = 0

    def run(idxs: list[int]) -> None:
        nonlocal rounds
        idxs = [i for i in dict.fromkeys(idxs) if i not in seen]
        if not idxs:
            return
        rounds += 1
        got = probe_batch([versions[i] for i in idxs])
        for i in idxs:
            if versions[i] not in got:
                raise ValueError(f"probe gave no verdict for {versions[i]!r}")
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
        )

    # 1. Verify the ends (good end first: a sequential search stops early if it is BAD).
    ends = [bad] if good is None else [good, bad]
    for start in range(0, len(ends), k):
        run(ends[start : start + k])
        if good is not None and seen.get(good) is Verdict.BAD:
            return result("good-end-bad")
        if seen.get(bad) is Verdict.GOOD:
            return result("bad-end-good")
        if seen.get(bad) is Verdict.UNKNOWN:
            return result("bad-end-unknown")

    # 2. No verified good start (none given, or it was UNKNOWN): step back 1, 2, 4, ... from bad.
    if good is None or seen[good] is not Verdict.GOOD:
        gallop = list(dict.fromkeys(max(bad - (1 << j), 0) for j in range(bad.bit_length() + 1)))
        gallop = [i for i in gallop if i not in seen]
        while gallop and _latest_good(seen, bad) is None:
            run(gallop[:k])
            gallop = gallop[k:]

    # 3. Bisect: split (lo, hi) into k+1 parts, nearest untested index to each split point.
    #    If the list start was UNKNOWN, lo is a virtual good at -1 and the untested rest is searched.
    lo = _latest_good(seen, bad)
    lo = -1 if lo is None else lo
    hi = _first_bad_after(seen, lo, bad)
    while True:
        untested = [i for i in range(lo + 1, hi) if i not in seen]
        if not untested:
            return result("found", lo, hi) if lo >= 0 else result("no-good-found", hi=hi)
        picks: list[int] = []
        for j in range(1, k + 1):
            target = lo + j * (hi - lo) / (k + 1)
            rest = [i for i in untested if i not in picks]
            if not rest:
                break
            picks.append(min(rest, key=lambda i: (abs(i - target), i)))
        run(sorted(picks))
        lo = max((i for i in range(lo, hi) if seen.get(i) is Verdict.GOOD), default=-1)
        hi = _first_bad_after(seen, lo, hi)


def _latest_good(seen: dict[int, Verdict], below: int) -> int | None:
    return max((i for i, v in seen.items() if v is Verdict.GOOD and i < below), default=None)


def _first_bad_after(seen: dict[int, Verdict], lo: int, hi: int) -> int:
    return min(i for i, v in seen.items() if v is Verdict.BAD and lo < i <= hi)


def isolate_axis(
    changed: Mapping[str, tuple[Any, Any]],
    probe: Callable[[Mapping[str, Any]], Verdict],
) -> list[str]:
    """Which axes, of several that changed between the last good and first bad cell, are guilty.

    ``changed`` maps axis -> (old value, new value); ``probe`` gets a value for every changed axis.
    Each axis's new value is tried alone on the old cell (all that reproduce are returned); if
    none does, each pair; if no pair does, the failure needs them all together and all are
    returned. One changed axis is guilty without a probe (the first bad cell is known BAD).
    """
    axes = list(changed)
    if len(axes) <= 1:
        return axes

    def reproduces(group: tuple[str, ...]) -> bool:
        cell = {a: changed[a][1] if a in group else changed[a][0] for a in axes}
        return probe(cell) is Verdict.BAD

    singles = [a for a in axes if reproduces((a,))]
    if singles:
        return singles
    if len(axes) > 2:
        pairs = [p for p in combinations(axes, 2) if reproduces(p)]
        if pairs:
            return [a for a in axes if any(a in p for p in pairs)]
    return axes


def probe_bound(n: int) -> int:
    """The promised worst case for n releases, both ends given, no UNKNOWN: ceil(log2 n) + 2."""
    return math.ceil(math.log2(n)) + 2


def bench_probe_counts(n: int = 40) -> list[int]:
    """Probes used for every change point of n releases; element i is first bad = index i + 1."""
    counts = []
    for first_bad in range(1, n):
        res = bisect(range(n), lambda v: Verdict.GOOD if v < first_bad else Verdict.BAD)
        assert res.first_bad == first_bad
        counts.append(len(res.probes))
    return counts
