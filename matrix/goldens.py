"""Goldens come from the reference path: the versions pinned in ``axes.yaml``'s ``reference``.

The reference environment runs the probe in golden mode (jinja2 renders, ``tokenizers``
encodes), then in check mode against what it just produced with every renderer and
tokenizer it has: if the reference disagrees with itself, no golden is written. The diff
against the committed goldens is printed for review.
"""

from __future__ import annotations

from matrix import envs, suites
from matrix.errors import LlmcompatError
from matrix.run import ModelRef, run_probe


def reference_env(matrix) -> envs.Environment:
    pins = [f"{name}=={version}" for name, version in sorted(matrix.reference.items())
            if name in ("jinja2", "transformers", "tokenizers")]
    runner = next(r for r in matrix.runners if r.default)
    lock = envs.resolve(pins, python=runner.python, overrides=list(runner.pins))
    if isinstance(lock, envs.Unresolvable):
        raise LlmcompatError(f"{matrix.source}: reference pins {pins} cannot be installed together:\n{lock.reason}")
    return envs.ensure(lock)


def _job(model: ModelRef, cases, mode: str, tricky: dict | None = None) -> dict:
    return {
        "mode": mode, "model_dir": str(model.path), "stages": ["template", "tokenize"],
        "renderers": ["jinja2", "transformers"],
        "tokenizers": ["tokenizers", "transformers", "transformers-slow", "sentencepiece", "tiktoken"],
        "tricky": tricky or {},
        "golden_renderer": "jinja2", "golden_tokenizer": "tokenizers", "cases": list(cases),
        "limits": {"render_seconds": 10, "render_chars": 1_000_000},
    }


def produce(matrix, model: ModelRef, suite: suites.Suite) -> dict:
    """What the reference path produces for every case, after it checks itself."""
    env = reference_env(matrix)
    bare = [dict(c, expect={k: v for k, v in c.get("expect", {}).items() if k == "error"}) for c in suite.cases]
    result, log = run_probe(env.python, _job(model, bare, "golden"))
    if result is None:
        raise LlmcompatError(f"the reference probe failed:\n{log}")
    produced = result["produced"]
    cases, tricky = suites.split_tricky(produced)
    fake = suites.Goldens(model.name, model.hash, {}, cases, suites.goldens_path(suite, model.name), tricky)
    check, log = run_probe(env.python, _job(model, suites.cases_with_goldens(suite, fake), "check", tricky))
    if check is None:
        raise LlmcompatError(f"the reference self-check failed:\n{log}")
    bad = [r for r in check["records"] if r["outcome"] == "fail"]
    if bad:
        lines = "\n".join(f"  {r['case']} {r['stage']}/{r['check']}: {r['detail'][:300]}" for r in bad[:20])
        raise LlmcompatError(f"the reference path disagrees with itself; no golden written:\n{lines}")
    return produced


def regenerate(opts, check: bool = False) -> int:
    from matrix.job import build_model, load_matrix

    matrix = load_matrix(opts)
    suite = suites.load(opts.suite)
    names = opts.models or tuple(m.name for m in matrix.models if m.default and m.kind == "tiny")
    changed = False
    for name in names:
        model = build_model(matrix, name)
        produced = produce(matrix, model, suite)
        path = suites.goldens_path(suite, name)
        old = path.read_text(encoding="utf-8") if path.is_file() else None
        if check:
            current = suites.load_goldens(suite, name)
            cases, tricky = suites.split_tricky(produced)
            same = (current is not None and current.model_hash == model.hash and current.cases == cases
                    and current.tricky == tricky)
            print(f"{name}: goldens {'up to date' if same else 'WOULD CHANGE'}")
            changed |= not same
            continue
        diff = suites.write_goldens(suite, name, model.hash, dict(matrix.reference), produced)
        print(diff or f"{name}: goldens unchanged ({path})")
        changed |= old is None or bool(diff)
    return 1 if (check and changed) else 0
