"""Triage before filing (#15 item 3): the failing package's own metadata decides whether a finding
is the component's bug or the matrix's configuration."""

from __future__ import annotations

import json

import pytest

from bot import triage as t
from tests.conftest import or_skip

IMPORT_ERROR = (
    "ImportError: apply_chat_template requires jinja2>=3.1.6 to be installed. Your version is 3.1.5. "
    "You can upgrade it with `pip install -U jinja2`."
)

META = t.read_metadata("""Metadata-Version: 2.1
Name: transformers
Version: 5.24.0
Requires-Python: >=3.10.0
Provides-Extra: chat-template
Provides-Extra: all
Provides-Extra: torch
Requires-Dist: huggingface-hub<2.0,>=1.3.0
Requires-Dist: numpy>=1.17
Requires-Dist: tokenizers<=0.23.0,>=0.22.0; python_version < "3.9"
Requires-Dist: tokenizers<0.24,>=0.23.1
Requires-Dist: jinja2>=3.1.6; extra == "chat-template"
Requires-Dist: jinja2>=3.1.6; extra == "all"
Requires-Dist: torch>=2.2; extra == "all"
Requires-Dist: torch>=2.2; extra == "torch"

The description.
""")
PINS = {"huggingface-hub": "1.4.0", "numpy": "2.3.0", "tokenizers": "0.23.3", "jinja2": "3.1.5", "torch": "2.13.0"}


def finding(klass="undeclared-requirement", detail=IMPORT_ERROR):
    return {"fingerprint": "f", "component": "transformers", "axis": "engine", "klass": klass, "detail": detail}


def facts(extras=(), pins=None, meta=META, python="3.11"):
    return t.Facts(meta, frozenset(extras), dict(PINS if pins is None else pins), python)


def test_a_requirement_in_an_extra_the_cell_did_not_request_is_configuration():
    v = t.triage(finding(), facts())
    assert (v.verdict, v.upstream_ok) == ("matrix-configuration", False)
    assert v.reason == (
        "transformers 5.24.0 declares jinja2>=3.1.6 in its extra 'chat-template' (also: all); the "
        "cell installed transformers without it and has jinja2 3.1.5: install "
        "transformers[chat-template]"
    )


def test_the_same_failure_with_the_extra_requested_and_broken_pins_is_still_configuration():
    v = t.triage(finding(), facts(extras=["chat-template"]))
    assert v.verdict == "matrix-configuration" and "requires (extra 'chat-template') jinja2>=3.1.6" in v.reason


def test_a_genuinely_undeclared_requirement_stays_a_finding():
    meta = t.PackageMeta(
        "transformers",
        "5.24.0",
        tuple(r for r in META.requires_dist if "jinja2" not in r),
        ">=3.10.0",
        META.provides_extra,
    )
    v = t.triage(finding(), facts(meta=meta))
    assert (v.verdict, v.upstream_ok) == ("component-bug", True)
    assert "declares no requirement on jinja2" in v.reason


def test_a_declared_bound_the_cell_satisfies_yet_refused_is_a_bug():
    meta = t.PackageMeta("transformers", "5.24.0", ("jinja2>=3.1.0",), None, ())
    v = t.triage(finding(), facts(meta=meta))
    assert v.verdict == "component-bug" and "the declared bound is wrong" in v.reason, v.reason


def test_requires_python_outside_the_cells_python():
    meta = t.PackageMeta("transformers", "6.0.0", (), ">=3.12", ())
    v = t.triage(finding("mismatch", "ids differ"), facts(meta=meta, python="3.11"))
    assert v.verdict == "matrix-configuration" and "requires Python >=3.12; the cell runs Python 3.11" in v.reason


def test_an_unconditional_requirement_broken_by_an_override_is_configuration():
    v = t.triage(finding("mismatch", "first divergence at token 3"), facts(pins={**PINS, "numpy": "1.16.0"}))
    assert v.verdict == "matrix-configuration" and "requires numpy>=1.17; the cell has numpy 1.16.0" in v.reason


def test_markers_that_do_not_apply_are_ignored():
    # tokenizers<=0.23.0 applies only on python < 3.9: 0.23.3 is fine on 3.11
    v = t.triage(finding("mismatch", "tokenizers gives other ids"), facts())
    assert v.verdict == "component-bug" and v.upstream_ok


def test_an_unrelated_unrequested_extra_does_not_excuse_a_bug():
    # torch is in extras the cell did not request, and the detail names it, but torch's bound holds
    v = t.triage(finding("mismatch", "torch ops differ"), facts(pins={**PINS, "jinja2": "3.1.6"}))
    assert v.verdict == "component-bug"


def test_no_metadata_or_no_named_package_is_undetermined():
    assert t.triage(finding(), t.Facts(None)).verdict == "undetermined"
    v = t.triage(finding(detail="ImportError: something is missing"), facts())
    assert (v.verdict, v.upstream_ok) == ("undetermined", False)


def test_verdicts_are_checked():
    with pytest.raises(ValueError, match="not one of"):
        t.Triage("maybe", "", False)


def test_requested_extras_and_names():
    assert t.requested_extras(
        ["transformers[chat-template,torch]==5.24.0", "torch", "jinja2==3.1.5"], "Transformers"
    ) == {"chat-template", "torch"}
    assert t.named_in("requires jinja2>=3.1.6", "Jinja2") and not t.named_in("requires jinja2x", "jinja2")
    assert t.named_in("No module named 'huggingface_hub'", "huggingface-hub")


def test_consistent_extras_drops_an_extra_the_lock_breaks():
    assert t.consistent_extras(META, {"chat-template", "torch"}, PINS, "3.11") == {"torch"}


# ------------------------------------------------------------------------------------ for real


@pytest.mark.network
@pytest.mark.slow
def test_real_metadata_from_the_cells_environment(tmp_path):
    """The default matrix's "transformers refuses jinja2 3.1.5", triaged from the real METADATA of
    transformers in a real uv environment; with the extra requested the pair is unresolvable."""
    from matrix.env import uv as envs

    reqs = ["transformers==5.24.0", "tokenizers==0.23.3", "jinja2==3.1.5"]
    lock = or_skip(envs.resolve, reqs, python="3.11")
    env = or_skip(envs.ensure, lock, tmp_path / "envs")
    row = {
        "key": "k",
        "cell_id": "cpu/tiny-qwen2/transformers@5.24.0/tokenizers@0.23.3/hf-jinja2@3.1.5/openai@3.57.0",
        "lock": json.dumps(lock.to_json()),
        "facts": json.dumps({"requirements": reqs}),
    }
    f = finding()
    fa = t.facts_for(f, row, None, env_root=tmp_path / "envs")
    assert fa.package.name == "transformers" and fa.package.version == "5.24.0" and fa.requested_extras == set()
    assert t.env_metadata(env.path, "transformers") == fa.package
    v = t.triage(f, fa)
    assert v.verdict == "matrix-configuration" and "install transformers[chat-template]" in v.reason
    with_extra = or_skip(envs.resolve, ["transformers[chat-template]==5.24.0", *reqs[1:]], python="3.11")
    assert isinstance(with_extra, envs.Unresolvable) and "jinja2>=3.1.6" in with_extra.reason


@pytest.mark.network
@pytest.mark.slow
def test_triage_store_saves_verdicts_on_the_findings(tmp_path):
    from matrix.env import uv as envs
    from reports.store import Store

    reqs = ["transformers==5.24.0", "tokenizers==0.23.3", "jinja2==3.1.5"]
    lock = or_skip(envs.resolve, reqs, python="3.11")
    store = Store(tmp_path / "store.sqlite")
    cell = {
        "id": "cpu/tiny-qwen2/transformers@5.24.0/tokenizers@0.23.3/hf-jinja2@3.1.5/openai@3.57.0",
        "runner": "cpu",
        "model": "tiny-qwen2",
        "choices": {
            "engine": {"component": "transformers", "version": "5.24.0"},
            "tokenizer": {"component": "tokenizers", "version": "0.23.3"},
            "template": {"component": "hf-jinja2", "version": "3.1.5"},
            "client": {"component": "openai", "version": "3.57.0"},
        },
    }
    store.ingest_run(
        {"id": "r1", "started": "2026-12-01T00:00:00Z"},
        [
            {
                "key": "k1",
                "cell": cell,
                "outcome": "fail",
                "finished": "2026-12-01T00:01:00Z",
                "stages": {},
                "lock": lock.to_json(),
                "facts": {"requirements": reqs},
            }
        ],
        [],
    )
    store.save_differences(
        [
            {
                **finding(),
                "fingerprint": "f1",
                "case_id": "single-user",
                "stage": "template",
                "check_name": "transformers",
                "bad_key": "k1",
            }
        ],
        {},
        "2026-12-01T00:02:00Z",
    )
    out = t.triage_store(store, None, env_root=tmp_path / "envs")
    saved = store.finding("f1")
    assert out["f1"].verdict == saved.triage == "matrix-configuration" and saved.triage_reason == out["f1"].reason
    assert store.export()["findings"][0]["triage"] == "matrix-configuration"
