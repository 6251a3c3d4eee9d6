"""Benchmark: the tokenize stage in-process over many texts with one front end (goal: >= 5,000 texts/s).

Standard library only at import, like the probe; it runs inside a cell's environment (where the
tokenizer library is), so the stage, the checks and the recorder all run in one process:

    ENV/bin/python -I matrix/probe/bench_tokenize.py MODEL_DIR [--n 500] [--front-end tokenizers]

prints ``{"texts": N, "seconds": S, "texts_per_s": R, "outcome": "pass"}``. The timed run is a
check-mode run against ids the same front end produced in an untimed golden-mode run, so every
check of the stage (ids, BOS count, round trip, special tokens, fingerprint) is on the clock.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))

LAST: dict[str, float] = {}
"""Figures of the latest :func:`bench_in_process` run: texts, cpu_seconds, wall_seconds, records."""


def bench_texts(n: int) -> list[str]:
    """``n`` distinct chat renders built from the tricky texts (deterministic)."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import stage_tokenize

    pieces = [t["text"] for t in stage_tokenize.load_tricky()]
    out = []
    for i in range(n):
        a, b = pieces[i % len(pieces)], pieces[(i * 7 + 3) % len(pieces)]
        out.append(f"<|im_start|>user\nmessage {i}: {a}<|im_end|>\n<|im_start|>assistant\n{b} #{i}<|im_end|>\n")
    return out


def bench_in_process(n: int = 500, model_dir: str | None = None, front_end: str = "tokenizers") -> float:
    """Texts per CPU second of the tokenize stage over ``n`` texts, in this process (wall clock in :data:`LAST`).

    ``model_dir`` defaults to ``$LLMCOMPAT_MODEL_DIR``. Raises when a check does not pass.
    """
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import stage_tokenize
    from probe import Recorder

    model_dir = model_dir or os.environ["LLMCOMPAT_MODEL_DIR"]
    texts = bench_texts(n)
    cases: list[dict[str, Any]] = [
        {"id": f"bench-{i}", "stages": ["tokenize"], "expect": {"render": t}} for i, t in enumerate(texts)
    ]
    job = {
        "mode": "golden",
        "model_dir": model_dir,
        "tokenizers": [front_end],
        "golden_tokenizer": front_end,
        "cases": cases,
    }
    golden = Recorder("golden")
    stage_tokenize.run(job, golden, tricky=[])  # untimed: loads the tokenizer, makes the goldens
    for case in cases:
        case["expect"]["ids"] = golden.produced[case["id"]]["ids"]
    check = Recorder("check")
    started, cpu = time.perf_counter(), time.process_time()
    stage_tokenize.run(dict(job, mode="check"), check, tricky=[])
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    seconds = max(cpu, 1e-9)  # CPU time: the stage's cost on a shared machine (TOKENIZERS_PARALLELISM=false)
    bad = [r for r in check.records if r["outcome"] != "pass"]
    if bad:
        raise RuntimeError(f"{len(bad)} checks did not pass, first: {bad[0]}")
    LAST.clear()
    LAST.update(
        {"texts": n, "cpu_seconds": round(seconds, 4), "wall_seconds": round(wall, 4), "records": len(check.records)}
    )
    return n / seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir")
    p.add_argument("--n", type=int, default=500)
    p.add_argument("--front-end", default="tokenizers")
    args = p.parse_args(argv)
    rate = bench_in_process(args.n, args.model_dir, args.front_end)
    print(json.dumps({**LAST, "texts_per_s": round(rate, 1), "outcome": "pass"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
