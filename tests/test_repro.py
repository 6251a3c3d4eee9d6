"""Standalone reproductions (#15 item 2): scripts that need only the cell's packages, run for real
in uv environments (bad and good), and taken as is by ``llmcompat bisect``."""

from __future__ import annotations

import ast
import json
import sys

import pytest

from bot import repro
from tests.conftest import or_skip

STDLIB = {"base64", "json", "os", "sys", "tempfile", "zlib", "datetime"}
LIBRARIES = {"jinja2", "transformers", "tokenizers", "torch"}


def finding(**kw) -> dict:
    base = {
        "fingerprint": "0123456789abcdef",
        "kind": "difference",
        "component": "transformers",
        "axis": "engine",
        "stage": "template",
        "check_name": "transformers",
        "klass": "undeclared-requirement",
        "case_id": "single-user",
        "detail": "",
        "bad_key": "bad",
        "good_key": "",
    }
    return {**base, **kw}


# ------------------------------------------------------------------------------------ pure


@pytest.mark.parametrize(
    "stage,check,kind,front,source",
    [
        ("template", "jinja2", "render", "jinja2", "hf"),
        ("template", "gguf/transformers", "render", "transformers", "gguf"),
        ("template", "transformers:needles", "needles", "transformers", "hf"),
        ("tokenize", "transformers-slow", "ids", "transformers-slow", "hf"),
        ("tokenize", "tokenizers:bos", "bos", "tokenizers", "hf"),
        ("postprocess", "tokenizers:incremental", "incremental", "tokenizers", "hf"),
        ("inference", "transformers", "generate", "transformers", "hf"),
        ("postprocess", "mistralrs:text", "engine-text", "mistralrs", "hf"),
        ("postprocess", "onnxruntime-genai:text", "engine-text", "onnxruntime-genai", "hf"),
        ("postprocess", "reasoning:transformers:stream", "parser-stream", "transformers", "hf"),
    ],
)
def test_spec_for_covers_the_default_matrix_checks(stage, check, kind, front, source):
    spec = repro.spec_for(finding(stage=stage, check_name=check))
    assert (spec.kind, spec.front, spec.source) == (kind, front, source)


@pytest.mark.parametrize(
    "stage,check",
    [
        ("postprocess", "openvino-genai:text"),
        ("template", "jinja2:roundtrip"),
        ("postprocess", "reasoning:transformers"),
        ("client", "openai"),
    ],
)
def test_unsupported_checks_say_why(stage, check):
    with pytest.raises(repro.Unsupported, match="no standalone reproduction"):
        repro.spec_for(finding(stage=stage, check_name=check))


def _imports(text: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    return names


def cell_row(
    model, lock=None, cell_id="cpu/tiny-qwen2/transformers@5.24.0/tokenizers@0.23.3/hf-jinja2@3.1.5/openai@3.57.0"
):
    row = {
        "key": "bad",
        "cell_id": cell_id,
        "model": "tiny-qwen2",
        "model_hash": model.model_hash,
        "engine": "transformers",
        "engine_version": "5.24.0",
        "tokenizer": "tokenizers",
        "tokenizer_version": "0.23.3",
        "template": "hf-jinja2",
        "template_version": "3.1.5",
    }
    if lock is not None:
        row["lock"] = json.dumps(lock.to_json())
    return row


@pytest.mark.parametrize(
    "check,stage,case",
    [
        ("transformers", "template", "single-user"),
        ("gguf/jinja2", "template", "tools-defined"),
        ("jinja2:needles", "template", "cap-reasoning"),
        ("tokenizers", "tokenize", "_tricky/cjk"),
        ("transformers:bos", "tokenize", "single-user"),
        ("tokenizers:incremental", "postprocess", "_detok/cjk"),
        ("transformers:incremental", "postprocess", "_detok/gen:multi-turn"),
        ("transformers", "inference", "multi-turn"),
    ],
)
def test_scripts_import_only_the_cells_packages(model, check, stage, case):
    text = repro.script(finding(check_name=check, stage=stage, case_id=case), cell_row=cell_row(model))
    assert _imports(text) <= STDLIB | LIBRARIES, _imports(text)
    assert not {"matrix", "bot", "reports", "llmcompat", "probe"} & _imports(text)
    assert "What it checks: it " in text and "exit 1 with FAIL" in text.replace("Exit", "exit")
    compile(text, "repro.py", "exec")


def test_untrusted_names_cannot_break_out_of_the_docstring(model):
    evil = finding(check_name="transformers", klass='x"""; import os; os.system("echo pwned") #', fingerprint='ab"""cd')
    text = repro.script(evil, cell_row=cell_row(model))
    tree = ast.parse(text)
    assert '"' not in ast.get_docstring(tree)
    top = {type(n).__name__ for n in tree.body[1:]}
    assert top <= {"Import", "Assign", "FunctionDef", "ClassDef", "If", "ImportFrom"}, top
    assert repro.filename(evil) == "abcd.py"


def test_write_scripts_names_files_by_fingerprint(model, tmp_path):
    fs = [finding(), finding(fingerprint="feedfacefeedface", stage="postprocess", check_name="openvino-genai:text")]
    written = repro.write_scripts(fs, tmp_path / "repro", {"bad": cell_row(model)})
    assert list(written) == ["0123456789abcdef"] and written["0123456789abcdef"].name == "0123456789abcdef.py"
    assert sorted(p.name for p in (tmp_path / "repro").iterdir()) == ["0123456789abcdef.py"]


def test_judge():
    bad, good = repro.Run("bad", 1, "FAIL x"), repro.Run("good", 0, "PASS x")
    assert repro.judge(bad, good).verified is True
    assert repro.judge(bad, None).verified is True
    assert repro.judge(repro.Run("bad", 0, "PASS x"), good).verified is False
    assert repro.judge(bad, repro.Run("good", 1, "FAIL x")).verified is False
    assert repro.judge(repro.Run("bad", 125, "SKIP"), good).verified is None


# ------------------------------------------------------------------------------------ for real


def _lock(*reqs):
    from matrix.env import uv as envs

    lock = or_skip(envs.resolve, list(reqs), python="3.11")
    assert isinstance(lock, envs.Lock), lock
    return lock


@pytest.fixture(scope="module")
def locks():
    """transformers 5.24.0 without its chat-template extra, with jinja2 3.1.5 (bad) and 3.1.6 (good)."""
    from matrix.env import uv as envs

    bad = _lock("transformers==5.24.0", "tokenizers==0.23.3", "jinja2==3.1.5")
    good = _lock("transformers==5.24.0", "tokenizers==0.23.3", "jinja2==3.1.6")
    for lock in (bad, good):
        or_skip(envs.ensure, lock)
    return bad, good


@pytest.mark.network
@pytest.mark.slow
def test_verify_reproduces_in_bad_and_passes_in_good(model, locks):
    bad, good = locks
    cells = {
        "bad": cell_row(model, bad),
        "good": dict(
            cell_row(model, good),
            key="good",
            cell_id="cpu/tiny-qwen2/transformers@5.24.0/tokenizers@0.23.3/hf-jinja2@3.1.6/openai@3.57.0",
        ),
    }
    v = repro.verify(finding(good_key="good"), cells)
    assert v.verified is True, v.detail
    assert "FAIL transformers: ImportError: apply_chat_template requires jinja2>=3.1.6" in v.detail
    assert "PASS transformers: the render equals the golden" in v.detail


@pytest.mark.network
@pytest.mark.slow
def test_a_reproduction_that_does_not_show_the_problem_is_not_verified(model, locks):
    """A finding claimed on a check that passes in its own bad cell: the script says PASS, so it
    is not verified and the bot does not file it upstream."""
    bad, _ = locks
    v = repro.verify(
        finding(stage="tokenize", check_name="tokenizers", klass="mismatch", case_id="multi-turn"),
        {"bad": cell_row(model, bad)},
    )
    assert v.verified is False and "PASS tokenizers" in v.detail, v.detail


@pytest.mark.network
@pytest.mark.slow
def test_the_incremental_detokenization_difference_reproduces(model, locks):
    bad, _ = locks
    f = finding(
        component="tokenizers",
        axis="tokenizer",
        stage="postprocess",
        check_name="tokenizers:incremental",
        klass="backend-specific",
        case_id="_detok/gen:non-ascii",
    )
    v = repro.verify(f, {"bad": cell_row(model, bad)})
    assert v.verified is True and "fed one at a time" in v.detail, v.detail


@pytest.mark.network
@pytest.mark.slow
def test_bisect_takes_the_script_as_is(model, locks, tmp_path, capsys):
    """``llmcompat bisect jinja2 3.1.4,3.1.5,3.1.6 repro.py --with transformers==5.24.0 --find-fix``:
    the real command over real releases finds jinja2 3.1.6 as the first release where it passes."""
    from matrix.app.cli import main

    bad, _ = locks
    script = tmp_path / "repro.py"
    script.write_text(repro.script(finding(), cell_row=cell_row(model, bad)))
    rc = main(
        [
            "bisect",
            "jinja2",
            "3.1.4,3.1.5,3.1.6",
            str(script),
            "--with",
            "transformers==5.24.0",
            "--with",
            "tokenizers==0.23.3",
            "--find-fix",
            "--json",
        ]
    )
    out = capsys.readouterr().out
    res = json.loads(out)
    assert rc == 0 and res["fixed"]["last_bad"] == "3.1.5" and res["fixed"]["first_fixed"] == "3.1.6", out


@pytest.mark.network
@pytest.mark.slow
def test_script_runs_with_nothing_but_the_cells_packages(model, locks, tmp_path):
    """Run outside this checkout (-I, another directory): llmcompat cannot be imported there."""
    import subprocess

    from matrix.env import uv as envs

    bad, _ = locks
    env = envs.ensure(bad)
    probe = subprocess.run(
        [str(env.python), "-I", "-c", "import matrix"], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert probe.returncode != 0
    script = tmp_path / "repro.py"
    script.write_text(
        repro.script(
            finding(stage="tokenize", check_name="transformers", klass="mismatch", case_id="non-ascii"),
            cell_row=cell_row(model, bad),
        )
    )
    proc = subprocess.run(
        [str(env.python), "-I", str(script)], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert proc.returncode == 1 and proc.stdout.startswith("FAIL transformers: ids diverge"), proc.stdout + proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1
    assert sys.executable not in proc.stdout


REFERENCE_CHECKS = [
    ("jinja2", "template", "tools-defined"),
    ("gguf/jinja2", "template", "continue-final-message"),
    ("transformers", "template", "reasoning-field-alias"),
    ("jinja2:needles", "template", "cap-reasoning"),
    ("tokenizers", "tokenize", "_tricky/emoji-zwj"),
    ("tokenizers", "tokenize", "multi-turn"),
    ("transformers:bos", "tokenize", "single-user"),
    ("transformers:incremental", "postprocess", "_detok/cjk"),
    ("transformers", "inference", "multi-turn"),
    ("reasoning:transformers:stream", "postprocess", "_reasoning/no-think"),
    ("tools:transformers:stream", "postprocess", "_tools/parallel"),
]


@pytest.mark.network
@pytest.mark.slow
def test_every_kind_of_script_passes_on_the_reference_path(model, reference_python, tmp_path):
    """The scripts are not trivially failing: on the reference pins (which made the goldens)
    every kind says PASS, exit 0, one line."""
    import subprocess

    outs = []
    for check, stage, case in REFERENCE_CHECKS:
        script = tmp_path / "repro.py"
        script.write_text(repro.script(finding(check_name=check, stage=stage, case_id=case), cell_row=cell_row(model)))
        proc = subprocess.run(
            [str(reference_python), "-I", str(script)], capture_output=True, text=True, cwd=tmp_path, check=False
        )
        outs.append((check, case, proc.returncode, proc.stdout.strip() or proc.stderr[-500:]))
    assert all(code == 0 and out.startswith("PASS ") and "\n" not in out for _, _, code, out in outs), outs


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.parametrize(
    "engine,version,case", [("mistralrs", "0.9.5", "multi-turn"), ("onnxruntime-genai", "0.18.0", "single-user")]
)
def test_engine_detokenization_differences_reproduce_with_the_engine_alone(model, engine, version, case):
    """The default matrix's ``<engine>:text`` differences (mistralrs drops the leading space,
    onnxruntime-genai's decode stops at a lone U+FFFD byte): the engine generates the golden ids
    from the tiny model (weights, or its export, by path) and its own text is not the decode."""
    lock = _lock(f"{engine}=={version}")
    row = dict(
        cell_row(model, lock),
        engine=engine,
        engine_version=version,
        cell_id=f"cpu/tiny-qwen2/{engine}@{version}/tokenizers@0.23.3/hf-jinja2@3.1.6/openai@3.57.0",
    )
    f = finding(
        component=engine, stage="postprocess", check_name=f"{engine}:text", klass="backend-specific", case_id=case
    )
    text = repro.script(f, cell_row=row)
    assert _imports(text) <= STDLIB | {engine.replace("-", "_"), "mistralrs", "onnxruntime_genai"}
    v = repro.verify(f, {"bad": row})
    assert v.verified is True and f"FAIL {engine}: text chars diverge" in v.detail, v.detail


@pytest.mark.network
@pytest.mark.slow
def test_the_streamed_reasoning_parse_difference_reproduces(model, reference_python, tmp_path):
    """transformers' response parser fed token by token keeps the newlines the whole parse strips
    (the default matrix's reasoning:transformers:stream difference)."""
    import subprocess

    script = tmp_path / "repro.py"
    script.write_text(
        repro.script(
            finding(
                stage="postprocess",
                check_name="reasoning:transformers:stream",
                klass="backend-specific",
                case_id="_reasoning/think-then-answer",
            ),
            cell_row=cell_row(model),
        )
    )
    proc = subprocess.run(
        [str(reference_python), "-I", str(script)], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert proc.returncode == 1 and proc.stdout.startswith("FAIL transformers: whole vs streamed: reasoning"), (
        proc.stdout + proc.stderr[-2000:]
    )


def test_a_regression_gets_the_check_its_bad_cell_failed():
    reg = finding(kind="regression", check_name="", klass="", stage="tokenize", case_id="non-ascii")
    results = [
        {
            "case_id": "non-ascii",
            "stage": "tokenize",
            "check_name": "llama-cpp",
            "outcome": "fail",
            "klass": "mismatch",
        },
        {
            "case_id": "non-ascii",
            "stage": "tokenize",
            "check_name": "transformers",
            "outcome": "fail",
            "klass": "mismatch",
        },
        {"case_id": "non-ascii", "stage": "tokenize", "check_name": "tokenizers", "outcome": "pass"},
        {"case_id": "multi-turn", "stage": "tokenize", "check_name": "tokenizers", "outcome": "fail"},
    ]
    got = repro.with_check(reg, results)
    assert (got["check_name"], got["klass"]) == ("transformers", "mismatch")  # the first one a script covers
    assert repro.spec_for(got).kind == "ids"
    assert repro.with_check(reg, results[2:3]) == reg  # nothing failed there: unchanged
    assert repro.with_check(finding(), results)["check_name"] == "transformers"  # a difference keeps its own


@pytest.mark.network
@pytest.mark.slow
def test_a_missing_library_is_skip_not_fail(model, tmp_path):
    """In an environment without the library under test the script exits 125 (bisect's skip):
    a version that cannot run is never read as bad."""
    import subprocess

    from matrix.env import uv as envs

    env = envs.ensure(_lock("packaging==24.2"))
    for check, stage in (("jinja2", "template"), ("tokenizers", "tokenize"), ("transformers", "template")):
        script = tmp_path / "repro.py"
        script.write_text(repro.script(finding(check_name=check, stage=stage), cell_row=cell_row(model)))
        proc = subprocess.run(
            [str(env.python), "-I", str(script)], capture_output=True, text=True, cwd=tmp_path, check=False
        )
        assert proc.returncode == 125 and proc.stdout.startswith("SKIP "), (check, proc.stdout, proc.stderr[-500:])
