"""The explicit outcome and stage vocabularies (crater-style): every result uses exactly these."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, asdict, dataclass, fields
from enum import Enum
from typing import Any


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


WORST_FIRST: tuple[Outcome, ...] = (
    Outcome.FAIL,
    Outcome.INFRA,
    Outcome.FLAKY,
    Outcome.PASS,
    Outcome.XFAIL,
    Outcome.SKIPPED,
    Outcome.UNRESOLVABLE,
)
"""The one severity order: how the outcomes of several checks (of a stage, a case, a cell)
combine, worst first. ``pass`` ranks above ``xfail``: only pass -> fail is a regression, so a
check that passed must never hide behind an expected failure beside it, or its later failure
would read xfail -> fail and go unseen. ``skipped`` and ``unresolvable`` say nothing about the
code and lose to everything. The probe keeps a standard-library copy (``matrix/probe/vocab.py``);
a test holds the two equal."""

_RANK = {o.value: i for i, o in enumerate(WORST_FIRST)}


def severity(outcome: Outcome | str) -> int:
    """Position in :data:`WORST_FIRST` (0 = worst). An outcome nobody knows (result files are
    untrusted input) ranks with ``fail``: it is never hidden."""
    return _RANK.get(str(outcome), 0)


def worst(outcomes: Iterable[Outcome | str], default: Outcome | str = Outcome.SKIPPED) -> Any:
    """The worst of ``outcomes`` (the first given among equals), ``default`` when there are none.
    Returns the item itself, so strings stay strings and enums enums."""
    return min(outcomes, key=severity, default=default)


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
    "missing-bos": FailureClass.CONFIGURATION_DEFAULT,
    "missing-eos": FailureClass.CONFIGURATION_DEFAULT,
    "eos-added": FailureClass.CONFIGURATION_DEFAULT,
    "truncated": FailureClass.CONFIGURATION_DEFAULT,
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
        stage or "", FailureClass.BACKEND_SPECIFIC
    )


# ----------------------------------------------------------------------------- typed records


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = json.loads(value)
    return tuple(str(v) for v in value or ())


def _pairs(value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        value = json.loads(value)
    return tuple((str(v), str(x)) for v, x in value or ())


class _Record:
    """``from_row``/``as_row``/``as_dict`` for the frozen records below: a store row has its list
    columns as JSON text, the records hold tuples, plain data (the JSON export) holds lists."""

    _JSON: dict[str, Any] = {}

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Any:
        """A record from a store row or any mapping with (at least) the required fields: keys
        that are no field (a caller's own annotations) are left out, None becomes the field's
        default where that is not None, JSON columns are decoded."""
        defaults = {f.name: f.default for f in fields(cls)}  # type: ignore[arg-type]
        values = {k: v for k, v in row.items() if k in defaults}
        for name, value in values.items():  # None where the column has a non-null default
            if value is None and defaults[name] not in (None, MISSING):
                values[name] = defaults[name]
        for name, decode in cls._JSON.items():
            if name in values:
                values[name] = decode(values[name])
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: tuples become lists."""
        return json.loads(json.dumps(asdict(self)))  # type: ignore[call-overload]

    def as_row(self) -> dict[str, Any]:
        """The store's row: list columns as JSON text."""
        row = asdict(self)  # type: ignore[call-overload]
        for name in self._JSON:
            row[name] = json.dumps([list(v) if isinstance(v, tuple) else v for v in row[name]])
        return row


@dataclass(frozen=True, kw_only=True)
class Finding(_Record):
    """What the bot reports (the glossary's finding): a regression (a confirmed pass -> fail,
    bisected) or a difference (an implementation disagreeing with the reference path now).
    One row of the store's ``findings`` table."""

    fingerprint: str
    kind: str = "regression"
    """``regression`` | ``difference``."""
    case_id: str
    stage: str
    component: str
    axis: str
    check_name: str = ""
    klass: str = ""
    detail: str = ""
    cases: tuple[str, ...] = ()
    versions: tuple[str, ...] = ()
    cells: int = 0
    last_good: str | None = None
    first_bad: str | None = None
    good_key: str = ""
    bad_key: str = ""
    compare_url: str = ""
    repro: str = ""
    status: str = "open"
    """``open`` | ``fixed``."""
    first_seen: str = ""
    last_seen: str = ""
    fixed_in: str | None = None
    last_bad: str | None = None
    """#10: the last release that still fails, just before ``fixed_in`` (when the fix was bisected)."""
    flake: str = ""
    """#15: the confirmation's re-runs (how often the bad and the good cell failed), for the issue
    body's flake rate; "" where nothing was re-run (differences)."""
    triage: str = ""
    """#15 (bot.triage): ``component-bug`` | ``matrix-configuration`` | ``undetermined``; "" not triaged."""
    triage_reason: str = ""
    repro_verified: bool | None = None
    """#15 (bot.repro): the standalone reproduction failed in the bad environment and passed in the
    good one (True), did not show the problem (False), or there is none / it could not run (None)."""
    repro_detail: str = ""

    _JSON = {"cases": _strings, "versions": _strings}

    def __post_init__(self):
        if self.repro_verified is not None and not isinstance(self.repro_verified, bool):
            object.__setattr__(self, "repro_verified", bool(self.repro_verified))  # SQLite keeps 0/1


@dataclass(frozen=True, kw_only=True)
class Bisection(_Record):
    """One search over a component's releases (or llama.cpp's commits) for a finding: the
    candidates in order, each tested candidate's verdict, the range found and how it ended.
    One row of the store's ``bisections`` table (``id`` is None until stored)."""

    id: int | None = None
    fingerprint: str | None = None
    component: str
    versions: tuple[str, ...] = ()
    probes: tuple[tuple[str, str], ...] = ()
    """(version, verdict) per tested candidate, in test order (the column keeps its old name)."""
    last_good: str | None = None
    first_bad: str | None = None
    status: str
    started: str
    finished: str | None = None
    compare_url: str = ""
    repro: str = ""
    direction: str = "introduced"
    """#10: ``introduced`` (last good -> first bad) or ``fixed`` (last bad -> first fixed; then
    ``last_good`` holds the first fixed release and ``first_bad`` the last bad one: each column
    keeps a release of the verdict it names)."""

    _JSON = {"versions": _strings, "probes": _pairs}
