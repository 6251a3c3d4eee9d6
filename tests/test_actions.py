"""matrix/app/actions.py: a run's headline, step summary and annotations (pure)."""

from hypothesis import given
from hypothesis import strategies as st

from matrix.app.actions import headline, markdown, regress_matrix, workflow_commands
from matrix.outcome import Finding

RUN = {"id": "gha-7-1", "started": "2026-12-01T03:00:00+00:00", "finished": "2026-12-01T04:00:00+00:00"}


def finding(fp, first_seen, status="open", last_seen=None, kind="regression", component="jinja2"):
    return Finding.from_row(
        {
            "fingerprint": fp,
            "kind": kind,
            "case_id": "c1",
            "stage": "template",
            "component": component,
            "axis": "template",
            "last_good": "3.1.5",
            "first_bad": "3.1.6",
            "status": status,
            "first_seen": first_seen,
            "last_seen": last_seen or first_seen,
        }
    )


CELLS = [
    {"cell_id": "cpu/a", "outcome": "pass", "reused": 0},
    {"cell_id": "cpu/b", "outcome": "fail", "reused": 0},
    {"cell_id": "cpu/c", "outcome": "pass", "reused": 1},
    {"cell_id": "cpu/d", "outcome": "infra", "reused": 0, "reason": "engine did not start"},
]


def test_headline_counts_what_ran_what_it_found_and_what_to_retry():
    findings = [
        finding("a" * 64, "2026-12-01T03:30:00+00:00"),  # new in this run
        finding("b" * 64, "2026-11-01T00:00:00+00:00"),  # old, still open
        finding("c" * 64, "2026-11-01T00:00:00+00:00", "fixed", "2026-12-01T03:40:00+00:00"),
        finding("d" * 64, "2026-10-01T00:00:00+00:00", "fixed", "2026-10-02T00:00:00+00:00"),
    ]
    h = headline(RUN, CELLS, findings, candidates=3)
    assert (h.executed, h.reused) == (3, 1)
    assert dict(h.outcomes) == {"fail": 1, "infra": 1, "pass": 2}
    assert [f.fingerprint[0] for f in h.new] == ["a"] and [f.fingerprint[0] for f in h.fixed] == ["c"]
    assert h.open == 2 and h.spurious == 2  # 3 candidates, 1 confirmed
    assert h.retry == (("cpu/d", "engine did not start"),)
    text = markdown(h)
    assert "**4 cells: 3 run, 1 reused**" in text and "**1 new findings, 1 fixed, 2 spurious**" in text
    assert "`cpu/d`: engine did not start" in text
    assert headline(RUN, CELLS, findings).spurious is None  # unknown before regress ran


def test_untrusted_text_is_inert_in_the_summary_and_in_workflow_commands():
    evil = finding("e" * 64, "2026-12-01T03:30:00+00:00", component="x|<script>@team #1\n::error::pwn")
    cells = [{"cell_id": "cpu/x", "outcome": "infra", "reused": 0, "reason": "50%\n::set-output name=a::b"}]
    h = headline(RUN, cells, [evil])
    text = markdown(h)
    assert "<script>" not in text and "\\@team" in text and "\\#1" in text and "\\|" in text
    for line in workflow_commands(h):
        assert "\n" not in line and "\r" not in line
        assert line.startswith("::")
        props = line[2:].split("::", 1)[0]
        assert props.startswith(("error title=", "warning title="))  # one command per line
        assert ":" not in props.partition("=")[2] and "," not in props.partition("=")[2]  # a title cannot end early
    assert any("50%25%0A" in line for line in workflow_commands(h))


@given(st.integers(0, 500), st.integers(1, 16))
def test_regress_fan_out_never_exceeds_its_jobs_and_covers_every_share(candidates, jobs):
    shards = [s["shard"] for s in regress_matrix(candidates, jobs)["include"]]
    assert len(shards) == min(candidates, jobs)
    assert all(s == f"{i}/{len(shards)}" for i, s in enumerate(shards))
