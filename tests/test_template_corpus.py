"""The template corpus: real models' chat templates read out of an sdist, cached by content,
their capabilities detected from behaviour, rendered by every renderer against the reference."""

import io
import sys
import tarfile
from pathlib import Path

import pytest

from matrix.env import template_corpus as tc

ROOT = Path(__file__).resolve().parent.parent
PROBE_DIR = ROOT / "matrix" / "probe"
if str(PROBE_DIR) not in sys.path:
    sys.path.insert(0, str(PROBE_DIR))

import corpus_render  # noqa: E402
import probe  # noqa: E402
import stage_template  # noqa: E402

PATH = "vendor/llama.cpp/models/templates"
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
NO_SYSTEM = (
    "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}" + CHATML
)
TOOLS = (
    "{% if tools %}TOOLS:{{ tools | tojson }}\n{% endif %}{% for m in messages %}{{ m.role }}: {{ m.content }}"
    "{% for c in m.tool_calls or [] %}[{{ c.id }} {{ c.function.name }} {{ c.function.arguments | tojson }}]"
    "{% endfor %}{% if m.reasoning_content %}<think>{{ m.reasoning_content }}</think>{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def _sdist(root: Path, files: dict[str, bytes]) -> Path:
    """A source distribution as the index serves it: one top folder, members under it."""
    (root / "sdists").mkdir(parents=True, exist_ok=True)
    archive = root / "sdists" / "demo_pkg-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(f"demo_pkg-1.0/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def test_templates_come_from_the_sdist_folder_and_are_cached_by_content(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCOMPAT_CACHE", str(tmp_path))
    archive = _sdist(
        tmp_path,
        {
            "t/a.jinja": b"{{ bos_token }}\r\n{{ messages[0].content }}",  # CR LF kept byte for byte
            "t/b.jinja": "Zürich {{ x }}".encode(),
            "t/nested/c.jinja": b"not directly under the folder",
            "other/d.jinja": b"another folder",
            "t/README.md": b"not a template",
        },
    )
    corpus = tc.load("demo-pkg", "1.0", "t")
    assert corpus.templates == {"a": "{{ bos_token }}\r\n{{ messages[0].content }}", "b": "Zürich {{ x }}"}
    archive.unlink()  # the second load reads the content-addressed cache, not the archive
    again = tc.load("demo-pkg", "1.0", "t", offline=True)
    assert again.templates == corpus.templates and again.digest == corpus.digest
    assert tc.select(corpus, ("b",)).templates == {"b": "Zürich {{ x }}"}
    with pytest.raises(tc.CorpusError, match="no template 'zz'"):
        tc.select(corpus, ("zz",))
    with pytest.raises(tc.CorpusError, match="not cached and the run is offline"):
        tc.load("demo-pkg", "2.0", "t", offline=True)


def test_a_folder_without_templates_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCOMPAT_CACHE", str(tmp_path))
    _sdist(tmp_path, {"x/a.txt": b"nothing"})
    with pytest.raises(tc.CorpusError, match="no \\*.jinja under t"):
        tc.load("demo-pkg", "1.0", "t")


def test_the_real_corpus_has_the_default_subset():
    """llama-cpp-python 0.3.36's sdist from the configured index: 70 templates, the subset among them."""
    from matrix.declare import loader
    from matrix.env import builds

    comp = loader.load_default().component("template", "llama.cpp-templates")
    try:
        corpus = tc.load(comp.primary, comp.versions.explicit[0], comp.corpus_path)
    except tc.CorpusError as exc:
        if "no source distribution" in str(exc) or "downloading" in str(exc):
            pytest.skip(f"no package index: {exc}")
        raise
    assert builds.cached_sdist(comp.primary, comp.versions.explicit[0]) is not None
    assert len(corpus.templates) == 70
    assert set(comp.corpus_templates) <= set(corpus.templates) and len(comp.corpus_templates) >= 10


# --------------------------------------------------------------------------- capabilities, needs


def _jinja2(text: str):
    return stage_template.jinja2_renderer(text, {"bos_token": "<s>", "eos_token": "</s>"}, {})


def test_capabilities_are_detected_from_behaviour():
    chatml = corpus_render.detect(_jinja2(CHATML))
    assert chatml["system_role"] and chatml["generation_prompt"]
    assert not chatml["tools"] and not chatml["tool_calls"] and not chatml["reasoning"]
    assert not corpus_render.detect(_jinja2(NO_SYSTEM))["system_role"]
    tools = corpus_render.detect(_jinja2(TOOLS))
    assert all(tools.values()), tools
    silent = corpus_render.detect(_jinja2(TOOLS.replace("{{ m.content }}", "")))  # drops every content
    assert not silent["system_role"] and not silent["tool_results"] and silent["tool_calls"]


def test_a_case_needs_what_it_carries():
    case = {
        "tools": [{}],
        "add_generation_prompt": False,
        "messages": [
            {"role": "system", "content": "s"},
            {"role": "user", "content": "u"},
            {
                "role": "assistant",
                "content": "",
                "reasoning_content": "r",
                "tool_calls": [
                    {"id": "1", "function": {"name": "f", "arguments": {"a": 1}}},
                    {"id": "2", "function": {"name": "g", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "1", "content": "x"},
        ],
    }
    assert corpus_render.needs(case) == [
        "system_role",
        "tools",
        "tool_calls",
        "object_arguments",
        "string_arguments",
        "parallel_calls",
        "tool_results",
        "reasoning",
        "generation_prompt",
    ]
    assert corpus_render.needs({"messages": [{"role": "user", "content": "u"}]}) == []


# --------------------------------------------------------------------------- golden and check modes, in process


def _cases():
    return [
        {"id": "plain", "messages": [{"role": "user", "content": "Hi"}]},
        {"id": "system", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
        {"id": "long", "messages": [{"role": "user", "content": "x" * 3000}]},
    ]


def _run(mode: str, templates: dict, goldens=None, renderers=("jinja2",), limits=None, model_dir=None):
    rec = probe.Recorder(mode)
    corpus = {"name": "demo", "version": "1.0", "templates": templates, **({"goldens": goldens} if goldens else {})}
    job = {
        "mode": mode,
        "model_dir": str(model_dir or "/nonexistent"),
        "template_sources": [],
        "cases": _cases(),
        "renderers": list(renderers),
        "corpus": corpus,
        "limits": limits or {"render_seconds": 10},
    }
    stage_template.run(job, rec)
    corpus_render.run(job, rec)  # as the probe runs the template stage
    return rec


def _goldens(templates: dict) -> dict:
    rec = _run("golden", templates)
    return {k.split("/", 1)[1]: v["corpus"] for k, v in rec.produced.items()}


def test_every_expressible_case_matches_the_reference_and_the_rest_is_skipped_with_the_reason():
    templates = {"chatml": CHATML, "no-system": NO_SYSTEM}
    goldens = _goldens(templates)
    assert goldens["no-system"]["capabilities"]["system_role"] is False
    assert "System role not supported" in goldens["no-system"]["renders"]["system"]["error"]
    rec = _run("check", templates, goldens)
    got = {(r["case"], r["check"]): r for r in rec.records}
    assert got[("chatml/system", "corpus/jinja2")]["outcome"] == "pass"
    skipped = got[("no-system/system", "corpus/jinja2")]
    assert skipped["outcome"] == "skipped" and "no system_role" in skipped["detail"]
    assert rec.facts["corpus"]["identical"] == {"jinja2": 2}
    assert rec.facts["corpus"]["capabilities"]["chatml"]["system_role"] is True


def test_a_different_render_names_the_template_and_the_first_divergence():
    goldens = _goldens({"chatml": CHATML})
    rec = _run("check", {"chatml": CHATML.replace("<|im_end|>\n", "<|im_end|>")}, goldens)
    bad = [r for r in rec.records if r["outcome"] == "fail"]
    assert bad and all(r["check"] == "corpus/jinja2" and r["case"].startswith("chatml/") for r in bad)
    assert "first divergence at char" in bad[0]["detail"] and bad[0]["klass"] == "mismatch"
    assert rec.facts["corpus"]["identical"] == {"jinja2": 0}


def test_a_template_that_raises_only_in_the_renderer_is_a_finding_named_by_template_and_renderer():
    """The same template under a smaller output limit raises in the checked renderer and not in
    the reference: that case fails with the error's class, naming template and renderer."""
    goldens = _goldens({"chatml": CHATML})
    rec = _run("check", {"chatml": CHATML}, goldens, limits={"render_seconds": 10, "render_chars": 1000})
    got = {r["case"]: r for r in rec.records}
    assert got["chatml/long"]["outcome"] == "fail" and got["chatml/long"]["klass"] == "template-output-limit"
    assert got["chatml/long"]["detail"].startswith("chatml raises in jinja2, not in the reference")
    assert got["chatml/plain"]["outcome"] == "pass"


def test_a_template_that_cannot_compile_raises_on_every_case_and_renders_nowhere():
    broken = "{% for m in messages %}{{ m.content }"
    goldens = _goldens({"broken": broken})
    assert all("TemplateSyntaxError" in r["error"] for r in goldens["broken"]["renders"].values())
    assert not any(goldens["broken"]["capabilities"].values())  # so the system case is not expressible
    rec = _run("check", {"broken": broken}, goldens)
    outcomes = {r["case"]: r["outcome"] for r in rec.records}
    assert outcomes == {"broken/plain": "pass", "broken/long": "pass", "broken/system": "skipped"}
    rec = _run("check", {"broken": CHATML}, goldens)  # renders where the reference raises
    failed = [r for r in rec.records if r["outcome"] == "fail"]
    assert len(failed) == 2 and "broken renders in jinja2, the reference raises" in failed[0]["detail"]


def test_a_renderer_that_is_not_installed_is_one_skipped_record():
    goldens = _goldens({"chatml": CHATML})
    rec = _run("check", {"chatml": CHATML}, goldens, renderers=("llama-cpp-python",))
    if any(r["outcome"] != "skipped" for r in rec.records):
        pytest.skip("llama-cpp-python is installed here")
    assert [(r["case"], r["check"]) for r in rec.records] == [("*", "corpus/llama-cpp-python")]
    assert "not installed in this cell" in rec.records[0]["detail"]


# --------------------------------------------------------------------------- the run's corpus


def test_the_default_run_attaches_the_subset_with_reference_goldens_and_keys_cells_by_it():
    """The default selection renders the subset; its goldens come from the reference renderer
    (computed once, cached by content) and the suite digest (part of every cell key) covers them."""
    from matrix.app import corpus
    from matrix.app.job import Options, build_model, load_matrix, selected_components, suite_for, with_corpus

    matrix = load_matrix(Options())
    comp = matrix.component("template", "llama.cpp-templates")
    try:
        found = corpus.load(matrix, selected_components(matrix, ()))
    except Exception as exc:
        if "no source distribution" in str(exc) or "downloading" in str(exc):
            pytest.skip(f"no package index: {exc}")
        raise
    assert sorted(found.templates) == sorted(comp.corpus_templates)
    model = build_model(matrix, "tiny-qwen2")
    plain = suite_for("core", model)
    suites = with_corpus(matrix, Options(), {}, {"tiny-qwen2": model}, {"tiny-qwen2": plain})
    suite = suites["tiny-qwen2"]
    assert suite.digest != plain.digest and suite.corpus["version"] == "0.3.36"
    assert set(suite.corpus["goldens"]) == set(comp.corpus_templates)
    caps = {n: g["capabilities"] for n, g in suite.corpus["goldens"].items()}
    assert any(c["tools"] for c in caps.values()) and any(c["reasoning"] for c in caps.values())
    assert not caps["google-gemma-2-2b-it"]["system_role"]
    everything = corpus.load(matrix, selected_components(matrix, ("template/llama.cpp-templates-all",)))
    assert len(everything.templates) == 70
