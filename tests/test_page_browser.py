"""The site in a real browser: Playwright for Python driving Debian's chromium.

Served over HTTP as GitHub Pages would serve it (and read from disk for the no-JavaScript
case). Screenshots land in ``.llmcompat/artifacts/screenshots/`` (printed, kept after the run).
Chromium is required: without it these tests fail with the install command, they do not skip.
"""

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from reports.web.publish import publish
from tests.page_store import HOSTILE, sample_store

ROOT = Path(__file__).resolve().parent.parent
SHOTS = Path(os.environ.get("LLMCOMPAT_HOME") or ROOT / ".llmcompat") / "artifacts" / "screenshots"
CHROMIUM = os.environ.get("LLMCOMPAT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    store, results = sample_store(tmp)
    out = publish(store, tmp / "site", results_dir=results)
    handler = functools.partial(_Quiet, directory=str(out))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield out, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"chromium not found at {CHROMIUM}: apt-get install -y chromium (or set LLMCOMPAT_CHROMIUM)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    """A page that fails the test on any script error or dialog (an injected alert would be one)."""
    ctx = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    pg.on("dialog", lambda dlg: (errors.append(f"dialog: {dlg.message}"), dlg.dismiss()))
    yield pg
    ctx.close()
    assert errors == []


def shot(pg, name: str) -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    pg.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    assert path.stat().st_size > 5000
    return path


def square(pg, row: str, col: str):
    r = pg.locator("#mx tbody tr", has=pg.locator("th", has_text=row))
    c = pg.locator("#mx thead th").filter(has_text=col)
    index = int(c.first.get_attribute("data-c"))
    return r.first.locator(f'td[data-c="{index}"]')


def test_matrix_view(site, page):
    _, base = site
    page.goto(base + "index.html")
    assert page.title() == "llmcompat — compatibility matrix"
    assert page.locator("#mx").get_attribute("data-rows") == "engine"
    assert page.locator("#mx").get_attribute("data-cols") == "client"
    works = square(page, "5.23.0", "3.57.0")
    assert "works" in works.get_attribute("class") and "✓" in works.inner_text()
    broken = square(page, "0.8.1", "3.57.0")
    assert "broken" in broken.get_attribute("class") and "broken" in broken.inner_text()
    caveats = square(page, "5.24.0", "3.57.0")
    assert "works with caveats" in caveats.inner_text() and "2 cells" in caveats.inner_text()
    dots = caveats.locator(".dot")
    assert [dots.nth(i).get_attribute("aria-label") for i in range(5)] == [
        "template: fail",
        "tokenize: fail",
        "inference: pass",
        "postprocess: fail",
        "client: skipped",
    ]
    note = caveats.locator("sup a").first
    target = note.get_attribute("href")
    assert page.locator(target).locator("a").first.get_attribute("href").startswith("findings/")
    assert "cannot be installed together" in square(page, "5.24.0", "1.0.0").inner_text()
    assert "not tested" in square(page, "0.8.1", "1.0.0").inner_text()
    assert page.locator("tr.cell").count() == 7
    shot(page, "matrix")


def href(page):
    """The page's own location: Playwright learns of a replaceState or fragment change asynchronously."""
    return page.evaluate("location.href")


def test_filters_and_their_state_in_the_url(site, page):
    _, base = site
    page.goto(base + "index.html")
    page.select_option("select[name=state]", "broken")
    q = parse_qs(urlparse(href(page)).query)
    assert q == {"state": ["broken"]}
    page.goto(base + "index.html#main")  # an anchor is not filter state: filtering keeps it
    page.select_option("select[name=state]", "broken")
    assert urlparse(href(page)).query == "state=broken" and urlparse(href(page)).fragment == "main"
    assert "dim" in square(page, "5.23.0", "3.57.0").get_attribute("class")
    assert "dim" not in square(page, "0.8.1", "3.57.0").get_attribute("class")
    page.select_option("select[name=component]", "engine|transformers")
    assert parse_qs(urlparse(href(page)).query) == {"state": ["broken"], "component": ["engine|transformers"]}
    assert page.locator("#mx tbody tr", has_text="mistralrs").is_hidden()
    shot(page, "matrix-filtered")
    # the URL alone restores the filters
    page.goto(base + "index.html?stage=tokenize&runner=cpu&state=caveats")
    assert page.locator("select[name=stage]").input_value() == "tokenize"
    assert page.locator("select[name=state]").input_value() == "caveats"
    tok = square(page, "5.23.0", "3.57.0")
    assert "works" in tok.get_attribute("class")  # its tokenize stage passed
    assert "caveats" in square(page, "5.24.0", "3.57.0").get_attribute("class")
    assert "cells match" in page.locator("#shown").inner_text()
    # another axis pair is another page, the filters go along
    page.select_option("select[name=cols]", "template")
    page.wait_for_url("**/matrix-engine-template.html*")
    assert parse_qs(urlparse(href(page)).query)["state"] == ["caveats"]
    assert page.locator("#mx").get_attribute("data-cols") == "template"
    assert page.locator("select[name=state]").input_value() == "caveats"
    page.select_option("select[name=version]", "template|hf-jinja2@3.1.5")
    visible = page.locator("#mx thead th[data-c]:visible")
    assert visible.count() == 1 and "3.1.5" in visible.inner_text()
    page.click("button[type=reset]")
    page.wait_for_function("() => !location.search")
    assert page.locator("#mx thead th[data-c]:visible").count() == 2


def test_navigation_to_cell_and_finding_pages(site, page):
    _, base = site
    page.goto(base + "index.html")
    square(page, "5.24.0", "3.57.0").locator("a.st").click()
    page.wait_for_url("**/cells/*.html")
    text = page.locator("main").inner_text()
    assert "transformers 5.24.0" in text.replace("\n", " ") or "transformers" in text
    for heading in (
        "What can I do?",
        "First divergence",
        "Results per stage and check",
        "Log tail",
        "Installed packages",
        "History",
    ):
        assert page.get_by_role("heading", name=heading).count() == 1, heading
    assert page.locator(".sides figure").count() == 2
    assert "jinja2==3.1" in text and 'nox -s "cell(cpu/tiny-qwen2/transformers@5.24.0' in text
    shot(page, "cell")
    page.get_by_role("link", name="transformers 5.23.0 → 5.24.0: template case single-user").first.click()
    page.wait_for_url("**/findings/reg-jinja2-3.1.5.html")
    facts = page.locator("dl.facts").inner_text()
    assert "last good 5.23.0 → first bad 5.24.0 → first fixed not yet" in " ".join(facts.split())
    assert page.get_by_role("link", name="compare").get_attribute("href").startswith("https://github.com/")
    assert page.get_by_role("link", name="huggingface/transformers#4242").count() == 1
    assert "configuration-default" in facts and "open for" in facts
    shot(page, "finding")
    page.get_by_role("link", name="version view").click()
    page.wait_for_url("**/components/engine/transformers.html")
    assert "Broke in this release: transformers 5.23.0 → 5.24.0" in " ".join(page.locator("main").inner_text().split())
    page.goto(base + "questions.html")
    assert page.locator("svg.chart").count() == 6 and page.locator(".method").count() == 5
    shot(page, "questions")


def test_injected_content_stays_inert(site, page):
    _, base = site
    for rel in ("index.html", "findings/reg-evil.html", "findings.html", "cells.html", "questions.html"):
        page.goto(base + rel)
        assert "pwned" not in page.title(), rel
        assert page.locator("img").count() == 0, rel
        hrefs = page.eval_on_selector_all("a[href]", "els => els.map(e => e.getAttribute('href'))")
        assert not [h for h in hrefs if h.strip().lower().startswith("javascript:")], rel
    page.goto(base + "findings/reg-evil.html")
    assert HOSTILE in page.locator("main").inner_text()  # shown as text
    assert page.locator("a", has_text="EricLBuehler/mistral.rs#7").count() == 0  # its javascript: url is no link
    page.goto(base + "cells.html")
    page.locator("tr.cell", has_text="3.55.0").locator("a").click()
    assert HOSTILE in page.locator("main").inner_text() and "pwned" not in page.title()
    shot(page, "hostile-cell")


def test_without_javascript(site, browser):
    out, _ = site
    ctx = browser.new_context(java_script_enabled=False, viewport={"width": 1200, "height": 900})
    pg = ctx.new_page()
    pg.goto((out / "index.html").as_uri())
    assert pg.locator("#filters").is_hidden()  # only the script shows the filters
    assert pg.locator("#mx td.sq").count() == 4 * 3 and pg.locator("tr.cell").count() == 7
    assert "broken" in square(pg, "0.8.1", "3.57.0").inner_text()
    pg.get_by_role("link", name="engine × template").click()
    assert pg.locator("#mx").get_attribute("data-cols") == "template"
    pg.goto((out / "questions.html").as_uri())
    assert pg.locator("svg.chart title").count() == 6
    shot(pg, "no-javascript")
    ctx.close()


@pytest.mark.parametrize(
    "rel",
    [
        "index.html",
        "cells.html",
        "findings.html",
        "questions.html",
        "findings/reg-jinja2-3.1.5.html",
        "components/engine/transformers.html",
    ],
)
def test_phone_width_has_no_horizontal_overflow(site, browser, rel):
    _, base = site
    ctx = browser.new_context(viewport={"width": 375, "height": 800}, device_scale_factor=1, is_mobile=True)
    pg = ctx.new_page()
    pg.goto(base + rel)
    width = pg.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, f"{rel}: {width}px wide"
    if rel == "index.html":
        pg.screenshot(path=str(SHOTS / "phone.png"))
        print(f"screenshot: {SHOTS / 'phone.png'}")
    ctx.close()


def test_phone_width_cell_page(site, browser):
    _, base = site
    ctx = browser.new_context(viewport={"width": 375, "height": 800}, is_mobile=True)
    pg = ctx.new_page()
    pg.goto(base + "cells.html")
    for i in range(pg.locator("tr.cell a").count()):
        pg.goto(base + "cells.html")
        pg.locator("tr.cell a").nth(i).click()
        pg.wait_for_url("**/cells/*.html")  # measure the cell page, not cells.html while it unloads
        assert pg.evaluate("document.documentElement.scrollWidth") <= 375, pg.url
    ctx.close()


def test_keyboard_navigation(site, page):
    _, base = site
    page.goto(base + "index.html")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    page.wait_for_url("**/index.html#main")  # the browser reports a fragment navigation asynchronously
    seen = []
    for _ in range(80):
        page.keyboard.press("Tab")
        info = page.evaluate(
            "(() => { const e = document.activeElement;"
            " return [e.tagName, e.getAttribute('name') || '', e.getAttribute('href') || '',"
            " !!e.closest('#mx')]; })()"
        )
        seen.append(info)
        if info[0] == "A" and info[3] and info[2].startswith("cells/"):
            break
    tags = {(t, n) for t, n, _, _ in seen}
    assert ("SELECT", "state") in tags and ("SELECT", "component") in tags  # filters reachable
    assert seen[-1][3] and seen[-1][2].startswith("cells/"), seen[-5:]  # a square reached by Tab
    page.keyboard.press("Enter")
    page.wait_for_url("**/cells/*.html")
    page.goto(base + "findings.html")
    page.locator("th button.sort").first.focus()
    page.keyboard.press("Enter")
    assert page.locator("th[aria-sort]").count() == 1
