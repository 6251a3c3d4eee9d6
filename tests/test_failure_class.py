"""Every failure carries one of the six classes: the probe's finer klasses all map to one."""

import re
from pathlib import Path

import pytest

from matrix.outcome import KLASS_CLASS, FailureClass, failure_class

PROBE = Path(__file__).resolve().parent.parent / "matrix" / "probe"
LITERALS = [
    re.compile(r"""klass\s*=\s*["']([a-z][a-z-]*)["']"""),  # rec.add(..., klass="x")
    re.compile(r"""["']klass["']\s*:\s*["']([a-z][a-z-]*)["']"""),  # {"klass": "x"}
    re.compile(r"""klass\s*,\s*detail\s*=\s*["']([a-z][a-z-]*)["']"""),
]


def probe_klasses() -> set[str]:
    found = set()
    for path in PROBE.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        for rx in LITERALS:
            found |= set(rx.findall(text))
    # stage_template.classify returns (klass, detail) pairs
    classify = re.search(r"def classify\(.*?\n(?=\S)", (PROBE / "stage_template.py").read_text(), re.S)
    assert classify is not None, "stage_template.py has no classify()"
    found |= set(re.findall(r"""return\s+["']([a-z][a-z-]*)["'],""", classify.group(0)))
    return found


def test_every_klass_the_probe_records_has_a_class():
    klasses = probe_klasses()
    assert {"double-bos", "sandbox-violation", "numerical", "concurrency"} <= klasses  # the scan sees them
    assert sorted(k for k in klasses if k not in KLASS_CLASS) == []


@pytest.mark.parametrize(
    "klass, stage, want",
    [
        ("double-bos", "tokenize", "configuration-default"),
        ("sandbox-violation", "template", "crash"),
        ("undeclared-requirement", "template", "configuration-default"),
        ("concurrency", "inference", "concurrency"),
        ("", "inference", "numerical"),
        (None, "client", "protocol"),
        ("something-new", "template", "backend-specific"),
    ],
)
def test_class_of_a_klass_or_else_of_its_stage(klass, stage, want):
    assert failure_class(klass, stage) is FailureClass(want)


def test_there_are_exactly_the_six_classes():
    assert {c.value for c in FailureClass} == {
        "numerical",
        "crash",
        "concurrency",
        "backend-specific",
        "protocol",
        "configuration-default",
    }
