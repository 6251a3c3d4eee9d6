"""The Jinja2 writer: the site data into HTML pages, at build time.

Autoescape is on for every template and nothing from results is marked safe; the only
``Markup`` is the SVG made by :mod:`reports.web.charts`, which escapes its own labels. JSON
for the filter script is embedded with ``<``, ``>`` and ``&`` escaped, so no text in it can
close the script element.
"""

from __future__ import annotations

import json
from functools import lru_cache, partial
from html import escape
from pathlib import Path

from markupsafe import Markup

from reports.web import cellpage, charts
from reports.web.data import AXES, STAGE_SYMBOL, axis_pairs, js_data, matrix_view, slug

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "web"
SHOW_CELLS_ON_INDEX = 500
STATIC = ("style.css", "app.js")


@lru_cache(maxsize=1)
def environment():
    """The one Jinja2 environment (its templates compile once per process, before forked
    renderers start, so they share the compiled code)."""
    from jinja2 import Environment, FileSystemLoader

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(
        comp_page=comp_page, pair_page=pair_page, axes=AXES, stage_symbols=STAGE_SYMBOL, dots=dots, cell_rows=cell_rows
    )
    return env


def dots(stages) -> Markup:
    """One dot per stage: a symbol per outcome, its name in text for screen readers and tooltips."""
    return _dots(tuple((s, o) for s, o in stages))


@lru_cache(maxsize=4096)
def _dots(stages: tuple) -> Markup:
    parts = []
    for stage, outcome in stages:
        label = escape(f"{stage}: {outcome}")
        parts.append(
            f'<span class="dot {escape(str(outcome))}" role="img" aria-label="{label}" title="{label}">'
            f"{escape(STAGE_SYMBOL.get(outcome, '?'))}</span>"
        )
    return Markup('<span class="dots">' + "".join(parts) + "</span>")


def cell_rows(cells: list[dict], root: str, labels: dict) -> Markup:
    """The cells table's rows, built as strings (every value escaped there)."""
    return Markup(cellpage.table_rows(cells, root, labels, dots))


def chrome(env, root: str, common: dict) -> dict:
    """The head links, header and footer of pages at one depth, rendered once."""
    mod = env.get_template("chrome.html").make_module({**common, "root": root})
    return {"head": Markup(mod.head()), "header": Markup(mod.header()), "footer": Markup(mod.footer())}


def comp_page(axis: str, name: str) -> str:
    return f"components/{slug(axis)}/{slug(name)}.html"


def pair_page(rows: str, cols: str, default: tuple[str, str] | None = None) -> str:
    return "index.html" if default == (rows, cols) else f"matrix-{rows}-{cols}.html"


def script_json(data) -> Markup:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return Markup(text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e"))


def warm() -> None:
    """Compile every page template now (in the parent, before forking)."""
    env = environment()
    for name in TEMPLATES.glob("*.html"):
        env.get_template(name.name)


def pages(site: dict, answers, generated: str):
    """(relative path, text) for every page of the site."""
    for rel, make in page_jobs(site, answers, generated):
        yield rel, make()


def page_jobs(site: dict, answers, generated: str):
    """(relative path, a function that renders it) for every page: cheap to list, so several
    processes can share the rendering. ``answers``: the five questions' answers, or a function
    that computes them (only the questions page needs them)."""
    env = environment()
    labels = {s["id"]: s for s in site["states"]}
    common = {
        "states": site["states"],
        "labels": labels,
        "last_run": site["last_run"],
        "generated": generated,
        "stages": site["stages"],
        "components": site["components"],
    }
    depth = {root: chrome(env, root, common) for root in ("", "../", "../../")}
    pairs = axis_pairs(site["cells"])
    default = pairs[0]
    mx_json: list[Markup] = []  # the matrix's JSON, serialised once, on first use
    index = env.get_template("index.html")

    def matrix_page(rows: str, cols: str) -> str:
        if not mx_json:
            mx_json.append(script_json(js_data(site["cells"])))
        return index.render(
            **common,
            **_lists(site),
            root="",
            chrome=depth[""],
            mx=matrix_view(site["cells"], rows, cols),
            mx_json=mx_json[0],
            pairs=pairs,
            pair_page=lambda a, b: pair_page(a, b, default),
            show_cells=len(site["cells"]) <= SHOW_CELLS_ON_INDEX,
            counts=site["counts"],
            outcome_counts=site["outcome_counts"],
            runners=site["runners"],
            models=site["models"],
        )

    def page(template: str, **extra):
        return partial(env.get_template(template).render, **common, **extra)

    for rows, cols in pairs:
        yield pair_page(rows, cols, default), partial(matrix_page, rows, cols)
    yield "cells.html", page("cells.html", root="", chrome=depth[""], cells=site["cells"])
    yield "findings.html", page("findings.html", **_lists(site), root="", chrome=depth[""])
    yield "components.html", page("components.html", root="", chrome=depth[""])

    def questions_page() -> str:
        q = answers() if callable(answers) else answers
        return env.get_template("questions.html").render(
            **common, root="", chrome=depth[""], q=q, charts=question_charts(q), ttf_bot=site.get("ttf_bot", [])
        )

    yield "questions.html", questions_page
    cell_frame = cellpage.frame(env, **common, root="../", chrome=depth["../"])
    for c in site["cells"]:
        yield f"cells/{c['slug']}.html", partial(cellpage.render, c, "../", cell_frame, labels, dots, comp_page)
    finding = env.get_template("finding.html").render
    bisections = site.get("bisections", {})
    for f in site["findings"]:
        yield (
            f"findings/{f['slug']}.html",
            partial(
                finding, **common, root="../", chrome=depth["../"], f=f, bisections=bisections.get(f["fingerprint"], [])
            ),
        )
    for (axis, name), rows in site["versions"].items():
        yield (
            comp_page(axis, name),
            page(
                "component.html",
                root="../../",
                chrome=depth["../../"],
                axis=axis,
                name=name,
                rows=rows,
                badge_path=f"badges/{slug(axis)}/{slug(name)}.json",
            ),
        )


def _lists(site: dict) -> dict:
    return {
        "cells": site["cells"],
        "findings": site["findings"],
        "regressions": site["regressions"],
        "differences": site["differences"],
    }


def _pct(x: float) -> str:
    return f"{x * 100:.1f} %"


def question_charts(q: dict) -> dict:
    pct = _pct
    up = [r for r in q["upgrades"]["rows"] if r["upgrades"]]
    return {
        "axes": charts.bars(
            "Share of outcome differences per axis",
            [(r["axis"], r["share"], f"{pct(r['share'])} ({r['differences']})") for r in q["axes"]["rows"]],
        ),
        "stages": charts.bars(
            "Silent degradations per stage",
            [(r["stage"], r["rate"], f"{pct(r['rate'])} ({r['silent']}/{r['cells']})") for r in q["stages"]["rows"]],
        ),
        "classes": charts.bars(
            "Engine findings per failure class",
            [(r["class"], r["count"], str(r["count"])) for r in q["classes"]["rows"]],
        ),
        "upgrades": charts.bars(
            "Upgrades that broke something, per component",
            [(r["component"], r["rate"], f"{pct(r['rate'])} ({r['broke']}/{r['upgrades']})") for r in up[:20]],
        ),
        "cases": charts.bars(
            "Findings per golden case", [(r["case"], r["findings"], str(r["findings"])) for r in q["cases"]["top"]]
        ),
        "levels": charts.stacked(
            "Reproducibility level per engine and runner",
            [(f"{r['engine']} / {r['runner']}", r["counts"]) for r in q["cases"]["levels"]],
            q["cases"]["level_names"],
        ),
    }


def static_files() -> dict[str, str]:
    return {name: (TEMPLATES / name).read_text(encoding="utf-8") for name in STATIC}
