"""The aggregator: the single writer that turns cell result files into the store.

Workers (cells) only emit result files. Every file of a run is read and checked against
``reports/result.schema.json`` (every nested field the store reads) before anything is written,
then the run goes in as one transaction: a bad file is reported by name, JSON path and value,
and nothing of that run is stored.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path

from matrix.errors import ConfigError, LlmcompatError
from reports.store import Store

SCHEMA_PATH = Path(__file__).resolve().parent / "result.schema.json"
MAX_BYTES = 64 * 1024 * 1024
"""A result file is a few hundred kilobytes; anything this big is not one."""
REQUIRED = ("key", "cell", "outcome", "finished", "stages")


@functools.cache
def _validator():
    """The compiled Draft 2020-12 validator of the result schema (once per process)."""
    from jsonschema import Draft202012Validator

    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def json_path(parts: Iterable) -> str:
    """``("records", 3, "case")`` -> ``records[3].case`` (the document itself: ``$``)."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "$"


def _shown(value: object) -> object:
    """The offending value as an error shows it: scalars as they are, containers shortened."""
    if isinstance(value, (dict, list)):
        text = json.dumps(value, ensure_ascii=False, default=str)
        return text if len(text) <= 80 else text[:77] + "..."
    if isinstance(value, str) and len(value) > 200:
        return value[:197] + "..."
    return value


def _unencodable(data: object) -> tuple[list, str] | None:
    """The first string (key or value) that SQLite cannot store (a lone UTF-16 surrogate, which
    JSON's ``\\ud800`` escapes allow), as (path, string); iterative, so any depth is fine."""
    stack: list[tuple[list, object]] = [([], data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path, value
        elif isinstance(value, dict):
            for k, v in value.items():
                stack.append((path + [k], k))
                stack.append((path + [k], v))
        elif isinstance(value, list):
            stack.extend((path + [i], v) for i, v in enumerate(value))
    return None


def _load(path: Path) -> object:
    file = str(path)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise ConfigError(file, "$", path.stat().st_size, f"larger than {MAX_BYTES} bytes: not a result file")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(file, "$", None, f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except OSError as exc:
        raise ConfigError(file, "$", None, f"cannot read: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(file, "$", None, f"not valid JSON: {exc.msg} (column {exc.colno})", line=exc.lineno) from None
    except RecursionError:
        raise ConfigError(file, "$", None, "not valid JSON: nested too deeply") from None


def read_result(path: Path) -> dict:
    """A result file, checked against the result schema; a ConfigError names file, path and value."""
    from jsonschema.exceptions import best_match

    path, file = Path(path), str(path)
    data = _load(path)
    try:
        error = best_match(_validator().iter_errors(data))
    except RecursionError:
        raise ConfigError(file, "$", None, "nested too deeply to check") from None
    if error is not None:
        raise ConfigError(file, json_path(error.absolute_path), _shown(error.instance), error.message[:300])
    assert isinstance(data, dict)  # the schema's top level is an object
    bad = _unencodable(data)
    if bad is not None:
        raise ConfigError(
            file,
            json_path(bad[0]),
            bad[1].encode("utf-8", "backslashreplace").decode(),
            "holds a lone surrogate (\\ud800-\\udfff): not text the store can keep",
        )
    if path.stem != data["key"]:
        raise ConfigError(file, "key", data["key"], f"does not match the file name ({path.stem})")
    return data


def result_files(dirs: Iterable[Path | str]) -> list[Path]:
    """The result files under ``dirs``; each must be a directory holding at least one ``*.json``.
    A missing path, a file or an empty directory is bad input (exit 2), before anything is stored."""
    files: list[Path] = []
    for d in dirs:
        d = Path(d)
        if not d.exists():
            raise ConfigError(str(d), "(path)", str(d), "no such directory of result files")
        if not d.is_dir():
            raise ConfigError(str(d), "(path)", str(d), "is a file, not a directory of result files")
        found = sorted(p for p in d.rglob("*.json") if p.is_file())
        if not found:
            raise ConfigError(str(d), "(path)", str(d), "holds no result files (*.json)")
        files += found
    return files


def ingest(store: Store, run: dict, result_files: Iterable[Path], reused: Iterable[str], releases=()) -> int:
    """Check every file, then store the run in one transaction. Returns the cells written."""
    results = [read_result(p) for p in result_files]
    store.ingest_run(run, results, list(reused), releases)
    return len(results)


def rebuild(store_path: Path, results: Path, run: dict) -> tuple[Path | None, int, list[str]]:
    """A fresh store from the result files under ``results`` (results are files: the store is
    derived from them). The old store, damaged or not, is moved aside, never overwritten; the
    fresh one is built beside it and renamed into place, so a kill leaves one or the other.

    Returns (where the old store now is, cells ingested, files skipped with their error)."""
    import os

    store_path = Path(store_path)
    files = sorted(p for p in Path(results).rglob("*.json") if p.is_file()) if Path(results).is_dir() else []
    good, skipped = [], []
    for f in files:
        try:
            good.append(read_result(f))
        except LlmcompatError as exc:
            skipped.append(str(exc))
    fresh = store_path.with_name(store_path.name + ".rebuilding")
    for p in (fresh, *_sidecars(fresh)):
        p.unlink(missing_ok=True)
    with Store(fresh) as store:
        store.ingest_run(run, good, [])
    aside = None
    if store_path.exists():
        aside = _free_name(store_path.with_name(store_path.name + ".damaged"))
        os.rename(store_path, aside)
        for side in _sidecars(store_path):  # a -wal belongs to the old file: it goes with it
            if side.exists():
                os.rename(side, Path(str(aside) + side.name[len(store_path.name) :]))
    os.rename(fresh, store_path)
    return aside, len(good), skipped


def _sidecars(path: Path) -> list[Path]:
    return [path.with_name(path.name + s) for s in ("-wal", "-shm", "-journal")]


def _free_name(base: Path) -> Path:
    """``base``, else ``base.1``, ``base.2``...: the first name nothing has yet."""
    candidate, n = base, 0
    while candidate.exists() or any(s.exists() for s in _sidecars(candidate)):
        n += 1
        candidate = base.with_name(f"{base.name}.{n}")
    return candidate
