"""The compatibility page: the front of :mod:`reports.web` that the CLI and the main job call.

``publish`` builds the whole static site (matrix views, version, cell and finding pages, the
five questions, ``matrix.json``, badges, the Atom feed) from the store and swaps it into place;
``page_data`` and ``render`` are the pure data and the index page for callers that have an
export in hand. Everything shown came from models, templates, servers or packages and is
untrusted: autoescape escapes it all.
"""

from __future__ import annotations

from pathlib import Path

from reports.web import render as _render
from reports.web.data import axis_pairs, js_data, matrix_view, site_data
from reports.web.publish import publish as _publish


def page_data(export: dict, run_cells: list[dict] | None = None) -> dict:
    """Pure: everything the site shows, from the store's export. ``findings`` are the
    regressions (``differences`` beside them), ``all_findings`` both kinds."""
    data = site_data(export, run_cells)
    return {**data, "findings": data["regressions"], "all_findings": data["findings"]}


def render(data: dict) -> str:
    """The index page (the default matrix view) for ``page_data``'s result."""
    return dict(_first_pages(data))["index.html"]


def _first_pages(data: dict):
    env = _render.environment()
    labels = {s["id"]: s for s in data["states"]}
    pairs = axis_pairs(data["cells"])
    common = {
        "states": data["states"],
        "labels": labels,
        "last_run": data["last_run"],
        "generated": "",
        "stages": data["stages"],
        "components": data["components"],
    }
    yield (
        "index.html",
        env.get_template("index.html").render(
            **common,
            chrome=_render.chrome(env, "", common),
            cells=data["cells"],
            findings=data.get("all_findings", data["findings"]),
            regressions=data["regressions"],
            differences=data["differences"],
            root="",
            mx=matrix_view(data["cells"], *pairs[0]),
            mx_json=_render.script_json(js_data(data["cells"])),
            pairs=pairs,
            pair_page=lambda a, b: _render.pair_page(a, b, pairs[0]),
            show_cells=len(data["cells"]) <= _render.SHOW_CELLS_ON_INDEX,
            counts=data["counts"],
            outcome_counts=data["outcome_counts"],
            runners=data["runners"],
            models=data["models"],
        ),
    )


def publish(store, site: Path, ttf: list[dict] | None = None, results_dir: Path | None = None, extra=None) -> Path:
    """Write the site under ``site`` atomically (built aside, then swapped in); returns ``site``.
    ``ttf``: the bot's time to fix per project; ``results_dir``: where result files (log tails)
    are; ``extra(new_site_dir)``: more files to publish with it (reproduction scripts)."""
    return _publish(store, site, ttf=ttf, results_dir=results_dir, extra=extra)
