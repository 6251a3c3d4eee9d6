"""What a GitHub Actions run shows of itself: the step summary's headline and annotations.

Pure functions over the store's plain data (a run's cells, the findings); the CLI writes the
markdown to ``$GITHUB_STEP_SUMMARY`` and prints the ``::error``/``::warning`` workflow commands.
Everything in them came from results (package versions, reasons): workflow-command text is
escaped as GitHub documents (``%``, CR, LF; and ``:``/``,`` in properties).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from matrix.outcome import Finding

__all__ = ["Headline", "headline", "markdown", "regress_matrix", "workflow_commands"]


@dataclass(frozen=True)
class Headline:
    """One run in figures: what ran, what was reused, what it found, what must run again."""

    run_id: str
    executed: int
    reused: int
    outcomes: Mapping[str, int]
    new: Sequence[Finding] = field(default_factory=tuple)
    fixed: Sequence[Finding] = field(default_factory=tuple)
    open: int = 0
    spurious: int | None = None
    retry: Sequence[tuple[str, str]] = field(default_factory=tuple)


def headline(
    run: Mapping, cells: Iterable[Mapping], findings: Iterable[Finding], candidates: int | None = None
) -> Headline:
    """The headline of ``run`` from its cells and every finding (typed ``Finding`` records).

    New: first seen during the run; fixed: marked fixed during it; spurious: candidate
    regressions that confirmation did not turn into a finding (known once regress has run).
    """
    cells = list(cells)
    findings = list(findings)
    start, end = run["started"], run.get("finished") or "9999"
    new = [f for f in findings if start <= f.first_seen <= end]
    fixed = [f for f in findings if f.status == "fixed" and start <= f.last_seen <= end]
    confirmed = len([f for f in new if f.kind == "regression"])
    return Headline(
        run_id=run["id"],
        executed=sum(1 for c in cells if not c.get("reused")),
        reused=sum(1 for c in cells if c.get("reused")),
        outcomes=dict(sorted(Counter(c["outcome"] for c in cells).items())),
        new=new,
        fixed=fixed,
        open=len([f for f in findings if f.status == "open"]),
        spurious=None if candidates is None else max(candidates - confirmed, 0),
        retry=tuple(sorted((c["cell_id"], c.get("reason") or "") for c in cells if c["outcome"] == "infra")),
    )


def _md(text: object) -> str:
    """Markdown-inert text for a table cell (results are untrusted)."""
    out = str(text).replace("\\", "\\\\")
    for ch in "|*_`[]<>#@!":
        out = out.replace(ch, "\\" + ch)
    return out.replace("\n", " ")


def markdown(h: Headline) -> str:
    """The step summary: one headline sentence, then the new findings and the retry list."""
    outcomes = ", ".join(f"{k} {v}" for k, v in h.outcomes.items()) or "none"
    spurious = "" if h.spurious is None else f", {h.spurious} spurious"
    lines = [
        f"### llmcompat run `{_md(h.run_id)}`",
        "",
        f"**{h.executed + h.reused} cells: {h.executed} run, {h.reused} reused** ({outcomes}); "
        f"**{len(h.new)} new findings, {len(h.fixed)} fixed{spurious}**, {h.open} open; "
        f"{len(h.retry)} to retry.",
        "",
    ]
    if h.new:
        lines += ["| new finding | component | stage | range |", "|---|---|---|---|"]
        lines += [
            f"| {_md(f.fingerprint[:12])} | {_md(f.component)} | {_md(f.stage)} | "
            f"{_md(f.last_good or '-')} → {_md(f.first_bad or '-')} |"
            for f in h.new
        ]
        lines.append("")
    if h.retry:
        lines += ["Retried on the next run (infra):", ""]
        lines += [f"- `{_md(cell)}`: {_md(reason) or 'no reason given'}" for cell, reason in h.retry]
        lines.append("")
    return "\n".join(lines)


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def workflow_commands(h: Headline) -> list[str]:
    """Workflow commands: an error per new finding, a warning per cell to retry."""
    out = [
        f"::error title={_escape_property('new finding: ' + f.component)}::"
        + _escape_data(
            f"{f.component} {f.stage} {f.check_name or f.case_id}: "
            f"{f.last_good or '-'} -> {f.first_bad or '-'} ({f.fingerprint[:12]})"
        )
        for f in h.new
    ]
    out += [
        f"::warning title={_escape_property('infra: retried next run')}::" + _escape_data(f"{cell}: {reason}")
        for cell, reason in h.retry
    ]
    return out


def regress_matrix(candidates: int, max_jobs: int) -> dict:
    """The regress fan-out's ``strategy.matrix``: one job per share of the candidates."""
    n = min(candidates, max_jobs)
    return {"include": [{"shard": f"{i}/{n}"} for i in range(n)]}
