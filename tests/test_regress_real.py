"""A real regression, found by the suite, confirmed and bisected over real releases.

transformers 5.22.2 made ``apply_chat_template`` refuse jinja2 older than 3.1.6 at run time,
while its metadata still lets a resolver install jinja2 3.1.5 beside it. With jinja2 held at
3.1.5, the template stage passes on transformers 5.22.1 and fails on 5.24.0: the pipeline must
confirm that by re-running both cells, bisect the releases between, and store one finding per
failing case with the range 5.22.1 -> 5.22.2.
"""

import pytest

from matrix.plan.cells import Cell, Choice
from matrix.app.job import Options, find_regressions, prepare, run_cells
from reports.store import Store


def cell(transformers: str) -> str:
    return Cell.make("cpu", "tiny-qwen2", {
        "engine": Choice("transformers", transformers), "tokenizer": Choice("tokenizers", "0.23.3"),
        "template": Choice("hf-jinja2", "3.1.5"), "client": Choice("openai", "3.57.0")}).id


@pytest.mark.slow
def test_regression_is_confirmed_and_bisected_to_the_release(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMCOMPAT_HOME", str(tmp_path))
    with Store(tmp_path / "store.sqlite") as store:
        old = Options(cells=(cell("5.22.1"),), regress=False)
        first = run_cells(prepare(old), old, store)
        assert [r.stages["template"]["outcome"] for r in first.reports] == ["pass"]
        new = Options(cells=(cell("5.24.0"),))
        prep = prepare(new)
        second = run_cells(prep, new, store)
        assert [r.stages["template"]["outcome"] for r in second.reports] == ["fail"]
        report = find_regressions(prep, new, store, second.run_id)
        assert report is not None and report.findings
        finding = report.findings[0]
        assert (finding["component"], finding["last_good"], finding["first_bad"]) == ("transformers", "5.22.1", "5.22.2")
        assert finding["stage"] == "template"
        assert finding["compare_url"].endswith("/huggingface/transformers/compare/v5.22.1...v5.22.2")
        stored = store.findings()
        assert {f.fingerprint for f in stored} == {f["fingerprint"] for f in report.findings}
        assert all(f.first_bad == "5.22.2" for f in stored)
        assert not report.flaky
