"""Confirmation rule, A/A rate, quarantine, and the injected-noise simulation."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.confirm import (
    Quarantine,
    aa_spurious_rate,
    confirm,
    false_finding_probability,
    is_quarantined,
    noise_from_aa,
    plan_reruns,
    quarantine,
    release_if_passing,
    simulate,
)

P, F = "pass", "fail"


def test_confirmed_needs_2_of_3_bad_and_every_good_pass():
    c = confirm([F, P, F], [P, P, P])
    assert c.verdict == "confirmed" and c.reproduced == 2
    assert (c.bad_flake_rate, c.good_flake_rate) == (pytest.approx(2 / 3), 0.0)
    assert confirm([F, F, F], [P, P, P]).verdict == "confirmed"


def test_flaky_and_not_reproduced():
    one = confirm([F, P, P], [P, P, P])
    assert one.verdict == "flaky" and one.bad_flake_rate == pytest.approx(1 / 3)
    good_flakes = confirm([F, F, F], [P, F, P])
    assert good_flakes.verdict == "flaky" and good_flakes.good_flake_rate == pytest.approx(1 / 3)
    assert confirm([P, P, P], [P, P, P]).verdict == "not-reproduced"
    assert confirm([P, P, P], [F, P, P]).verdict == "flaky"
    # a "flaky" outcome is not a clean reproduction, and not a pass of the good cell either
    assert confirm(["flaky", "flaky", F], [P, P, P]).verdict == "flaky"
    assert confirm([F, F, F], ["flaky", P, P]).verdict == "flaky"


def test_infra_reruns_do_not_count_and_ask_for_more():
    c = confirm([F, "infra", F], [P, P, "infra"])
    assert c.verdict == "infra" and (c.rerun_bad, c.rerun_good, c.infra) == (1, 1, 2)
    c = confirm([F, "infra", F, P], [P, P, "infra", P])
    assert c.verdict == "confirmed" and (c.bad_runs, c.good_runs, c.infra) == (3, 3, 2)
    with pytest.raises(ValueError):
        confirm([F], [P], need=2, of=1)


@given(
    st.lists(st.sampled_from([P, F, "infra", "flaky"]), max_size=8),
    st.lists(st.sampled_from([P, F, "infra", "flaky"]), max_size=8),
)
def test_confirmed_only_when_rule_holds(bad, good):
    c = confirm(bad, good)
    counted_bad = [o for o in bad if o != "infra"][:3]
    counted_good = [o for o in good if o != "infra"][:3]
    rule = len(counted_bad) == len(counted_good) == 3 and counted_bad.count(F) >= 2 and counted_good == [P] * 3
    assert (c.verdict == "confirmed") == rule
    assert c.verdict != "infra" or min(len(counted_bad), len(counted_good)) < 3


def test_false_finding_probability_and_plan():
    # 2 of 3 at 10% noise: P[Bin(3, .1) >= 2] * .9^3 = .028 * .729
    assert false_finding_probability(0.1, 2, 3) == pytest.approx(0.028 * 0.729)
    assert false_finding_probability(0.1, 4, 4) == pytest.approx(1e-4 * 0.9**4)
    assert plan_reruns(0.0, 1000) == (2, 3)  # no noise: the defaults
    assert plan_reruns(0.01, 10) == (2, 3)  # 10 * 2.9e-4 * .97 <= .01
    need, of = plan_reruns(0.1, 45)
    assert (need, of) == (4, 4) and 45 * false_finding_probability(0.1, need, of) <= 0.01
    with pytest.raises(ValueError):
        plan_reruns(0.45, 1000, max_of=4)


def test_aa_rate_and_noise_estimate():
    k = ("tool-call", "template")
    pairs = [({k: P}, {k: P}), ({k: P}, {k: F}), ({k: "infra"}, {k: F}), ({k: F, ("x", "client"): P}, {k: F})]
    assert aa_spurious_rate(pairs) == pytest.approx(1 / 3)
    assert aa_spurious_rate([]) == 0.0
    assert noise_from_aa(2 * 0.1 * 0.9) == pytest.approx(0.1)
    assert noise_from_aa(0.18, samples=500) > 0.1  # the upper bound is used for planning


def test_quarantine_lifecycle():
    q = quarantine("cpu--tiny--transformers-4.58.0", "known upstream bug #123", "2026-03-01T00:00:00Z", days=7)
    assert isinstance(q, Quarantine) and q.until == "2026-03-08T00:00:00+00:00"
    assert is_quarantined(q, "2026-03-07T23:59:59Z")
    assert not is_quarantined(q, "2026-03-08T00:00:00Z")
    assert not is_quarantined(None, "2026-03-02T00:00:00Z")
    now = "2026-03-03T00:00:00Z"
    assert release_if_passing(q, [F, P, P], now) is q
    assert release_if_passing(q, [P, P, F], now) is q
    released = release_if_passing(q, [F, P, "infra", P, P], now)
    assert released.until == "2026-03-03T00:00:00+00:00" and not is_quarantined(released, now)
    assert release_if_passing(q, [P, P], now, n=2).until == released.until


@pytest.mark.parametrize("seed", range(10))
def test_simulation_files_no_false_findings_because_of_the_rule(seed):
    out = simulate(500, 0.10, seed)
    assert out["cells"] == 500 and out["candidates"] > 20
    assert out["findings"] == 0
    # the rule, not luck: the expected number of false findings is tiny ...
    assert out["expected_false_findings"] <= 0.01
    # ... while 2 of 3 alone would expect about one per sweep
    assert out["expected_false_findings_2_of_3"] > 0.5


def test_two_of_three_alone_is_not_enough_at_ten_percent_noise():
    total = sum(simulate(500, 0.10, seed, plan=(2, 3))["findings"] for seed in range(10))
    assert total > 0
    expected = 500 * 0.9 * 0.1 * false_finding_probability(0.1, 2, 3)
    assert expected == pytest.approx(0.92, abs=0.01) and math.exp(-expected) < 0.5


def test_simulation_still_finds_real_regressions():
    out = simulate(500, 0.10, 0, regressions=20)
    assert out["false_findings"] == 0
    # a real regression is confirmed unless its good cell flakes in one of `of` re-runs
    assert out["true_findings"] >= 10
    clean = simulate(200, 0.0, 0, regressions=5)
    assert (clean["findings"], clean["need"], clean["of"]) == (5, 2, 3)
