"""The template corpus of a run: which templates, and the reference's renders of them.

The corpus components (``ecosystem: corpus`` on the template axis) that a run selects are read
out of their sdist (``matrix/env/template_corpus.py``) and merged: a component that names
templates adds those, one that names none adds all of them. Their goldens are computed at run
time by the reference renderer (jinja2 at ``reference.jinja2`` in the reference environment)
and cached by content (corpus digest, cases, reference pins, probe source, model hash): the
renders embed the templates' text, which is not ours to commit, and they change whenever the
corpus or the suite does, so committing them would be 70 × cases renders of churn for no gain.

The result rides on each model's :class:`~matrix.cell.run.SuiteRef` (``corpus``, with the suite
digest extended by the corpus and goldens digests), so every cell runner of the run, the
regression re-runs included, hands the same corpus to the probe and keys cells by it.
"""

from __future__ import annotations

import dataclasses
import json

from matrix import atomic, paths
from matrix.cell.run import ModelRef, SuiteRef, harness_digest, run_probe
from matrix.declare.config import Component, Matrix
from matrix.env import template_corpus
from matrix.errors import ConfigError, LlmcompatError
from matrix.plan.key import digest

AXIS = "template"


def components(matrix: Matrix, selected) -> list[Component]:
    """The selected corpus components, in matrix order."""
    chosen = set(selected)
    return [c for c in matrix.axes.get(AXIS, ()) if c.ecosystem == "corpus" and (AXIS, c.name) in chosen]


def load(matrix: Matrix, selected, versions: dict | None = None, *, offline: bool = False):
    """The run's corpus (a :class:`template_corpus.Corpus`), or None when no corpus is selected.

    Each component's version is the first of its version set (``versions``, from discovery), else
    its first explicit version. Components from different sdists or folders are not merged: the
    first one wins and the others are an error naming them.
    """
    comps = components(matrix, selected)
    if not comps:
        return None
    first = comps[0]
    version = _version(matrix, first, versions or {})
    if first.corpus_path is None:  # the loader gives every corpus component its path
        raise matrix.error(f"axes.{AXIS}.{first.name}.corpus", first.name, "a corpus component needs corpus.path")
    for c in comps[1:]:
        if (c.primary, c.corpus_path, _version(matrix, c, versions or {})) != (
            first.primary,
            first.corpus_path,
            version,
        ):
            raise ConfigError(
                matrix.source,
                f"axes.{AXIS}.{c.name}",
                c.name,
                f"a run renders one corpus; {first.name} is {first.primary}=={version} {first.corpus_path}",
            )
    try:
        whole = template_corpus.load(first.primary, version, first.corpus_path, offline=offline)
        named = [c.corpus_templates for c in comps if c.corpus_templates is not None]
        if len(named) < len(comps):  # one names no templates: all of them
            return whole
        names = tuple(dict.fromkeys(n for templates in named for n in templates))
        return template_corpus.select(whole, names)
    except template_corpus.CorpusError as exc:
        raise LlmcompatError(f"{matrix.source}: axes.{AXIS}.{first.name}: {exc}") from None


def _version(matrix: Matrix, comp: Component, versions: dict) -> str:
    found = versions.get((AXIS, comp.name))
    if found:
        return found[0]
    if comp.versions.explicit:
        return comp.versions.explicit[0]
    raise matrix.error(
        f"axes.{AXIS}.{comp.name}.versions", comp.name, "a corpus needs its version discovered, or an explicit version"
    )


def _cases(suite: SuiteRef) -> list[dict]:
    return [
        {k: v for k, v in c.items() if k not in ("expect", "needles")}
        for c in suite.cases
        if "template" in c.get("stages", ["template"])
    ]


def reference_goldens(matrix: Matrix, model: ModelRef, suite: SuiteRef, corpus) -> dict:
    """``{template: {"capabilities", "renders"}}`` from the reference renderer, cached by content."""
    cases = _cases(suite)
    key = digest(
        corpus.digest,
        json.dumps(cases, sort_keys=True, ensure_ascii=False),
        json.dumps(dict(matrix.reference), sort_keys=True),
        harness_digest(),
        model.hash,
    )
    path = paths.cache_dir() / "template-corpus" / "goldens" / f"{key[:32]}.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    from matrix.env.uv import reference_env

    env = reference_env(matrix)
    job = {
        "mode": "golden",
        "model_dir": str(model.path),
        "stages": ["template"],
        "template_sources": [],
        "renderers": ["jinja2"],
        "golden_renderer": "jinja2",
        "cases": cases,
        "corpus": {"name": corpus.package, "version": corpus.version, "templates": corpus.templates},
        "limits": {"render_seconds": 10, "render_chars": 1_000_000},
    }
    result, log = run_probe(env.python, job)
    if result is None:
        raise LlmcompatError(f"the reference renderer failed on the template corpus:\n{log[-3000:]}")
    crashed = [r for r in result["records"] if r["outcome"] == "fail"]
    if crashed:
        raise LlmcompatError(f"the reference renderer failed on the template corpus: {crashed[0]['detail'][:2000]}")
    goldens = {
        case[len("_corpus/") :]: v["corpus"] for case, v in result["produced"].items() if case.startswith("_corpus/")
    }
    atomic.write_json(path, goldens)
    return goldens


def attach(matrix: Matrix, model: ModelRef, suite: SuiteRef, corpus, component_names=()) -> SuiteRef:
    """``suite`` carrying the corpus and its reference goldens; its digest covers both."""
    if corpus is None:
        return suite
    goldens = reference_goldens(matrix, model, suite, corpus)
    reference = f"jinja2 {matrix.reference.get('jinja2', '?')}"
    payload = {
        "name": corpus.package,
        "version": corpus.version,
        "digest": corpus.digest,
        "components": list(component_names),
        "reference": reference,
        "templates": dict(corpus.templates),
        "goldens": goldens,
    }
    gold_digest = digest(json.dumps(goldens, sort_keys=True, ensure_ascii=False))
    return dataclasses.replace(suite, digest=digest(suite.digest, corpus.digest, gold_digest), corpus=payload)
