"""What every postprocess check driver shares: the recording context, the cases that drive the
engines, the model's special tokens, and :class:`Unavailable` (standard library only)."""

from __future__ import annotations

import json
import os
import traceback

STAGE = "postprocess"


class Unavailable(Exception):
    """This library or engine is not in the cell (a fact, not a record)."""


class Ctx:
    """The stage's records and facts: one record per (case, check), the skipped libraries by name."""

    def __init__(self, job: dict, rec):
        self.job = job
        self.rec = rec
        self.conf = dict(job.get("postprocess") or {})
        self.facts = rec.facts.setdefault(STAGE, {})
        self.skipped = self.facts.setdefault("skipped", {})

    def add(self, case, check, outcome, detail="", klass=None, **extra):
        if outcome == "fail" and not klass:
            klass = "backend-specific"
        self.rec.add(case, STAGE, check, outcome, detail, klass=klass if outcome == "fail" else None, **extra)

    def crash(self, case, check):
        self.add(case, check, "fail", traceback.format_exc(limit=6), klass="crash")


def model_specials(model_dir: str) -> tuple[list[str], list[str]]:
    """(control/special token texts, added non-special token texts) from tokenizer.json."""
    try:
        with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
            added = json.load(f).get("added_tokens") or []
    except (OSError, ValueError):
        return [], []
    return [t["content"] for t in added if t.get("special")], [t["content"] for t in added if not t.get("special")]


def pick_cases(job: dict, max_cases: int) -> list[dict]:
    wanted = (job.get("postprocess") or {}).get("cases")
    cases = job.get("cases") or []
    if wanted is not None:
        sel = [c for c in cases if c["id"] in set(wanted)]
    else:
        sel = [c for c in cases if STAGE in (c.get("stages") or ())] or [
            c for c in cases if "inference" in (c.get("stages") or ())
        ]
    out = []
    for c in sel:
        e = c.get("expect") or {}
        if e.get("ids") or e.get("render") or c.get("messages"):
            out.append(c)
    return out[:max_cases]
