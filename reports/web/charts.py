"""Charts as SVG made at build time: readable without JavaScript, every label escaped.

Each chart has a ``<title>`` and ``<desc>`` (screen readers), prints its value beside every
bar (no meaning carried by colour alone) and sits next to a table with the same numbers.
"""

from __future__ import annotations

from html import escape

from markupsafe import Markup

BAR_H, GAP, LABEL_W, BAR_W, VALUE_W = 18, 6, 150, 220, 90


def bars(title: str, items: list[tuple[str, float, str]], desc: str = "") -> Markup:
    """A horizontal bar chart: ``items`` are (label, value, text shown beside the bar)."""
    top = max((v for _, v, _ in items), default=0) or 1
    height = len(items) * (BAR_H + GAP) + GAP
    width = LABEL_W + BAR_W + VALUE_W
    out = [_open(width, height), f"<title>{escape(title)}</title><desc>{escape(desc or title)}</desc>"]
    for i, (label, value, text) in enumerate(items):
        y = GAP + i * (BAR_H + GAP)
        w = max(0.0, value) / top * BAR_W
        out.append(
            f'<text x="{LABEL_W - 6}" y="{y + BAR_H - 5}" text-anchor="end" class="lbl">{escape(_short(label))}</text>'
            f'<rect x="{LABEL_W}" y="{y}" width="{w:.1f}" height="{BAR_H}" class="bar bar{i % 4}"/>'
            f'<text x="{LABEL_W + w + 4:.1f}" y="{y + BAR_H - 5}" class="val">{escape(text)}</text>'
        )
    out.append("</svg>")
    return Markup("".join(out))


def stacked(title: str, rows: list[tuple[str, list[int]]], legend: list[str], desc: str = "") -> Markup:
    """One bar per row split into parts (e.g. reproducibility levels): each part is named inside
    it when it is wide enough, and every part's name and count is written beside the bar."""
    height = len(rows) * (BAR_H + GAP) + GAP
    width = LABEL_W + BAR_W + VALUE_W
    out = [_open(width, height), f"<title>{escape(title)}</title><desc>{escape(desc or title)}</desc>"]
    for i, (label, parts) in enumerate(rows):
        y = GAP + i * (BAR_H + GAP)
        total = sum(parts) or 1
        x = float(LABEL_W)
        out.append(
            f'<text x="{LABEL_W - 6}" y="{y + BAR_H - 5}" text-anchor="end" class="lbl">{escape(_short(label))}</text>'
        )
        for j, n in enumerate(parts):
            w = n / total * BAR_W
            if n:
                out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{BAR_H}" class="bar bar{j % 4}"/>')
                if w > 24:
                    out.append(f'<text x="{x + 3:.1f}" y="{y + BAR_H - 5}" class="in">{escape(legend[j])}</text>')
            x += w
        text = ", ".join(f"{legend[j]} {n}" for j, n in enumerate(parts) if n)
        out.append(f'<text x="{LABEL_W + BAR_W + 4}" y="{y + BAR_H - 5}" class="val">{escape(text)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def _open(width: int, height: int) -> str:
    return (
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" width="100%" '
        f'preserveAspectRatio="xMinYMin meet" xmlns="http://www.w3.org/2000/svg">'
    )


def _short(label: str, n: int = 24) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"
