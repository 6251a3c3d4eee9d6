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



class FailureClass(str, Enum):
    """What kind of failure a failing check is: the six classes a maintainer triages by. The
    probe records a finer ``klass`` (``double-bos``, ``sandbox-violation``...); every one of them
    maps to exactly one of these (:data:`KLASS_CLASS`)."""

    NUMERICAL = "numerical"
    """Tokens diverge beyond top-k: kernels, precision, accumulation order."""
    CRASH = "crash"
    """Crash or memory safety: an exception, an engine that dies, a sandbox escape or limit."""
    CONCURRENCY = "concurrency"
    """A request alone and among concurrent ones differ (batch invariance)."""
    BACKEND_SPECIFIC = "backend-specific"
    """One implementation does something else than the reference (rendering, tokenizing,
    detokenizing, parsing) with no crash and no numerical cause."""
    PROTOCOL = "protocol"
    """The wire or an API contract: request serialization, streamed deltas, fields, status codes."""
    CONFIGURATION_DEFAULT = "configuration-default"
    """A default or a declared requirement changes the result: add_bos, generation config, an
    undeclared dependency bound."""

    def __str__(self) -> str:
        return self.value


KLASS_CLASS: dict[str, FailureClass] = {
    **{k.value: k for k in FailureClass},
    "mismatch": FailureClass.BACKEND_SPECIFIC,
    "capability": FailureClass.BACKEND_SPECIFIC,
    "determinism": FailureClass.BACKEND_SPECIFIC,
    "special-literal": FailureClass.BACKEND_SPECIFIC,
    "special-parse": FailureClass.BACKEND_SPECIFIC,
    "template-error": FailureClass.BACKEND_SPECIFIC,
    "template-source": FailureClass.BACKEND_SPECIFIC,
    "roundtrip": FailureClass.PROTOCOL,
    "round-trip": FailureClass.PROTOCOL,
    "transport": FailureClass.PROTOCOL,
    "load": FailureClass.CRASH,
    "engine-start": FailureClass.CRASH,
    "renderer-start": FailureClass.CRASH,
    "template-timeout": FailureClass.CRASH,
    "template-output-limit": FailureClass.CRASH,
    "sandbox-violation": FailureClass.CRASH,
    "sandbox-limit": FailureClass.CRASH,
    "double-bos": FailureClass.CONFIGURATION_DEFAULT,
    "config": FailureClass.CONFIGURATION_DEFAULT,
    "undeclared-requirement": FailureClass.CONFIGURATION_DEFAULT,
    "stale-golden": FailureClass.CONFIGURATION_DEFAULT,
}


def failure_class(klass: str | None, stage: str | None = None) -> FailureClass:
    """The class of a failing record. A record without a known klass (result files are
    untrusted input; the probe's own klasses are all mapped, which a test checks) is judged by
    its stage: inference -> numerical, client -> protocol, else backend-specific."""
    if klass and klass in KLASS_CLASS:
        return KLASS_CLASS[klass]
    return {"inference": FailureClass.NUMERICAL, "client": FailureClass.PROTOCOL}.get(
        stage or "", FailureClass.BACKEND_SPECIFIC)
