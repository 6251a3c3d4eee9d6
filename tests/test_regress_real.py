"""A real regression, found by the suite, confirmed and bisected over real releases.

transformers 5.22.2 made ``apply_chat_template`` refuse jinja2 older than 3.1.6 at run time,
while its base metadata still lets a resolver install jinja2 3.1.5 beside it (the bound is
declared only in its ``chat-template`` extra). The project's axes.yaml now installs that extra,
so there the pair is unresolvable, as it should be; this test declares transformers without the
extra (a copy of axes.yaml), as a user who installs plain ``transformers`` gets it. With jinja2
held at 3.1.5, the template cases pass on transformers 5.22.1 and fail on 5.24.0: the pipeline
must confirm that by re-running both cells, bisect the releases between, and store one finding
per failing case with the range 5.22.1 -> 5.22.2. The newest transformers release still refuses
jinja2 3.1.5, so the findings stay open with no fixed-in.
"""

import pytest

from matrix.app.job import Options, find_regressions, prepare, run_cells
from matrix.declare.loader import DEFAULT_PATH
from matrix.plan.cells import Cell, Choice
from reports.store import Store

EXTRA = "      extras: [chat-template]"


def cell(transformers: str) -> str:
    return Cell.make(
        "cpu",
        "tiny-qwen2",
        {
            "engine": Choice("transformers", transformers),
            "tokenizer": Choice("tokenizers", "0.23.3"),
            "template": Choice("hf-jinja2", "3.1.5"),
            "client": Choice("openai", "3.57.0"),
        },
    ).id


@pytest.mark.slow
def test_regression_is_confirmed_and_bisected_to_the_release(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCOMPAT_HOME", str(tmp_path))
    text = DEFAULT_PATH.read_text(encoding="utf-8")
    assert text.count(EXTRA) == 1, "transformers' chat-template extra moved: update this test"
    axes = tmp_path / "axes.yaml"
    axes.write_text(text.replace(EXTRA, "      # extras: none (plain transformers)"), encoding="utf-8")

    with Store(tmp_path / "store.sqlite") as store:
        old = Options(axes_file=axes, cells=(cell("5.22.1"),), regress=False)
        first = run_cells(prepare(old), old, store)
        new = Options(axes_file=axes, cells=(cell("5.24.0"),))
        prep = prepare(new)
        second = run_cells(prep, new, store)

        def failing(run_id: str) -> set[tuple[str, str]]:
            return {
                (r["case_id"], r["check_name"])
                for r in store.case_rows(run_id)
                if r["stage"] == "template" and r["outcome"] == "fail"
            }

        broken = failing(second.run_id) - failing(first.run_id)
        assert any(check == "transformers" for _, check in broken), broken  # cases that passed, now fail
        report = find_regressions(prep, new, store, second.run_id)
        assert report is not None and report.findings
        finding = report.findings[0]
        assert (finding["component"], finding["last_good"], finding["first_bad"]) == (
            "transformers",
            "5.22.1",
            "5.22.2",
        )
        assert finding["stage"] == "template"
        assert finding["compare_url"].endswith("/huggingface/transformers/compare/v5.22.1...v5.22.2")
        stored = store.findings()
        assert {f.fingerprint for f in stored} == {f["fingerprint"] for f in report.findings}
        assert all(f.first_bad == "5.22.2" for f in stored)
        assert all(f.fixed_in is None and f.status == "open" for f in stored)
        assert not report.flaky
