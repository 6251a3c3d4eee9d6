"""The explicit outcome and stage vocabularies (crater-style): every result uses exactly these."""

from __future__ import annotations

from enum import Enum


class Outcome(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    FLAKY = "flaky"
    INFRA = "infra"
    """OOM, timeout, download, engine start: retried, never filed."""
    UNRESOLVABLE = "unresolvable"
    """The versions cannot be installed together: never a failure."""
    SKIPPED = "skipped"
    XFAIL = "xfail"

    def __str__(self) -> str:
        return self.value


class Stage(str, Enum):
    """Where in the chain a check looks, in chain order."""

    TEMPLATE = "template"
    TOKENIZE = "tokenize"
    INFERENCE = "inference"
    POSTPROCESS = "postprocess"
    CLIENT = "client"

    def __str__(self) -> str:
        return self.value


STAGES: tuple[Stage, ...] = tuple(Stage)


def is_regression(before: Outcome | str, after: Outcome | str) -> bool:
    """Only pass -> fail is a regression; everything else (infra, flaky, unresolvable) is not."""
    return Outcome(before) is Outcome.PASS and Outcome(after) is Outcome.FAIL

