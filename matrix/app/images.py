"""``llmcompat images`` (``nox -s images``): build the planned cells' container images, run none.

Each cell is resolved and keyed as the main job does; its image (tag from the key) is built
unless it exists. A cell that cannot resolve, or whose image cannot be built, is reported and
the others go on; the exit code is 1 when any build failed, 2 for bad input.
"""

from __future__ import annotations

import sys

from matrix.app.job import Options, prepare
from matrix.cell.run import CellRunner
from matrix.env import uv as envs


def build_images(opts: Options, out=None) -> int:
    from matrix.cell import in_image
    from matrix.env import image

    out = out or sys.stdout
    prep = prepare(opts)
    runner = CellRunner(prep.matrix, prep.suites, prep.models, env="image")
    failed = 0
    for cell in prep.cells:
        try:
            lock = runner.resolve(cell)
        except envs.ResolveError as exc:
            print(f"infra         {cell.id}: resolution failed: {str(exc).splitlines()[0]}", file=out)
            failed += 1
            continue
        if isinstance(lock, envs.Unresolvable):
            print(f"unresolvable  {cell.id}: {lock.reason.splitlines()[0]}", file=out)
            continue
        try:
            built = in_image.build(runner, cell, runner.key(cell, lock), lock, force=opts.force)
        except image.ImageError as exc:
            print(f"build failed  {cell.id}: {exc}", file=out)
            failed += 1
            continue
        how = (
            f"built in {built.seconds:.1f}s, {built.cached}/{built.steps} layers from the cache"
            if built.built
            else "exists"
        )
        print(f"{'built' if built.built else 'exists':<13} {cell.id}: {built.tag} ({how})", file=out)
    return 1 if failed else 0
