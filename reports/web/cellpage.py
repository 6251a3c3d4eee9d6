"""The cell page, one per cell (10,000 on a big matrix): plain string formatting of the cell's
precomputed view into the frame of ``base.html``, rendered by Jinja2 once per site.

Jinja2 spent most of a big site's build here (an escaped Markup object per value); this module
writes the very same HTML. Every value from results is escaped as Jinja2's autoescape does
(markupsafe's five characters); only the dots and the frame are already HTML.
"""

from __future__ import annotations

from reports.web.data import AXES

_MARK_TITLE, _MARK_MAIN = "\x00cell-title\x00", "\x00cell-main\x00"
FRAME_SOURCE = (
    '{% extends "base.html" %}{% block title %}' + _MARK_TITLE + "{% endblock %}"
    "{% block main %}" + _MARK_MAIN + "{% endblock %}"
)


def frame(env, **context) -> tuple[str, str, str]:
    """``base.html`` around a cell page at one depth, as the text before the title, between the
    title and the main block, and after it."""
    text = env.from_string(FRAME_SOURCE).render(**context)
    before, rest = text.split(_MARK_TITLE)
    middle, after = rest.split(_MARK_MAIN)
    return before, middle, after


def e(value) -> str:
    """Escape like Jinja2's autoescape (markupsafe): HTML passes, everything else is str()'d."""
    html = getattr(value, "__html__", None)
    if html is not None:
        return html()
    s = value if type(value) is str else str(value)
    if "&" in s:
        s = s.replace("&", "&amp;")
    if "<" in s:
        s = s.replace("<", "&lt;")
    if ">" in s:
        s = s.replace(">", "&gt;")
    if "'" in s:
        s = s.replace("'", "&#39;")
    if '"' in s:
        s = s.replace('"', "&#34;")
    return s


def _g(d, key: str):
    """A dict value as a template reads it: a missing key is empty (Jinja2's Undefined)."""
    return d.get(key, "") if isinstance(d, dict) else getattr(d, key, "")


def _dictsort(d: dict) -> list:
    return sorted(d.items(), key=lambda kv: kv[0].lower() if isinstance(kv[0], str) else kv[0])


def _issue_links(f: dict) -> str:
    issues = _g(f, "issues") or ()
    if not issues:
        return "no issue yet"
    out = []
    for i in issues:
        text = f"{e(_g(i, 'repo'))}#{e(_g(i, 'number'))}"
        url = _g(i, "url")
        out.append((f'<a href="{e(url)}">{text}</a>' if url else text) + f" ({e(_g(i, 'state'))})")
    return ", ".join(out)


def render(c: dict, root: str, frame_parts: tuple[str, str, str], labels: dict, dots, comp_page) -> str:
    """The whole page of cell view ``c`` (``data._cell_view``) at depth ``root``."""
    before, middle, after = frame_parts
    label = labels[c["state"]]
    r = e(root)
    out = [
        before,
        "llmcompat — cell ",
        e(c["id"]),
        middle,
        '<h1>Cell <code class="wrap">',
        e(c["id"]),
        "</code></h1>\n",
        '<p><span class="st ',
        e(c["state"]),
        '">',
        e(_g(label, "symbol")),
        " ",
        e(_g(label, "label")),
        "</span> · outcome <code>",
        e(c["outcome"]),
        "</code> · ",
        e(dots(c["stages"])),
        " · runner <code>",
        e(c["runner"]),
        "</code> · model <code>",
        e(c["model"]),
        "</code> · finished ",
        e(c["finished"]),
    ]
    if c["duration_s"]:
        out += [" in ", e("%.1f" % c["duration_s"]), " s"]  # noqa: UP031 -- as the template's format filter
    out.append('</p>\n<ul class="axes">')
    for a in AXES:
        name, version = c["axes"][a][0], c["axes"][a][1]
        out += [
            "<li>",
            e(a),
            ': <a href="',
            r,
            e(comp_page(a, name)),
            '">',
            e(name),
            "</a> <code>",
            e(version),
            "</code></li>",
        ]
    out += [
        "</ul>\n<h2>What can I do?</h2>\n<p>",
        e(_g(label, "todo")),
        "</p>\n",
        '<p>Reproduce: <code class="wrap">',
        e(c["repro"]),
        "</code></p>\n",
    ]
    if c["findings"]:
        out.append('<h2>Caveats</h2>\n<ol class="notes">')
        for f in c["findings"]:
            out += [
                '<li><a href="',
                r,
                "findings/",
                e(_g(f, "slug")),
                '.html">',
                e(_g(f, "title")),
                "</a> · ",
                e(_g(f, "class")),
                " · ",
                e(_g(f, "status")),
                " · issue: ",
                _issue_links(f),
                "</li>",
            ]
        out.append("</ol>\n")
    first = c["first"]
    if first:
        out += [
            "<h2>First divergence</h2>\n<p>stage <b>",
            e(_g(first, "stage")),
            "</b> · case <code>",
            e(_g(first, "case_id")),
            "</code> · check <code>",
            e(_g(first, "check_name")),
            "</code> · ",
            e(_g(first, "class")),
        ]
        if _g(first, "klass"):
            out += [" (", e(_g(first, "klass")), ")"]
        out += ["</p>\n<pre>", e(_g(first, "detail")), "</pre>\n"]
        sides = c["first_sides"]
        if sides:
            rec = c["sides_record"]
            if rec is not first:
                out += [
                    "<p>First difference with expected and actual: stage <b>",
                    e(_g(rec, "stage")),
                    "</b> · case <code>",
                    e(_g(rec, "case_id")),
                    "</code> · check <code>",
                    e(_g(rec, "check_name")),
                    "</code></p>",
                ]
            out += [
                '<div class="sides"><figure><figcaption>expected</figcaption><pre>',
                e(sides[0]),
                "</pre></figure><figure><figcaption>actual</figcaption><pre>",
                e(sides[1]),
                "</pre></figure></div>\n",
            ]
    out.append(
        '<h2>Results per stage and check</h2>\n<table class="sortable"><thead><tr><th>stage</th>'
        "<th>check</th><th>pass</th><th>fail</th><th>other</th></tr></thead><tbody>\n"
    )
    if c["checks"]:
        for stage, check, n in c["checks"]:
            out += [
                "<tr><td>",
                e(stage),
                "</td><td><code>",
                e(check),
                "</code></td><td>",
                e(n.get("pass", 0)),
                "</td><td>",
                e(n.get("fail", 0)),
                "</td><td>",
            ]
            for o, k in _dictsort(n):
                if o not in ("pass", "fail"):
                    out += [e(o), " ", e(k), " "]
            out.append("</td></tr>\n")
    else:
        out += [
            '<tr><td colspan="5">No per-check results',
            ": see the reason below" if c["reason"] else "",
            ".</td></tr>",
        ]
    out.append("</tbody></table>\n")
    if c["failures"]:
        out.append("<h3>Failing checks</h3>\n")
        for f in c["failures"]:
            out += [
                "<details><summary>",
                e(_g(f, "stage")),
                " · <code>",
                e(_g(f, "case_id")),
                "</code> · <code>",
                e(_g(f, "check_name")),
                "</code> · ",
                e(_g(f, "class")),
            ]
            if _g(f, "klass"):
                out += [" (", e(_g(f, "klass")), ")"]
            out += ["</summary><pre>", e(_g(f, "detail")), "</pre></details>\n"]
        if c["more_failures"]:
            out += ["<p>… and ", e(c["more_failures"]), ' more in <a href="', r, 'results.json">results.json</a>.</p>']
    if c["levels"]:
        out.append("<p>Reproducibility level: ")
        out.append(", ".join(f"{e(k)} <b>{e(v)}</b>" for k, v in _dictsort(c["levels"])))
        out.append("</p>")
    if c["reason"]:
        out += ["<h2>Reason</h2><pre>", e(c["reason"]), "</pre>"]
    if c["log"]:
        out += ["<h2>Log tail</h2><pre>", e(c["log"]), "</pre>"]
    out.append("<h2>Installed packages</h2>\n")
    if c["pins"]:
        out += ["<p>Python ", e(c["python"]), "; ", e(len(c["pins"])), ' packages.</p><ul class="pins">']
        out += [f"<li><code>{e(p)}=={e(v)}</code></li>" for p, v in c["pins"]]
        out.append("</ul>")
    else:
        out.append("<p>No lock recorded.</p>")
    out.append("<h2>History</h2>\n")
    if c["history"]:
        out.append(
            "<table><thead><tr><th>run</th><th>started</th><th>state</th><th>outcome</th><th>key</th></tr>"
            "</thead><tbody>\n"
        )
        for h in c["history"]:
            hl = labels[h["state"]]
            out += [
                "<tr><td><code>",
                e(h["run"]),
                "</code></td><td>",
                e(h["started"]),
                '</td><td><span class="st ',
                e(h["state"]),
                '">',
                e(_g(hl, "symbol")),
                " ",
                e(_g(hl, "label")),
                "</span></td><td>",
                e(h["outcome"]),
                " (reused)" if h["reused"] else "",
                "</td><td><code>",
                e(h["key"][:12]),
                "</code></td></tr>",
            ]
        out.append("</tbody></table>")
    else:
        out.append("<p>No runs recorded.</p>")
    out.append(after)
    return "".join(out)


def table_rows(cells: list[dict], root: str, labels: dict, dots) -> str:
    """The rows of the cells table (``cells_table.html``): 10,000 on the cells page."""
    r = e(root)
    out = []
    for c in cells:
        label, state = labels[c["state"]], e(c["state"])
        out += [
            '<tr class="cell" data-cell="',
            e(c["id"]),
            '" data-outcome="',
            e(c["outcome"]),
            '" data-state="',
            state,
            '"><td><a href="',
            r,
            "cells/",
            e(c["slug"]),
            '.html" class="st ',
            state,
            '">',
            e(_g(label, "symbol")),
            " ",
            e(_g(label, "label")),
            "</a></td><td>",
            e(c["runner"]),
            "</td><td>",
            e(c["model"]),
            "</td>",
        ]
        for a in AXES:
            out += ["<td>", e(c["axes"][a][0]), " <code>", e(c["axes"][a][1]), "</code></td>"]
        out += ["<td>", e(dots(c["stages"])), "</td></tr>\n"]
    return "".join(out)
