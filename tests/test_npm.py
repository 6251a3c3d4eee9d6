"""@huggingface/jinja as a renderer: real npm against the configured registry, real Node.

matrix/npm.py (releases with upload times, per-version installs, caching), the probe's
render_node.py + render_hf_jinja.mjs (batched rendering, limits, failure names, compared with
jinja2 on the tiny model's template and the core suite), and the loader's ``ecosystem`` key.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from matrix import suites
from matrix.declare import loader
from matrix.declare.config import VersionRule
from matrix.errors import ConfigError
from matrix.releases import npm
from matrix.releases.versions import select

ROOT = Path(__file__).resolve().parent.parent
PROBE_DIR = ROOT / "matrix" / "probe"
PACKAGE = "@huggingface/jinja"
TEMPLATE = (ROOT / "matrix" / "tinymodel" / "chat_template.jinja").read_text(encoding="utf-8")
SPECIAL = {"eos_token": "<|im_end|>"}
CASES = list(suites.load("core").cases)

if str(PROBE_DIR) not in sys.path:
    sys.path.insert(0, str(PROBE_DIR))

import render_node  # noqa: E402  (the probe's modules live beside probe.py)
import stage_template  # noqa: E402

needs_node = pytest.mark.skipif(
    not (shutil.which("node") and shutil.which("npm")), reason="node and npm are not installed (Node.js)"
)


# --------------------------------------------------------------------------- no network


def test_parse_view_skips_metadata_and_unpublished():
    data = {
        "time": {
            "created": "2023-01-01T00:00:00.000Z",
            "modified": "2024-01-01T00:00:00.000Z",
            "1.0.0": "2023-01-02T00:00:00.000Z",
            "1.1.0-beta.1": "2023-01-03T00:00:00Z",
            "1.1.0": "2023-01-04T00:00:00.000Z",
            "0.9.0": "2022-12-01T00:00:00.000Z",
        },
        "versions": ["1.0.0", "1.1.0-beta.1", "1.1.0"],  # 0.9.0 was unpublished
    }
    rels = npm.parse_view(data)
    assert [r.version for r in rels] == ["1.0.0", "1.1.0-beta.1", "1.1.0"]
    assert rels[0].upload_time == datetime(2023, 1, 2, tzinfo=UTC)
    assert select(rels, VersionRule(latest=2)) == ["1.0.0", "1.1.0"]  # npm pre-releases are pre-releases
    assert select(rels, VersionRule(latest=1, prereleases=True)) == ["1.1.0"]


def test_names_and_versions_are_checked():
    assert npm.safe_name("@huggingface/jinja") == "huggingface+jinja"
    assert npm.safe_name("left-pad") == "left-pad"
    for bad in ("@HuggingFace/jinja", "../x", "a/b", "", "@x/../y"):
        with pytest.raises(ValueError):
            npm.safe_name(bad)
    for bad in ("latest", "^1.0.0", "1.0", "1.0.0 || 2.0.0", "1.0.0; rm -rf"):
        with pytest.raises(ValueError):
            npm.validate_version(bad)


def test_offline_without_cache_is_a_clear_error(tmp_path):
    with pytest.raises(npm.NpmUnavailable, match="offline mode and no cached releases"):
        npm.releases(PACKAGE, tmp_path, offline=True)


def test_ca_bundle_handed_to_node(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert npm.npm_env({"PIP_CERT": str(ca)})["NODE_EXTRA_CA_CERTS"] == str(ca)
    assert npm.npm_env({"SSL_CERT_FILE": str(ca)})["NODE_EXTRA_CA_CERTS"] == str(ca)
    assert npm.npm_env({"NODE_EXTRA_CA_CERTS": "/own.pem", "PIP_CERT": str(ca)})["NODE_EXTRA_CA_CERTS"] == "/own.pem"
    assert "NODE_EXTRA_CA_CERTS" not in npm.npm_env({"PIP_CERT": str(tmp_path / "missing.pem")})


def test_no_registry_host_is_written_down():
    for path in (
        ROOT / "matrix" / "releases" / "npm.py",
        PROBE_DIR / "render_node.py",
        PROBE_DIR / "render_hf_jinja.mjs",
    ):
        text = path.read_text(encoding="utf-8")
        assert "registry.npmjs" not in text and "npmjs.org" not in text and "npmjs.com" not in text, path


# --------------------------------------------------------------------------- the loader


def shipped(old: str = "", new: str = "") -> str:
    text = loader.DEFAULT_PATH.read_text(encoding="utf-8")
    if old:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


def load_text(tmp_path, text: str):
    path = tmp_path / "axes.yaml"
    path.write_text(text, encoding="utf-8")
    return loader.load(path)


def test_loader_accepts_an_npm_component():
    m = loader.load_default()
    c = m.component("template", "hf-jinja-js")
    assert (c.ecosystem, c.packages, c.default) == ("npm", (PACKAGE,), False)
    assert c.needs == {"cpu", "node"} and c.probe_roles("renderers") == ("hf-jinja-js",)
    assert c.tag_format.format(version="0.5.11") == "@huggingface/jinja@0.5.11"
    # the only npm component: every other one installs from PyPI, or is a template corpus (nothing installed)
    assert all(x.ecosystem in ("pypi", "corpus") for comps in m.axes.values() for x in comps if x.name != "hf-jinja-js")


@pytest.mark.parametrize(
    "old, new, field, words",
    [
        (
            "      needs: [cpu, node]\n      repo: huggingface/huggingface.js",
            "      needs: [cpu]\n      repo: huggingface/huggingface.js",
            "axes.template.hf-jinja-js.needs",
            ["needs must include node"],
        ),
        (
            "      needs: [cpu, node]\n      repo: huggingface/huggingface.js",
            "      repo: huggingface/huggingface.js",
            "axes.template.hf-jinja-js.ecosystem",
            ["needs must include node"],
        ),
        (
            'packages: ["@huggingface/jinja"]',
            'packages: ["@HuggingFace/Jinja"]',
            "axes.template.hf-jinja-js.packages.0",
            ["not a valid npm package name"],
        ),
        (
            'packages: ["@huggingface/jinja"]',
            'packages: ["@huggingface/jinja", "other"]',
            "axes.template.hf-jinja-js.packages",
            ["exactly one npm package"],
        ),
        (
            "      ecosystem: npm\n",
            "      ecosystem: npm\n      extras: [x]\n",
            "axes.template.hf-jinja-js.extras",
            ["pypi components only"],
        ),
        (
            "      ecosystem: npm\n",
            "      ecosystem: cargo\n",
            "axes.template.hf-jinja-js.ecosystem",
            ["pypi (the default), npm or corpus"],
        ),
        (
            "      ecosystem: npm\n",
            "",  # an npm name on a pypi component
            "axes.template.hf-jinja-js.packages.0",
            ["not a valid package"],
        ),
    ],
)
def test_loader_rejects_bad_npm_components(tmp_path, old, new, field, words):
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, shipped(old, new))
    err = info.value
    assert err.field == field, str(err)
    assert err.line, str(err)
    for w in words:
        assert w in err.message, str(err)


# --------------------------------------------------------------------------- real npm


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """(cache dir, releases, the two versions the shipped rule selects)."""
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are not installed (Node.js)")
    cache = tmp_path_factory.mktemp("npmcache")
    try:
        rels = npm.releases(PACKAGE, cache, ttl=3600)
    except npm.NpmUnavailable as exc:
        ping = subprocess.run(["npm", "ping"], capture_output=True, text=True, env=npm.npm_env(), timeout=60)
        if ping.returncode != 0:
            pytest.skip(f"the configured npm registry cannot be reached: {exc}")
        raise
    rule = loader.load_default().component("template", "hf-jinja-js").versions
    return cache, rels, select(rels, rule)


@pytest.fixture(scope="module")
def installs(registry):
    """{version: install prefix} for the two selected versions, plus install timings."""
    cache, _, versions = registry
    out, cold = {}, {}
    for v in versions:
        t = time.perf_counter()
        out[v] = npm.ensure_package(PACKAGE, v, cache)
        cold[v] = time.perf_counter() - t
    return out, cold


@needs_node
def test_releases_with_upload_times(registry, monkeypatch):
    cache, rels, versions = registry
    assert len(rels) >= 20
    by_version = {r.version: r for r in rels}
    assert {"0.1.0", "0.3.4", "0.5.11"} <= set(by_version)
    assert all(r.upload_time is not None and r.upload_time.tzinfo is not None for r in rels)
    assert by_version["0.1.0"].upload_time < by_version["0.5.11"].upload_time
    assert len(versions) == 2 and versions[0] != versions[1]
    # the cache answers without npm (fresh, and offline whatever its age)
    monkeypatch.setattr(npm, "_view", lambda package: pytest.fail("npm view ran despite a fresh cache"))
    assert npm.releases(PACKAGE, cache, ttl=3600) == rels
    assert npm.releases(PACKAGE, cache, ttl=0, offline=True) == rels
    cached = json.loads((cache / "npm" / "releases" / "huggingface+jinja.json").read_text())
    assert cached["package"] == PACKAGE and len(cached["releases"]) == len(rels)


@needs_node
def test_releases_fall_back_to_a_stale_cache(registry, monkeypatch):
    cache, rels, _ = registry

    def broken(package):
        raise npm._ViewFailed("registry down")

    monkeypatch.setattr(npm, "_view", broken)
    assert npm.releases(PACKAGE, cache, ttl=0) == rels


@needs_node
def test_unknown_package_has_no_releases(tmp_path):
    assert npm.releases("@llmcompat-test/no-such-package-zz9", tmp_path) == []


@needs_node
def test_install_two_versions_once(registry, installs, monkeypatch):
    cache, _, versions = registry
    prefixes, cold = installs
    assert len(set(prefixes.values())) == 2
    for v, prefix in prefixes.items():
        assert prefix == cache / "npm" / f"huggingface+jinja@{v}"
        meta = json.loads(npm.package_dir(prefix, PACKAGE).joinpath("package.json").read_text())
        assert meta["version"] == v
        assert npm.installed(prefix, PACKAGE, v)
    # nothing half-made is left beside them
    assert sorted(p.name for p in (cache / "npm").iterdir() if not p.name.startswith(".locks")) == sorted(
        ["releases"] + [p.name for p in prefixes.values()]
    )
    # a second ensure does not run npm
    monkeypatch.setattr(npm.subprocess, "run", lambda *a, **k: pytest.fail(f"npm ran again: {a}"))
    for v, prefix in prefixes.items():
        t = time.perf_counter()
        assert npm.ensure_package(PACKAGE, v, cache) == prefix
        assert time.perf_counter() - t < 0.5


@needs_node
def test_failed_install_leaves_nothing(registry):
    cache, _, _ = registry
    with pytest.raises(npm.NpmInstallError, match="99.99.99"):
        npm.ensure_package(PACKAGE, "99.99.99", cache)
    assert not any("99.99.99" in p.name for p in (cache / "npm").iterdir())


# --------------------------------------------------------------------------- rendering


def renderer(prefix, template=TEMPLATE, cases=CASES, **limits):
    limits = {"render_seconds": 5, **limits}
    return render_node.node_renderer(
        template, SPECIAL, limits, {"cases": cases, "node_modules": {PACKAGE: str(prefix)}}
    )


def outcome(render, case):
    try:
        return "text", render(case)
    except Exception as exc:  # noqa: BLE001
        return stage_template.classify(exc)


@needs_node
def aliases_reasoning(case) -> bool:
    return any(
        isinstance(m, dict) and ("reasoning" in m or "thinking" in m) and "reasoning_content" not in m
        for m in case["messages"]
    )


def test_renders_like_jinja2_with_both_versions(installs):
    prefixes, _ = installs
    reference = stage_template.jinja2_renderer(TEMPLATE, SPECIAL, {})
    ids = {c["id"] for c in CASES}
    assert {"tools-defined", "tool-call-and-result", "non-ascii", "no-generation-prompt"} <= ids
    for version, prefix in prefixes.items():
        render = renderer(prefix)
        assert render.info["package_version"] == version
        assert render.info["processes"] == 1  # every case through one node process
        for case in CASES:
            want = outcome(reference, case)
            got = outcome(render, case)
            if aliases_reasoning(case):
                # transformers copies `reasoning`/`thinking` into `reasoning_content`; a
                # transformers.js caller does not: a real difference the matrix reports
                assert got != want, (version, case["id"])
            elif want[0] == "text":
                assert got == want, (version, case["id"])
            else:  # both refuse, with the template's own message
                assert got[0] == "template-error", (version, case["id"], got)
                assert case["expect"]["error"] in got[1]


@needs_node
def test_a_changed_case_is_rendered_on_demand(installs):
    prefix = next(iter(installs[0].values()))
    render = renderer(prefix, cases=CASES[:1])
    case = {"id": CASES[0]["id"], "messages": [{"role": "user", "content": "other ✓"}], "add_generation_prompt": False}
    assert render(case) == "<|im_start|>user\nother ✓<|im_end|>\n"


RUNAWAY = (
    "{% if messages[0].content == 'flood' %}"
    "{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(1000) %}xxxxxxxxxx"
    "{% endfor %}{% endfor %}{% endfor %}{% endif %}"
    "{% if messages[0].content == 'double' %}{% set ns = namespace(s='x') %}"
    "{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}{% endif %}"
    "{% if messages[0].content == 'spin' %}"
    "{% for i in range(1000) %}{% for j in range(1000) %}{% for k in range(1000) %}{% endfor %}{% endfor %}{% endfor %}"
    "{% endif %}"
    "ok {{ messages[0].content }}"
)


def one(cid, content):
    return {"id": cid, "messages": [{"role": "user", "content": content}]}


@needs_node
def test_infinite_output_hits_the_cap(installs):
    cases = [one("flood", "flood"), one("double", "double"), one("fine", "fine")]
    for version, prefix in installs[0].items():
        started = time.perf_counter()
        render = renderer(prefix, template=RUNAWAY, cases=cases, render_chars=20_000)
        assert time.perf_counter() - started < 4, version  # stopped by the cap, not by a timeout
        assert outcome(render, cases[0])[0] == "template-output-limit", version
        assert outcome(render, cases[1])[0] == "template-output-limit", version
        assert "exceeds 20000 characters" in outcome(render, cases[1])[1]
        assert render(cases[2]) == "ok fine"
        assert render.info["processes"] == 1


@needs_node
def test_timeout_is_named_and_the_other_cases_still_render(installs):
    prefix = next(iter(installs[0].values()))
    cases = [one("before", "a"), one("spin", "spin"), one("after", "b")]
    started = time.perf_counter()
    render = renderer(prefix, template=RUNAWAY, cases=cases, render_seconds=1)
    assert time.perf_counter() - started < 5
    assert outcome(render, cases[1]) == ("template-timeout", "render took longer than 1.0s")
    assert isinstance(_raised(render, cases[1]), (stage_template.RenderTimeout, render_node.RenderTimeout))
    assert (render(cases[0]), render(cases[2])) == ("ok a", "ok b")
    assert render.info["processes"] == 2  # a fresh node after the killed one


@needs_node
def test_crash_is_named_for_its_case_only(installs):
    prefix = next(iter(installs[0].values()))
    # a heap far too small for a big range(): node dies in that case only
    template = "{% if messages[0].content == 'big' %}{{ range(30000000) | length }}{% endif %}ok"
    cases = [one("big", "big"), one("small", "small")]
    render = renderer(prefix, template=template, cases=cases, node_heap_mb=16)
    klass, detail = outcome(render, cases[0])
    assert klass == "sandbox-limit" and "out of memory" in detail, (klass, detail)
    assert render(cases[1]) == "ok"


def _raised(render, case):
    try:
        render(case)
    except Exception as exc:  # noqa: BLE001
        return exc
    raise AssertionError("did not raise")


@needs_node
def test_missing_node_or_package_is_an_import_error(installs, tmp_path, monkeypatch):
    prefix = next(iter(installs[0].values()))
    with pytest.raises(ImportError, match="node_modules"):
        render_node.node_renderer(TEMPLATE, SPECIAL, {}, {"cases": CASES})
    with pytest.raises(ImportError, match="is not installed under"):
        render_node.node_renderer(TEMPLATE, SPECIAL, {}, {"node_modules": {PACKAGE: str(tmp_path)}})
    with pytest.raises(ImportError, match="does not exist"):
        render_node.node_renderer(TEMPLATE, SPECIAL, {}, {"node_modules": str(tmp_path / "nowhere")})
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ImportError, match="node is not on PATH"):
        render_node.node_renderer(TEMPLATE, SPECIAL, {}, {"node_modules": str(prefix)})
