"""The page's data, exports and publishing: derived from the store, untrusted text escaped,
built aside and swapped in so that a kill never leaves a half site or stray files."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest

from reports import page
from reports.web import data as d
from reports.web.publish import clean_stale, publish
from tests.page_store import HOSTILE, sample_store, synthetic_store

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("page")
    store, results = sample_store(tmp)
    site = publish(store, tmp / "site", results_dir=results)
    return store, site, results


def by_id(site_data, engine, template="3.1.6", client="3.57.0"):
    for c in site_data["cells"]:
        if c["axes"]["engine"] == engine and c["axes"]["template"][1] == template and c["axes"]["client"][1] == client:
            return c
    raise KeyError(engine)


def test_states_follow_the_results(built):
    store, _, _ = built
    data = page.page_data(store.export())
    assert by_id(data, ("transformers", "5.23.0"))["state"] == "works"
    assert by_id(data, ("transformers", "5.24.0"))["state"] == "caveats"  # some checks fail, no crash
    assert by_id(data, ("mistralrs", "0.8.1"))["state"] == "broken"  # the engine did not start
    assert by_id(data, ("onnxruntime-genai", "0.9.2"))["state"] == "flaky"
    assert by_id(data, ("transformers", "5.24.0"), client="1.0.0")["state"] == "uninstallable"
    assert data["counts"] == {"works": 1, "caveats": 3, "broken": 1, "flaky": 1, "uninstallable": 1}


def test_combining_cells_of_one_square():
    assert d.combine(["works", "works"]) == "works"
    assert d.combine(["works", "broken"]) == "caveats"  # works with some versions of the other axes
    assert d.combine(["broken", "broken"]) == "broken"
    assert d.combine(["flaky", "caveats"]) == "flaky"
    assert d.combine(["uninstallable", "untested"]) == "uninstallable"
    assert d.combine([]) == "untested"


def test_matrix_view_squares_dots_and_numbered_notes(built):
    store, _, _ = built
    data = page.page_data(store.export())
    mx = d.matrix_view(data["cells"], "engine", "client")
    assert [c for c in mx["cols"]] == [("openai", "1.0.0"), ("openai", "3.55.0"), ("openai", "3.57.0")]
    row = dict(mx["grid"])[("transformers", "5.24.0")]
    square = row[2]
    assert square["state"] == "caveats" and square["n"] == 2  # jinja2 3.1.5 and 3.1.6
    assert [s for s, _ in square["stages"]] == list(d.STAGE_NAMES)
    assert dict(square["stages"])["template"] == "fail"
    notes = {n["n"]: n["finding"] for n in mx["notes"]}
    assert square["notes"] and all(k in notes for k in square["notes"])
    regression = next(n for n in notes.values() if n["fingerprint"] == "reg-jinja2-3.1.5")
    assert regression["issues"][0]["url"] == "https://github.com/huggingface/transformers/issues/4242"
    assert d.axis_pairs(data["cells"])[0] == ("engine", "client")


def test_cell_view_has_packages_first_divergence_history(built):
    store, _, _ = built
    data = page.page_data(store.export(), [dict(r) for r in store.db.execute("SELECT * FROM run_cells")])
    cell = by_id(data, ("transformers", "5.24.0"))
    assert ("jinja2", "3.1.6") in cell["pins"]
    assert cell["first"]["stage"] == "tokenize"  # the first failing stage in chain order
    expected, actual = cell["first_sides"]
    assert expected.startswith("[") and actual.startswith("[") and expected != actual  # token ids, side by side
    assert f"expected {expected}, got {actual}" in cell["sides_record"]["detail"]
    assert [(h["run"], h["key"] == "k-j6-second") for h in cell["history"]] == [("r2", True), ("r1", False)]
    assert cell["levels"] == {"transformers": "L0"}


def test_time_to_fix_per_finding_and_project(built):
    store, _, _ = built
    data = page.page_data(store.export())
    evil = next(f for f in data["findings"] if f["fingerprint"] == "reg-evil")
    assert evil["ttf"] == {"days": 4.5, "open": False, "detection_days": None}
    assert data["ttf_projects"]["mistralrs"]["median"] == 4.5
    assert data["ttf_projects"]["transformers"]["fixed"] == 0 and data["ttf_projects"]["transformers"]["open"] >= 1
    assert d.quantile([1, 2, 3, 4, 10], 0.9) == pytest.approx(7.6)


def test_version_view_says_what_broke_and_what_fixed(built):
    store, _, _ = built
    data = page.page_data(store.export())
    rows = {r["version"]: r for r in data["versions"][("engine", "transformers")]}
    assert [r["version"] for r in data["versions"][("engine", "transformers")]] == ["5.24.0", "5.23.0"]
    assert [f["fingerprint"] for f in rows["5.24.0"]["broke"]] == ["reg-jinja2-3.1.5"]
    assert ("client", ["openai 3.57.0"]) in rows["5.23.0"]["works_with"]
    mistral = {r["version"]: r for r in data["versions"][("engine", "mistralrs")]}
    assert [f["fingerprint"] for f in mistral["0.8.1"]["broke"]] == ["reg-evil"]


def test_five_questions_have_samples(built):
    from reports.web.questions import answers

    store, _, _ = built
    export = store.export()
    data = page.page_data(export)
    q = answers(data, export)
    axes = {r["axis"]: r for r in q["axes"]["rows"]}
    assert axes["template"]["differences"] > 0 and q["axes"]["pairs"] > 0  # jinja2 3.1.5 vs 3.1.6
    assert sum(r["share"] for r in q["axes"]["rows"]) == pytest.approx(1.0)
    stages = {r["stage"]: r for r in q["stages"]["rows"]}
    assert stages["tokenize"]["silent"] >= 1 and "tool wiring" in stages
    classes = {r["class"]: r["count"] for r in q["classes"]["rows"]}
    assert classes["crash"] >= 1 and set(classes) == {
        "numerical",
        "crash",
        "concurrency",
        "backend-specific",
        "protocol",
        "configuration-default",
    }
    ups = {r["component"]: r for r in q["upgrades"]["rows"]}
    assert ups["transformers"]["upgrades"] == 1 and ups["transformers"]["broke"] == 1
    assert q["cases"]["top"][0]["findings"] >= q["cases"]["top"][-1]["findings"]
    assert q["cases"]["levels"][0]["engine"] == "transformers"


def test_site_files_and_escaping(built):
    _, site, _ = built
    for rel in (
        "index.html",
        "matrix-engine-tokenizer.html",
        "cells.html",
        "findings.html",
        "questions.html",
        "components.html",
        "matrix.json",
        "matrix.schema.json",
        "feed.xml",
        "results.json",
        "app.js",
        "style.css",
        "components/engine/transformers.html",
        "findings/reg-evil.html",
        "badges/engine/transformers.json",
        "badges/engine/transformers/5.24.0.json",
    ):
        assert (site / rel).is_file(), rel
    for path in site.rglob("*.html"):
        html = path.read_text()
        assert "<script>document" not in html and "<img src=x" not in html, path
        assert "javascript:" not in html, path
        assert not re.search(r"<script(?![^>]*(src=|type=\"application/json\"))", html), path
    hostile = (site / "findings" / "reg-evil.html").read_text()
    assert "&lt;script&gt;document.title=" in hostile
    for line in (site / "index.html").read_text().splitlines():
        if 'id="mx-data"' in line:  # the filter script's JSON cannot close its element
            assert "</" not in line.split(">", 1)[1].rsplit("</script>", 1)[0]


def test_matrix_json_matches_its_schema(built):
    _, site, _ = built
    schema = json.loads((ROOT / "reports" / "matrix.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    doc = json.loads((site / "matrix.json").read_text())
    jsonschema.validate(doc, schema)
    assert len(doc["cells"]) == 7 and {c["state"] for c in doc["cells"]} >= {"works", "broken", "uninstallable"}
    broken = json.loads(json.dumps(doc))
    broken["cells"][0]["state"] = "fine"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_badges_are_shields_endpoints(built):
    _, site, _ = built
    badge = json.loads((site / "badges" / "engine" / "mistralrs.json").read_text())
    assert badge == {
        "schemaVersion": 1,
        "label": "llmcompat mistralrs",
        "message": "0.8.1 broken",
        "color": "red",
        "cacheSeconds": 3600,
    }
    works = json.loads((site / "badges" / "engine" / "transformers" / "5.23.0.json").read_text())
    assert works["message"] == "5.23.0 works" and works["color"] == "brightgreen"


def test_atom_feed_lists_new_and_fixed_findings(built):
    import xml.etree.ElementTree as ET

    _, site, _ = built
    ns = {"a": "http://www.w3.org/2005/Atom"}
    root = ET.fromstring((site / "feed.xml").read_text())
    titles = [e.findtext("a:title", namespaces=ns) for e in root.findall("a:entry", ns)]
    assert any(t.startswith("fixed: mistralrs") and "fixed in 0.8.2" in t for t in titles)
    assert any(t.startswith("new: transformers 5.23.0 → 5.24.0") for t in titles)
    assert any(HOSTILE in t for t in titles)  # as text: the parser read it back from escaped XML
    assert "<script>" not in (site / "feed.xml").read_text()


def test_publish_replaces_the_site_and_cleans_what_a_kill_left(tmp_path):
    store, _ = sample_store(tmp_path)
    site = tmp_path / "site"
    (tmp_path / ".site.abc.building").mkdir()
    (tmp_path / ".site.abc.building" / "index.html").write_text("half")
    site.mkdir()
    (site / ".results.json.x1y2.tmp").write_text("")
    (site / "stale.html").write_text("from an older site")
    publish(store, site)
    assert not (site / "stale.html").exists() and (site / "index.html").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".site.")] == []
    assert not list(site.glob(".*.tmp"))


KILLER = """
import sys, time
from pathlib import Path
from reports.store import Store
from reports.web import publish as p

real = p.render.pages
def slow(*a, **k):
    for i, item in enumerate(real(*a, **k)):
        if i == 20:
            Path(sys.argv[3]).write_text("building")
            time.sleep(60)
        yield item
p.render.pages = slow
p.publish(Store(sys.argv[1], readonly=True), Path(sys.argv[2]))
"""


def test_a_kill_during_publish_leaves_the_old_site_and_the_next_run_cleans_up(tmp_path):
    store = synthetic_store(tmp_path / "s.sqlite", cells=60, findings=10)
    site = tmp_path / "site"
    publish(store, site)
    before = (site / "index.html").read_text()
    flag = tmp_path / "flag"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLER, str(tmp_path / "s.sqlite"), str(site), str(flag)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.time() + 120
    while not flag.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert flag.exists(), "the publish under test never reached its build"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".site.")]
    assert leftovers and all(n.endswith(".building") for n in leftovers)  # what the kill left
    assert (site / "index.html").read_text() == before  # the old site is whole
    assert clean_stale(site) and not [p for p in tmp_path.iterdir() if p.name.startswith(".site.")]
    publish(store, site)
    assert (site / "index.html").is_file() and not list(site.glob(".*.tmp"))


def test_render_of_an_export_in_hand_lists_cells_and_differences():
    export = {
        "cells": [],
        "runs": [],
        "findings": [
            {
                "fingerprint": "f1",
                "kind": "regression",
                "status": "open",
                "component": "transformers",
                "axis": "engine",
                "last_good": "5.22.1",
                "first_bad": "5.22.2",
                "stage": "template",
                "case_id": "single-user",
                "repro": "nox -s x",
                "compare_url": "https://github.com/huggingface/transformers/compare/v5.22.1...v5.22.2",
            },
            {
                "fingerprint": "f2",
                "kind": "regression",
                "status": "open",
                "component": "evil",
                "axis": "engine",
                "last_good": "1",
                "first_bad": "2",
                "stage": "template",
                "case_id": "<b>x</b>",
                "repro": "",
                "compare_url": "javascript:alert(1)",
            },
        ],
    }
    html = page.render(page.page_data(export))
    assert "javascript:" not in html and "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html
    data = page.page_data(export)
    assert [f["compare_url"] for f in data["findings"]] == [
        "https://github.com/huggingface/transformers/compare/v5.22.1...v5.22.2",
        "",
    ]


def test_slugs_are_safe_file_names():
    assert d.slug("5.24.0") == "5.24.0"
    for bad in ("../../etc", "a/b", "<script>", "", ".hidden"):
        s = d.slug(bad)
        assert re.fullmatch(r"[0-9a-f]{16}", s), (bad, s)
    assert d.safe_link("https://github.com/a/b/issues/1") and not d.safe_link("javascript:alert(1)")
    assert not d.safe_link('https://x/"onmouseover=1')


def test_the_bots_time_to_fix_and_reproduction_scripts_are_published_with_the_site(tmp_path):
    from bot import repro, ttf

    store, _ = sample_store(tmp_path)
    stats = [s.as_dict() for s in ttf.summarize(ttf.collect(store))]
    cells = {c["key"]: c for c in store.cells()}
    site = publish(
        store,
        tmp_path / "site",
        ttf=stats,
        extra=lambda d: repro.write_scripts(store.findings(status="open"), d / "repro", cells),
    )
    written = sorted(p.name for p in (site / "repro").glob("*.py"))
    assert written, "no finding had a standalone reproduction"
    fp = written[0][:-3]
    finding = next(
        f for f in store.findings() if (f.fingerprint if hasattr(f, "fingerprint") else f["fingerprint"]) == fp
    )
    slug = d.slug(fp)
    html = (site / "findings" / f"{slug}.html").read_text()
    assert f'href="../repro/{fp}.py"' in html and finding
    questions = (site / "questions.html").read_text()
    assert 'id="ttf-projects"' in questions and stats[0]["project"] in questions
