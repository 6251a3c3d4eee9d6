"""The one adapter of the site: read the store, build every file into a temporary directory
beside the site, then swap it into place.

A kill at any moment leaves either the old site or the new one at ``site`` (never a mix, never
a half-written file), plus at most a temporary sibling that the next publish removes first.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from itertools import chain
from pathlib import Path

from reports.web import exports, render
from reports.web.data import site_data
from reports.web.questions import answers

LOG_TAIL = 4000


def clean_stale(site: Path) -> list[Path]:
    """Remove what killed publishes left: temporary and old sites beside ``site`` and
    temporary files inside it (``.results.json.*.tmp`` from the single-file writer)."""
    removed = []
    parent = site.parent
    if parent.is_dir():
        for p in parent.glob(f".{site.name}.*"):
            if p.name.endswith((".building", ".old")) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    if site.is_dir():
        for p in site.glob(".*.tmp"):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def read_store(store, results_dir: Path | None = None) -> tuple[dict, list[dict]]:
    """The export, each cell's log tail (from its result file, when at hand) and run membership."""
    export = store.export()
    if results_dir is not None and results_dir.is_dir():
        for cell in export["cells"]:
            if cell.get("log"):
                continue
            path = results_dir / f"{cell['key']}.json"
            try:
                cell["log"] = str(json.loads(path.read_text(encoding="utf-8")).get("log") or "")[-LOG_TAIL:]
            except (OSError, ValueError, AttributeError):
                pass
    run_cells = [dict(r) for r in store.db.execute("SELECT run_id, key, reused FROM run_cells")]
    return export, run_cells


def build(
    export: dict,
    run_cells: list[dict],
    out: Path,
    ttf: list[dict] | None = None,
    generated: str | None = None,
    workers: int | None = None,
) -> dict:
    """Write the whole site under ``out`` (a fresh directory, where ``repro/`` may already hold
    the standalone reproductions); returns the site data. Big sites render their pages in
    ``workers`` forked processes (default: one per CPU)."""
    generated = generated or datetime.now(UTC).isoformat(timespec="seconds")
    scripts = {p.name for p in (out / "repro").glob("*.py")} if (out / "repro").is_dir() else set()
    site = site_data(export, run_cells, ttf=ttf, scripts=scripts)
    site["bisections"] = {}
    for b in export.get("bisections", []):
        site["bisections"].setdefault(str(b.get("fingerprint")), []).append(b)
    n = _workers(workers, len(site["cells"]))
    if n == 1:
        q = answers(site, export)
        _write_all(out, ((rel, make()) for rel, make in _data_jobs(site, export, generated)))
        _write_all(out, render.pages(site, q, generated))
    else:
        render.warm()  # compiled once here, shared by the forked renderers
        _FORKED.update(site=site, export=export, generated=generated, out=out, n=n)
        ctx = multiprocessing.get_context("fork")
        try:
            with ctx.Pool(n) as pool:
                pool.map(_render_share, range(n))
        finally:
            _FORKED.clear()
    return site


def _data_jobs(site: dict, export: dict, generated: str):
    """(relative path, a function that makes its text) for the files beside the pages."""
    for name, text in render.static_files().items():
        yield name, partial(str, text)
    yield "matrix.json", lambda: json.dumps(exports.matrix_json(site, generated), ensure_ascii=False)
    yield "matrix.schema.json", partial(exports.SCHEMA_PATH.read_text, encoding="utf-8")
    yield "results.json", lambda: json.dumps(export, ensure_ascii=False)  # no indent: the C encoder
    yield "feed.xml", partial(exports.feed, site, generated)
    for rel, body in exports.badges(site).items():
        yield rel, partial(json.dumps, body)


PARALLEL_FROM = 2000
"""Cells from which pages are rendered by several processes."""
_FORKED: dict = {}


def _workers(asked: int | None, cells: int) -> int:
    """Forking is safe only with no other thread alive (the main job's pools are done by now)."""
    if asked is not None:
        return max(1, asked)
    if cells < PARALLEL_FROM or threading.active_count() > 1 or "fork" not in multiprocessing.get_all_start_methods():
        return 1
    return max(1, min(8, os.cpu_count() or 1))


def _render_share(i: int) -> None:
    """In a forked worker: make and write every n-th file (the five answers only in the worker
    that renders the questions page)."""
    s = _FORKED
    jobs = chain(
        _data_jobs(s["site"], s["export"], s["generated"]),
        render.page_jobs(s["site"], partial(answers, s["site"], s["export"]), s["generated"]),
    )
    _write_all(s["out"], ((rel, make()) for k, (rel, make) in enumerate(jobs) if k % s["n"] == i))


def _write_all(out: Path, items) -> None:
    made: set[Path] = set()
    for rel, text in items:
        path = out / rel
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.write_text(text, encoding="utf-8")


def publish(
    store,
    site: Path,
    ttf: list[dict] | None = None,
    results_dir: Path | None = None,
    extra: Callable[[Path], object] | None = None,
) -> Path:
    """Build the site from ``store`` and swap it into ``site``; returns ``site``. ``extra``
    writes more files into the new site before its pages are made (the application's
    standalone reproductions under ``repro/``), so they are swapped in with it."""
    site = Path(site)
    site.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(site)
    with _no_cycle_collection():
        export, run_cells = read_store(store, results_dir)
        tmp = Path(tempfile.mkdtemp(prefix=f".{site.name}.", suffix=".building", dir=site.parent))
        try:
            if extra is not None:
                extra(tmp)
            build(export, run_cells, tmp, ttf=ttf)
            _fsync_dir(tmp)
            swap(tmp, site)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return site


@contextmanager
def _no_cycle_collection():
    """The cyclic garbage collector paused while the site is built: the export and site data
    are millions of long-lived objects that every full collection walked again (a quarter of a
    big build's CPU), and in forked renderers each walk also copied the shared pages. The build
    makes little cyclic garbage; reference counting still frees the rest."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def swap(new: Path, site: Path) -> None:
    """Put ``new`` at ``site``: the old site is renamed aside first and removed after."""
    if site.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{site.name}.", suffix=".old", dir=site.parent))
        os.rmdir(old)
        os.rename(site, old)
        os.rename(new, site)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(new, site)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
