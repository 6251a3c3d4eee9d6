"""Postprocess stage: what happens to tokens after the engine picked them. Detokenization (whole
and incremental), streaming vs non-streaming, stop strings and stop tokens, special tokens,
reasoning separation and tool-call parsing, each against the project's reference.

Standard library only at import time; tokenizers, transformers and llama-cpp-python are imported
lazily inside the cell's environment. A library the cell lacks is a fact (``postprocess.skipped``),
never a record, so it cannot turn a stage whose other checks ran into ``skipped``.

Job fields (all optional):

- ``engines`` (as the inference stage): ``llama-cpp-python`` (in-process), ``llama-cpp-server``,
  ``transformers-serve``, ``openai-endpoint``; ``engine_options`` merged under. Other names are
  ignored here (``transformers`` in-process is covered through its detokenizers and parsers).
- ``postprocess``: ``{"detokenizers": [...], "texts": {name: text}, "max_new_tokens": 24,
  "max_cases": 2, "cases": [ids], "logprobs": 5, "whitespace": "trim" | "strict"}``.
  ``detokenizers`` default: ``tokenizers`` (``decoders.DecodeStream``), ``transformers``
  (``TextStreamer``), ``llama-cpp`` (``Llama.detokenize`` bytes per token). ``texts`` replace
  the built-in multi-byte texts (CJK, emoji ZWJ sequences, combining marks). ``cases``: the ids
  of ``job["cases"]`` whose golden prompts drive the engines (default: those whose ``stages``
  name ``postprocess``, else ``inference``), at most ``max_cases``. ``whitespace``: ``trim``
  compares reasoning and content after stripping surrounding whitespace (a difference there is
  named in the detail and in the fact ``postprocess.whitespace_only``); ``strict`` fails it.
- ``model_dir``, ``gguf_path`` (default ``model_dir/model.gguf``), ``limits`` (as inference).

Checks, one record per (case, stage ``postprocess``, check); failure classes
``backend-specific`` (the library's own behaviour differs from the reference), ``protocol``
(the API's documented shape or semantics: stop string returned, finish_reason), ``configuration-
default`` (a default, e.g. special tokens skipped, decides the difference), ``crash``:

1. ``<engine>:stream`` (and ``:stream-logprobs``): the same greedy request streamed (SSE
   accumulated; in-process ``create_completion(stream=True)``) and not: text and finish_reason
   equal. Cases: the golden prompts and, where the engine can be made to emit a fixed text
   (llama-cpp-python: a logits processor forcing token ids; llama-cpp-server: a GBNF grammar
   matching the text), ``_forced/<text>`` with the expected text known.
2. ``<detokenizer>:incremental`` on ``_detok/<text>`` (fixed texts, and ``_detok/gen:<case>``
   the inference golden's generated ids): token ids fed one at a time; the concatenation must
   equal the full decode, with no U+FFFD the full decode lacks and no lost bytes.
3. ``<engine>:stop-string`` (a stop string spanning two tokens) and ``<engine>:stop-token:<id>``:
   the output is cut exactly before it and ``finish_reason`` is ``stop``. In-process
   ``transformers`` keeps the stop token/string in its ids by design; it is not judged here.
4. ``<detokenizer>:special`` and ``<engine>:special``: a text with control tokens
   (``<|im_start|>``) and non-special added tokens (``<think>``, ``<tool_call>``) decoded with
   ``skip_special_tokens`` true and false; the decode must be the text (kept) or the text without
   the control tokens (skipped), non-special added tokens always kept. The convention each one
   follows is the fact ``postprocess.special_convention``.
5. ``reasoning:<parser>`` on ``_reasoning/<name>``: reasoning vs content of fixed completions by
   the reference :func:`split_reasoning` vs the library's parser (transformers' response-template
   parser, whole and streamed chunk by chunk, as ``transformers serve`` runs it). The tiny random
   model never emits ``<think>`` by itself: the fact ``postprocess.reasoning_inputs`` says these
   are fixed texts.
6. ``tools:<parser>`` on ``_tools/<name>``: tool calls of fixed completions (single, parallel,
   nested JSON, unicode) by ``toolcalls.parse`` vs the library's parser.

Modules, by responsibility: :mod:`postprocess_rules` (the fixed inputs and the pure rules the
checks judge by), :mod:`postprocess_context` (records, facts, the cases), :mod:`postprocess_detok`
(detokenizers, items 2 and 4), :mod:`postprocess_parsers` (items 5 and 6),
:mod:`postprocess_engines` (items 1, 3 and 4 through the engine adapters and :mod:`wire`).
"""

from __future__ import annotations

import time

from postprocess_context import STAGE, Ctx
from postprocess_detok import detok_checks
from postprocess_engines import engine_checks
from postprocess_parsers import parser_checks


def run(job: dict, rec) -> None:
    ctx = Ctx(job, rec)
    if rec.mode == "golden":
        # nothing to record: every check compares two paths of the same cell, not a golden
        ctx.facts["golden"] = "the postprocess stage compares within the cell; it produces no goldens"
        return
    started = time.perf_counter()
    detok_checks(ctx)
    parser_checks(ctx)
    engine_checks(ctx)
    ctx.facts["seconds"] = round(time.perf_counter() - started, 3)
    if not any(r["stage"] == STAGE for r in rec.records):
        reasons = "; ".join(f"{k}: {v}" for k, v in ctx.skipped.items()) or "nothing to check"
        rec.add("*", STAGE, "postprocess", "skipped", reasons)
