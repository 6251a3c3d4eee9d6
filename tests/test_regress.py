"""The regression pipeline end to end over a real Store: history -> candidates -> confirmation ->
bisection -> findings, driven by plain functions that stand in for cell runs."""

import sqlite3
from collections import Counter
from datetime import UTC, datetime

import pytest

from bot.regress import history_records, outcomes_from_records, regress, with_version
from bot.search import Verdict
from matrix.releases.versions import Release
from reports.store import MIGRATIONS, Store

ENGINE_RELEASES = ["1.0", "1.1", "1.1.1", "1.2", "1.3", "2.0rc1"]
BROKEN_FROM = "1.2"  # the chat case's template stage fails from engine 1.2 on
T1, T2, NOW = "2026-01-01T00:00:00+00:00", "2026-01-08T00:00:00+00:00", "2026-01-08T12:00:00+00:00"


def cell_id(engine="1.0", tok="0.1", model="tiny"):
    return f"cpu/{model}/eng@{engine}/tok@{tok}/tpl@1.0/cli@2.0"


def result(key, cid, outcome_by_case, cell_outcome=None, detail="boom at /tmp/x/y.py:12"):
    parts = cid.split("/")
    choices = {}
    for axis, part in zip(("engine", "tokenizer", "template", "client"), parts[2:]):
        name, _, version = part.partition("@")
        choices[axis] = {"component": name, "version": version}
    records = [
        {"case": case, "stage": "template", "check": "jinja2", "outcome": o, "detail": detail if o != "pass" else ""}
        for case, o in outcome_by_case.items()
    ]
    worst = "fail" if "fail" in outcome_by_case.values() else "pass"
    return {
        "key": key,
        "outcome": cell_outcome or worst,
        "finished": T1,
        "reason": "",
        "cell": {"id": cid, "runner": parts[0], "model": parts[1], "choices": choices},
        "stages": {"template": {"outcome": cell_outcome or worst}},
        "records": records,
    }


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store.sqlite")
    # run 1: engine 1.0 passes everything
    s.ingest_run(
        {"id": "r1", "started": T1, "finished": T1},
        [
            result("k-good", cell_id("1.0"), {"chat": "pass", "tools": "pass"}),
            result("k-other", cell_id("1.0", model="small"), {"chat": "pass"}),
        ],
        [],
    )
    # run 2: engine 1.3 fails chat (a real regression) and tools (noise); one cell died (infra)
    s.ingest_run(
        {"id": "r2", "started": T2, "finished": T2},
        [
            result("k-bad", cell_id("1.3"), {"chat": "fail", "tools": "fail"}),
            result("k-infra", cell_id("1.3", model="small"), {}, cell_outcome="infra"),
        ],
        ["k-good"],
    )
    yield s
    s.close()


class World:
    """Plain functions standing in for cell runs: chat truly breaks at 1.2; tools is flaky on
    both cells; the first re-run of the bad cell dies (infra, whole cell)."""

    def __init__(self):
        self.calls = Counter()
        self.log = []

    def rerun(self, cid):
        self.calls[cid] += 1
        self.log.append(cid)
        n = self.calls[cid]
        if cid == cell_id("1.3") and n == 1:
            return "infra"
        engine = cid.split("/")[2].split("@")[1]
        chat = "fail" if _v(engine) >= _v(BROKEN_FROM) else "pass"
        # tools: the bad cell fails 1 of its re-runs, the good cell fails 1 too -> flaky
        tools = "fail" if n == 2 else "pass"
        return {("chat", "template"): chat, ("tools", "template"): tools}


def _v(s):
    from packaging.version import Version

    return Version(s)


def releases(axis, component):
    assert (axis, component) == ("engine", "eng")
    return [Release(v, datetime(2025, 12, i + 1, tzinfo=UTC)) for i, v in enumerate(ENGINE_RELEASES)]


def test_history_records(store):
    recs = history_records(store.case_rows())
    by = {(r["run"], r["cell"], r["case"]): r for r in recs}
    assert by[("r2", cell_id("1.3"), "chat")]["outcome"] == "fail"
    assert by[("r2", cell_id("1.3"), "chat")]["axes"]["engine"] == ["eng", "1.3"]
    assert by[("r2", cell_id("1.0"), "chat")]["reused"] is True
    assert by[("r2", cell_id("1.3", model="small"), "")]["outcome"] == "infra"
    assert outcomes_from_records(
        [{"case": "a", "stage": "s", "outcome": "pass"}, {"case": "a", "stage": "s", "outcome": "fail"}]
    ) == {("a", "s"): "fail"}


def test_pipeline_end_to_end(store):
    world = World()
    report = regress(
        store, "r2", rerun=world.rerun, releases=releases, repos={"eng": ("acme/eng", "v{version}")}, now=NOW
    )

    # infra is requeued, never a finding
    assert report.requeue == [cell_id("1.3", model="small")]
    # the flaky case is not a finding; it is quarantined on that cell
    assert [c.case for c in report.flaky] == ["tools"]
    assert [q["subject"] for q in report.new_quarantine] == [f"{cell_id('1.3')}#tools/template"]
    assert "flaky" in store.quarantine(NOW)[f"{cell_id('1.3')}#tools/template"]["reason"]

    # one finding: chat/template, engine eng, bisected to 1.1.1 -> 1.2
    (finding,) = store.findings()
    assert finding.case_id == "chat" and finding.stage == "template"
    assert (finding.component, finding.axis) == ("eng", "engine")
    assert (finding.last_good, finding.first_bad) == ("1.1.1", "1.2")
    assert (finding.good_key, finding.bad_key) == ("k-good", "k-bad")
    assert finding.compare_url == "https://github.com/acme/eng/compare/v1.1.1...v1.2"
    assert finding.repro == f'nox -s "cell({cell_id("1.2")})"'
    assert finding.status == "open" and finding.first_seen == NOW
    assert finding.flake == "bad cell failed 3/3 re-runs, good cell failed 0/3"  # the issue body's flake rate

    # confirmation: the bad cell's infra re-run was repeated (3 counted), the good cell re-run 3 times
    assert world.calls[cell_id("1.3")] == 4 and world.calls[cell_id("1.0")] == 3
    # bisection: the confirmed ends are not re-run; pre-release 2.0rc1 and out-of-range versions never probed
    (b,) = store.bisections(finding.fingerprint)
    assert b.versions == ("1.0", "1.1", "1.1.1", "1.2", "1.3") and b.status == "found"
    probed = [cid for cid in world.log if cid not in (cell_id("1.3"), cell_id("1.0"))]
    assert set(probed) <= {cell_id(v) for v in ("1.1", "1.1.1", "1.2")} and len(probed) == report.probes
    assert {v: Verdict(x) for v, x in b.probes}["1.2"] is Verdict.BAD

    events = {e["event"]: e for e in store.ttf_events(finding.fingerprint)}
    assert events["detected"]["time"] == NOW and events["detected"]["version"] == "1.2"
    assert events["released"]["time"].startswith("2025-12-04") and events["released"]["version"] == "1.2"

    # a second pass: same fingerprint (no duplicate), the quarantined flaky case is skipped
    again = regress(store, "r2", rerun=World().rerun, releases=releases, now="2026-01-09T00:00:00+00:00")
    assert [c.case for c in again.quarantined] == ["tools"]
    (same,) = store.findings()
    assert same.fingerprint == finding.fingerprint
    assert same.first_seen == NOW and same.last_seen == "2026-01-09T00:00:00+00:00"
    assert len(store.bisections()) == 2
    # time-to-fix keeps the first detection
    assert {e["event"]: e["time"] for e in store.ttf_events(finding.fingerprint)}["detected"] == NOW


def test_not_reproduced_and_persistent_infra(store):
    calls = Counter()

    def passes(cid):  # the failure does not come back
        calls[cid] += 1
        return {("chat", "template"): "pass", ("tools", "template"): "pass"}

    report = regress(store, "r2", rerun=passes, releases=releases, now=NOW)
    assert {c.case for c in report.not_reproduced} == {"chat", "tools"}
    assert store.findings() == [] and report.new_quarantine == []
    assert calls[cell_id("1.3")] == 3  # re-runs shared by the two candidates of the cell

    def dead(cid):
        return "infra"

    report = regress(store, "r2", rerun=dead, releases=releases, now=NOW, max_runs=5)
    assert store.findings() == []
    assert set(report.requeue) == {cell_id("1.3", model="small"), cell_id("1.3"), cell_id("1.0")}
    assert report.reruns == 10  # each of the two cells re-run up to max_runs, then given up


def test_two_axes_changed_isolates_the_guilty_one(tmp_path):
    s = Store(tmp_path / "s.sqlite")
    s.ingest_run(
        {"id": "r1", "started": T1, "finished": T1}, [result("a", cell_id("1.0", tok="0.1"), {"chat": "pass"})], []
    )
    s.ingest_run(
        {"id": "r2", "started": T2, "finished": T2}, [result("b", cell_id("1.3", tok="0.2"), {"chat": "fail"})], []
    )

    def rerun(cid):  # the tokenizer bump broke it, the engine bump is innocent
        tok = cid.split("/")[3].split("@")[1]
        return {("chat", "template"): "fail" if tok == "0.2" else "pass"}

    def rels(axis, component):
        return {"engine": ENGINE_RELEASES, "tokenizer": ["0.1", "0.1.5", "0.2"]}[axis]

    report = regress(s, "r2", rerun=rerun, releases=rels, now=NOW)
    (f,) = report.findings
    assert (f["axis"], f["component"], f["last_good"], f["first_bad"]) == ("tokenizer", "tok", "0.1.5", "0.2")
    assert f["guilty_axes"] == ["tokenizer"]
    assert f["first_bad_cell"] == cell_id("1.0", tok="0.2")  # engine held at the good cell's version
    s.close()


def test_with_version():
    assert with_version(cell_id("1.0"), "engine", "1.2") == cell_id("1.2")


# ------------------------------------------------------------------------- the store


def test_migration_1_to_2_in_place(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("INSERT INTO runs (id, started) VALUES ('r0', ?)", (T1,))
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()

    with Store(path) as s:
        assert s.version == len(MIGRATIONS) >= 2
        assert [r["id"] for r in s.runs()] == ["r0"]
        tables = {r[0] for r in s.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"findings", "bisections", "issues", "ttf_events", "quarantine"} <= tables
        s.save_finding(
            {
                "fingerprint": "f1",
                "case_id": "c",
                "stage": "template",
                "component": "eng",
                "axis": "engine",
                "last_good": "1.1",
                "first_bad": "1.2",
                "first_seen": T1,
            },
            {
                "component": "eng",
                "versions": ["1.1", "1.2"],
                "probes": [["1.2", "bad"]],
                "status": "found",
                "started": T1,
            },
            [{"event": "detected", "time": T1}],
        )
        s.add_issue("f1", "acme/eng", 7, "https://github.com/acme/eng/issues/7", T2)
        s.mark_fixed("f1", "1.4", "2026-02-01T00:00:00+00:00")
        s.set_quarantine("cell-x", "flaky", "2026-01-02T00:00:00+00:00")
        assert s.quarantine("2026-01-03T00:00:00+00:00") == {}
    with Store(path) as s:  # reopening does not migrate again
        assert s.version == len(MIGRATIONS)
        f = s.finding("f1")
        assert f.status == "fixed" and f.fixed_in == "1.4"
        assert [e["event"] for e in s.ttf_events("f1")] == ["detected", "filed", "fixed"]
        assert s.issues("f1")[0]["number"] == 7
        assert s.bisections("f1")[0].probes == (("1.2", "bad"),)


def test_save_regressions_is_one_transaction(tmp_path):
    with Store(tmp_path / "s.sqlite") as s:
        good = (
            {"fingerprint": "a", "case_id": "c", "stage": "t", "component": "e", "axis": "engine", "first_seen": T1},
            None,
            [{"event": "detected", "time": T1}],
        )
        broken = (
            {"fingerprint": "b", "case_id": "c", "stage": "t", "component": "e", "axis": "engine", "first_seen": T1},
            None,
            [{"event": "not-an-event", "time": T1}],
        )
        with pytest.raises(sqlite3.IntegrityError):
            s.save_regressions([good, broken], [{"subject": "x", "reason": "r", "until": T2}])
        assert s.findings() == [] and s.quarantine() == {} and s.ttf_events() == []


def test_quarantined_case_is_retested_and_released_or_extended(tmp_path):
    from bot.regress import retest_quarantine

    with Store(tmp_path / "q.sqlite") as store:
        store.set_quarantine("cellA#k/template", "flaky: 1/3", "2030-01-01T00:00:00+00:00")
        store.set_quarantine("cellB#k/template", "flaky: 2/3", "2030-01-01T00:00:00+00:00")
        store.set_quarantine("k/template", "case-wide", "2030-01-01T00:00:00+00:00")
        runs = {"cellA": iter(["pass"] * 3), "cellB": iter(["pass", "fail", "pass"])}
        done = retest_quarantine(
            store, lambda cell: {("k", "template"): next(runs[cell])}, now="2026-11-24T00:00:00+00:00"
        )
        assert done == {"cellA#k/template": "released", "cellB#k/template": "extended"}
        active = store.quarantine("2026-11-24T00:00:01+00:00")
        assert "cellA#k/template" not in active and "cellB#k/template" in active
        assert active["cellB#k/template"]["until"].startswith("2026-12-08")
        assert "k/template" in active  # not re-run: case-wide


def test_a_regression_fixed_in_a_newer_release_is_bisected_to_its_fix(store):
    """Engine releases after the bad cell's 1.3: 1.4 still fails, 1.5 fixed it, 1.6 passes. The
    pipeline tests the newest on the bad cell, and since it passes, bisects 1.3..1.6 to the fix."""
    rels = ENGINE_RELEASES[:-1] + ["1.4", "1.5", "1.6"]
    seen = []

    def rerun(cid):
        seen.append(cid)
        engine = _v(cid.split("/")[2].split("@")[1])
        chat = "fail" if _v("1.2") <= engine < _v("1.5") else "pass"
        return {("chat", "template"): chat, ("tools", "template"): "pass"}

    def releases_(axis, component):
        return [Release(v, datetime(2025, 12, i + 1, tzinfo=UTC)) for i, v in enumerate(rels)]

    report = regress(store, "r2", rerun=rerun, releases=releases_, repos={"eng": ("acme/eng", "v{version}")}, now=NOW)
    (finding,) = store.findings()
    assert (finding.last_good, finding.first_bad) == ("1.1.1", "1.2")  # introduced-in
    assert (finding.last_bad, finding.fixed_in, finding.status) == ("1.4", "1.5", "fixed")  # fixed-in
    introduced, fixed = store.bisections(finding.fingerprint)
    assert (introduced.direction, fixed.direction) == ("introduced", "fixed")
    assert fixed.versions == ("1.3", "1.4", "1.5", "1.6") and fixed.status == "found"
    assert (fixed.first_bad, fixed.last_good) == ("1.4", "1.5")  # the last bad and the first fixed release
    assert fixed.compare_url == "https://github.com/acme/eng/compare/v1.4...v1.5"
    assert fixed.repro == f'nox -s "cell({cell_id("1.5")})"'
    assert len(fixed.probes) <= 4  # ceil(log2 4) + 2 over the interval searched
    assert cell_id("1.6") in seen and len(report.bisections) == 2
    events = {e["event"]: e for e in store.ttf_events(finding.fingerprint)}
    assert events["fixed"]["version"] == "1.5"
    assert events["fix-released"]["version"] == "1.5" and events["fix-released"]["time"].startswith("2025-12-07")
    exported = store.export()
    (f,) = exported["findings"]
    assert (f["first_bad"], f["last_bad"], f["fixed_in"]) == ("1.2", "1.4", "1.5")
    assert [b["direction"] for b in exported["bisections"]] == ["introduced", "fixed"]


def test_a_regression_still_failing_in_the_newest_release_stays_open(store):
    rels = ENGINE_RELEASES[:-1] + ["1.4"]

    def rerun(cid):
        engine = _v(cid.split("/")[2].split("@")[1])
        return {("chat", "template"): "fail" if engine >= _v("1.2") else "pass", ("tools", "template"): "pass"}

    regress(store, "r2", rerun=rerun, releases=lambda a, c: rels, now=NOW)
    (finding,) = store.findings()
    assert (finding.fixed_in, finding.last_bad, finding.status) == (None, None, "open")
    assert [b.direction for b in store.bisections(finding.fingerprint)] == ["introduced"]


def test_a_difference_that_disappears_is_bisected_to_its_first_fixed_release(tmp_path):
    """A template renderer's check fails at tpl 1.0 and passes at 1.3 in a later run: the
    difference is marked fixed, then bisected on the cell it failed in to the release that fixed
    it (1.2), checked per check (another check of the same case failing does not count)."""
    from bot.differences import differences, resolved
    from bot.regress import bisect_fixes

    def tpl_cell(v):
        return f"cpu/tiny/eng@1.0/tok@0.1/tpl@{v}/cli@2.0"

    owners = {"tpl": {"jinja2"}}
    calls = []

    def rerun(cid):
        calls.append(cid)
        tpl = _v(cid.split("/")[4].split("@")[1])
        return {
            ("chat", "template", "jinja2"): "fail" if tpl < _v("1.2") else "pass",
            ("chat", "template", "other-renderer"): "fail",
        }

    with Store(tmp_path / "s.sqlite") as s:
        s.ingest_run({"id": "r1", "started": T1, "finished": T1}, [result("k1", tpl_cell("1.0"), {"chat": "fail"})], [])
        s.save_differences(differences(s.case_rows("r1"), owners), {}, T1)
        (diff,) = s.findings(kind="difference")
        s.ingest_run({"id": "r2", "started": T2, "finished": T2}, [result("k2", tpl_cell("1.3"), {"chat": "pass"})], [])
        rows = s.case_rows("r2")
        current = differences(rows, owners)
        fixed = resolved(s.findings(status="open", kind="difference"), rows, current, owners)
        assert fixed == {diff.fingerprint: "1.3"}
        s.save_differences(current, fixed, T2)

        stored = bisect_fixes(
            s,
            rerun=rerun,
            releases=lambda a, c: ["0.9", "1.0", "1.1", "1.1.1", "1.2", "1.3", "1.4"],
            repos={"tpl": ("acme/tpl", "v{version}")},
            now=NOW,
        )
        (f,) = s.findings(kind="difference")
        assert (f.status, f.last_bad, f.fixed_in) == ("fixed", "1.1.1", "1.2")
        (b,) = s.bisections(f.fingerprint)
        assert (b.direction, b.status, b.versions) == ("fixed", "found", ("1.0", "1.1", "1.1.1", "1.2", "1.3"))
        assert b.compare_url == "https://github.com/acme/tpl/compare/v1.1.1...v1.2" and stored[0]["status"] == "found"
        assert tpl_cell("1.0") not in calls and len(calls) == len(set(calls)) <= 4  # the failing end is known
        # done once: a second pass has nothing left to bisect
        assert bisect_fixes(s, rerun=rerun, releases=lambda a, c: [], now=NOW) == []
        assert s.export()["findings"][0]["last_bad"] == "1.1.1"
