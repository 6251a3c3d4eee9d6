"""The Jinja2 writer: the site data into HTML pages, at build time.

Autoescape is on for every template and nothing from results is marked safe; the only
``Markup`` is the SVG made by :mod:`reports.web.charts`, which escapes its own labels. JSON
for the filter script is embedded with ``<``, ``>`` and ``&`` escaped, so no text in it can
close the script element.
"""

from __future__ import annotations

import json
from pathlib import Path

from markupsafe import Markup

from reports.web import charts
from reports.web.data import AXES, STAGE_SYMBOL, axis_pairs, js_data, matrix_view, slug

TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "web"
SHOW_CELLS_ON_INDEX = 500
STATIC = ("style.css", "app.js")


def environment():
    from jinja2 import Environment, FileSystemLoader

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.globals.update(comp_page=comp_page, pair_page=pair_page, axes=AXES, stage_symbols=STAGE_SYMBOL)
    return env


def comp_page(axis: str, name: str) -> str:
    return f"components/{slug(axis)}/{slug(name)}.html"


def pair_page(rows: str, cols: str, default: tuple[str, str] | None = None) -> str:
    return "index.html" if default == (rows, cols) else f"matrix-{rows}-{cols}.html"


def script_json(data) -> Markup:
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return Markup(text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e"))


def pages(site: dict, answers: dict, generated: str):
    """(relative path, text) for every page of the site."""
    env = environment()
    labels = {s["id"]: s for s in site["states"]}
    common = {"states": site["states"], "labels": labels, "last_run": site["last_run"], "generated": generated,
              "stages": site["stages"], "components": site["components"]}
    pairs = axis_pairs(site["cells"])
    default = pairs[0]
    mx_json = script_json(js_data(site["cells"]))
    index = env.get_template("index.html")
    for rows, cols in pairs:
        mx = matrix_view(site["cells"], rows, cols)
        yield (pair_page(rows, cols, default), index.render(
            **common, **_lists(site), root="", mx=mx, mx_json=mx_json, pairs=pairs,
            pair_page=lambda a, b: pair_page(a, b, default), show_cells=len(site["cells"]) <= SHOW_CELLS_ON_INDEX,
            counts=site["counts"], outcome_counts=site["outcome_counts"], runners=site["runners"],
            models=site["models"]))
    yield "cells.html", env.get_template("cells.html").render(**common, root="", cells=site["cells"])
    yield "findings.html", env.get_template("findings.html").render(**common, **_lists(site), root="")
    yield "components.html", env.get_template("components.html").render(**common, root="")
    yield "questions.html", env.get_template("questions.html").render(**common, root="", q=answers,
                                                                      charts=question_charts(answers))
    cell = env.get_template("cell.html")
    for c in site["cells"]:
        yield f"cells/{c['slug']}.html", cell.render(**common, root="../", c=c)
    finding = env.get_template("finding.html")
    bisections = site.get("bisections", {})
    for f in site["findings"]:
        yield f"findings/{f['slug']}.html", finding.render(**common, root="../", f=f,
                                                           bisections=bisections.get(f["fingerprint"], []))
    component = env.get_template("component.html")
    for (axis, name), rows in site["versions"].items():
        yield comp_page(axis, name), component.render(
            **common, root="../../", axis=axis, name=name, rows=rows,
            badge_path=f"badges/{slug(axis)}/{slug(name)}.json")


def _lists(site: dict) -> dict:
    return {"cells": site["cells"], "findings": site["findings"], "regressions": site["regressions"],
            "differences": site["differences"]}


def question_charts(q: dict) -> dict:
    pct = lambda x: f"{x * 100:.1f} %"  # noqa: E731
    up = [r for r in q["upgrades"]["rows"] if r["upgrades"]]
    return {
        "axes": charts.bars("Share of outcome differences per axis",
                            [(r["axis"], r["share"], f"{pct(r['share'])} ({r['differences']})") for r in q["axes"]["rows"]]),
        "stages": charts.bars("Silent degradations per stage",
                              [(r["stage"], r["rate"], f"{pct(r['rate'])} ({r['silent']}/{r['cells']})")
                               for r in q["stages"]["rows"]]),
        "classes": charts.bars("Engine findings per failure class",
                               [(r["class"], r["count"], str(r["count"])) for r in q["classes"]["rows"]]),
        "upgrades": charts.bars("Upgrades that broke something, per component",
                                [(r["component"], r["rate"], f"{pct(r['rate'])} ({r['broke']}/{r['upgrades']})")
                                 for r in up[:20]]),
        "cases": charts.bars("Findings per golden case",
                             [(r["case"], r["findings"], str(r["findings"])) for r in q["cases"]["top"]]),
        "levels": charts.stacked("Reproducibility level per engine and runner",
                                 [(f"{r['engine']} / {r['runner']}", r["counts"]) for r in q["cases"]["levels"]],
                                 q["cases"]["level_names"]),
    }


def static_files() -> dict[str, str]:
    return {name: (TEMPLATES / name).read_text(encoding="utf-8") for name in STATIC}
