"""The scale plan, measured with the real planner on realistic axes (README: "Scale").

8 engines x 10 versions, 4 tokenizer libraries x 10, 4 template sources (x 10 versions each),
3 clients x 10, 2 runners (engines split between CPU and GPU), 3 models: how many cells a run
plans with pairwise reduction against the full product, how they shard into GitHub matrices
(256 jobs each), the runner minutes they cost, and how that grows.

    python -m tests.scale [--cell-seconds S] [--store PATH]

Cell time: the median ``duration_s`` of the store's cells when a store is given (or found in
the state dir), else ``--cell-seconds``; each job adds GitHub's set-up (checkout, Python, uv,
caches), ``JOB_OVERHEAD_S``.
"""

from __future__ import annotations

import argparse
import math
import sqlite3
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from matrix.declare.config import Component, Matrix, Model, Runner, VersionRule
from matrix.plan.planner import github_matrix, plan

JOB_OVERHEAD_S = 75.0
CPU = Runner("cpu", ("ubuntu-latest",), frozenset({"cpu", "compile", "network", "node"}))
GPU = Runner("gpu", ("self-hosted", "linux", "x64", "gpu"), frozenset({"cpu", "gpu", "compile", "network"}))
MODELS = tuple(Model(f"tiny-{a}", "tiny", arch=a) for a in ("qwen2", "llama", "mistral"))


@dataclass(frozen=True)
class Plan:
    cells: int
    product: int
    matrices: list[dict]
    seconds: float


def realistic_axes(
    engines: int = 8, versions: int = 10, tokenizers: int = 4, templates: int = 4, clients: int = 3
) -> tuple[Matrix, dict]:
    """A matrix of that shape; every second engine needs a GPU (vLLM, SGLang, ...)."""

    def comps(axis, n, gpu_every=0):
        return tuple(
            Component(
                axis,
                f"{axis}-{i}",
                (f"{axis}-{i}",),
                VersionRule(latest=versions),
                needs=frozenset({"gpu"} if gpu_every and i % gpu_every else {"cpu"}),
            )
            for i in range(n)
        )

    axes = {
        "engine": comps("engine", engines, gpu_every=2),
        "tokenizer": comps("tokenizer", tokenizers),
        "template": comps("template", templates),
        "client": comps("client", clients),
    }
    matrix = Matrix("realistic.yaml", axes, (CPU, GPU), MODELS, ())
    vs = {
        (axis, c.name): [f"{major}.{minor}.0" for major in (1, 2) for minor in range(versions // 2)]
        for axis, cs in axes.items()
        for c in cs
    }
    return matrix, vs


def realistic_plan(cell_seconds: float = 60.0, **shape) -> Plan:
    matrix, versions = realistic_axes(**shape)
    cells = plan(matrix, versions, runners={"cpu", "gpu"}, models={m.name for m in MODELS})
    per_axis = {axis: sum(len(versions[(axis, c.name)]) for c in cs) for axis, cs in matrix.axes.items()}
    product = math.prod(per_axis.values()) * len(MODELS)  # each engine version runs on its one runner
    return Plan(len(cells), product, github_matrix(cells, matrix), len(cells) * (cell_seconds + JOB_OVERHEAD_S))


def steady_state(new_releases: int = 5, **shape) -> int:
    """Cells a daily run executes once the history holds every older release: those that name
    one of ``new_releases`` new versions (the others' ids are known: skipped as reused)."""
    matrix, versions = realistic_axes(**shape)
    fresh = {(axis, name): vs[-1] for (axis, name), vs in list(versions.items())[:: len(versions) // new_releases]}
    seen = {k: [v for v in vs if fresh.get(k) != v] for k, vs in versions.items()}
    cells = plan(matrix, versions, runners={"cpu", "gpu"}, models={m.name for m in MODELS}, seen=seen)
    return sum(1 for c in cells if any(fresh.get((axis, ch.component)) == ch.version for axis, ch in c.choices))


def measured_cell_seconds(store: Path | None) -> float | None:
    if store is None or not store.is_file():
        return None
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        rows = [r[0] for r in db.execute("SELECT duration_s FROM cells WHERE duration_s > 0")]
    finally:
        db.close()
    return statistics.median(rows) if rows else None


def report(cell_seconds: float, source: str) -> list[str]:
    t0 = time.perf_counter()
    base = realistic_plan(cell_seconds)
    took = time.perf_counter() - t0
    jobs = [len(m["include"]) for m in base.matrices]
    lines = [
        f"cell time: {cell_seconds:.0f} s ({source}) + {JOB_OVERHEAD_S:.0f} s job set-up",
        f"realistic axes: {base.cells} cells per run with pairwise reduction vs {base.product:,} in the full "
        f"product ({base.product / base.cells:,.0f}x fewer); planned in {took:.2f} s",
        f"GitHub matrices: {len(base.matrices)} (jobs {jobs}, limit 256 each)",
        f"runner minutes for a full run: {base.seconds / 60:,.0f} ({base.seconds / 3600:.1f} h)",
        f"a daily run with 5 new releases, known cell ids skipped: {steady_state():,} cells",
        "growth (cells per run, matrices):",
    ]
    for label, shape in (
        ("versions 5", {"versions": 5}),
        ("versions 20", {"versions": 20}),
        ("engines 4", {"engines": 4}),
        ("engines 16", {"engines": 16}),
        ("clients 6", {"clients": 6}),
        ("tokenizers 8", {"tokenizers": 8}),
    ):
        p = realistic_plan(cell_seconds, **shape)
        lines.append(f"  {label:<13} {p.cells:>5} cells, {len(p.matrices)} matrices, {p.seconds / 60:,.0f} runner min")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cell-seconds", type=float, default=60.0)
    ap.add_argument("--store", type=Path)
    args = ap.parse_args(argv)
    from matrix import paths

    store = args.store or paths.store_path()
    measured = measured_cell_seconds(store)
    seconds, source = (measured, f"median of {store}") if measured else (args.cell_seconds, "--cell-seconds")
    print("\n".join(report(seconds, source)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
