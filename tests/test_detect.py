"""Candidates from history: nearest cell, pass->fail / fail->pass only, infra requeued."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bot.detect import candidates, detect

BASE = {
    "engine": ("transformers", "4.57.0"),
    "tokenizer": ("tokenizers", "0.22.0"),
    "template": ("hf-jinja", "3.1.5"),
    "client": ("openai", "1.50.0"),
}


def rec(outcome, run, time, case="tool-call", stage="template", runner="cpu", model="tiny", **changes):
    axes = {a: list(v) for a, v in BASE.items()}
    for axis, version in changes.items():
        axes[axis] = [axes[axis][0], version] if isinstance(version, str) else list(version)
    cell = runner + "--" + model + "--" + "--".join(f"{c}-{v}" for c, v in axes.values())
    return {
        "cell": cell,
        "axes": axes,
        "runner": runner,
        "model": model,
        "case": case,
        "stage": stage,
        "outcome": outcome,
        "run": run,
        "time": time,
    }


T0, T1, T2, T3 = "2026-03-01T00:00:00Z", "2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z", "2026-03-04T00:00:00Z"


def test_pass_to_fail_on_one_axis_is_a_regression():
    history = [rec("pass", "r1", T0)]
    current = [rec("fail", "r2", T1, engine="4.58.0")]
    [c] = candidates(history, current)
    assert c.kind == "regression"
    assert (c.case, c.stage, c.runner, c.model) == ("tool-call", "template", "cpu", "tiny")
    assert c.good_cell == history[0]["cell"] and c.bad_cell == current[0]["cell"]
    assert c.changed == {"engine": ("4.57.0", "4.58.0")}
    assert c.components == {"engine": "transformers"}
    assert (c.baseline_run, c.run) == ("r1", "r2")


def test_fail_to_pass_is_a_fix_and_same_outcome_is_nothing():
    history = [rec("fail", "r1", T0)]
    [c] = candidates(history, [rec("pass", "r2", T1, tokenizer="0.22.1")])
    assert c.kind == "fix"
    assert c.good_cell.endswith("0.22.1--hf-jinja-3.1.5--openai-1.50.0")
    assert c.changed == {"tokenizer": ("0.22.0", "0.22.1")}
    assert candidates([rec("pass", "r1", T0)], [rec("pass", "r2", T1, engine="4.58.0")]) == []


def test_nearest_cell_prefers_fewer_changed_axes_over_recency():
    history = [
        rec("fail", "r1", T0, engine="4.58.0", client="1.51.0"),  # one axis away from current
        rec("pass", "r1", T0),  # two axes away
        rec("pass", "r2", T1, engine="4.58.0", client="1.51.0", tokenizer="0.22.1"),  # one away, newer
    ]
    current = [rec("fail", "r3", T2, engine="4.58.0", client="1.51.0", tokenizer="0.22.1", template="3.1.6")]
    # nearest: two cells at one axis; the most recent one (pass) wins -> regression on template
    [c] = candidates(history, current)
    assert c.changed == {"template": ("3.1.5", "3.1.6")}
    # without it, the one-axis cell that failed is nearest: fail -> fail, no candidate,
    # even though a farther cell passed
    assert candidates(history[:2], current) == []


def test_most_recent_result_of_the_nearest_cell_counts_and_infra_is_skipped():
    history = [rec("fail", "r1", T0), rec("pass", "r2", T1), rec("infra", "r3", T2)]
    [c] = candidates(history, [rec("fail", "r4", T3, engine="4.58.0")])
    assert c.baseline_run == "r2"
    history.append(rec("fail", "r3b", T2))
    assert candidates(history, [rec("fail", "r4", T3, engine="4.58.0")]) == []


def test_later_or_same_run_results_are_not_history():
    current = [rec("fail", "r2", T1, engine="4.58.0"), rec("pass", "r2", T1)]
    assert candidates(current, current) == []
    assert candidates([rec("pass", "r9", T3)], [rec("fail", "r2", T1, engine="4.58.0")]) == []


def test_component_switch_other_runner_case_or_stage_is_not_comparable():
    cur = rec("fail", "r2", T1, engine="4.58.0")
    assert candidates([rec("pass", "r1", T0, engine=("vllm", "4.58.0"))], [cur]) == []
    assert candidates([rec("pass", "r1", T0, runner="gpu")], [cur]) == []
    assert candidates([rec("pass", "r1", T0, case="other")], [cur]) == []
    assert candidates([rec("pass", "r1", T0, stage="client")], [cur]) == []
    assert candidates([rec("pass", "r1", T0, engine="4.58.0")], [cur]) == []  # same cell: no axis


def test_infra_requeued_and_other_outcomes_never_candidates():
    history = [rec("pass", "r1", T0), rec("fail", "r1", T0, case="b")]
    current = [
        rec("infra", "r2", T1, engine="4.58.0"),
        rec("unresolvable", "r2", T1, engine="4.58.0", case="b"),
    ] + [rec(o, "r2", T1, engine="4.58.0") for o in ("skipped", "xfail", "flaky")]
    found = detect(history, current)
    assert found.candidates == []
    assert found.requeue == [current[0]]
    # flaky / skipped baselines do not serve as "good" either
    for o in ("flaky", "skipped", "xfail", "unresolvable"):
        assert candidates([rec(o, "r1", T0)], [rec("fail", "r2", T1, engine="4.58.0")]) == []


OUTCOMES = ["pass", "fail", "infra", "flaky", "skipped", "xfail", "unresolvable"]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(OUTCOMES),
            st.integers(0, 5),
            st.sampled_from(["4.57.0", "4.58.0", "4.59.0"]),
            st.sampled_from(["0.22.0", "0.22.1"]),
        ),
        max_size=20,
    ),
    st.sampled_from(OUTCOMES),
)
def test_every_candidate_is_a_decisive_flip_between_differing_cells(history_spec, now_outcome):
    history = [
        rec(o, f"h{i}", f"2026-02-{day + 1:02d}T00:00:00Z", engine=e, tokenizer=t)
        for i, (o, day, e, t) in enumerate(history_spec)
    ]
    current = [rec(now_outcome, "now", T0, engine="4.59.0", tokenizer="0.22.1")]
    found = candidates(history, current)
    assert len(found) <= 1
    for c in found:
        assert now_outcome in ("pass", "fail")
        assert c.kind == ("regression" if now_outcome == "fail" else "fix")
        assert c.changed and all(a != b for a, b in c.changed.values())
        assert c.good_cell != c.bad_cell
        base = next(h for h in history if h["run"] == c.baseline_run)
        assert base["outcome"] == ("pass" if now_outcome == "fail" else "fail")


def test_release_order_not_run_order_decides_the_direction():
    """A later run that tests an OLDER release which fails, after a newer one passed, is no
    regression: in release order the newer release fixed it."""

    def rec(version, outcome, run, time):
        return {
            "cell": f"c-{version}",
            "axes": {"engine": ["e", "1"], "tokenizer": ["t", "1"], "template": ["j", version], "client": ["o", "1"]},
            "runner": "cpu",
            "model": "m",
            "case": "k",
            "stage": "template",
            "outcome": outcome,
            "run": run,
            "time": time,
        }

    newer_pass = rec("3.1.6", "pass", "r1", "2026-01-01T00:00:00")
    older_fail = rec("3.1.5", "fail", "r2", "2026-01-02T00:00:00")
    (cand,) = candidates([newer_pass, older_fail], [older_fail])
    assert cand.kind == "fix"
    assert (cand.good_cell, cand.bad_cell) == ("c-3.1.6", "c-3.1.5")
    assert cand.changed == {"template": ("3.1.5", "3.1.6")}
    older_pass = rec("3.1.5", "pass", "r1", "2026-01-01T00:00:00")
    newer_fail = rec("3.1.6", "fail", "r2", "2026-01-02T00:00:00")
    (cand,) = candidates([older_pass, newer_fail], [newer_fail])
    assert cand.kind == "regression" and cand.changed == {"template": ("3.1.5", "3.1.6")}
    assert (cand.good_cell, cand.bad_cell) == ("c-3.1.5", "c-3.1.6")
