"""The page: derived from the store, untrusted text escaped, checked in a real browser."""

import json
import shutil
import subprocess

import pytest

from reports import page
from reports.aggregate import ingest
from reports.store import Store

from tests.test_store import result, run, write

HOSTILE = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'


def make_store(tmp_path) -> Store:
    bad = result("k2", "fail", "5.1.0")
    bad["records"][0]["detail"] = HOSTILE
    bad["reason"] = "@someone see #123 " + HOSTILE
    s = Store(tmp_path / "s.sqlite")
    ingest(s, run("r1"), [write(tmp_path, result("k1")), write(tmp_path, bad)], reused=[])
    return s


def test_page_data_takes_the_latest_result_per_cell(tmp_path):
    s = make_store(tmp_path)
    data = page.page_data(s.export())
    assert [r["outcome"] for r in data["rows"]] == ["pass", "fail"]
    assert data["counts"] == {"pass": 1, "fail": 1}
    fail = data["rows"][1]
    assert dict(fail["stages"])["template"] == "fail" and dict(fail["stages"])["inference"] == "skipped"


def test_untrusted_text_is_escaped(tmp_path):
    site = page.publish(make_store(tmp_path), tmp_path / "site")
    html = (site / "index.html").read_text()
    assert "<script>document" not in html and "<img src=x" not in html
    assert "&lt;script&gt;" in html
    assert json.loads((site / "results.json").read_text())["cells"][1]["outcome"] == "fail"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (apt-get install chromium)")
def test_page_in_a_real_browser(tmp_path):
    site = page.publish(make_store(tmp_path), tmp_path / "site")
    profile = tmp_path / "profile"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=2000", "--dump-dom",
           (site / "index.html").as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "<title>llmcompat — compatibility matrix</title>" in dom  # the script did not run
    assert dom.count('class="cell"') == 2
    assert 'data-outcome="fail"' in dom and 'title="template: fail"' in dom
    shot = tmp_path / "page.png"
    subprocess.run([*cmd[:-2], f"--screenshot={shot}", "--window-size=1200,600", (site / "index.html").as_uri()],
                   capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 5000


def test_findings_are_listed_and_only_github_links_are_hrefs():
    export = {"cells": [], "runs": [], "findings": [
        {"fingerprint": "f1", "status": "open", "component": "transformers", "last_good": "5.22.1",
         "first_bad": "5.22.2", "stage": "template", "case_id": "single-user", "repro": "nox -s x",
         "compare_url": "https://github.com/huggingface/transformers/compare/v5.22.1...v5.22.2"},
        {"fingerprint": "f2", "status": "open", "component": "evil", "last_good": "1", "first_bad": "2",
         "stage": "template", "case_id": "<b>x</b>", "repro": "", "compare_url": "javascript:alert(1)"},
    ]}
    html = page.render(page.page_data(export))
    assert 'href="https://github.com/huggingface/transformers/compare/v5.22.1...v5.22.2"' in html
    assert "javascript:" not in html and "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
