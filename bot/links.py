"""Pure link and command builders: compare URLs for a bisected range, one-line reproductions.

No I/O. The host of compare links is GitHub's web UI (the repository's ``owner/name`` comes from
:attr:`matrix.declare.config.Component.repo`, the tag from its ``tag_format``).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from urllib.parse import quote

GITHUB = "https://github.com"


def tag(tag_format: str, version: str) -> str:
    """The upstream tag of ``version``: ``tag_format`` with ``{version}`` filled in (``v{version}``)."""
    if "{version}" not in tag_format:
        raise ValueError(f"tag format {tag_format!r} has no {{version}} placeholder")
    return tag_format.replace("{version}", str(version))


def compare_url(repo: str, tag_format: str, good: str, bad: str) -> str:
    """``https://github.com/{repo}/compare/{tag(good)}...{tag(bad)}``: what changed in the range."""
    repo = repo.strip().strip("/")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ValueError(f"repository {repo!r} is not owner/name")
    # tags such as "@huggingface/jinja@0.5.11" hold '@' and '/': encode them as path segments
    good_tag, bad_tag = (quote(tag(tag_format, v), safe="") for v in (good, bad))
    return f"{GITHUB}/{repo}/compare/{good_tag}...{bad_tag}"


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
