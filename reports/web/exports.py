"""The machine-readable files of the site: ``matrix.json`` (described by
``reports/matrix.schema.json``), shields.io endpoint badges, an Atom feed of findings.

Pure: each function returns the text or data to write; the publisher writes them.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

from reports.web.data import STATE_LABEL, STATES, slug

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "matrix.schema.json"
SCHEMA_ID = "llmcompat-matrix/1"
BADGE_COLOR = {
    "works": "brightgreen",
    "caveats": "yellow",
    "broken": "red",
    "flaky": "orange",
    "untested": "lightgrey",
    "uninstallable": "inactive",
}
FEED_ENTRIES = 100


def matrix_json(site: dict, generated: str) -> dict:
    """Every cell's state, stage outcomes and findings; every component's versions."""
    return {
        "schema": SCHEMA_ID,
        "generated": generated,
        "last_run": ({k: site["last_run"].get(k) for k in ("id", "started", "finished")} if site["last_run"] else None),
        "states": {s: STATE_LABEL[s] for s in STATES},
        "stages": site["stages"],
        "components": [{"axis": a, "name": n, "versions": vs} for (a, n), vs in site["components"].items()],
        "cells": [
            {
                "id": c["id"],
                "runner": c["runner"],
                "model": c["model"],
                "components": {a: {"name": n, "version": v} for a, (n, v) in c["axes"].items()},
                "outcome": c["outcome"],
                "state": c["state"],
                "stages": dict(c["stages"]),
                "findings": [f["fingerprint"] for f in c["findings"]],
                "repro": c["repro"],
                "finished": c["finished"],
                "page": f"cells/{c['slug']}.html",
            }
            for c in site["cells"]
        ],
        "findings": [
            {
                "fingerprint": f["fingerprint"],
                "kind": f["kind"],
                "status": f.get("status") or "open",
                "component": f.get("component") or "",
                "axis": f.get("axis") or "",
                "stage": f.get("stage") or "",
                "class": f["class"],
                "last_good": f.get("last_good"),
                "first_bad": f.get("first_bad"),
                "fixed_in": f.get("fixed_in"),
                "versions": f["versions"],
                "cells": len(f["affected"]),
                "issues": [i["url"] for i in f["issues"] if i["url"]],
                "page": f"findings/{f['slug']}.html",
            }
            for f in site["findings"]
        ],
    }


def badges(site: dict) -> dict[str, dict]:
    """shields.io endpoint JSON per component (its newest version) and per component version,
    keyed by the path under the site."""
    out = {}
    for (axis, name), rows in site["versions"].items():
        for i, row in enumerate(rows):
            body = _badge(name, row["version"], row["state"], row["counts"])
            out[f"badges/{axis}/{slug(name)}/{slug(row['version'])}.json"] = body
            if i == 0:  # rows are newest first
                out[f"badges/{axis}/{slug(name)}.json"] = body
    return out


def _badge(name: str, version: str, state: str, counts: dict) -> dict:
    n = sum(counts.values())
    message = f"{version} {STATE_LABEL[state]}" + (f" ({counts.get('works', 0)}/{n} cells work)" if n > 1 else "")
    return {
        "schemaVersion": 1,
        "label": f"llmcompat {name}"[:60],
        "message": message[:80],
        "color": BADGE_COLOR[state],
        "cacheSeconds": 3600,
    }


def feed(site: dict, generated: str, base: str = "") -> str:
    """Atom: one entry per new finding and one per fixed finding, newest first."""
    entries = []
    for f in site["findings"]:
        when_new = f.get("first_seen") or generated
        entries.append((when_new, "new", f))
        if f.get("status") == "fixed":
            entries.append((f.get("last_seen") or when_new, "fixed", f))
    entries.sort(key=lambda e: e[0], reverse=True)
    out = [
        '<?xml version="1.0" encoding="utf-8"?>',
        '<feed xmlns="http://www.w3.org/2005/Atom">',
        "<title>llmcompat findings</title>",
        "<id>urn:llmcompat:findings</id>",
        f"<updated>{escape(generated)}</updated>",
        f'<link rel="alternate" href="{_attr(base)}index.html"/>',
    ]
    for when, what, f in entries[:FEED_ENTRIES]:
        title = f"{what}: {f['title']}" + (
            f" (fixed in {f.get('fixed_in')})" if what == "fixed" and f.get("fixed_in") else ""
        )
        summary = f"{f['kind']} · stage {f.get('stage')} · class {f['class']} · {len(f['affected'])} cell(s)"
        out += [
            "<entry>",
            f"<title>{escape(title)}</title>",
            f"<id>urn:llmcompat:finding:{escape(f['slug'])}:{what}</id>",
            f"<updated>{escape(when)}</updated>",
            f'<link rel="alternate" href="{_attr(base)}findings/{_attr(f["slug"])}.html"/>',
            f"<summary>{escape(summary)}</summary>",
            "</entry>",
        ]
    out.append("</feed>")
    return "\n".join(out) + "\n"


def _attr(text: str) -> str:
    return escape(text, {'"': "&quot;"})
