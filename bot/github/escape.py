"""Escapers for untrusted text in issue bodies and titles (pure).

Everything a model, template, server or package produced reaches an issue: a rendered chat
template, a decoded token, a version string, an exception message. On GitHub such text must not
ping people (``@user``), link other issues (``#12``, ``owner/repo#12``, ``GH-12``), inject HTML
or change the Markdown around it. Three contexts, three escapers:

- :func:`text` for prose: HTML-escaped, Markdown punctuation backslash-escaped, a zero-width
  joiner after every ``@`` and ``#`` (so no mention or reference forms), one line.
- :func:`code` for an inline code span: a backtick run longer than any inside; GitHub neither
  mentions nor links inside code, and HTML is literal there.
- :func:`fence` for a block: a fence longer than any backtick run inside, so the content can
  never close it.
"""

from __future__ import annotations

import re

__all__ = ["ZWJ", "code", "fence", "neutralise", "text", "title"]

ZWJ = "\u200d"
_REFS = re.compile(r"([@#])")
_GH_REF = re.compile(r"\b(GH)-(?=\d)", re.IGNORECASE)
_MD = re.compile(r"([\\`*_{}\[\]()+\-.!|~=:])")
_BACKTICKS = re.compile(r"`+")


def neutralise(value: object) -> str:
    """``@x`` -> ``@\u200dx``, ``#1`` -> ``#\u200d1``, ``GH-1`` -> ``GH\u200d-1``: no mention, no reference."""
    s = _REFS.sub(lambda m: m.group(1) + ZWJ, str(value))
    return _GH_REF.sub(lambda m: m.group(1) + ZWJ + "-", s)


def text(value: object) -> str:
    """Untrusted prose for Markdown: one line, HTML and Markdown escaped, references neutralised."""
    s = " ".join(str(value).split())
    s = neutralise(s)
    s = _MD.sub(r"\\\1", s)
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def title(value: object, limit: int = 256) -> str:
    """An issue title (plain text, GitHub's limit 256): one line, references neutralised."""
    s = neutralise(" ".join(str(value).split()))
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _longest_run(s: str) -> int:
    return max((len(m) for m in _BACKTICKS.findall(s)), default=0)


def code(value: object) -> str:
    """An inline code span holding ``value`` verbatim (one line)."""
    s = " ".join(str(value).splitlines())
    ticks = "`" * (_longest_run(s) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or not s.strip() else ""
    return f"{ticks}{pad}{s}{pad}{ticks}"


def fence(value: object, lang: str = "") -> str:
    """A fenced code block holding ``value`` verbatim; the fence outlasts every backtick run inside."""
    s = str(value).rstrip("\n")
    ticks = "`" * max(3, _longest_run(s) + 1)
    return f"{ticks}{lang}\n{s}\n{ticks}"
