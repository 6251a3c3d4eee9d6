"""Release tags and compare links: where a component's version lives in its repository (pure).

The host of compare links is GitHub's web UI (the repository's ``owner/name`` comes from
:attr:`matrix.declare.config.Component.repo`, the tag from its ``tag_format``). Lower layers (the
llama.cpp git source) and the bot both name ranges with these.
"""

from __future__ import annotations

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
