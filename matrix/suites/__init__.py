"""Golden suites: cases (conversations, tools, settings) and their goldens per model.

Cases live in ``<suite>/cases.yaml``; goldens in ``<suite>/goldens/<model>.json`` with the
hash of the model they were made from. Goldens are written only by the reference path
(``nox -s goldens``), which prints the diff it makes.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import yaml

from matrix import atomic
from matrix.errors import ConfigError
from matrix.plan.key import digest

HERE = Path(__file__).resolve().parent
TRICKY_PREFIX = "_tricky/"
"""Pseudo-case ids under which the tokenize stage produces the goldens of its tricky texts."""
MAX_REPEAT_CHARS = 1_000_000
"""The most characters one ``{repeat, times}`` may expand to."""

CASE_SCHEMA = {
    "type": "object",
    "required": ["suite", "version", "cases"],
    "additionalProperties": False,
    "properties": {
        "suite": {"type": "string", "pattern": "^[a-z0-9-]+$"},
        "version": {"type": "string"},
        "cases": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "messages"],
                "additionalProperties": False,
                "properties": {
                    "id": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"},
                    "messages": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"type": "object", "required": ["role"]},
                    },
                    "tools": {"type": "array", "items": {"type": "object"}},
                    "add_generation_prompt": {"type": "boolean"},
                    "continue_final_message": {"type": "boolean"},
                    "template_kwargs": {"type": "object"},
                    "needles": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 4}},
                    "capability": {"type": "string", "pattern": "^[a-z0-9][a-z0-9-]*$"},
                    "note": {"type": "string"},
                    "stages": {
                        "type": "array",
                        "items": {"enum": ["template", "tokenize", "inference", "postprocess", "client"]},
                    },
                    "expect": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {"error": {"type": "string"}},
                    },
                },
            },
        },
    },
}


@dataclass(frozen=True)
class Suite:
    name: str
    version: str
    cases: tuple[dict, ...]
    source: Path

    @property
    def case_ids(self) -> list[str]:
        return [c["id"] for c in self.cases]


@dataclass(frozen=True)
class Goldens:
    model: str
    model_hash: str
    reference: dict
    cases: dict
    path: Path
    tricky: dict = field(default_factory=dict)


def load(name: str = "core", root: Path = HERE) -> Suite:
    import jsonschema

    path = root / name / "cases.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), "suite", name, "no such suite") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise ConfigError(str(path), "(yaml)", None, str(exc), line=mark.line + 1 if mark else None) from None
    validator = jsonschema.Draft202012Validator(CASE_SCHEMA)
    for err in sorted(validator.iter_errors(data), key=lambda e: list(e.absolute_path)):
        field = ".".join(str(p) for p in err.absolute_path) or "(root)"
        raise ConfigError(
            str(path), field, err.instance if not isinstance(err.instance, (dict, list)) else "…", err.message
        )
    seen = set()
    cases = []
    for i, case in enumerate(data["cases"]):
        if case["id"] in seen:
            raise ConfigError(str(path), f"cases[{i}].id", case["id"], "duplicate case id")
        seen.add(case["id"])
        cases.append(normalize_case(expand(case, str(path), f"cases[{i}]")))
    return Suite(data["suite"], data["version"], tuple(cases), path)


def expand(value, source: str = "(suite)", where: str = ""):
    """``{repeat: STR, times: N}`` anywhere in a case -> ``STR * N`` (keeps long cases short in YAML)."""
    if isinstance(value, dict):
        if "repeat" in value or "times" in value:
            unit, times = value.get("repeat"), value.get("times")
            if (
                set(value) != {"repeat", "times"}
                or not isinstance(unit, str)
                or not unit
                or not isinstance(times, int)
                or isinstance(times, bool)
                or times < 1
            ):
                raise ConfigError(source, where, "…", "a repeat is {repeat: <non-empty string>, times: <integer >= 1>}")
            if len(unit) * times > MAX_REPEAT_CHARS:
                raise ConfigError(
                    source, where, len(unit) * times, f"a repeat expands to at most {MAX_REPEAT_CHARS} characters"
                )
            return unit * times
        return {k: expand(v, source, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, source, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def normalize_case(case: dict) -> dict:
    """Defaults every renderer must see alike: continuing the final message means no generation prompt."""
    if case.get("continue_final_message") and "add_generation_prompt" not in case:
        case = dict(case, add_generation_prompt=False)
    return case


def goldens_path(suite: Suite, model: str) -> Path:
    return suite.source.parent / "goldens" / f"{model}.json"


def load_goldens(suite: Suite, model: str) -> Goldens | None:
    path = goldens_path(suite, model)
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return Goldens(model, data["model_hash"], data.get("reference", {}), data["cases"], path, data.get("tricky", {}))


def split_tricky(produced: dict) -> tuple[dict, dict]:
    """(per-case goldens, tricky-text goldens by name) from what a golden-mode probe produced."""
    cases = {k: v for k, v in produced.items() if not k.startswith(TRICKY_PREFIX)}
    tricky = {k[len(TRICKY_PREFIX) :]: v for k, v in produced.items() if k.startswith(TRICKY_PREFIX)}
    return cases, tricky


class HasCases(Protocol):
    """What :func:`cases_with_goldens` reads of a suite."""

    @property
    def cases(self) -> Sequence[Mapping]: ...


def cases_with_goldens(suite: HasCases, goldens: Goldens | None) -> list[dict]:
    """The cases with their expectations merged in (what the probe's job carries)."""
    out = []
    for case in suite.cases:
        case = dict(case)
        expect = dict(case.get("expect", {}))
        if goldens is not None:
            expect.update(goldens.cases.get(case["id"], {}))
        case["expect"] = expect
        out.append(case)
    return out


def suite_digest(suite: Suite, goldens: Goldens | None) -> str:
    """What of the suite can change a result: its version, its cases and their goldens."""
    cases = json.dumps(cases_with_goldens(suite, goldens), sort_keys=True, ensure_ascii=True)
    tricky = json.dumps(goldens.tricky if goldens else {}, sort_keys=True, ensure_ascii=True)
    return digest(suite.name, suite.version, cases, tricky)


def write_goldens(suite: Suite, model: str, model_hash: str, reference: dict, produced: dict) -> str:
    """Write goldens atomically and return a unified diff against the previous file."""
    path = goldens_path(suite, model)
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    doc = {
        "model": model,
        "model_hash": model_hash,
        "reference": reference,
        "cases": {cid: produced[cid] for cid in suite.case_ids if cid in produced},
    }
    _, tricky = split_tricky(produced)
    if tricky:
        doc["tricky"] = tricky
    new = json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    atomic.write_text(path, new)
    return "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), str(path), str(path)))
