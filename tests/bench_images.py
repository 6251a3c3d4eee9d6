"""The ``images`` benchmark (``python -m tests.bench images``): cell images with the real engine.

- rebuilding an unchanged cell image hits the cache for every layer, in 2 s or less;
- a second cell with the same engine reuses the engine layers (seconds and layers reused);
- the image size per engine family of the default CPU matrix.
"""

from __future__ import annotations

import time

REBUILD_GOAL_S = 2.0


def _runner_and_cells():
    from matrix.app.job import Options, prepare
    from matrix.cell.run import CellRunner

    prep = prepare(Options())
    return CellRunner(prep.matrix, prep.suites, prep.models, env="image"), prep.cells


def _resolved(runner, cell):
    from matrix.env import uv as envs

    lock = runner.resolve(cell)
    return None if isinstance(lock, envs.Unresolvable) else lock


def _sharing_pair(runner, cells):
    """Two resolvable planned cells with the same engine and something else different."""
    for first in cells:
        for second in cells:
            if second is not first and second.choice("engine") == first.choice("engine"):
                a, b = _resolved(runner, first), _resolved(runner, second)
                if a and b and a.pins != b.pins:
                    return (first, a), (second, b)
    return None


def run(report) -> None:
    from matrix.cell import in_image
    from matrix.env import image

    reason = image.engine_reason()
    if reason:
        report("images", False, f"no Docker engine: {reason}")
        return
    c = image.client()
    runner, cells = _runner_and_cells()
    pair = _sharing_pair(runner, cells)
    if pair is None:
        report("images", False, "no two resolvable planned cells share an engine")
        return
    (cell_a, lock_a), (cell_b, lock_b) = pair
    key_a, key_b = runner.key(cell_a, lock_a), runner.key(cell_b, lock_b)
    first = in_image.build(runner, cell_a, key_a, lock_a)
    if first.built:
        print(f"  first build of {cell_a.id}: {first.seconds:.1f}s")
    t = time.perf_counter()
    again = in_image.build(runner, cell_a, key_a, lock_a, force=True)
    rebuild = time.perf_counter() - t
    report(
        "image rebuild (unchanged cell)",
        again.cached == again.steps and rebuild <= REBUILD_GOAL_S,
        f"{rebuild:.2f}s for {again.cached}/{again.steps} layers from the cache "
        f"(goal: all, <= {REBUILD_GOAL_S:.0f}s; {rebuild / REBUILD_GOAL_S:.2f}x the goal)",
    )
    tag_b = in_image.dockerfile.image_tag(key_b)
    if image.exists(c, tag_b):
        c.images.remove(tag_b, force=True)
    second = in_image.build(runner, cell_b, key_b, lock_b)
    engine_steps = _engine_steps(second.log)
    reused = engine_steps and all(s in _cached(second.log) for s in engine_steps)
    report(
        "image engine layer shared",
        bool(reused),
        f"{cell_b.id}: {second.seconds:.1f}s, {second.cached}/{second.steps} layers reused "
        f"(engine layers: {'all reused' if reused else 'rebuilt'}) from {cell_a.id}"
        + (f", whose first build took {first.seconds:.1f}s" if first.built else ""),
    )
    sizes = {}
    for cell in cells:
        family = cell.choice("engine").component
        if family in sizes:
            continue
        lock = _resolved(runner, cell)
        if lock is None:
            continue
        built = in_image.build(runner, cell, runner.key(cell, lock), lock)
        sizes[family] = c.images.get(built.tag).attrs["Size"]
    base = c.images.get(image.ensure_base(c, runner.runner("cpu").image.base)).attrs["Size"]
    report(
        "image size per engine",
        bool(sizes),
        ", ".join(f"{f}: {s / 1e6:.0f} MB" for f, s in sorted(sizes.items())) + f" (base {base / 1e6:.0f} MB)",
    )


def _steps(log: str) -> dict[str, str]:
    import re

    return {
        m.group(1): m.group(2) for m in re.finditer(r"^#(\d+) \[(?:stage-\d+ )?\s*\d+/\d+\] (.*)$", log, re.MULTILINE)
    }


def _engine_steps(log: str) -> list[str]:
    """The build steps up to and including the engine layer (uv, interpreter, engine dependencies, engine)."""
    steps = _steps(log)
    engine = [n for n, text in steps.items() if "uv pip install" in text]
    if len(engine) < 2:
        return []
    last = sorted(engine, key=int)[-2]  # the last install layer is the cell's own
    return [n for n in steps if int(n) <= int(last) and "FROM" not in steps[n]]


def _cached(log: str) -> set[str]:
    import re

    return {m.group(1) for m in re.finditer(r"^#(\d+) CACHED$", log, re.MULTILINE)}
