"""matrix.declare.loader: real files in tmp_path; every error names its file, line, field and value."""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from matrix.declare import loader
from matrix.declare.config import AXES, Condition, Constraint, Matrix, VersionRule
from matrix.errors import ConfigError

BASE = textwrap.dedent(
    """\
    suite_version: "1"
    reference:
      jinja2: "3.1.6"
    runners:
      cpu:
        labels: [ubuntu-latest]
        provides: [cpu]
        pins: ["torch==2.13.0+cpu"]
      gpu:
        labels: [self-hosted, gpu]
        provides: [cpu, gpu, network]
        default: false
    models:
      tiny-qwen2:
        kind: tiny
        arch: qwen2
      hub-model:
        kind: hub
        hub_id: Qwen/Qwen2.5-0.5B-Instruct
        needs: [network]
        default: false
    axes:
      engine:
        transformers:
          packages: [transformers]
          versions:
            latest: 2
          repo: huggingface/transformers
          probe: {renderers: [transformers], tokenizers: [transformers]}
        llama-cpp-python:
          packages: [llama-cpp-python]
          extras: [server]
          versions:
            explicit: ["0.2.90", "0.3.2"]
          default: false
        vllm:
          packages: [vllm]
          versions:
            latest: 1
            floor: "0.6"
          needs: [gpu]
          default: false
      tokenizer:
        tokenizers:
          packages: [tokenizers]
          versions:
            latest: 2
      template:
        hf-jinja2:
          packages: [jinja2]
          versions:
            latest: 2
          tag_format: "{version}"
      client:
        openai:
          packages: [openai]
          requires: ["httpx<1"]
          versions:
            latest: 2
            per: major
    constraints:
      - exclude:
          engine: "llama-cpp-python<0.3"
          client: "openai>=3"
        reason: "old server, new SDK"
    """
)


def line_of(text: str, *needles: str) -> int:
    """1-based line of the last needle, each searched from the line of the one before."""
    lines = text.splitlines()
    i = 0
    for needle in needles:
        i = next(n for n in range(i, len(lines)) if needle in lines[n])
    return i + 1


def write(tmp_path: Path, text: str, name: str = "axes.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def edit(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, f"{old!r} must occur once"
    return text.replace(old, new)


def error_of(tmp_path: Path, text: str) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        loader.load(path)
    err = info.value
    assert err.file == str(path)
    assert str(err).startswith(f"{path}:{err.line}: {err.field}: ") if err.line else True
    return err


def check(err: ConfigError, field: str, value, line: int, *words: str) -> None:
    assert (err.field, err.value, err.line) == (field, value, line), str(err)
    for word in words:
        assert word in err.message, str(err)


# --------------------------------------------------------------------------------------------
# the good path


def test_base_loads_into_dataclasses(tmp_path):
    path = write(tmp_path, BASE)
    m = loader.load(path)
    assert isinstance(m, Matrix)
    assert m.source == str(path)
    assert m.suite_version == "1"
    assert m.reference == {"jinja2": "3.1.6"}
    assert list(m.axes) == list(AXES)
    assert [c.name for c in m.axes["engine"]] == ["transformers", "llama-cpp-python", "vllm"]
    tf = m.component("engine", "transformers")
    assert tf.packages == ("transformers",)
    assert tf.versions == VersionRule(latest=2)
    assert tf.needs == frozenset({"cpu"})  # the default
    assert tf.repo == "huggingface/transformers"
    assert tf.tag_format == "v{version}"
    assert tf.probe_roles("renderers") == ("transformers",)
    llama = m.component("engine", "llama-cpp-python")
    assert llama.versions == VersionRule(explicit=("0.2.90", "0.3.2"))
    assert llama.requirement("0.3.2") == "llama-cpp-python[server]==0.3.2"
    assert llama.default is False
    vllm = m.component("engine", "vllm")
    assert vllm.versions == VersionRule(latest=1, floor="0.6")
    assert vllm.needs == frozenset({"gpu"})
    assert m.component("template", "hf-jinja2").tag_format == "{version}"
    openai = m.component("client", "openai")
    assert openai.versions.per == "major"
    assert openai.requires == ("httpx<1",)
    cpu, gpu = m.runners
    assert (cpu.name, cpu.labels, cpu.provides, cpu.pins, cpu.python, cpu.default) == (
        "cpu",
        ("ubuntu-latest",),
        frozenset({"cpu"}),
        ("torch==2.13.0+cpu",),
        "3.11",
        True,
    )
    assert gpu.default is False and gpu.provides == frozenset({"cpu", "gpu", "network"})
    tiny, hub = m.models
    assert (tiny.kind, tiny.arch, tiny.needs, tiny.default) == ("tiny", "qwen2", frozenset(), True)
    assert (hub.kind, hub.hub_id, hub.needs, hub.default) == (
        "hub",
        "Qwen/Qwen2.5-0.5B-Instruct",
        frozenset({"network"}),
        False,
    )
    assert m.constraints == (
        Constraint(
            (Condition("engine", "llama-cpp-python", "<0.3"), Condition("client", "openai", ">=3")),
            "old server, new SDK",
        ),
    )


def test_lines_of_every_field(tmp_path):
    m = loader.load(write(tmp_path, BASE))
    assert m.lines["suite_version"] == 1
    assert m.lines["axes.engine.transformers"] == line_of(BASE, "transformers:")
    assert m.lines["axes.engine.transformers.versions.latest"] == line_of(BASE, "transformers:", "latest: 2")
    assert m.lines["axes.engine.llama-cpp-python.versions.explicit"] == line_of(BASE, "explicit:")
    assert m.lines["axes.engine.llama-cpp-python.versions.explicit.1"] == line_of(BASE, "explicit:")
    assert m.lines["constraints.0.exclude.client"] == line_of(BASE, 'client: "openai>=3"')
    assert m.lines["models.hub-model.hub_id"] == line_of(BASE, "hub_id:")
    err = m.error("axes.client.openai.versions.per", "major", "example")
    assert (err.file, err.line) == (m.source, line_of(BASE, "per: major"))


def test_shipped_axes_yaml_default_selection():
    m = loader.load_default()
    assert m.source == str(loader.DEFAULT_PATH)
    assert loader.DEFAULT_PATH == Path(loader.__file__).resolve().parent.parent / "axes.yaml"
    defaults = {axis: [c.name for c in comps if c.default] for axis, comps in m.axes.items()}
    assert defaults == {
        "engine": ["transformers", "mistralrs", "onnxruntime-genai"],
        "tokenizer": ["tokenizers"],
        "template": ["hf-jinja2", "llama.cpp-templates"],  # the corpus renders in every cell
        "client": ["openai"],
    }
    assert [r.name for r in m.runners if r.default] == ["cpu"]
    assert [m_.name for m_ in m.models if m_.default] == ["tiny-qwen2"]
    cpu = next(r for r in m.runners if r.name == "cpu")
    assert "torch==2.13.0+cpu" in cpu.pins
    for comps in m.axes.values():
        for c in comps:
            if c.default:
                assert c.needs <= cpu.provides, c
    # heavy things are opt-in
    assert not m.component("engine", "vllm").default
    assert not m.component("engine", "llama-cpp-python").default
    assert m.component("engine", "llama-cpp-python").versions.explicit
    assert m.component("client", "openai").versions.per == "major"
    # the reference path is pinned to exact versions
    assert set(m.reference) >= {"jinja2", "transformers", "tokenizers"}
    assert all(v.count(".") >= 1 for v in m.reference.values())
    # every component names its upstream repository
    assert all(c.repo and "{version}" in c.tag_format for comps in m.axes.values() for c in comps)


def test_schema_is_valid_draft_2020_12_and_compiled_once():
    from jsonschema import Draft202012Validator

    schema = json.loads(loader.SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"].endswith("/draft/2020-12/schema")
    assert loader._validator() is loader._validator()


def test_loading_is_fast(tmp_path):
    path = write(tmp_path, BASE)
    loader.load(path)  # warm: schema compiled
    start = time.perf_counter()
    for _ in range(10):
        loader.load(path)
    assert (time.perf_counter() - start) / 10 < 0.05


def test_yaml_merge_keys_are_supported(tmp_path):
    text = edit(
        "  tokenizer:\n    tokenizers:\n      packages: [tokenizers]\n      versions:\n        latest: 2\n",
        "  tokenizer:\n    tokenizers: &tok\n      packages: [tokenizers]\n      versions:\n        latest: 2\n"
        '    tokenizers-old:\n      <<: *tok\n      versions: {explicit: ["0.19.1"]}\n      default: false\n',
    )
    m = loader.load(write(tmp_path, text))
    old = m.component("tokenizer", "tokenizers-old")
    assert old.packages == ("tokenizers",)
    assert old.versions == VersionRule(explicit=("0.19.1",))
    assert old.default is False
    assert m.lines["axes.tokenizer.tokenizers-old.versions"] == line_of(text, "tokenizers-old:", "versions:")


# --------------------------------------------------------------------------------------------
# YAML


def test_malformed_yaml_names_the_line(tmp_path):
    text = edit("    labels: [ubuntu-latest]\n", "    labels: [ubuntu-latest\n    provides: x\n", BASE)
    err = error_of(tmp_path, text)
    assert err.field == loader.DOCUMENT
    assert err.line == line_of(text, "provides: x")
    assert "malformed YAML" in err.message
    assert f"flow sequence started at line {line_of(text, 'labels: [ubuntu-latest')}" in err.message
    assert err.value == "provides: x"


def test_bad_indentation_is_malformed_yaml(tmp_path):
    text = edit("    arch: qwen2\n", "    arch: qwen2\n   oops: 1\n")
    err = error_of(tmp_path, text)
    assert (err.field, err.line) == (loader.DOCUMENT, line_of(text, "oops: 1"))
    assert "malformed YAML" in err.message


def test_unknown_tag_is_malformed_yaml(tmp_path):
    text = edit('suite_version: "1"', "suite_version: !!python/name:os.system x")
    err = error_of(tmp_path, text)
    assert (err.field, err.line) == (loader.DOCUMENT, 1)


def test_two_documents_are_rejected(tmp_path):
    err = error_of(tmp_path, BASE + '---\nsuite_version: "2"\n')
    assert err.field == loader.DOCUMENT and "malformed YAML" in err.message
    assert err.line == BASE.count("\n") + 1


def test_empty_file(tmp_path):
    err = error_of(tmp_path, "# nothing here\n")
    check(err, loader.DOCUMENT, None, 1, "expected a mapping", "nothing")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        loader.load(tmp_path / "absent.yaml")
    assert info.value.file == str(tmp_path / "absent.yaml") and "cannot read" in info.value.message


def test_duplicate_component_name_on_one_axis(tmp_path):
    text = edit("    vllm:\n", "    transformers:\n      packages: [x]\n      versions: {latest: 1}\n    vllm:\n")
    err = error_of(tmp_path, text)
    check(
        err,
        "axes.engine.transformers",
        "transformers",
        line_of(text, "vllm:") - 3,
        f"duplicate key (first at line {line_of(text, 'transformers:')})",
    )


def test_duplicate_key_anywhere(tmp_path):
    text = edit("    arch: qwen2\n", "    arch: qwen2\n    arch: llama\n")
    err = error_of(tmp_path, text)
    check(err, "models.tiny-qwen2.arch", "arch", line_of(text, "arch: llama"), "duplicate key")


def test_non_string_key(tmp_path):
    text = edit('  jinja2: "3.1.6"\n', '  jinja2: "3.1.6"\n  yes: "1.0"\n')
    err = error_of(tmp_path, text)
    check(err, "reference.True", True, line_of(text, "yes:"), "keys must be strings", "quote")


# --------------------------------------------------------------------------------------------
# structure (schema)


@pytest.mark.parametrize(
    "old, new, field, value, words",
    [
        ('suite_version: "1"\n', 'suite_version: "1"\ncolour: blue\n', "colour", "colour", ["unknown key", "allowed:"]),
        ("    kind: tiny\n", "    kind: tiny\n    size: 3\n", "models.tiny-qwen2.size", "size", ["unknown key"]),
        (
            "        latest: 2\n      repo:",
            "        latest: 2\n        newest: 1\n      repo:",
            "axes.engine.transformers.versions.newest",
            "newest",
            ["unknown key", "explicit", "latest"],
        ),
        (
            "    labels: [ubuntu-latest]\n",
            "    labels: [ubuntu-latest]\n    label: x\n",
            "runners.cpu.label",
            "label",
            ["unknown key"],
        ),
        (
            '    reason: "old server, new SDK"\n',
            '    reason: "old server, new SDK"\n    only: yes\n',
            "constraints.0.only",
            "only",
            ["unknown key"],
        ),
        (
            "probe: {renderers: [transformers],",
            "probe: {render: [transformers],",
            "axes.engine.transformers.probe.render",
            "render",
            ["unknown probe role"],
        ),
    ],
)
def test_unknown_keys(tmp_path, old, new, field, value, words):
    text = edit(old, new)
    err = error_of(tmp_path, text)
    check(err, field, value, line_of(text, field.rpartition(".")[2] + ":"), *words)


@pytest.mark.parametrize(
    "old, new, field, value, words",
    [
        (
            "        latest: 2\n      repo:",
            "        latest: two\n      repo:",
            "axes.engine.transformers.versions.latest",
            "two",
            ["expected an integer, got a string"],
        ),
        (
            "        latest: 2\n      repo:",
            "        latest: true\n      repo:",
            "axes.engine.transformers.versions.latest",
            True,
            ["expected an integer, got boolean true"],
        ),
        (
            "      packages: [tokenizers]",
            "      packages: tokenizers",
            "axes.tokenizer.tokenizers.packages",
            "tokenizers",
            ["expected a list, got a string"],
        ),
        (
            "    provides: [cpu]\n",
            "    provides: [cpu]\n    python: 3.10\n",
            "runners.cpu.python",
            3.1,
            ["expected a string, got a number", "quote it"],
        ),
        (
            'explicit: ["0.2.90", "0.3.2"]',
            'explicit: ["0.2.90", 0.3]',
            "axes.engine.llama-cpp-python.versions.explicit.1",
            0.3,
            ["expected a string", "quote it"],
        ),
        (
            "    default: false\nmodels:",
            "    default: no way\nmodels:",
            "runners.gpu.default",
            "no way",
            ["expected true or false"],
        ),
        (
            '    reason: "old server, new SDK"\n',
            "    reason: [a]\n",
            "constraints.0.reason",
            ["a"],
            ["expected a string, got a list"],
        ),
    ],
)
def test_wrong_types(tmp_path, old, new, field, value, words):
    text = edit(old, new)
    err = error_of(tmp_path, text)
    changed = next(line for line in new.splitlines() if line not in old.splitlines())
    check(err, field, value, line_of(text, changed), *words)


@pytest.mark.parametrize("latest", [0, -1])
def test_latest_must_be_positive(tmp_path, latest):
    text = edit("        latest: 2\n      repo:", f"        latest: {latest}\n      repo:")
    err = error_of(tmp_path, text)
    check(err, "axes.engine.transformers.versions.latest", latest, line_of(text, f"latest: {latest}"), "at least 1")


def test_unknown_axis(tmp_path):
    text = edit("  client:\n", "  server:\n    x:\n      packages: [x]\n      versions: {latest: 1}\n  client:\n")
    err = error_of(tmp_path, text)
    check(err, "axes.server", "server", line_of(text, "server:"), "unknown axis", "engine, tokenizer, template, client")


def test_missing_axis(tmp_path):
    start = BASE.index("  template:\n")
    end = BASE.index("  client:\n")
    text = BASE[:start] + BASE[end:]
    err = error_of(tmp_path, text)
    check(err, "axes.template", None, line_of(text, "axes:"), "missing axis")


@pytest.mark.parametrize("empty", ["", " {}"])
def test_empty_axis(tmp_path, empty):
    start = BASE.index("  template:\n")
    end = BASE.index("  client:\n")
    text = BASE[:start] + f"  template:{empty}\n" + BASE[end:]
    err = error_of(tmp_path, text)
    check(err, "axes.template", None if not empty else {}, line_of(text, "template:"), "empty axis")


def test_missing_required_component_key(tmp_path):
    text = edit("      packages: [jinja2]\n", "")
    err = error_of(tmp_path, text)
    check(err, "axes.template.hf-jinja2.packages", None, line_of(text, "hf-jinja2:"), "missing required key")


def test_per_must_be_release_minor_or_major(tmp_path):
    text = edit("        per: major\n", "        per: weekly\n")
    err = error_of(tmp_path, text)
    check(err, "axes.client.openai.versions.per", "weekly", line_of(text, "per: weekly"), "release, minor or major")


def test_unknown_need(tmp_path):
    text = edit("      needs: [gpu]\n", "      needs: [gpu, tpu]\n")
    err = error_of(tmp_path, text)
    check(
        err,
        "axes.engine.vllm.needs.1",
        "tpu",
        line_of(text, "needs: [gpu, tpu]"),
        "unknown capability",
        "cpu, gpu, docker, node, compile, network",
    )


def test_unknown_provided_capability(tmp_path):
    text = edit("    provides: [cpu, gpu, network]\n", "    provides: [cpu, cuda]\n")
    err = error_of(tmp_path, text)
    check(err, "runners.gpu.provides.1", "cuda", line_of(text, "cuda"), "unknown capability")


@pytest.mark.parametrize("repo", ["transformers", "huggingface/transformers/extra", "https:x/y z"])
def test_repo_must_be_owner_name(tmp_path, repo):
    text = edit("repo: huggingface/transformers", f'repo: "{repo}"')
    err = error_of(tmp_path, text)
    check(err, "axes.engine.transformers.repo", repo, line_of(text, "repo:"), "owner/name")


def test_tag_format_needs_version(tmp_path):
    text = edit('tag_format: "{version}"', 'tag_format: "release-"')
    err = error_of(tmp_path, text)
    check(err, "axes.template.hf-jinja2.tag_format", "release-", line_of(text, "tag_format:"), "{version}")


def test_tag_format_with_another_placeholder(tmp_path):
    text = edit('tag_format: "{version}"', 'tag_format: "{name}-{version}"')
    err = error_of(tmp_path, text)
    check(
        err,
        "axes.template.hf-jinja2.tag_format",
        "{name}-{version}",
        line_of(text, "tag_format:"),
        "only use the {version} placeholder",
    )


def test_bad_component_name(tmp_path):
    text = edit("    hf-jinja2:\n", "    hf jinja2!:\n")
    err = error_of(tmp_path, text)
    check(err, "axes.template.hf jinja2!", "hf jinja2!", line_of(text, "hf jinja2!:"), "names use letters")


def test_duplicate_list_item(tmp_path):
    text = edit("    labels: [self-hosted, gpu]\n", "    labels: [self-hosted, gpu, gpu]\n")
    err = error_of(tmp_path, text)
    check(err, "runners.gpu.labels.2", "gpu", line_of(text, "gpu, gpu]"), "duplicate item", "runners.gpu.labels.1")


def test_first_error_in_the_file_wins(tmp_path):
    text = edit("        per: major\n", "        per: weekly\n")
    text = edit('suite_version: "1"\n', "suite_version: 1\n", text)
    err = error_of(tmp_path, text)
    check(err, "suite_version", 1, 1, "expected a string")


# --------------------------------------------------------------------------------------------
# versions


@pytest.mark.parametrize(
    "old, new, field, value",
    [
        (
            'explicit: ["0.2.90", "0.3.2"]',
            'explicit: ["0.2.90", "0.3.x"]',
            "axes.engine.llama-cpp-python.versions.explicit.1",
            "0.3.x",
        ),
        ('floor: "0.6"', 'floor: "six"', "axes.engine.vllm.versions.floor", "six"),
        ('floor: "0.6"', 'below: "1.0-beta-final"', "axes.engine.vllm.versions.below", "1.0-beta-final"),
        ('  jinja2: "3.1.6"', '  jinja2: "latest"', "reference.jinja2", "latest"),
    ],
)
def test_invalid_versions(tmp_path, old, new, field, value):
    text = edit(old, new)
    err = error_of(tmp_path, text)
    check(err, field, value, line_of(text, new.strip()), "invalid version (PEP 440)")


def test_equal_explicit_versions(tmp_path):
    text = edit('explicit: ["0.2.90", "0.3.2"]', 'explicit: ["0.3", "0.3.0"]')
    err = error_of(tmp_path, text)
    check(
        err,
        "axes.engine.llama-cpp-python.versions.explicit.1",
        "0.3.0",
        line_of(text, "explicit:"),
        "same version as axes.engine.llama-cpp-python.versions.explicit.0",
    )


def test_explicit_and_latest_together(tmp_path):
    text = edit('explicit: ["0.2.90", "0.3.2"]', 'explicit: ["0.2.90"]\n        latest: 2')
    err = error_of(tmp_path, text)
    check(
        err,
        "axes.engine.llama-cpp-python.versions",
        {"explicit": ["0.2.90"], "latest": 2},
        line_of(text, "llama-cpp-python:", "versions:"),
        "both explicit and latest",
    )


def test_neither_explicit_nor_latest(tmp_path):
    text = edit("        latest: 1\n        floor:", "        floor:")
    err = error_of(tmp_path, text)
    check(
        err,
        "axes.engine.vllm.versions",
        {"floor": "0.6"},
        line_of(text, "vllm:", "versions:"),
        "needs explicit",
        "or latest",
    )


def test_discovery_keys_with_explicit(tmp_path):
    text = edit('explicit: ["0.2.90", "0.3.2"]', 'explicit: ["0.2.90"]\n        per: minor')
    err = error_of(tmp_path, text)
    check(err, "axes.engine.llama-cpp-python.versions.per", "minor", line_of(text, "per: minor"), "latest only")


def test_floor_not_below_below(tmp_path):
    text = edit('floor: "0.6"', 'floor: "0.6"\n        below: "0.6"')
    err = error_of(tmp_path, text)
    check(err, "axes.engine.vllm.versions.below", "0.6", line_of(text, 'below: "0.6"'), "empty version range")


# --------------------------------------------------------------------------------------------
# runners, models, requirements


def test_invalid_pin(tmp_path):
    text = edit('pins: ["torch==2.13.0+cpu"]', 'pins: ["torch>=>1"]')
    err = error_of(tmp_path, text)
    check(err, "runners.cpu.pins.0", "torch>=>1", line_of(text, "pins:"), "invalid requirement (PEP 508)")


def test_invalid_requires(tmp_path):
    text = edit('requires: ["httpx<1"]', 'requires: ["httpx<1", "not a requirement!"]')
    err = error_of(tmp_path, text)
    check(err, "axes.client.openai.requires.1", "not a requirement!", line_of(text, "requires:"), "PEP 508")


def test_tiny_model_needs_arch(tmp_path):
    text = edit("    arch: qwen2\n", "")
    err = error_of(tmp_path, text)
    check(err, "models.tiny-qwen2.arch", None, line_of(text, "tiny-qwen2:"), "needs arch")


def test_hub_model_needs_hub_id(tmp_path):
    text = edit("    hub_id: Qwen/Qwen2.5-0.5B-Instruct\n", "")
    err = error_of(tmp_path, text)
    check(err, "models.hub-model.hub_id", None, line_of(text, "hub-model:"), "needs hub_id")


def test_model_kind(tmp_path):
    text = edit("    kind: tiny\n", "    kind: huge\n")
    err = error_of(tmp_path, text)
    check(err, "models.tiny-qwen2.kind", "huge", line_of(text, "kind: huge"), "tiny", "hub")


def test_component_no_runner_can_run(tmp_path):
    text = edit("      needs: [gpu]\n", "      needs: [gpu, docker]\n")
    err = error_of(tmp_path, text)
    check(
        err,
        "axes.engine.vllm.needs",
        ["docker", "gpu"],
        line_of(text, "needs: [gpu, docker]"),
        "no runner provides",
        "gpu: cpu, gpu, network",
    )


# --------------------------------------------------------------------------------------------
# constraints


def constraint(exclude: str, reason: str = "because") -> str:
    return BASE + f'  - exclude: {exclude}\n    reason: "{reason}"\n'


def test_constraint_unknown_axis(tmp_path):
    text = constraint('{runtime: "vllm"}')
    err = error_of(tmp_path, text)
    check(err, "constraints.1.exclude.runtime", "runtime", len(text.splitlines()) - 1, "unknown axis")


def test_constraint_unknown_component(tmp_path):
    text = constraint('{engine: "llama.cpp<0.3"}')
    err = error_of(tmp_path, text)
    check(
        err,
        "constraints.1.exclude.engine",
        "llama.cpp<0.3",
        len(text.splitlines()) - 1,
        "unknown component 'llama.cpp' on axis engine",
        "transformers, llama-cpp-python, vllm",
    )


def test_constraint_component_on_the_wrong_axis(tmp_path):
    text = constraint('{tokenizer: "transformers"}')
    err = error_of(tmp_path, text)
    check(
        err,
        "constraints.1.exclude.tokenizer",
        "transformers",
        len(text.splitlines()) - 1,
        "unknown component 'transformers' on axis tokenizer",
    )


@pytest.mark.parametrize("cond", ["openai<<3", "openai 3", "openai>=3.x", "openai===3", "openai>=3; x"])
def test_constraint_bad_specifier(tmp_path, cond):
    text = constraint(f'{{client: "{cond}"}}')
    err = error_of(tmp_path, text)
    check(err, "constraints.1.exclude.client", cond, len(text.splitlines()) - 1)
    assert "specifier" in err.message or "===" in err.message


def test_constraint_without_conditions(tmp_path):
    text = constraint("{}")
    err = error_of(tmp_path, text)
    check(err, "constraints.1.exclude", {}, len(text.splitlines()) - 1, "at least one condition")


def test_constraint_without_reason(tmp_path):
    text = BASE + '  - exclude: {engine: "vllm"}\n'
    err = error_of(tmp_path, text)
    check(err, "constraints.1.reason", None, len(text.splitlines()), "missing required key")


def test_contradictory_components_on_one_axis(tmp_path):
    text = constraint('{engine: ["llama-cpp-python<0.3", "vllm"]}')
    err = error_of(tmp_path, text)
    check(
        err,
        "constraints.1.exclude.engine.1",
        "vllm",
        len(text.splitlines()) - 1,
        "can never match",
        "constraints.1.exclude.engine.0",
        "one component per axis",
    )


@pytest.mark.parametrize("cond", ["openai>=2,<1", "openai==1.0,!=1.0", "openai>3,<=3"])
def test_unsatisfiable_specifier(tmp_path, cond):
    text = constraint(f'{{client: "{cond}"}}')
    err = error_of(tmp_path, text)
    check(err, "constraints.1.exclude.client", cond, len(text.splitlines()) - 1, "can never match", "no version")


def test_unsatisfiable_across_conditions_on_one_component(tmp_path):
    text = constraint('{client: ["openai>=2", "openai<1"], engine: "transformers"}')
    err = error_of(tmp_path, text)
    check(err, "constraints.1.exclude.client.1", "openai<1", len(text.splitlines()) - 1, "can never match")


def test_conditions_on_one_component_are_joined(tmp_path):
    text = constraint('{client: ["openai>=2", "openai<3"], engine: "transformers"}')
    m = loader.load(write(tmp_path, text))
    assert m.constraints[1].conditions == (
        Condition("client", "openai", str(SpecifierSet(">=2,<3"))),
        Condition("engine", "transformers", ""),
    )


def test_specifier_outside_the_versions_rule(tmp_path):
    text = constraint('{engine: "vllm<0.5"}')
    err = error_of(tmp_path, text)
    check(err, "constraints.1.exclude.engine", "vllm<0.5", len(text.splitlines()) - 1, "can never match", ">=0.6")


def test_specifier_matching_no_explicit_version(tmp_path):
    text = constraint('{engine: "llama-cpp-python>=0.4"}')
    err = error_of(tmp_path, text)
    check(
        err,
        "constraints.1.exclude.engine",
        "llama-cpp-python>=0.4",
        len(text.splitlines()) - 1,
        "no explicit version of llama-cpp-python",
        "0.2.90, 0.3.2",
    )


def test_constraints_excluding_a_whole_axis(tmp_path):
    text = edit(
        "    tokenizers:\n",
        "    slow:\n      packages: [sentencepiece]\n      versions: {latest: 1}\n"
        "      default: false\n    tokenizers:\n",
    )
    text += '  - exclude: {tokenizer: slow}\n    reason: "a"\n  - exclude: {tokenizer: tokenizers}\n    reason: "b"\n'
    err = error_of(tmp_path, text)
    check(
        err,
        "constraints.2.exclude.tokenizer",
        "tokenizers",
        len(text.splitlines()) - 1,
        "exclude every component of axis tokenizer",
        "slow, tokenizers",
    )


def test_constraints_excluding_every_explicit_version(tmp_path):
    start = BASE.index("    transformers:\n")
    end = BASE.index("    llama-cpp-python:\n")
    text = BASE[:start] + BASE[end:]
    text = edit("      default: false\n    vllm:", "    vllm:", text)  # llama-cpp-python is the default engine
    text = edit("provides: [cpu, gpu, network]", "provides: [cpu, gpu, compile, network]", text)
    text = edit("    provides: [cpu]\n", "    provides: [cpu, compile]\n", text)
    text += (
        '  - exclude: {engine: "llama-cpp-python<0.3"}\n    reason: "a"\n'
        '  - exclude: {engine: vllm}\n    reason: "b"\n'
        '  - exclude: {engine: "llama-cpp-python>=0.3"}\n    reason: "c"\n'
    )
    err = error_of(tmp_path, text)
    check(
        err,
        "constraints.3.exclude.engine",
        "llama-cpp-python>=0.3",
        len(text.splitlines()) - 1,
        "exclude every component of axis engine",
    )


def test_constraint_may_exclude_a_component_outright(tmp_path):
    m = loader.load(write(tmp_path, constraint("{engine: vllm}")))
    assert m.constraints[1].conditions == (Condition("engine", "vllm", ""),)


# --------------------------------------------------------------------------------------------
# the default selection


def test_default_component_no_default_runner_can_run(tmp_path):
    text = edit(
        "      probe: {renderers: [transformers], tokenizers: [transformers]}\n",
        "      probe: {renderers: [transformers], tokenizers: [transformers]}\n      needs: [gpu]\n",
    )
    err = error_of(tmp_path, text)
    check(
        err,
        "axes.engine",
        ["transformers"],
        line_of(text, "engine:"),
        "no default component that a default runner can run",
        "transformers needs gpu",
        "cpu: cpu",
    )


def test_constraint_excluding_the_only_default_component(tmp_path):
    text = constraint("{engine: transformers}")
    err = error_of(tmp_path, text)
    check(
        err,
        "axes.engine",
        ["transformers", "llama-cpp-python", "vllm"],
        line_of(text, "engine:"),
        "no default component",
    )


def test_axis_without_default_component(tmp_path):
    text = edit("      packages: [tokenizers]\n", "      packages: [tokenizers]\n      default: false\n")
    err = error_of(tmp_path, text)
    check(err, "axes.tokenizer", ["tokenizers"], line_of(text, "tokenizer:"), "no default component")


def test_no_default_runner(tmp_path):
    text = edit("    pins: [", "    default: false\n    pins: [")
    err = error_of(tmp_path, text)
    check(err, "runners", ["cpu", "gpu"], line_of(text, "runners:"), "no default runner")


def test_no_default_model(tmp_path):
    text = edit("    arch: qwen2\n", "    arch: qwen2\n    default: false\n")
    err = error_of(tmp_path, text)
    check(err, "models", ["tiny-qwen2", "hub-model"], line_of(text, "models:"), "no default model")


def test_default_model_no_default_runner_can_run(tmp_path):
    text = edit("    arch: qwen2\n", "    arch: qwen2\n    needs: [gpu]\n")
    err = error_of(tmp_path, text)
    check(err, "models", ["tiny-qwen2"], line_of(text, "models:"), "no default model can run")


def test_no_single_default_runner_runs_a_whole_cell(tmp_path):
    # two default runners: one runs only gpu things, the other only cpu things
    text = edit("    provides: [cpu, gpu, network]\n    default: false\n", "    provides: [gpu, network]\n")
    text = edit(
        "    hf-jinja2:\n      packages: [jinja2]\n",
        "    hf-jinja2:\n      packages: [jinja2]\n      needs: [gpu]\n",
        text,
    )
    err = error_of(tmp_path, text)
    check(err, "runners", ["cpu", "gpu"], line_of(text, "runners:"), "no default runner can run a whole default cell")


# --------------------------------------------------------------------------------------------
# helpers


@pytest.mark.parametrize(
    "text, expected",
    [
        ("openai", Condition("client", "openai", "")),
        ("openai>=3", Condition("client", "openai", ">=3")),
        (" openai >=3, <4 ", Condition("client", "openai", "<4,>=3")),
        ("qwen2.5-x~=1.2", Condition("client", "qwen2.5-x", "~=1.2")),
    ],
)
def test_parse_condition(text, expected):
    assert loader.parse_condition("client", text) == expected


@pytest.mark.parametrize(
    "spec, ok",
    [
        ("", True),
        (">=1", True),
        ("<0.0.1", True),
        (">=2,<1", False),
        (">1,<1.0.1", True),
        ("==1.*,!=1.*", False),
        ("~=1.4.5,<1.4.5", False),
        ("~=1.4.5,<1.5", True),
        (">=1,<=1", True),
        (">1,<=1", False),
        ("==1.0+cpu", True),
        ("!=1.*,>=1,<2", False),
        ("!=1.*,>=1,<2.1", True),
    ],
)
def test_satisfiable(spec, ok):
    assert loader.satisfiable(SpecifierSet(spec)) is ok
