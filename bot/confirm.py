"""Confirmation by re-runs, A/A noise measurement, quarantine, and a noise simulation.

A candidate is one pass->fail observation; noise alone produces many of them. A finding needs the
failure reproduced in ``need`` of ``of`` re-runs of the bad cell and the good cell passing every
one of its ``of`` re-runs. Under pure noise (every run fails independently with probability p)
one candidate survives with probability

    P_false(p, need, of) = P[Binomial(of, p) >= need] * (1 - p) ** of

and a sweep with C candidates files C * P_false false findings on average. With the default
2 of 3 and p = 0.10: P_false = 0.028 * 0.729 = 0.0204; 500 cells give C ~ 500 * 0.9 * 0.1 = 45
candidates, so ~0.92 false findings per sweep: 2 of 3 alone is NOT enough at that noise, and a
zero would be luck (P = e^-0.92 ~ 0.40). So the re-run count follows the measured noise:
:func:`plan_reruns` takes the smallest (need, of), starting from the defaults and keeping at
least their 2/3 ratio, with C * P_false <= alpha (0.01). At p = 0.10 that is 4 of 4:
P_false = 1e-4 * 0.656 = 6.6e-5, C * P_false ~ 0.003. The noise comes from A/A runs
(identical cells run twice: differ with probability 2p(1-p)), taken at an upper bound.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from matrix.outcome import Outcome

PASS, FAIL, FLAKY, INFRA = (o.value for o in (Outcome.PASS, Outcome.FAIL, Outcome.FLAKY, Outcome.INFRA))
COUNTED = {PASS, FAIL, FLAKY}


@dataclass(frozen=True)
class Confirmation:
    """``verdict``: ``confirmed``, ``flaky``, ``not-reproduced``, or ``infra`` (too few counted
    re-runs: ``rerun_bad``/``rerun_good`` more are needed). ``*_failures`` count every re-run that
    did not pass; only a clean ``fail`` reproduces (``reproduced``)."""

    verdict: str
    reproduced: int
    bad_failures: int
    bad_runs: int
    good_failures: int
    good_runs: int
    infra: int = 0
    rerun_bad: int = 0
    rerun_good: int = 0

    @property
    def bad_flake_rate(self) -> float:
        return self.bad_failures / self.bad_runs if self.bad_runs else 0.0

    @property
    def good_flake_rate(self) -> float:
        return self.good_failures / self.good_runs if self.good_runs else 0.0


def confirm(bad_runs: Sequence[str], good_runs: Sequence[str], *, need: int = 2, of: int = 3) -> Confirmation:
    """Judge ``of`` re-runs of each side (the first ``of`` counted ones; pass, fail and flaky
    count; infra and other outcomes say nothing about the code and must be run again)."""
    if not 1 <= need <= of:
        raise ValueError("need 1 <= need <= of")
    bad = [str(o) for o in bad_runs if str(o) in COUNTED][:of]
    good = [str(o) for o in good_runs if str(o) in COUNTED][:of]
    infra = sum(str(o) not in COUNTED for o in [*bad_runs, *good_runs])
    reproduced = bad.count(FAIL)
    bad_failures = len(bad) - bad.count(PASS)
    good_failures = len(good) - good.count(PASS)
    counts = dict(
        reproduced=reproduced,
        bad_failures=bad_failures,
        bad_runs=len(bad),
        good_failures=good_failures,
        good_runs=len(good),
        infra=infra,
    )
    if len(bad) < of or len(good) < of:
        return Confirmation("infra", **counts, rerun_bad=of - len(bad), rerun_good=of - len(good))
    if reproduced >= need and good_failures == 0:
        return Confirmation("confirmed", **counts)
    if bad_failures == 0 and good_failures == 0:
        return Confirmation("not-reproduced", **counts)
    return Confirmation("flaky", **counts)


def false_finding_probability(noise: float, need: int = 2, of: int = 3) -> float:
    """P[a candidate made of pure noise is confirmed] (see the module docstring)."""
    tail = sum(math.comb(of, i) * noise**i * (1 - noise) ** (of - i) for i in range(need, of + 1))
    return tail * (1 - noise) ** of


def plan_reruns(
    noise: float, candidates: int, *, alpha: float = 0.01, need: int = 2, of: int = 3, max_of: int = 12
) -> tuple[int, int]:
    """Smallest (need, of) >= the defaults, keeping need/of >= their ratio, such that the
    expected false findings of ``candidates`` candidates stay <= ``alpha``."""
    for m in range(of, max_of + 1):
        for k in range(max(need, math.ceil(m * need / of)), m + 1):
            if candidates * false_finding_probability(noise, k, m) <= alpha:
                return k, m
    raise ValueError(f"noise {noise:.3f} too high to confirm {candidates} candidates within {max_of} re-runs")


def aa_spurious_rate(pairs: Iterable[tuple[Mapping, Mapping]]) -> float:
    """Identical cells run twice: each pair maps (case, stage) -> outcome for the two runs.
    Fraction of (case, stage) present in both, neither infra, whose outcomes differ."""
    same = differ = 0
    for a, b in pairs:
        for key in a.keys() & b.keys():
            x, y = str(a[key]), str(b[key])
            if INFRA in (x, y):
                continue
            differ += x != y
            same += x == y
    return differ / (same + differ) if same + differ else 0.0


def noise_from_aa(rate: float, samples: int = 0) -> float:
    """Per-run failure probability p from an A/A rate r = 2p(1-p); with ``samples`` given, from
    r's upper bound (r + 2 standard errors), so an unlucky A/A cannot weaken the plan."""
    if samples:
        rate += 2 * math.sqrt(max(rate * (1 - rate), 1 / samples) / samples)
    rate = min(rate, 0.5)
    return (1 - math.sqrt(1 - 2 * rate)) / 2


# Quarantine ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quarantine:
    """A known-bad cell or case kept out of filing until ``until`` (ISO time)."""

    reason: str
    until: str
    subject: str = ""
    since: str = ""


def quarantine(cell_or_case: str, reason: str, now: str | datetime, days: float = 14) -> Quarantine:
    start = _dt(now)
    return Quarantine(reason, (start + timedelta(days=days)).isoformat(), cell_or_case, start.isoformat())


def is_quarantined(q: Quarantine | None, now: str | datetime) -> bool:
    return q is not None and _dt(now) < _dt(q.until)


def release_if_passing(q: Quarantine, recent_outcomes: Sequence[str], now: str | datetime, n: int = 3) -> Quarantine:
    """Released (``until`` = now) once the last ``n`` non-infra outcomes (oldest first) all pass."""
    counted = [str(o) for o in recent_outcomes if str(o) != INFRA]
    if len(counted) >= n and all(o == PASS for o in counted[-n:]):
        return replace(q, until=_dt(now).isoformat())
    return q


def _dt(t: str | datetime) -> datetime:
    t = t if isinstance(t, datetime) else datetime.fromisoformat(t)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


# Simulation ------------------------------------------------------------------------------


def simulate(
    n_cells: int = 500,
    fail_rate: float = 0.10,
    seed: int = 0,
    *,
    alpha: float = 0.01,
    plan: tuple[int, int] | None = None,
    regressions: int = 0,
) -> dict:
    """Every cell truly passes (except the first ``regressions``, which truly fail at the new
    release); each run fails at random with ``fail_rate``. Pipeline: A/A runs measure the noise,
    history vs the current run gives candidates, re-runs chosen by :func:`plan_reruns` (or
    ``plan`` = (need, of)) go through :func:`confirm`. Returns counts and expectations."""
    from bot.detect import candidates as find_candidates

    rng = random.Random(seed)

    def run(truly_fails: bool = False) -> str:
        return FAIL if truly_fails or rng.random() < fail_rate else PASS

    def record(i: int, version: str, outcome: str, run_id: str, time: str) -> dict:
        axes = {
            "engine": [f"engine{i}", version],
            "tokenizer": ["tok", "1"],
            "template": ["tpl", "1"],
            "client": ["cli", "1"],
        }
        return {
            "cell": f"c{i}-{version}",
            "axes": axes,
            "runner": "cpu",
            "model": "tiny",
            "case": "chat",
            "stage": "inference",
            "outcome": outcome,
            "run": run_id,
            "time": time,
        }

    broken = set(range(regressions))
    aa = [
        ({("chat", "inference"): run(i in broken)}, {("chat", "inference"): run(i in broken)}) for i in range(n_cells)
    ]
    aa_rate = aa_spurious_rate(aa)
    noise = noise_from_aa(aa_rate, samples=n_cells)
    history = [record(i, "1.0", run(), "previous", "2026-01-01T00:00:00Z") for i in range(n_cells)]
    current = [record(i, "1.1", run(i in broken), "current", "2026-01-02T00:00:00Z") for i in range(n_cells)]
    found = [c for c in find_candidates(history, current) if c.kind == "regression"]
    need, of = plan or plan_reruns(noise, len(found), alpha=alpha)

    verdicts = {"confirmed": 0, "flaky": 0, "not-reproduced": 0}
    true_findings = 0
    cells = [int(c.bad_cell[1:].split("-")[0]) for c in found]
    noise_only = sum(i not in broken for i in cells)
    for i in cells:
        v = confirm([run(i in broken) for _ in range(of)], [run() for _ in range(of)], need=need, of=of).verdict
        verdicts[v] += 1
        true_findings += v == "confirmed" and i in broken
    p_false = false_finding_probability(fail_rate, need, of)
    return {
        "cells": n_cells,
        "candidates": len(found),
        "findings": verdicts["confirmed"],
        "false_findings": verdicts["confirmed"] - true_findings,
        "true_findings": true_findings,
        "flaky": verdicts["flaky"],
        "not_reproduced": verdicts["not-reproduced"],
        "aa_rate": aa_rate,
        "noise_estimate": noise,
        "need": need,
        "of": of,
        "p_false_per_candidate": p_false,
        "expected_false_findings": noise_only * p_false,
        "expected_false_findings_2_of_3": noise_only * false_finding_probability(fail_rate, 2, 3),
    }
