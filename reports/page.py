"""The static compatibility page and its JSON export, derived from the store only.

Everything shown came from models, templates or servers and is untrusted: Jinja2's
autoescape escapes it all; nothing is marked safe. Files are written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

from matrix import atomic
from matrix.outcome import STAGES

TEMPLATES = Path(__file__).resolve().parent / "templates"
CASES_SHOWN = 8


def page_data(export: dict) -> dict:
    """Pure: the latest result of every cell, with its stage dots and failing checks."""
    latest: dict[str, dict] = {}
    for cell in export["cells"]:
        prev = latest.get(cell["cell_id"])
        if prev is None or cell["finished"] >= prev["finished"]:
            latest[cell["cell_id"]] = cell
    rows = []
    for cell_id in sorted(latest):
        cell = latest[cell_id]
        failures = [r for r in cell.get("results", []) if r["outcome"] == "fail"]
        rows.append({
            "id": cell_id,
            "runner": cell["runner"],
            "model": cell["model"],
            "axes": [(a, cell[a], cell[f"{a}_version"]) for a in ("engine", "tokenizer", "template", "client")],
            "outcome": cell["outcome"],
            "stages": [(s.value, cell.get("stages", {}).get(s.value, "skipped")) for s in STAGES],
            "failures": failures[:20],
            "more_failures": max(0, len(failures) - 20),
            "reason": (cell.get("reason") or "")[-2000:],
            "repro": cell.get("repro", ""),
            "finished": cell["finished"],
        })
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    runs = export.get("runs", [])
    findings = [
        {**f, "compare_url": f.get("compare_url") if _safe_link(f.get("compare_url")) else ""}
        for f in sorted(export.get("findings", []), key=lambda f: (f.get("status", ""), f.get("first_seen", "")))
    ]
    differences = sorted((f for f in findings if f.get("kind") == "difference"),
                         key=lambda f: (f["status"] != "open", f["stage"], f["component"], f.get("check_name", "")))
    for f in differences:
        f["shown_cases"] = list(f.get("cases") or [])[:CASES_SHOWN]
    return {"rows": rows, "counts": counts, "last_run": runs[-1] if runs else None,
            "stages": [s.value for s in STAGES],
            "findings": [f for f in findings if f.get("kind", "regression") == "regression"],
            "differences": differences}


def _safe_link(url) -> bool:
    """Only links to GitHub compare pages become hrefs; anything else stays text."""
    return isinstance(url, str) and url.startswith("https://github.com/") and '"' not in url


def render(data: dict) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True)
    return env.get_template("index.html").render(**data)


def _write(path: Path, text: str) -> None:
    atomic.write_text(path, text)


def publish(store, site: Path) -> Path:
    """Write ``index.html`` and ``results.json`` under ``site``; returns ``site``."""
    site.mkdir(parents=True, exist_ok=True)
    export = store.export()
    _write(site / "results.json", json.dumps(export, indent=1, sort_keys=True, ensure_ascii=False))
    _write(site / "index.html", render(page_data(export)))
    return site
