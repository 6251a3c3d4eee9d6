"""The probe as a real subprocess: divergences, untrusted-template limits, sandbox refusal."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).resolve().parent.parent / "matrix" / "probe" / "probe.py"
CHATML = (
    "{% for m in messages %}{% if m.role not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role: ' + m.role) }}{% endif %}"
    "<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def model_dir(tmp_path, template=CHATML):
    d = tmp_path / "model"
    d.mkdir(exist_ok=True)
    (d / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, "eos_token": "<|im_end|>"}))
    return d


def probe(tmp_path, template=CHATML, cases=None, mode="check", limits=None):
    job = {
        "mode": mode,
        "model_dir": str(model_dir(tmp_path, template)),
        "stages": ["template"],
        "renderers": ["jinja2"],
        "cases": cases or [],
        "limits": limits or {"render_seconds": 2},
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    out = tmp_path / "out.json"
    subprocess.run([sys.executable, "-I", str(PROBE), str(tmp_path / "job.json"), str(out)], check=True, timeout=60)
    return json.loads(out.read_text())


def case(expect_render=None, **kw):
    c = {"id": "c1", "messages": [{"role": "user", "content": "Hi 🙂"}], "expect": {}}
    if expect_render is not None:
        c["expect"]["render"] = expect_render
    c.update(kw)
    return c


GOOD = "<|im_start|>user\nHi 🙂<|im_end|>\n<|im_start|>assistant\n"


def test_exact_render_passes(tmp_path):
    r = probe(tmp_path, cases=[case(GOOD)])
    assert r["stages"]["template"]["outcome"] == "pass"
    assert r["stages"]["inference"]["outcome"] == "skipped"


def test_mismatch_names_the_first_divergent_character(tmp_path):
    r = probe(tmp_path, cases=[case(GOOD.replace("Hi", "Ho"))])
    (rec,) = r["records"]
    assert rec["outcome"] == "fail" and rec["klass"] == "mismatch"
    assert "first divergence at char 18" in rec["detail"] and "Ho 🙂" in rec["detail"] and "Hi 🙂" in rec["detail"]


def test_golden_mode_records_what_was_produced(tmp_path):
    r = probe(tmp_path, cases=[case()], mode="golden")
    assert r["produced"] == {"c1": {"render": GOOD}}


def test_expected_error_passes_and_unexpected_error_fails(tmp_path):
    bad_role = case(messages=[{"role": "wizard", "content": "x"}])
    bad_role["expect"] = {"error": "unknown role"}
    r = probe(tmp_path, cases=[bad_role])
    assert r["records"][0]["outcome"] == "pass"
    bad_role["expect"] = {"render": GOOD}
    r = probe(tmp_path, cases=[bad_role])
    assert r["records"][0]["klass"] == "template-error"


def test_infinite_loop_is_a_named_timeout(tmp_path):
    loop = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    r = probe(tmp_path, template=loop, cases=[case(GOOD)], limits={"render_seconds": 0.5})
    assert r["records"][0]["klass"] == "template-timeout"


def test_huge_output_is_cut_at_the_limit(tmp_path):
    big = "{% for i in range(100000) %}xxxxxxxxxxxxxxxxxxxx{% endfor %}"
    r = probe(tmp_path, template=big, cases=[case(GOOD)], limits={"render_seconds": 20, "render_chars": 100000})
    assert r["records"][0]["klass"] == "template-output-limit"


def test_sandbox_range_limit_is_named(tmp_path):
    r = probe(tmp_path, template="{% for i in range(10**9) %}{% endfor %}", cases=[case(GOOD)])
    assert r["records"][0]["klass"] == "sandbox-limit"


@pytest.mark.parametrize(
    "attack",
    [
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__init__.__globals__ }}",
        "{{ messages.append(1) }}",
    ],
)
def test_sandbox_escape_is_refused(tmp_path, attack):
    r = probe(tmp_path, template=attack, cases=[case(GOOD)])
    assert r["records"][0]["outcome"] == "fail"
    assert r["records"][0]["klass"] in ("sandbox-violation", "mismatch")
    assert "subclasses" not in r["records"][0]["detail"] or "SecurityError" in r["records"][0]["detail"]
