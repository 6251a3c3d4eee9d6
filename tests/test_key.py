"""The cell key: same inputs, same key; any input that can change a result changes it."""

from hypothesis import given
from hypothesis import strategies as st

from matrix.plan.key import cell_key, digest

names = st.from_regex(r"[a-z][a-z0-9-]{0,8}", fullmatch=True)
versions = st.from_regex(r"[0-9]{1,2}\.[0-9]{1,2}(\.[0-9]{1,2})?", fullmatch=True)
pins = st.dictionaries(names, versions, min_size=1, max_size=8)


def key(p, **kw):
    base = dict(pins=p, python="3.11", suite="s1", model_hash="m1", runner="cpu", harness="h1")
    base.update(kw)
    return cell_key(**base)


@given(pins)
def test_key_ignores_pin_order(p):
    assert key(p) == key(dict(reversed(list(p.items()))))


@given(pins, names, versions)
def test_any_changed_version_changes_the_key(p, name, version):
    changed = dict(p)
    changed[name] = version
    assert (key(changed) == key(p)) == (changed == p)


@given(pins, st.sampled_from(["python", "suite", "model_hash", "runner", "harness"]))
def test_every_context_field_is_in_the_key(p, field):
    assert key(p) != key(p, **{field: "other"})


def test_key_is_a_stable_sha256():
    k = key({"jinja2": "3.1.6"})
    assert len(k) == 64 and k == key({"jinja2": "3.1.6"})
    assert key({"jinja2": "3.1.6"}) != key({"jinja2": "3.1.5"})


def test_digest_separates_parts():
    assert digest("ab", "c") != digest("a", "bc")
    assert digest(b"x") == digest("x")
