"""The main job's terminal summary in a non-interactive 80-column log, and its log hygiene."""

import io
import logging

from rich.console import Console

from matrix.app.job import RunSummary, print_summary, quiet_third_party_logs
from matrix.cell.run import CellReport
from matrix.outcome import Outcome
from matrix.plan.cells import Cell
from reports.terminal import finding_counts, short_labels

IDS = [
    f"cpu/tiny-qwen2/{e}/tokenizers@0.23.3/hf-jinja2@{t}/openai@3.57.0"
    for e in ("transformers@5.24.0", "mistralrs@0.8.1", "onnxruntime-genai@0.9.2")
    for t in ("3.1.5", "3.1.6")
]


def summary() -> RunSummary:
    stages = {
        "template": {"outcome": "fail"},
        "tokenize": {"outcome": "pass"},
        "inference": {"outcome": "pass"},
        "postprocess": {"outcome": "flaky"},
        "client": {"outcome": "skipped"},
    }
    reports = [
        CellReport(
            Cell.parse(cid),
            Outcome.FAIL if i % 3 else Outcome.UNRESOLVABLE,
            key=f"k{i}",
            reused=i == 0,
            seconds=12.5 * i,
            stages=stages if i % 3 else {},
        )
        for i, cid in enumerate(IDS)
    ]
    s = RunSummary("20261201T000000Z-abc123", reports, 75.0)
    s.findings = {"new": 2, "fixed": 1, "open": 9}
    return s


def test_summary_fits_80_columns_and_shows_every_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False, color_system=None)
    print_summary(summary(), console, tmp_path / "site")
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert "every cell: cpu · tiny-qwen2 · tokenizers 0.23.3 · openai 3.57.0" in lines
    head = next(line for line in lines if line.lstrip().startswith("# cell"))
    assert head.split()[-6:] == ["T", "K", "I", "P", "C", "secs"]
    row = next(line for line in lines if "transformers 5.24.0 hf-jinja2 3.1.6" in line)
    assert row.split()[-6:-1] == ["F", ".", ".", "~", "-"]  # one mark per stage, in chain order
    assert "transformers 5.24.0 hf-jinja2 3.1.5" in lines[lines.index(head) + 1]  # one line per cell, no wrap
    assert "unresolvable*" in lines[lines.index(head) + 1]  # reused
    assert lines[-1] == "findings: 2 new, 1 fixed, 9 open · page site/index.html"


def test_what_every_cell_shares_wraps_between_items():
    from reports.terminal import _wrap

    lines = _wrap(
        "every cell: ",
        ["cpu", "tiny-qwen2", "transformers 5.24.0", "tokenizers 0.23.3", "openai 3.57.0", "hf-jinja2 3.1.6"],
    )
    assert all(len(line) <= 80 for line in lines) and len(lines) == 2
    assert " ".join(lines).replace("  ", " ").endswith("openai 3.57.0 · hf-jinja2 3.1.6")


def test_labels_shorten_only_as_far_as_needed():
    long = [
        {
            "runner": "cpu",
            "model": "m",
            "engine": ("onnxruntime-genai-extended-build", "0.9.2.post1"),
            "tokenizer": ("tokenizers", v),
            "template": ("llama-cpp-templates", "0.3.36"),
            "client": ("openai", "3.57.0"),
        }
        for v in ("0.23.3", "0.22.1")
    ]
    labels, shared, used = short_labels(long)
    assert labels == ["tokenizers 0.23.3", "tokenizers 0.22.1"] and "onnxruntime-genai-extended-build" in shared
    long[1]["engine"] = ("onnxruntime-genai-extended-other", "0.10.0rc1")
    labels, _, used = short_labels(long)
    assert all(len(label) <= 44 for label in labels) and used  # abbreviated, with the names listed


def test_finding_counts_from_store_rows():
    rows = [
        {"status": "open", "first_seen": "2026-12-01T10:00:00+00:00", "last_seen": "x"},
        {"status": "open", "first_seen": "2026-11-01T00:00:00+00:00"},
        {"status": "fixed", "first_seen": "2026-11-01T00:00:00+00:00", "last_seen": "2026-12-01T10:05:00+00:00"},
        {"status": "fixed", "first_seen": "2026-10-01T00:00:00+00:00", "last_seen": "2026-10-05T00:00:00+00:00"},
    ]
    assert finding_counts(rows, "2026-12-01T09:00:00+00:00") == {"new": 1, "fixed": 1, "open": 2}


def test_third_party_debug_lines_stay_out_of_the_log():
    root = logging.getLogger()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)  # what nox does
    try:
        quiet_third_party_logs()
        logging.getLogger("urllib3.connectionpool").debug("Starting new HTTPS connection (1): example")
        logging.getLogger("filelock").debug("Lock 1 acquired")
        logging.getLogger("httpx").info("HTTP Request: GET")
        logging.getLogger("matrix.releases.index").info("index: 12 projects")
        logging.getLogger("urllib3").warning("Retrying after a broken connection")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    text = stream.getvalue()
    assert "Starting new HTTPS" not in text and "Lock 1" not in text and "HTTP Request" not in text
    assert "index: 12 projects" in text and "Retrying" in text
