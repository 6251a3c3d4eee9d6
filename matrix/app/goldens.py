"""Goldens come from the reference path: the versions pinned in ``axes.yaml``'s ``reference``.

The reference environment runs the probe in golden mode (jinja2 renders, ``tokenizers``
encodes, transformers generates greedily in float32 on the CPU), then in check mode against what it just produced with every renderer and
tokenizer it has: if an implementation that makes goldens disagrees with them, no golden is
written; other implementations that differ are printed (cells report them as findings). The diff
against the committed goldens is printed for review.
"""

from __future__ import annotations

from matrix import suites
from matrix.cell.run import ModelRef, run_probe
from matrix.env import uv as envs
from matrix.errors import LlmcompatError

reference_env = envs.reference_env


def _job(model: ModelRef, cases, mode: str, tricky: dict | None = None) -> dict:
    return {
        "mode": mode,
        "model_dir": str(model.path),
        "stages": ["template", "tokenize", "inference"],
        "template_sources": ["hf", "gguf"],
        "renderers": ["jinja2", "transformers"],
        "engines": ["transformers"],
        "reference_engine": "transformers",
        "inference_min_level": "L1",
        "max_new_tokens": 16,
        "tokenizers": ["tokenizers", "transformers", "transformers-slow", "sentencepiece", "tiktoken"],
        "tricky": tricky or {},
        "golden_renderer": "jinja2",
        "golden_tokenizer": "tokenizers",
        "cases": list(cases),
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
    failed = [r for r in check["records"] if r["outcome"] == "fail"]
    bad = [r for r in failed if _produces_goldens(r)]
    if bad:
        raise LlmcompatError(f"the reference path disagrees with itself; no golden written:\n{_lines(bad)}")
    if failed:  # other implementations in the reference env: findings for the cells, not a veto
        print(
            f"note: other implementations in the reference environment differ from the goldens "
            f"(cells will report these):\n{_lines(failed)}"
        )
    return produced


GOLDEN_CHECKS = {"template": ("jinja2",), "tokenize": ("tokenizers",), "inference": ("transformers",)}


def _produces_goldens(record: dict) -> bool:
    """A record of an implementation that makes goldens (with its ``:…`` sub-checks)."""
    check = record["check"].split(":", 1)[0]
    return check in GOLDEN_CHECKS.get(record["stage"], ())


def _lines(records: list[dict]) -> str:
    return "\n".join(f"  {r['case']} {r['stage']}/{r['check']}: {r['detail'][:300]}" for r in records[:20])


def regenerate(opts, check: bool = False) -> int:
    from matrix.app.job import build_model, load_matrix

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
            same = (
                current is not None
                and current.model_hash == model.hash
                and current.cases == cases
                and current.tricky == tricky
            )
            print(f"{name}: goldens {'up to date' if same else 'WOULD CHANGE'}")
            changed |= not same
            continue
        diff = suites.write_goldens(suite, name, model.hash, dict(matrix.reference), produced)
        print(diff or f"{name}: goldens unchanged ({path})")
        changed |= old is None or bool(diff)
    return 1 if (check and changed) else 0
