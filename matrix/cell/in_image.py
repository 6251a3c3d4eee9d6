"""One cell in its container image: the image path beside the uv path of :mod:`matrix.cell.run`.

The cell is resolved and keyed exactly as on the uv path; only where its packages live and where
the probe runs differ. Its image (tag from the key) is built once by :mod:`matrix.env.image` and
the probe runs inside with the same job, so the result file is the same and is ingested the same
way. The log's first line names the image.
"""

from __future__ import annotations

import os

from matrix.env import dockerfile, image

PASSED_ENV = ("LANG", "LC_ALL", "CUDA_VISIBLE_DEVICES")
"""Of the caller's environment, only these enter the container (host paths mean nothing there)."""


def cell_inputs(runner, cell, key: str, lock) -> image.CellInputs:
    """What the cell's image is made of, from a :class:`matrix.cell.run.CellRunner`'s matrix."""
    from packaging.requirements import Requirement

    matrix = runner.matrix
    host = runner.runner(cell.runner)
    engine_roots: list[str] = []
    other_roots: list[str] = []
    engine = cell.choice("engine").component
    engine_packages = tuple(matrix.component("engine", engine).packages)
    for axis, choice in cell.choices:
        comp = matrix.component(axis, choice.component)
        if comp.ecosystem != "pypi":
            continue
        roots = [comp.primary, *(Requirement(r).name for r in comp.requires)]
        (engine_roots if axis == "engine" else other_roots).extend(roots)
    family = dockerfile.family_of(engine)
    built = runner.built(cell)
    server = runner.llama_server(cell) or ""
    return image.CellInputs(
        cell_id=cell.id,
        key=key,
        runner=cell.runner,
        gpu="gpu" in host.provides,
        base=host.image.base,
        engine=engine,
        vendor_base=dict(host.image.engines).get(family, ""),
        python=lock.python,
        pins=lock.pins,
        engine_roots=tuple(engine_roots),
        engine_packages=engine_packages,
        other_roots=tuple(other_roots),
        overrides=tuple(host.pins),
        built=tuple(sorted((name, str(d)) for name, d in built.items())),
        llama_server=server,
        harness=runner.harness,
        suite=runner.suites[cell.model].digest,
    )


def limits_of(runner, cell) -> image.Limits:
    cfg = runner.runner(cell.runner).image
    return image.Limits(memory=cfg.memory, pids=cfg.pids, seconds=float(cfg.seconds))


def build(runner, cell, key: str, lock, *, force: bool = False) -> image.Built:
    """The cell's image, built unless its tag exists (``force``: build again, through the cache)."""
    return image.ensure_cell_image(cell_inputs(runner, cell, key, lock), force=force)


def probe(runner, cell, key: str, lock, job: dict, offline_env: dict[str, str]) -> tuple[dict | None, str]:
    """(result, log) of the probe run in the cell's image, as :func:`matrix.cell.run.run_probe`
    gives them; a build that fails is the probe not running (None, with the build's log)."""
    try:
        built = build(runner, cell, key, lock)
    except image.ImageError as exc:
        return None, f"image build failed: {exc}"
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ} | dict(offline_env)
    try:
        result, log = image.run_probe(built.tag, job, env, gpu=image_gpu(runner, cell), limits=limits_of(runner, cell))
    except image.ImageError as exc:
        return None, f"image {built.tag}: {exc}"
    return result, f"image {built.tag} ({built.id})\n{log}"


def image_gpu(runner, cell) -> bool:
    return "gpu" in runner.runner(cell.runner).provides
