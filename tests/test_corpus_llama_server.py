"""Real chat templates through llama.cpp's native server (slow): a subset of the template corpus
(llama-cpp-python 0.3.36's test templates) rendered by ``llama-server --jinja`` 0.3.8 (built once
from its sdist) through ``/apply-template``, one server per template, against the reference's
renders (jinja2 the transformers way, computed as the run computes corpus goldens).

What it pins are real behaviours of that server, each found by this comparison: it strips the
template's leading BOS text (and a trailing EOS) although the tiny model's tokenizer adds none;
it cannot parse some templates and renders ChatML in their place, saying so only in its log; it
aborts at start on others; it injects its own tool prompt for templates it does not know as a
tool format; it refuses tool-call arguments given as objects."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import or_skip

ROOT = Path(__file__).resolve().parent.parent
PROBE_DIR = ROOT / "matrix" / "probe"
if str(PROBE_DIR) not in sys.path:
    sys.path.insert(0, str(PROBE_DIR))

import corpus_render  # noqa: E402
import probe  # noqa: E402
import stage_template  # noqa: E402

SERVER_VERSION = "0.3.8"
SUBSET = (
    "Qwen-Qwen2.5-7B-Instruct",  # tools
    "openai-gpt-oss-120b",  # tools, reasoning
    "Kimi-K2-Thinking",  # reasoning
    "meta-llama-Llama-3.1-8B-Instruct",  # tools, BOS
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",  # reasoning, BOS
    "Qwen-Qwen3-0.6B",  # 0.3.8's minja cannot parse it: ChatML instead
    "Cohere2MoE",  # the server aborts at start
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use",  # renders where the reference raises
    "google-gemma-2-2b-it",  # no system role: those cases are skipped
    "ibm-granite-granite-4.0",  # tools; identical but for the server's message parsing
    "microsoft-Phi-3.5-mini-instruct",  # a trailing EOS the server strips
)
MESSAGE_PARSING = (
    "type must be string, but is object",  # tool-call arguments as an object, not a JSON string
    "Missing tool call type",  # a tool call without {"type": "function", ...}
    'Unsupported content part type: "image"',
)
"""What llama-server 0.3.8 refuses in the messages before any template sees them."""


@pytest.fixture(scope="module")
def setting():
    """The check job for the subset, its reference goldens built as the main job builds them."""
    from matrix.app import corpus
    from matrix.app.job import Options, build_model, load_matrix, suite_for
    from matrix.env import builds, template_corpus

    matrix = load_matrix(Options())
    exe = or_skip(builds.llama_server, SERVER_VERSION)
    comp = matrix.component("template", "llama.cpp-templates-all")
    try:
        whole = template_corpus.load(comp.primary, comp.versions.explicit[0], comp.corpus_path)
    except template_corpus.CorpusError as exc:
        if "no source distribution" in str(exc) or "downloading" in str(exc):
            pytest.skip(f"no package index: {exc}")
        raise
    model = build_model(matrix, "tiny-qwen2")
    suite = corpus.attach(matrix, model, suite_for("core", model), template_corpus.select(whole, SUBSET))
    job = {
        "mode": "check",
        "model_dir": str(model.path),
        "stages": ["template"],
        "template_sources": [],
        "renderers": ["llama-server"],
        "cases": list(suite.cases),
        "corpus": suite.corpus,
        "llama_server_bin": str(exe),
        "limits": {"render_seconds": 10, "render_chars": 1_000_000, "server_concurrency": 3},
    }
    return job


def _ours(root: Path) -> list[str]:
    """Live processes whose command line names a path under ``root`` (our servers' templates)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(root) in cmd and state != "Z":
            found.append(f"{pid}: {cmd[:200]}")
    return found


@pytest.fixture
def server_tmp(tmp_path, monkeypatch):
    """Every server's template directory under ``tmp_path`` (tempfile's default directory), so a
    survivor is found by its command line."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    yield tmp_path
    stage_template._stop_llama_servers()


def _run(job: dict, rec) -> None:
    corpus_render.run(job, rec)


@pytest.mark.slow
def test_the_subset_through_llama_server_against_the_reference(setting, server_tmp):
    job = setting
    rec = probe.Recorder("check")
    _run(job, rec)
    assert _ours(server_tmp) == [], "a llama-server outlived the corpus run"
    got = {r["case"]: r for r in rec.records if r["check"] == "corpus/llama-server"}
    cases = {c["id"] for c in corpus_render._cases(job)}
    assert set(got) == {f"{t}/{c}" for t in SUBSET for c in cases}  # every template x case, none lost
    assert not [r for r in got.values() if r["outcome"] == "infra"]  # a refused template is no infra

    # the facts say what the records say
    facts = rec.facts["corpus"]
    failing = {case.split("/", 1)[0] for case, r in got.items() if r["outcome"] == "fail"}
    assert facts["identical"]["llama-server"] == len(set(SUBSET) - failing)
    classes: dict[str, set] = {}
    for case, r in got.items():
        if r["outcome"] == "fail":
            classes.setdefault(r["klass"], set()).add(case.split("/", 1)[0])
    assert facts["classes"]["llama-server"] == {k: len(v) for k, v in classes.items()}
    print("identical:", facts["identical"], "classes:", facts["classes"])

    # skipped cases carry their reason: the template's capability, or the server's API
    gemma = got["google-gemma-2-2b-it/system-prompt"]
    assert gemma["outcome"] == "skipped" and "no system_role (detected from the reference's renders)" in gemma["detail"]
    cont = [r for case, r in got.items() if case.endswith("/continue-final-message")]
    assert cont and all(
        r["outcome"] == "skipped" and ("continue_final_message" in r["detail"] or "cannot express" in r["detail"])
        for r in cont
    )

    # the server strips the leading BOS text; the tiny model's tokenizer does not add it back
    llama = got["meta-llama-Llama-3.1-8B-Instruct/single-user"]
    assert llama["klass"] == "missing-bos" and "'<|begin_of_text|>'" in llama["detail"]
    assert got["microsoft-Phi-3.5-mini-instruct/no-generation-prompt"]["klass"] == "missing-eos"
    # past the strip, a real divergence still shows with its first divergence
    tools = got["meta-llama-Llama-3.1-8B-Instruct/tools-defined"]
    assert tools["klass"] == "mismatch" and "after the leading BOS text" in tools["detail"]
    assert "first divergence at char" in tools["detail"]
    # templates it does not know as a tool format get the server's own tool prompt
    oss = got["openai-gpt-oss-120b/tools-defined"]
    assert oss["klass"] == "mismatch" and "# Instructions\\n\\nRespond in" in oss["detail"]
    # an empty system content reaches minja as null
    empty = got["Qwen-Qwen2.5-7B-Instruct/system-empty"]
    assert empty["klass"] == "mismatch" and "None<|im_end|>" in empty["detail"]
    # a template 0.3.8's minja cannot parse is replaced by ChatML: said on every case, not hidden
    qwen3 = [r for case, r in got.items() if case.startswith("Qwen-Qwen3-0.6B/") and r["outcome"] == "fail"]
    assert len(qwen3) > 20 and all("renders its ChatML default in its place" in r["detail"] for r in qwen3)
    assert "Expected value expression" in qwen3[0]["detail"]
    # a template it aborts on at start
    cohere = got["Cohere2MoE/single-user"]
    assert cohere["outcome"] == "fail" and "refuses the template at start and aborts" in cohere["detail"]
    # renders where the reference raises
    hermes = got["NousResearch-Hermes-3-Llama-3.1-8B-tool_use/single-user"]
    assert hermes["outcome"] == "fail" and "renders in llama-server, the reference raises" in hermes["detail"]
    # granite 4.0: every failure is the server refusing the messages, none is the template's
    granite = [r for case, r in got.items() if case.startswith("ibm-granite-granite-4.0/") and r["outcome"] == "fail"]
    assert granite and all(any(m in r["detail"] for m in MESSAGE_PARSING) for r in granite)
    assert sum(r["outcome"] == "pass" for case, r in got.items() if case.startswith("ibm-granite-granite-4.0/")) > 30


class _Interrupted(Exception):
    pass


class _StopsAfter(probe.Recorder):
    """A recorder that breaks the run off after ``n`` records (as a kill or a bug would)."""

    def __init__(self, n: int):
        super().__init__("check")
        self.left = n

    def add(self, *args, **kwargs):
        self.left -= 1
        if self.left < 0:
            raise _Interrupted
        return super().add(*args, **kwargs)


@pytest.mark.slow
def test_a_run_broken_off_leaves_no_llama_server_behind(setting, server_tmp):
    """Servers started ahead of their turn are closed when the run stops early."""
    rec = _StopsAfter(70)  # into the second template, with the next ones already starting
    with pytest.raises(_Interrupted):
        _run(setting, rec)
    assert _ours(server_tmp) == [], "a llama-server outlived the broken-off run"
    assert stage_template._LLAMA_SERVERS == []


# --------------------------------------------------------------------------- the pure parts, without a server


def test_the_servers_bos_and_eos_strip_is_compared_as_such():
    strips = {"bos": "<s>", "eos": "</s>", "adds_bos": True, "adds_eos": False}
    want = {"text": "<s>[INST]hi[/INST]"}
    same = corpus_render._compare("t", "llama-server", want, {"text": "[INST]hi[/INST]"}, strips)
    assert same[0] == "pass" and "adds back" in same[1]
    lost = corpus_render._compare("t", "llama-server", want, {"text": "[INST]hi[/INST]"}, dict(strips, adds_bos=False))
    assert lost[0] == "fail" and lost[2] == "missing-bos" and "'<s>'" in lost[1]
    eos = corpus_render._compare("t", "llama-server", {"text": "a</s>"}, {"text": "a"}, strips)
    assert eos[2] == "missing-eos"
    other = corpus_render._compare("t", "llama-server", want, {"text": "[INST]ho[/INST]"}, strips)
    assert other[2] == "mismatch" and other[1].startswith("after the leading BOS text '<s>'")
    assert "first divergence at char 7" in other[1]  # counted in the stripped reference
    exact = corpus_render._compare("t", "llama-server", want, {"text": want["text"]}, strips)
    assert exact == ("pass", "", None)  # a server that keeps the BOS is simply identical
    plain = corpus_render._compare("t", "jinja2", want, {"text": "[INST]hi[/INST]"})
    assert plain[2] == "mismatch" and "first divergence at char 0" in plain[1]  # no rule, no strip


def test_a_template_the_server_will_not_take_is_read_from_its_log():
    fallback = (
        "common_chat_templates_init: failed to parse chat template (defaulting to chatml): "
        "Expected value expression at row 18, column 30:\n{%- for message in messages[::-1] %}\n"
    )
    why = stage_template._template_refusal(fallback)
    assert why and "renders its ChatML default in its place: Expected value expression at row 18" in why
    abort = (
        "Failed to generate tool call example: Unknown type for 'is' operator\n{{ x }}\n"
        "terminate called after throwing an instance of 'std::runtime_error'\n"
        "  what():  error: the supplied chat template is not supported: {{ x }}\n"
    )
    why = stage_template._template_refusal(abort)
    assert why and "refuses the template at start and aborts" in why and "Failed to generate tool call" in why
    assert stage_template._template_refusal("main: server is listening on http://127.0.0.1:8080\n") is None
