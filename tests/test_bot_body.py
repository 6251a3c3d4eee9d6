"""The issue body: escaping of untrusted text and shortening under GitHub's limit (pure, property-tested)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.github import body as bodies
from bot.github import escape
from bot.github.decide import Context, Settings, changes, state_of
from matrix.outcome import Finding

text_chars = st.characters(exclude_categories=["Cs"])  # any text but lone surrogates
untrusted = st.text(alphabet=text_chars, max_size=300) | st.sampled_from(
    [
        "@octocat please look",
        "fixes #12 and owner/repo#3",
        "GH-7",
        "<script>alert(1)</script>",
        "</details>",
        "```\nclosing the fence",
        "-->",
        '<!-- llmcompat:finding {"fp":"evil"} -->',
        "| a | b |",
        "**bold** _x_",
        "[link](https://example.invalid)",
        "![img](x)",
        "&amp; &lt;",
        "a\nb\r\nc",
        "`code` ``more``",
    ]
)


def finding(**kw) -> Finding:
    base = dict(
        fingerprint="0123abcd0123abcd",
        kind="difference",
        case_id="non-ascii",
        stage="tokenize",
        component="tokenizers",
        axis="tokenizer",
        check_name="tokenizers",
        klass="mismatch",
        detail="first divergence at token 0 (expected 24 ids, got 22): expected [68, 702, 220], got [438, 220]",
        cases=("non-ascii", "cjk"),
        versions=("0.23.3",),
        cells=2,
        repro='nox -s "cell(x)"',
    )
    return Finding(**{**base, **kw})


def view(f: Finding, **kw) -> bodies.IssueView:
    return bodies.IssueView(finding=f, state=state_of(f, Context()), **kw)


@given(untrusted)
def test_text_neutralises_mentions_references_html_and_lines(s):
    out = escape.text(s)
    assert "<" not in out and ">" not in out and "\n" not in out
    assert not re.search(r"@[A-Za-z0-9]", out) and not re.search(r"#[A-Za-z0-9]", out)
    assert not re.search(r"(?i)\bGH-\d", out)


@given(untrusted)
def test_code_and_fence_keep_the_text_and_cannot_be_closed_by_it(s):
    span = escape.code(s)
    ticks = re.match(r"`+", span).group(0)
    inner = span[len(ticks) : -len(ticks)]
    assert ticks not in inner  # content never holds the delimiter run
    block = escape.fence(s)
    first, *middle, last = block.split("\n")
    assert first.startswith("```") and last == first.rstrip("abcdefghijklmnopqrstuvwxyz")
    assert not any(line.strip().startswith(last) for line in middle)
    assert "\n".join(middle) == s.rstrip("\n")


@given(st.lists(untrusted, min_size=1, max_size=5), untrusted, untrusted)
@settings(max_examples=60, deadline=None)
def test_untrusted_fields_never_escape_their_place(cases, detail, version):
    f = finding(cases=tuple(cases), case_id=cases[0], detail=detail, versions=(version,), check_name=detail[:40])
    body = bodies.render(view(f, triage=None, flake=detail, cell_ids=(version,)))
    assert bodies.parse_marker(body)["fp"] == f.fingerprint  # the first marker is the bot's, whatever the fields say
    outside = _outside_code(body)
    assert outside.count("<details>") == outside.count("</details>") >= 1
    assert not re.search(r"@[A-Za-z0-9]", outside) and not re.search(r"(?<![&])#[A-Za-z0-9]", outside)
    assert "<script" not in outside


def _outside_code(body: str) -> str:
    """The body without fenced blocks, inline code spans and the marker line."""
    lines, out, fence = body.split("\n")[1:], [], None
    for line in lines:
        m = re.match(r" {0,3}(`{3,})[^`]*$", line)  # CommonMark: a backtick fence's info string has no backtick
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            if line.startswith(fence) and line.strip("`") == "":
                fence = None
            continue
        out.append(line)
    return _strip_spans("\n".join(out))


def _strip_spans(text: str) -> str:
    """Inline code spans removed as CommonMark reads them: a backtick run opens (unless a
    backslash escapes it), the next run of the same length closes (inside a span a backslash is
    literal, so it cannot escape the closer)."""
    out, i = [], 0
    runs = list(re.finditer(r"`+", text))
    k = 0
    while k < len(runs):
        opener = runs[k]
        if (opener.start() - len(text[: opener.start()].rstrip("\\"))) % 2:  # an escaped backtick opens nothing
            k += 1
            continue
        close = next((j for j in range(k + 1, len(runs)) if len(runs[j].group()) == len(opener.group())), None)
        if close is None:
            k += 1
            continue
        out.append(text[i : opener.start()])
        i = runs[close].end()
        k = close + 1
    out.append(text[i:])
    return "".join(out)


huge = st.integers(min_value=0, max_value=4).map(lambda k: 10**k)


@given(
    n_cases=st.integers(0, 30_000),
    detail_kb=st.integers(0, 200),
    n_cells=st.integers(0, 5_000),
    script_kb=st.integers(0, 120),
    field_kb=st.integers(0, 100),
)
@settings(max_examples=40, deadline=None)
def test_render_always_fits_and_never_cuts_mid_way(n_cases, detail_kb, n_cells, script_kb, field_kb):
    cases = tuple(f"case-{i:05d}-" + "x" * 20 for i in range(n_cases)) or ("only",)
    f = finding(
        cases=cases,
        case_id=cases[0],
        detail="expected 'a', got 'b' " + "d" * (detail_kb * 1024),
        check_name="c" * (field_kb * 1024),
    )
    body = bodies.render(
        view(f, cell_ids=tuple(f"cpu/tiny/cell-{i}" for i in range(n_cells)), script="print('x')\n" * (script_kb * 100))
    )
    assert bodies.length(body) <= bodies.LIMIT
    assert bodies.parse_marker(body)["fp"] == f.fingerprint
    assert body.rstrip().endswith("</sub>")  # the footer is there: nothing was cut off
    outside = _outside_code(body)
    assert outside.count("<details>") == outside.count("</details>")
    assert len(re.findall(r"^`{3,}", body, flags=re.M)) % 2 == 0


def test_shortening_goes_step_by_step():
    small = finding()
    full = bodies.render(view(small, cell_ids=("c1", "c2"), script="print(1)"))
    assert "Failing: `non-ascii`, `cjk`" in full and "<details><summary>Detail" in full and "- `c1`" in full
    many = finding(cases=tuple(f"case-{i:05d}-" + "y" * 60 for i in range(2000)))
    body = bodies.render(view(many, cell_ids=("c1",), script="print(1)"))
    assert "and 1990 more" in body and "<details><summary>Detail" in body  # cases summarised, details kept
    long_detail = finding(detail="expected 'a', got 'b' " + "z" * 70_000)
    body = bodies.render(view(long_detail, cell_ids=("c1",), script="print(1)"))
    assert "<details><summary>Detail" not in body and "Standalone reproduction (" not in body and "- `c1`" in body
    cells = tuple(f"cpu/tiny/cell-{i}-" + "w" * 100 for i in range(1000))
    body = bodies.render(view(small, cell_ids=cells))
    assert "### Affected cells (1000)" in body and "cell-0-" not in body


def test_body_shows_range_divergence_triage_and_links():
    from bot.triage import Triage

    f = finding(
        kind="regression",
        last_good="0.22.1",
        first_bad="0.23.0",
        fixed_in="0.23.4",
        status="fixed",
        compare_url="https://github.com/huggingface/tokenizers/compare/v0.22.1...v0.23.0",
    )
    s = Settings(repo="o/r", now="2026-12-01T00:00:00Z", page_url="https://o.github.io/llmcompat")
    from bot.github.decide import _body

    body = _body(
        f,
        Context(
            triage=Triage("component-bug", "nothing in the metadata explains it", True),
            flake="0/3 re-runs of the good cell failed, 3/3 of the bad",
        ),
        s,
        state_of(f, Context()),
    )
    assert "last good `0.22.1` → first bad `0.23.0` · first fixed `0.23.4`" in body
    assert "[compare](https://github.com/huggingface/tokenizers/compare/v0.22.1...v0.23.0)" in body
    assert "- expected: `[68, 702, 220]`" in body and "- actual: `[438, 220]`" in body
    decoded = _body(f, Context(decoded={"[68, 702, 220]": "Hi @you", "[438, 220]": "``x"}), s, state_of(f, Context()))
    assert "- expected: `[68, 702, 220]` (`Hi @you`)" in decoded and "(``` ``x ```)" in decoded
    assert "`component-bug`" in body and "0/3 re\\-runs" in body
    assert "(https://o.github.io/llmcompat/findings/0123abcd0123abcd.html)" in body
    assert body.startswith("<!-- llmcompat:finding ")
    assert bodies.title(f) == "[llmcompat] tokenizers 0.22.1 → 0.23.0: non-ascii fails at tokenize"


def test_changes_worth_a_comment():
    old = state_of(finding(), Context())
    assert changes(old, old) == []
    assert changes(None, old) == []
    narrowed = state_of(finding(last_good="0.22.0", first_bad="0.23.0"), Context())
    assert any(line.startswith("Range found") for line in changes(old, narrowed))
    narrower = state_of(finding(last_good="0.22.5", first_bad="0.23.0"), Context())
    assert any(line.startswith("Range narrowed") for line in changes(narrowed, narrower))
    more = state_of(finding(cells=5, versions=("0.23.3", "0.23.4")), Context())
    assert any("New affected cells: now 5 (was 2)" in line and "`0.23.4`" in line for line in changes(old, more))
    fewer = state_of(finding(cells=1), Context())
    assert changes(old, fewer) == []


def test_a_confirmed_regressions_flake_rate_reaches_the_body(tmp_path):
    """The confirmation's re-runs (stored on the finding by the pipeline) are the body's flake rate;
    a finding nothing re-ran says "not measured"."""
    from bot.github.run import contexts
    from matrix.declare import loader
    from reports.store import Store

    flaky = finding(fingerprint="f" * 64, flake="bad cell failed 3/3 re-runs, good cell failed 0/3")
    quiet = finding(fingerprint="e" * 64)
    with Store(tmp_path / "s.sqlite") as store:
        store.save_finding(flaky)
        store.save_finding(quiet)
        saved = {f.fingerprint: f for f in store.findings()}
        ctx = contexts(store, loader.load_default(), list(saved.values()))
    assert saved[flaky.fingerprint].flake == flaky.flake
    assert ctx[flaky.fingerprint].flake == flaky.flake and ctx[quiet.fingerprint].flake is None
    shown = bodies.render(view(saved[flaky.fingerprint], flake=ctx[flaky.fingerprint].flake))
    assert "**Flake rate (confirmation):** bad cell failed 3/3 re\\-runs, good cell failed 0/3" in shown
    assert "not measured" in bodies.render(view(saved[quiet.fingerprint], flake=None))
