"""Planning cells from a hand-built matrix: selection, constraints, baselines, sweeps, sharding."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matrix.declare.config import AXES, Component, Condition, Constraint, Matrix, Model, Runner, VersionRule
from matrix.errors import ConfigError
from matrix.plan.cells import Cell, Choice
from matrix.plan.planner import coverage_report, github_matrix, plan, targets


def comp(axis, name, needs=("cpu",), default=True):
    return Component(axis, name, (name,), VersionRule(latest=3), needs=frozenset(needs), default=default)


CPU = Runner("cpu", ("ubuntu-latest",), frozenset({"cpu", "compile"}))
GPU = Runner("gpu", ("self-hosted", "linux", "gpu"), frozenset({"cpu", "gpu"}), default=False)
TINY = Model("tiny", "tiny", arch="qwen2")
HUB = Model("hub", "hub", hub_id="org/model", needs=frozenset({"network"}), default=False)


def make_matrix(constraints=(), runners=(CPU, GPU), models=(TINY, HUB), **axes):
    base = {
        "engine": (
            comp("engine", "transformers"),
            comp("engine", "llama-cpp-python", ("cpu", "compile")),
            comp("engine", "vllm", ("gpu",), default=False),
        ),
        "tokenizer": (comp("tokenizer", "tokenizers"),),
        "template": (comp("template", "hf-jinja2"), comp("template", "minijinja", default=False)),
        "client": (comp("client", "openai"), comp("client", "litellm")),
    }
    base.update(axes)
    lines = {"axes.engine": 10, "constraints.0": 40}
    return Matrix("axes.yaml", base, tuple(runners), tuple(models), tuple(constraints), lines=lines)


VERSIONS = {
    ("engine", "transformers"): ["4.0", "5.0", "5.1"],
    ("engine", "llama-cpp-python"): ["0.2.90", "0.3.36"],
    ("engine", "vllm"): ["0.10.0", "0.11.0"],
    ("tokenizer", "tokenizers"): ["0.22.0", "0.23.3"],
    ("template", "hf-jinja2"): ["3.1.5", "3.1.6"],
    ("template", "minijinja"): ["2.0.0"],
    ("client", "openai"): ["1.99.0", "2.3.0"],
    ("client", "litellm"): ["1.70.0"],
}


def rows_of(cells):
    return [tuple(c.choice(a) for a in AXES) for c in cells]


def by_reason(cells, reason):
    return [c for c in cells if reason in c.reasons]


# ---------------------------------------------------------------------------------------------
# Selection and runner needs.


def test_default_selection_uses_default_components_runners_and_models():
    cells = plan(make_matrix(), VERSIONS)
    assert {c.runner for c in cells} == {"cpu"}
    assert {c.model for c in cells} == {"tiny"}
    names = {c.choice(a).component for c in cells for a in AXES}
    assert "vllm" not in names and "minijinja" not in names
    assert {"transformers", "llama-cpp-python", "tokenizers", "hf-jinja2", "openai", "litellm"} <= names


def test_explicit_components_opt_in_per_axis_and_runner_needs_apply():
    m = make_matrix()
    cells = plan(m, VERSIONS, components=[("engine", "vllm"), ("engine", "transformers")], runners=["cpu", "gpu"])
    cpu = [c for c in cells if c.runner == "cpu"]
    gpu = [c for c in cells if c.runner == "gpu"]
    assert cpu and gpu
    assert {c.choice("engine").component for c in cpu} == {"transformers"}  # vllm needs a gpu
    assert {c.choice("engine").component for c in gpu} == {"transformers", "vllm"}
    # axes the selection does not name keep their defaults
    assert {c.choice("template").component for c in cells} == {"hf-jinja2"}


def test_a_runner_runs_only_models_whose_needs_it_provides():
    m = make_matrix(runners=(CPU, Runner("net", ("ubuntu-latest",), frozenset({"cpu", "network"}))))
    cells = plan(m, VERSIONS, runners=["cpu", "net"], models=["tiny", "hub"])
    assert {(c.runner, c.model) for c in cells} == {("cpu", "tiny"), ("net", "tiny"), ("net", "hub")}
    # llama-cpp-python needs compile, which the net runner lacks
    assert {c.choice("engine").component for c in cells if c.runner == "net"} == {"transformers"}


def test_an_axis_without_a_runnable_component_is_a_config_error():
    m = make_matrix(engine=(comp("engine", "vllm", ("gpu",)),))
    with pytest.raises(ConfigError) as err:
        plan(m, VERSIONS)
    assert err.value.field == "axes.engine"
    assert err.value.line == 10
    assert "cpu" in err.value.message


def test_unknown_names_and_empty_selections_are_config_errors():
    m = make_matrix()
    with pytest.raises(ConfigError) as err:
        plan(m, VERSIONS, components=[("engine", "nope")])
    assert (err.value.field, err.value.value) == ("axes.engine", "nope")
    with pytest.raises(ConfigError) as err:
        plan(m, VERSIONS, runners=["tpu"])
    assert err.value.field == "runners"
    with pytest.raises(ConfigError) as err:
        plan(m, VERSIONS, models=["hub"])  # only the cpu runner, which lacks network
    assert err.value.field == "models"
    versions = {k: v for k, v in VERSIONS.items() if k != ("client", "openai")}
    with pytest.raises(ConfigError) as err:
        plan(m, versions)
    assert err.value.field == "axes.client.openai.versions"


# ---------------------------------------------------------------------------------------------
# Constraints.


def test_constraints_exclude_combinations_and_only_matching_versions():
    c0 = Constraint((Condition("engine", "llama-cpp-python"), Condition("client", "litellm")), "no tools")
    c1 = Constraint(
        (Condition("engine", "transformers", ">=5"), Condition("tokenizer", "tokenizers", "<0.23")),
        "transformers 5 needs tokenizers 0.23",
    )
    m = make_matrix(constraints=(c0, c1))
    cells = plan(m, VERSIONS)
    for c in cells:
        e, t, _, cl = (c.choice(a) for a in AXES)
        assert not (e.component == "llama-cpp-python" and cl.component == "litellm")
        assert not (e.component == "transformers" and e.version in ("5.0", "5.1") and t.version == "0.22.0")
    # the versions outside the specifier still pair with tokenizers 0.22.0
    assert any(
        c.choice("engine") == Choice("transformers", "4.0") and c.choice("tokenizer").version == "0.22.0" for c in cells
    )
    assert coverage_report(m, VERSIONS, cells)["coverage"] == 1.0


def test_specifiers_match_prereleases():
    versions = dict(VERSIONS)
    versions[("engine", "transformers")] = ["4.0", "5.0rc1"]
    c0 = Constraint((Condition("engine", "transformers", "<=5.0"), Condition("client", "litellm")), "x")
    cells = plan(make_matrix(constraints=(c0,)), versions)
    rc = [c for c in cells if c.choice("engine").version == "5.0rc1"]
    assert rc and not [c for c in rc if c.choice("client").component == "litellm"]


def test_constraints_that_leave_no_cell_name_the_constraint():
    only = Constraint((Condition("tokenizer", "tokenizers"),), "no tokenizer at all")
    with pytest.raises(ConfigError) as err:
        plan(make_matrix(constraints=(only,)), VERSIONS)
    assert err.value.field == "constraints.0"
    assert err.value.line == 40
    assert "tokenizers" in str(err.value.value)
    bad = Constraint((Condition("engine", "transformers", ">=9,<"),), "x")
    with pytest.raises(ConfigError) as err:
        plan(make_matrix(constraints=(bad,)), VERSIONS)
    assert err.value.field == "constraints.0.exclude.engine"


# ---------------------------------------------------------------------------------------------
# Cells: order, baselines, pairwise, de-duplication, ids.


def test_cells_come_in_reason_order_without_duplicates():
    m = make_matrix()
    cells = plan(m, VERSIONS, runners=["cpu", "gpu"], seen={("client", "openai"): ["1.99.0"]})
    assert len(set(cells)) == len(cells)
    first = [c.reasons[0] for c in cells]
    order = ["baseline-latest", "baseline-previous", "pairwise", "sweep"]
    ranks = [order.index(r.split(":")[0]) for r in first]
    assert ranks == sorted(ranks)
    assert first[0] == "baseline-latest"
    # baselines are part of the covering array too: their reasons are merged
    assert all("pairwise" in c.reasons for c in by_reason(cells, "baseline-latest"))


def test_baselines_cover_latest_and_previous_versions():
    cells = plan(make_matrix(), VERSIONS)
    latest = by_reason(cells, "baseline-latest")
    latest_versions = {(a, c): vs[-1] for (a, c), vs in VERSIONS.items()}
    for cell in latest:
        for axis in AXES:
            ch = cell.choice(axis)
            assert ch.version == latest_versions[(axis, ch.component)]
    # every latest component appears, and every pair of latest values
    used = {cell.choice(a).component for cell in latest for a in AXES}
    assert used == {"transformers", "llama-cpp-python", "tokenizers", "hf-jinja2", "openai", "litellm"}
    previous = by_reason(cells, "baseline-previous")
    assert previous
    for cell in previous:
        for axis in AXES:
            ch = cell.choice(axis)
            vs = VERSIONS[(axis, ch.component)]
            assert ch.version == vs[-2]  # litellm has no previous release: left out
    assert all(cell.choice("client").component == "openai" for cell in previous)


def test_pairwise_covers_every_allowed_pair():
    m = make_matrix()
    chosen = [("engine", "vllm"), ("engine", "transformers"), ("template", "minijinja"), ("template", "hf-jinja2")]
    cells = plan(m, VERSIONS, runners=["cpu", "gpu"], components=chosen)
    report = coverage_report(m, VERSIONS, cells, runners=["cpu", "gpu"], components=chosen)
    assert report["allowed"] > 0
    assert report["covered"] == report["allowed"]
    assert report["coverage"] == 1.0
    assert report["missing"] == [] and report["disallowed"] == [] and report["outside"] == []


def test_coverage_report_lists_missing_pairs_and_bad_cells():
    c0 = Constraint((Condition("engine", "llama-cpp-python"), Condition("client", "litellm")), "x")
    m = make_matrix(constraints=(c0,))
    cells = plan(m, VERSIONS)
    report = coverage_report(m, VERSIONS, cells[:3])
    assert report["covered"] < report["allowed"]
    assert report["coverage"] < 1.0
    miss = report["missing"][0]
    assert miss["runner"] == "cpu" and miss["model"] == "tiny" and len(miss["pair"]) == 2
    assert all("==" in v for v in miss["pair"].values())
    bad = Cell.make(
        "cpu",
        "tiny",
        {
            "engine": Choice("llama-cpp-python", "0.3.36"),
            "tokenizer": Choice("tokenizers", "0.23.3"),
            "template": Choice("hf-jinja2", "3.1.6"),
            "client": Choice("litellm", "1.70.0"),
        },
    )
    stray = Cell.make("gpu", "tiny", dict(cells[0].choices))
    report = coverage_report(m, VERSIONS, list(cells) + [bad, stray])
    assert report["disallowed"] == [bad.id]
    assert report["outside"] == [stray.id]
    assert report["coverage"] == 1.0


def test_ids_are_readable_and_unique():
    cells = plan(make_matrix(), VERSIONS)
    ids = [c.id for c in cells]
    assert len(set(ids)) == len(ids)
    for c in cells:
        assert c.id.startswith("cpu") and "tiny" in c.id
        for axis in AXES:
            ch = c.choice(axis)
            assert ch.component in c.id and ch.version in c.id


def test_plan_is_deterministic():
    m = make_matrix()
    seen = {("engine", "transformers"): ["4.0"]}
    a = plan(m, VERSIONS, runners=["cpu", "gpu"], seen=seen)
    b = plan(m, VERSIONS, runners=["gpu", "cpu"], seen=dict(seen))
    assert [(c, c.reasons) for c in a] == [(c, c.reasons) for c in b]


# ---------------------------------------------------------------------------------------------
# Sweeps.


def test_sweeps_only_for_versions_newer_than_seen():
    m = make_matrix()
    cells = plan(m, VERSIONS, seen={("engine", "transformers"): ["4.0", "5.0"]})
    sweeps = [r for c in cells for r in c.reasons if r.startswith("sweep:")]
    assert sweeps == ["sweep:transformers==5.1"]
    assert not [r for c in plan(m, VERSIONS) for r in c.reasons if r.startswith("sweep:")]
    everything = plan(m, VERSIONS, seen={("engine", "transformers"): []})
    assert sorted(r for c in everything for r in c.reasons if r.startswith("sweep:")) == [
        "sweep:transformers==4.0",
        "sweep:transformers==5.0",
        "sweep:transformers==5.1",
    ]
    nothing_new = plan(m, VERSIONS, seen={("engine", "transformers"): ["6.0"]})
    assert not [r for c in nothing_new for r in c.reasons if r.startswith("sweep:")]


def test_a_sweep_keeps_the_other_axes_at_the_first_latest_baseline():
    m = make_matrix()
    cells = plan(m, VERSIONS, seen={("client", "openai"): ["1.0"]})
    base = by_reason(cells, "baseline-latest")[0]
    sweep = by_reason(cells, "sweep:openai==1.99.0")
    assert len(sweep) == 1
    assert sweep[0].choice("client") == Choice("openai", "1.99.0")
    for axis in ("engine", "tokenizer", "template"):
        assert sweep[0].choice(axis) == base.choice(axis)
    # the sweep of the latest version is the baseline itself when it already has it
    assert (
        "sweep:openai==2.3.0"
        in cells[
            [c.id for c in cells].index(
                Cell.make(base.runner, base.model, {**base.as_dict, "client": Choice("openai", "2.3.0")}).id
            )
        ].reasons
    )


def test_a_sweep_falls_back_to_an_allowed_completion():
    m0 = make_matrix()
    base = by_reason(plan(m0, VERSIONS), "baseline-latest")[0]
    engine = base.choice("engine")
    c0 = Constraint((Condition("engine", engine.component), Condition("client", "openai", "==1.99.0")), "x")
    m = make_matrix(constraints=(c0,))
    cells = plan(m, VERSIONS, seen={("client", "openai"): ["1.0"]})
    sweep = by_reason(cells, "sweep:openai==1.99.0")
    assert len(sweep) == 1
    assert sweep[0].choice("engine").component != engine.component


# ---------------------------------------------------------------------------------------------
# GitHub Actions matrices.


def many_cells(n, runner="cpu"):
    rest = {
        "tokenizer": Choice("tokenizers", "1"),
        "template": Choice("hf-jinja2", "1"),
        "client": Choice("openai", "1"),
    }
    return [Cell.make(runner, "tiny", {"engine": Choice("transformers", f"1.{i}"), **rest}) for i in range(n)]


def test_github_matrix_shards_at_256_jobs():
    m = make_matrix()
    cells = many_cells(600)
    shards = github_matrix(cells, m)
    assert [len(s["include"]) for s in shards] == [256, 256, 88]
    assert [j["cell"] for s in shards for j in s["include"]] == [c.id for c in cells]
    assert shards[0]["include"][0] == {
        "cell": cells[0].id,
        "runner": "cpu",
        "runs-on": ["ubuntu-latest"],
        "environment": "uv",
    }
    assert all(set(s) == {"include"} for s in shards)
    assert github_matrix(cells, m) == shards


def test_github_matrix_groups_by_runner_and_drops_repeats():
    m = make_matrix()
    cells = many_cells(3, "gpu") + many_cells(5, "cpu") + many_cells(2, "gpu")
    shards = github_matrix(cells, m, max_jobs=4)
    assert [[j["runner"] for j in s["include"]] for s in shards] == [["cpu"] * 4, ["cpu"], ["gpu"] * 3]
    assert shards[2]["include"][0]["runs-on"] == ["self-hosted", "linux", "gpu"]
    assert github_matrix([], m) == []
    with pytest.raises(ValueError):
        github_matrix(cells, m, max_jobs=257)
    with pytest.raises(ConfigError):
        github_matrix(many_cells(1, "tpu"), m)


def test_github_matrix_of_a_plan():
    m = make_matrix()
    cells = plan(m, VERSIONS, runners=["cpu", "gpu"])
    shards = github_matrix(cells, m)
    assert sum(len(s["include"]) for s in shards) == len(cells)
    assert [j["runner"] for s in shards for j in s["include"]] == sorted(
        (c.runner for c in cells), key=["cpu", "gpu"].index
    )


# ---------------------------------------------------------------------------------------------
# Property: random matrices plan cells that cover every allowed pair and respect constraints.


@st.composite
def random_setups(draw):
    axes = {}
    versions = {}
    for axis in AXES:
        n = draw(st.integers(1, 2))
        comps = []
        for k in range(n):
            name = f"{axis[:3]}{k}"
            comps.append(comp(axis, name))
            versions[(axis, name)] = [f"{v}.0" for v in range(1, draw(st.integers(1, 3)) + 1)]
        axes[axis] = tuple(comps)
    constraints = []
    for _ in range(draw(st.integers(0, 3))):
        picked = draw(st.lists(st.sampled_from(AXES), min_size=1, max_size=2, unique=True))
        conds = []
        for axis in picked:
            c = draw(st.sampled_from(axes[axis]))
            spec = draw(st.sampled_from(["", ">=2", "<2", "==1.0"]))
            conds.append(Condition(axis, c.name, spec))
        constraints.append(Constraint(tuple(conds), "random"))
    return make_matrix(constraints=constraints, **axes), versions


@settings(max_examples=60, deadline=None)
@given(random_setups())
def test_random_plans_cover_all_allowed_pairs(setup):
    m, versions = setup
    try:
        cells = plan(m, versions)
    except ConfigError as err:
        assert err.field.startswith("constraints")
        return
    report = coverage_report(m, versions, cells)
    assert report["coverage"] == 1.0
    assert report["disallowed"] == [] and report["outside"] == []
    assert len(set(cells)) == len(cells)
    (t,) = targets(m, versions)
    assert all(t.allowed(dict(enumerate(r))) for r in rows_of(cells))


def test_no_previous_baseline_without_previous_releases():
    versions = {k: v[-1:] for k, v in VERSIONS.items()}
    cells = plan(make_matrix(), versions, seen={("engine", "vllm"): []})  # vllm is not selected
    assert not by_reason(cells, "baseline-previous")
    assert not [r for c in cells for r in c.reasons if r.startswith("sweep:")]
    assert coverage_report(make_matrix(), versions, cells)["coverage"] == 1.0
