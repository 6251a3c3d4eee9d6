"""A fault-injecting probe wrapper (issue 12): ``LLMCOMPAT_PROBE_WRAPPER="python tests/fault_probe.py
OPTIONS"`` makes every cell's probe run through this script, which either fails the way infra
fails (exit 75, no result file: an engine that did not start, a runner that lost its disk) or
``exec``s the real probe unchanged.

Which cells fail is decided from a hash of the seed and the cell id, so a run is reproducible:

- ``--infra P``: that share of cells fails on every attempt while ``--round`` is 1 (the run's own
  retry fails too: the cell is ``infra``), and runs normally in later rounds (the next run
  retries it and it passes);
- ``--flaky P``: that share of cells fails on its first attempt only (the run's retry passes);
- ``--always``: every attempt fails;
- ``--cases ID,ID``: the probe runs only these cases of the job (a fast real probe path).

Each attempt is logged as one line ``<cell> <attempt> <failed|ran>`` under ``--state``, so a
benchmark can count what was retried.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path


def share(seed: str, cell: str) -> float:
    """A number in [0, 1) fixed by the seed and the cell id."""
    return int(hashlib.sha256(f"{seed}\n{cell}".encode()).hexdigest()[:12], 16) / 16**12


def fate(seed: str, cell: str, infra: float, flaky: float) -> str:
    u = share(seed, cell)
    return "infra" if u < infra else "flaky" if u < infra + flaky else "ok"


def main(argv: list[str]) -> int:
    split = argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--seed", default="0")
    parser.add_argument("--infra", type=float, default=0.0)
    parser.add_argument("--flaky", type=float, default=0.0)
    parser.add_argument("--round", type=int, default=1)
    parser.add_argument("--always", action="store_true")
    parser.add_argument("--cases", help="comma-separated case ids to keep")
    opts = parser.parse_args(argv[:split])
    probe = argv[split + 1 :]
    job = json.loads(Path(probe[-2]).read_text(encoding="utf-8"))
    cell = job.get("cell", "?")
    what = fate(opts.seed, cell, opts.infra, opts.flaky)
    opts.state.mkdir(parents=True, exist_ok=True)
    marker = opts.state / (hashlib.sha256(f"{opts.round}\n{cell}".encode()).hexdigest()[:24] + ".attempts")
    with marker.open("a") as f:  # one line per attempt; O_APPEND keeps parallel writers whole
        f.write("x")
    attempt = marker.stat().st_size
    fail = opts.always or (what == "infra" and opts.round == 1) or (what == "flaky" and attempt == 1)
    with (opts.state / "attempts.log").open("a") as log:
        log.write(f"{cell} {opts.round} {attempt} {what} {'failed' if fail else 'ran'}\n")
    if fail:
        print(f"fault_probe: injected infra failure ({what}, round {opts.round}, attempt {attempt})", file=sys.stderr)
        return 75
    if opts.cases:
        keep = set(opts.cases.split(","))
        job["cases"] = [c for c in job.get("cases", []) if c.get("id") in keep]
        job["tricky"] = {}
        Path(probe[-2]).write_text(json.dumps(job, ensure_ascii=False), encoding="utf-8")
    os.execv(probe[0], probe)
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
