"""A light matrix for the reliability tests and benchmark (issue 12): real components, real uv
environment and real probe, but no engine (no torch import), so one probe run takes about a
second; ``runners`` runner declarations give as many distinct cells (and keys) over one
environment. Cases are a subset of the core suite that the reference path passes."""

from __future__ import annotations

from pathlib import Path

CASES = ("single-user", "system-prompt", "multi-turn")
VERSIONS = {"tokenizers": "0.23.3", "jinja2": "3.1.6", "openai": "3.57.0"}


def axes_text(runners: int = 1) -> str:
    lines = [
        'suite_version: "1"',
        "reference:",
        '  jinja2: "3.1.6"',
        '  transformers: "5.24.0"',
        '  tokenizers: "0.23.3"',
        "runners:",
    ]
    for i in range(runners):
        lines += [f"  r{i:03d}:", "    labels: [self-hosted]", "    provides: [cpu]", '    python: "3.11"']
    lines += [
        "models:",
        "  tiny-qwen2: {kind: tiny, arch: qwen2}",
        "axes:",
        "  engine:",
        "    no-engine:",
        "      packages: [tokenizers]",
        f'      versions: {{explicit: ["{VERSIONS["tokenizers"]}"]}}',
        "  tokenizer:",
        "    tokenizers:",
        "      packages: [tokenizers]",
        f'      versions: {{explicit: ["{VERSIONS["tokenizers"]}"]}}',
        "      probe: {tokenizers: [tokenizers]}",
        "  template:",
        "    hf-jinja2:",
        "      packages: [jinja2]",
        f'      versions: {{explicit: ["{VERSIONS["jinja2"]}"]}}',
        "      probe: {renderers: [jinja2]}",
        "  client:",
        "    openai:",
        "      packages: [openai]",
        f'      versions: {{explicit: ["{VERSIONS["openai"]}"]}}',
        "      probe: {clients: [openai]}",
    ]
    return "\n".join(lines) + "\n"


def cell_ids(runners: int) -> list[str]:
    v = VERSIONS
    return [
        f"r{i:03d}/tiny-qwen2/no-engine@{v['tokenizers']}/tokenizers@{v['tokenizers']}/"
        f"hf-jinja2@{v['jinja2']}/openai@{v['openai']}"
        for i in range(runners)
    ]


def write_axes(directory: Path, runners: int = 1) -> Path:
    path = Path(directory) / "axes.yaml"
    path.write_text(axes_text(runners))
    return path


def prepared(axes: Path, cases=CASES):
    """The main job's :class:`~matrix.app.job.Prepared` for every cell of ``axes`` (one per
    runner), with the suite cut down to ``cases``."""
    from dataclasses import replace

    from matrix.app.job import Options, Prepared, _parse_cell, build_model, load_matrix, suite_for
    from matrix.plan.key import digest

    matrix = load_matrix(Options(axes_file=axes))
    model = build_model(matrix, "tiny-qwen2")
    suite = suite_for("core", model)
    kept = tuple(c for c in suite.cases if c["id"] in cases)
    suite = replace(suite, cases=kept, tricky={}, digest=digest(suite.digest, *cases))
    cells = [_parse_cell(matrix, cid) for cid in cell_ids(len(matrix.runners))]
    return Prepared(matrix, {}, [], cells, {"tiny-qwen2": suite}, {"tiny-qwen2": model})
