"""Pure link and command builders: compare URLs for a bisected range, one-line reproductions.

No I/O. Tags and compare URLs are :mod:`matrix.releases.tags`' (the llama.cpp git source below
the bot names ranges with them too); they are re-exported here for the bot's modules.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable

from matrix.releases.tags import GITHUB, compare_url, tag

__all__ = ["GITHUB", "cell_repro", "compare_url", "repro_command", "tag"]


def repro_command(
    package: str,
    versions: str | Iterable[str],
    script: str,
    *,
    extra_requirements: Iterable[str] = (),
    python: str | None = None,
    good: str | None = None,
    bad: str | None = None,
    repo: str | None = None,
    tag_format: str | None = None,
    find_fix: bool = False,
    samples: int | None = None,
    timeout: float | None = None,
    jobs: int | None = None,
    offline: bool = False,
) -> str:
    """The one ``llmcompat bisect`` command line that reproduces a bisection (shell-quoted): every
    option that changes what is searched or how (output options such as ``--json`` left out).

    ``versions`` is a PEP 440 range (``>=20,<24``) or an explicit list of versions (joined with
    commas, ``20.0,21.3,22.0``, which the command reads back as a list).
    """
    rng = versions if isinstance(versions, str) else ",".join(versions)
    argv = ["llmcompat", "bisect", package, rng, script]
    for req in extra_requirements:
        argv += ["--with", req]
    if python:
        argv += ["--python", python]
    if good:
        argv += ["--good", good]
    if bad:
        argv += ["--bad", bad]
    if repo:
        argv += ["--repo", repo]
    if tag_format:
        argv += ["--tag-format", tag_format]
    if find_fix:
        argv.append("--find-fix")
    if samples is not None:
        argv += ["--samples", str(samples)]
    if timeout is not None:
        argv += ["--timeout", f"{timeout:g}"]
    if jobs is not None:
        argv += ["--jobs", str(jobs)]
    if offline:
        argv.append("--offline")
    return shlex.join(argv)


def cell_repro(cell_id: str) -> str:
    """Re-run one cell: the same command :func:`matrix.cell.run.repro_command` prints."""
    return f'nox -s "cell({cell_id})"'
