"""The aggregator: the single writer that turns cell result files into the store.

Workers (cells) only emit result files. Every file of a run is read and checked before
anything is written, then the run goes in as one transaction: a bad file is reported by
name and field, and nothing of that run is stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from matrix.errors import ConfigError
from matrix.outcome import Outcome
from reports.store import Store

REQUIRED = ("key", "cell", "outcome", "finished", "stages")


def read_result(path: Path) -> dict:
    """A result file, checked for the fields the store needs."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), "(json)", None, f"not valid JSON: {exc}", line=exc.lineno) from None
    if not isinstance(data, dict):
        raise ConfigError(str(path), "(root)", type(data).__name__, "a result file holds one JSON object")
    for field in REQUIRED:
        if field not in data:
            raise ConfigError(str(path), field, None, "required field is missing")
    try:
        Outcome(data["outcome"])
    except ValueError:
        raise ConfigError(str(path), "outcome", data["outcome"], f"not one of {[o.value for o in Outcome]}") from None
    for stage, summary in data["stages"].items():
        try:
            Outcome(summary.get("outcome"))
        except ValueError:
            raise ConfigError(str(path), f"stages.{stage}.outcome", summary.get("outcome"), "not an outcome") from None
    if Path(path).stem != data["key"]:
        raise ConfigError(str(path), "key", data["key"], "does not match the file name")
    return data


def ingest(store: Store, run: dict, result_files: Iterable[Path], reused: Iterable[str], releases=()) -> int:
    """Check every file, then store the run in one transaction. Returns the cells written."""
    results = [read_result(p) for p in result_files]
    store.ingest_run(run, results, list(reused), releases)
    return len(results)
