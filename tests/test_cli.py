"""Bad input through the real command line: exit 2, one line naming file, field and value, nothing written."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
AXES = (ROOT / "matrix" / "axes.yaml").read_text()


def llmcompat(tmp_path, *args):
    env = dict(os.environ, LLMCOMPAT_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "matrix.app.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )


def axes_file(tmp_path, text):
    p = tmp_path / "axes.yaml"
    p.write_text(text)
    return p


def assert_rejected(tmp_path, proc, *needles):
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("llmcompat: error: ")
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "home").exists()  # nothing written


def test_malformed_yaml(tmp_path):
    p = axes_file(tmp_path, AXES.replace('suite_version: "1"', "suite_version: [1\n"))
    proc = llmcompat(tmp_path, "run", "--axes", str(p))
    assert_rejected(tmp_path, proc, str(p))


def test_unknown_key_names_line_and_field(tmp_path):
    p = axes_file(
        tmp_path,
        AXES.replace("      repo: huggingface/tokenizers", "      repo: huggingface/tokenizers\n      colour: blue"),
    )
    line = next(i for i, ln in enumerate(p.read_text().splitlines(), 1) if "colour" in ln)
    proc = llmcompat(tmp_path, "plan", "--axes", str(p))
    assert_rejected(tmp_path, proc, f"{p}:", "colour")
    assert f":{line}:" in proc.stderr or f":{line - 1}:" in proc.stderr


def test_unknown_component(tmp_path):
    proc = llmcompat(tmp_path, "run", "--with", "engine/no-such-engine")
    assert_rejected(tmp_path, proc, "axes.engine", "no-such-engine")


def test_version_that_does_not_exist(tmp_path):
    p = axes_file(tmp_path, AXES.replace("versions: {latest: 2, per: major}", 'versions: {explicit: ["0.0.999"]}'))
    assert "0.0.999" in p.read_text()
    proc = llmcompat(tmp_path, "run", "--axes", str(p))
    assert_rejected(tmp_path, proc, "axes.client.openai.versions.explicit", "0.0.999")


def test_empty_axis(tmp_path):
    start = AXES.index("  client:")
    p = axes_file(tmp_path, AXES[:start] + "  client: {}\n" + AXES[AXES.index("constraints:") :])
    proc = llmcompat(tmp_path, "plan", "--axes", str(p))
    assert_rejected(tmp_path, proc, "axes.client")


def test_contradictory_constraints(tmp_path):
    text = AXES + '\n  - exclude: {tokenizer: tokenizers}\n    reason: "excludes every tokenizer"\n'
    p = axes_file(tmp_path, text)
    proc = llmcompat(tmp_path, "plan", "--axes", str(p))
    assert_rejected(tmp_path, proc, "constraints")


def test_bad_cell_id(tmp_path):
    proc = llmcompat(tmp_path, "run", "--cell", "cpu/tiny-qwen2/transformers")
    assert_rejected(tmp_path, proc, "cell")
