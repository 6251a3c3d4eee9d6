"""Standalone reproductions: one short Python script per finding, the first thing a maintainer asks for.

The script needs only the packages of the cell (never llmcompat, never the probe): the tiny
model's tokenizer and template files are inline (compressed), the case and the expected result
(the reference path's golden) are inline, and the check is the probe's own check, narrowed to the
one case. It prints one line and exits like a ``git bisect run`` check, so ``llmcompat bisect PKG
RANGE repro.py`` takes it as is:

- ``FAIL ...``, exit 1: the problem is present;
- ``PASS ...``, exit 0: it is not;
- ``SKIP ...``, exit 125: the libraries it checks cannot be imported here.

Covered checks (:func:`spec_for`): template renders (``jinja2``, ``transformers`` and their
``gguf/``/``override/`` sources, ``:needles``), tokenization ids and BOS (``tokenizers``,
``transformers``, ``transformers-slow``, ``:bos``, golden cases and tricky texts), incremental
detokenization (``tokenizers:incremental``, ``transformers:incremental``) and the reference
engine's generated ids (inference ``transformers``, the weights given by path). Anything else raises
:class:`Unsupported` with the reason; such a finding has no standalone reproduction
(``repro_verified`` None).

Verification (:func:`verify`) runs the script in the finding's bad and good environments (real
uv environments, :mod:`matrix.env.uv`): verified when it fails in the bad one and passes in the
good one (for a difference, which has no good cell: fails in the bad one).
"""

from __future__ import annotations

import ast
import base64
import json
import re
import subprocess
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from matrix import scratch
from matrix.paths import REPO

__all__ = [
    "Inputs",
    "Spec",
    "Unsupported",
    "Verification",
    "inputs_for",
    "script",
    "spec_for",
    "verify",
    "verify_store",
    "write_scripts",
]

PROBE = REPO / "matrix" / "probe"
SKIP = 125
MODEL_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "config.json",
    "generation_config.json",
    "chat_template.jinja",
)
"""The tiny model's small files, inlined; the weights (about 1 MB) are read from a path."""
RENDERERS = ("jinja2", "transformers")
TOKENIZERS = ("tokenizers", "transformers", "transformers-slow")
DETOKENIZERS = ("tokenizers", "transformers")
TEXT_ENGINES = {"mistralrs": "mistralrs", "onnxruntime-genai": "onnxruntime-genai"}
"""Engines whose own detokenization (``<engine>:text``) a script checks: engine -> distribution."""
EXPORTED = {"onnxruntime-genai"}
"""Engines that run a host-made export of the model (read from a path, like the weights)."""
TRICKY_PREFIX, DETOK_PREFIX = "_tricky/", "_detok/"
TIMEOUT = 600.0


class Unsupported(Exception):
    """No standalone reproduction for this finding's check (yet): the reason says which."""


@dataclass(frozen=True)
class Spec:
    """What a script checks: ``kind`` (render, needles, ids, bos, incremental, generate), the
    library front end (``front``: a renderer, tokenizer, detokenizer or engine name), the template
    source for renders, and the distributions it imports."""

    kind: str
    front: str
    source: str = "hf"
    packages: tuple[str, ...] = ()


def _get(finding, name: str, default=None):
    if isinstance(finding, Mapping):
        return finding.get(name, default)
    return getattr(finding, name, default)


def _packages(front: str) -> tuple[str, ...]:
    return {"jinja2": ("jinja2",), "tokenizers": ("tokenizers",)}.get(front, ("transformers",))


def spec_for(finding) -> Spec:
    """The check a finding's script reproduces (pure); :class:`Unsupported` when there is none."""
    stage, check = _get(finding, "stage") or "", _get(finding, "check_name") or ""
    parts = check.split(":")
    head, suffix = parts[0], ":".join(parts[1:])
    if stage == "template":
        source, _, renderer = head.rpartition("/")
        source = source or "hf"
        if renderer in RENDERERS and source in ("hf", "gguf", "override") and suffix in ("", "needles"):
            return Spec("needles" if suffix else "render", renderer, source, _packages(renderer))
    elif stage == "tokenize" and head in TOKENIZERS and suffix in ("", "bos"):
        return Spec("bos" if suffix else "ids", head, packages=_packages(head))
    elif stage == "postprocess" and head in DETOKENIZERS and suffix == "incremental":
        return Spec("incremental", head, packages=_packages(head))
    elif stage == "inference" and check == "transformers":
        return Spec("generate", "transformers", packages=("transformers", "torch"))
    elif stage == "postprocess" and check in ("reasoning:transformers:stream", "tools:transformers:stream"):
        return Spec("parser-stream", "transformers", packages=("transformers", "tokenizers"))
    elif stage == "postprocess" and head in TEXT_ENGINES and suffix == "text":
        return Spec("engine-text", head, packages=(TEXT_ENGINES[head],))
    raise Unsupported(f"no standalone reproduction for the {stage} check {check!r} yet")


# ------------------------------------------------------------------------------------ inputs


@dataclass(frozen=True)
class Inputs:
    """What a script embeds: the tiny model's small files, the case (with its ``expect``), the
    template text of the source, the tricky texts' goldens, where the weights are."""

    files: Mapping[str, bytes]
    case: Mapping
    template: str | None = None
    tricky: Mapping | None = None
    weights: str | None = None
    cell_id: str = ""
    versions: Mapping[str, str] | None = None
    export: str | None = None
    """The engine's export of the model (a directory), for engines that run one."""
    special: Mapping[str, str] | None = None
    """The template source's special tokens (bos_token ...), for renders from the template text."""


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def files_needed(spec: Spec) -> tuple[str, ...]:
    """The model files a script inlines (the fewer, the shorter the script): a jinja2 render needs
    only the special tokens, a tokenizer its files, an engine the whole model but the weights."""
    if spec.front == "jinja2":
        return ()  # the special tokens go inline (SPECIAL)
    if spec.kind == "engine-text" and spec.front in EXPORTED:
        return ()
    if spec.kind in ("generate", "engine-text", "parser-stream"):
        return MODEL_FILES
    if spec.front == "tokenizers":
        return ("tokenizer.json", "tokenizer_config.json")
    return (*_TOKENIZER_FILES, "config.json")


def _model_dir_for(model_hash: str, model_name: str) -> Path | None:
    from matrix import tinymodel

    root = tinymodel.models_root()
    for meta in sorted(root.glob("*/llmcompat-model.json")):
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if data.get("model_hash") == model_hash:
            return meta.parent
    found = sorted(root.glob(f"{model_name}-*/tokenizer.json"))
    return found[0].parent if found else None


def _template_of(source: str, model_dir: Path) -> str | None:
    if source == "hf":
        cfg = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        tmpl = cfg.get("chat_template")
        if isinstance(tmpl, list):
            tmpl = {t.get("name"): t.get("template") for t in tmpl if isinstance(t, dict)}.get("default")
        return tmpl if tmpl is not None else (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    if source == "gguf":
        from matrix.probe import gguf_meta

        return gguf_meta.read_metadata(str(model_dir / "model.gguf")).chat_template
    raise Unsupported(f"the template source {source!r} is not kept with the model")


def _special_of(source: str, model_dir: Path) -> dict[str, str]:
    """bos/eos/pad/unk of the template source, as the probe hands them to the template."""
    if source == "gguf":
        from matrix.probe import gguf_meta

        return dict(gguf_meta.special_tokens(gguf_meta.read_metadata(str(model_dir / "model.gguf"))))
    cfg = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    out = {}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        tok = cfg.get(name)
        tok = tok.get("content") if isinstance(tok, dict) else tok
        if tok is not None:
            out[name] = tok
    return out


def _case(case_id: str, suite_cases: Iterable[Mapping], goldens) -> dict:
    if case_id.startswith(DETOK_PREFIX):
        name = case_id[len(DETOK_PREFIX) :]
        if name.startswith("gen:"):
            gen = (goldens.cases.get(name[4:], {}) if goldens else {}).get("gen") or {}
            if not gen.get("ids"):
                raise Unsupported(f"no golden generation for {name[4:]!r}")
            return {"id": case_id, "ids": [int(i) for i in gen["ids"]]}
        texts = _assign(PROBE / "postprocess_rules.py", "TEXTS")
        if name not in texts:
            raise Unsupported(f"unknown detokenization text {name!r}")
        return {"id": case_id, "text": texts[name]}
    if case_id.startswith(("_reasoning/", "_tools/")):
        kind, _, name = case_id[1:].partition("/")
        texts = _assign(PROBE / "postprocess_rules.py", "REASONING_TEXTS" if kind == "reasoning" else "TOOL_TEXTS")
        if name not in texts:
            raise Unsupported(f"unknown fixed completion {case_id!r}")
        prefix = _assign(PROBE / "postprocess_rules.py", "PARSER_PREFIX") + (
            "<think>\n" if name == "prefilled-open" else ""
        )
        return {"id": case_id, "text": texts[name], "prefix": prefix}
    if case_id.startswith(TRICKY_PREFIX):
        name = case_id[len(TRICKY_PREFIX) :]
        items = json.loads((PROBE / "tricky_texts.json").read_text(encoding="utf-8")).get("texts", [])
        item = next((t for t in items if t.get("name") == name), None)
        want = (goldens.tricky.get(name) if goldens else None) or {}
        if item is None or "ids" not in want:
            raise Unsupported(f"no golden for the tricky text {name!r}")
        return {"id": case_id, "expect": {"render": item["text"], "ids": want["ids"]}}
    from matrix import suites

    for case in suites.cases_with_goldens(_SuiteView(tuple(suite_cases)), goldens):
        if case["id"] == case_id:
            return case
    raise Unsupported(f"the case {case_id!r} is not in the suite")


@dataclass(frozen=True)
class _SuiteView:
    cases: tuple[Mapping, ...]


def _slim(case: dict, spec: Spec) -> dict:
    """The case without what its script does not read (top-k lists, other stages' goldens)."""
    case = dict(case)
    expect = dict(case.get("expect") or {})
    gen = {k: v for k, v in (expect.get("gen") or {}).items() if k in ("ids", "max_new_tokens", "text")}
    if spec.kind in ("render", "needles"):
        expect = {k: v for k, v in expect.items() if k in ("render", "error")}
    elif spec.kind in ("ids", "bos"):
        expect = {k: v for k, v in expect.items() if k in ("render", "ids")}
    else:
        expect = {k: v for k, v in expect.items() if k in ("render", "ids")} | ({"gen": gen} if gen else {})
        case = {k: v for k, v in case.items() if k in ("id", "expect", "ids", "text", "prefix")}
    if "expect" in case or expect:
        case["expect"] = expect
    return case


def inputs_for(finding, cell_row: Mapping | None = None, *, suite: str = "core") -> Inputs:
    """The :class:`Inputs` of ``finding`` from its bad cell (``cell_row``: a store ``cells`` row),
    the suite and its goldens, and the tiny model in the cache (by the cell's model hash)."""
    from matrix import suites

    spec = spec_for(finding)
    row = dict(cell_row or {})
    model_name = row.get("model") or "tiny-qwen2"
    model_dir = _model_dir_for(row.get("model_hash", ""), model_name)
    if model_dir is None:
        raise Unsupported(f"the model {model_name} ({row.get('model_hash', '')[:12]}) is not built here")
    the_suite = suites.load(suite)
    goldens = suites.load_goldens(the_suite, model_name)
    case = _slim(_case(_get(finding, "case_id") or "", the_suite.cases, goldens), spec)
    wanted = files_needed(spec)
    files = {n: (model_dir / n).read_bytes() for n in MODEL_FILES if n in wanted and (model_dir / n).is_file()}
    template = _template_of(spec.source, model_dir) if spec.kind in ("render", "needles") else None
    versions = {}
    for axis in ("engine", "tokenizer", "template", "client"):
        if row.get(axis):
            versions[row[axis]] = row.get(f"{axis}_version", "")
    export = None
    if spec.kind == "engine-text" and spec.front in EXPORTED:
        from matrix.env import model_exports

        try:
            export = str(model_exports.ensure_export(model_dir, spec.front, versions.get(spec.front)).path)
        except Exception as exc:  # noqa: BLE001 - an export that cannot be made: no reproduction here
            raise Unsupported(f"the {spec.front} export of the model cannot be made here: {str(exc)[:200]}") from None
    needs_weights = spec.kind == "generate" or (spec.kind == "engine-text" and spec.front not in EXPORTED)
    weights = str(model_dir / "model.safetensors") if needs_weights else None
    special = _special_of(spec.source, model_dir) if spec.kind in ("render", "needles") else None
    return Inputs(files, case, template, None, weights, row.get("cell_id", ""), versions, export, special)


# ------------------------------------------------------------------------------------ the script


def _assign(path: Path, name: str):
    """The literal value of module-level ``name = ...`` in ``path`` (read, never imported)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise KeyError(f"{path.name} has no {name}")


def _sources(path: Path, names: Iterable[str]) -> str:
    """The source of the named top-level functions, classes and assignments of ``path``, in file
    order: the script runs the probe's own code for the check, not a second copy of it."""
    text = path.read_text(encoding="utf-8")
    wanted = set(names)
    out = []
    for node in ast.parse(text).body:
        name = getattr(node, "name", None)
        if name is None and isinstance(node, ast.Assign):
            name = next((t.id for t in node.targets if isinstance(t, ast.Name)), None)
        if name in wanted:
            segment = ast.get_source_segment(text, node)
            assert segment is not None, "a node parsed from the text has its position"
            out.append(segment)
            wanted.discard(name)
    if wanted:
        raise KeyError(f"{path.name} has no {', '.join(sorted(wanted))}")
    return "\n\n\n".join(out)


_MESSAGE_HELPERS = (
    "_plain",
    "_REASONING_FIELDS",
    "CONTINUE_TAG",
    "prepare_messages",
    "cut_continued",
    "default_generation_prompt",
)
"""Of the probe's ``chat_messages.py``: the messages as transformers hands them to a template."""
_RENDER_HELPERS = ("OutputTooLarge", "jinja2_renderer")
"""Of the probe's ``stage_template.py``: the jinja2 renderer the way transformers runs it."""


def _safe(text: str) -> str:
    """Untrusted names (check, case, versions come from result files) for the docstring: no quotes,
    no backslashes, no newlines."""
    return re.sub(r"[^\w.:/@+\-<>=, ]", "_", str(text))[:200]


def _packed(data: bytes) -> str:
    return base64.b85encode(zlib.compress(data, 9)).decode("ascii")


WHAT = {
    "render": "renders the case's chat template with {front} ({source} template source) and compares the "
    "text with the reference path's golden render",
    "needles": "renders the case's chat template with {front} ({source} template source) and checks that every "
    "needle of the case survives into the render",
    "ids": "tokenizes the golden render of the case with {front} (add_special_tokens=False) and compares the "
    "ids with the reference tokenizer's golden ids, then decodes them back to the text",
    "bos": "tokenizes the golden render with {front} and add_special_tokens=True and counts the BOS ids at "
    "the start: two or more is the double-BOS bug",
    "incremental": "decodes the ids one at a time with {front}'s incremental decoder; the pieces must "
    "concatenate to the full decode, with no U+FFFD the full decode lacks",
    "generate": "generates greedily with {front} (float32, CPU) from the golden prompt ids and compares the "
    "new ids with the reference path's golden generation",
    "parser-stream": "parses a fixed completion with {front}'s response-template parser (what `transformers serve` "
    "runs), once whole and once fed token by token as its streamer does; reasoning, content and "
    "tool calls must be identical",
    "engine-text": "generates greedily with {front} (float32, CPU) from the golden prompt; when its ids are the "
    "reference's golden ids, the engine's own text must equal the reference decode of them",
}


def script(finding, inputs: Inputs | None = None, *, cell_row: Mapping | None = None) -> str:
    """The standalone reproduction script of ``finding`` (its text). ``inputs`` default to
    :func:`inputs_for` of ``cell_row``. Raises :class:`Unsupported`."""
    spec = spec_for(finding)
    inputs = inputs or inputs_for(finding, cell_row)
    what = WHAT[spec.kind].format(front=spec.front, source=spec.source)
    fp = _safe(_get(finding, "fingerprint") or "")
    versions = ", ".join(f"{_safe(k)} {_safe(v)}" for k, v in sorted((inputs.versions or {}).items()))
    header = [
        "#!/usr/bin/env python3",
        (
            f'"""Standalone reproduction of llmcompat finding {fp}: {_safe(_get(finding, "component"))}, '
            f"{_safe(_get(finding, 'stage'))} check {_safe(_get(finding, 'check_name'))} "
            f"({_safe(_get(finding, 'klass'))}), case {_safe(inputs.case.get('id', ''))}."
        ),
        "",
        f"What it checks: it {what}.",
        "",
        f"Needs only: {', '.join(spec.packages)} (the cell's packages); the tiny model's tokenizer and template",
        "files are inline"
        + (
            ", its weights are read from WEIGHTS (or $REPRO_WEIGHTS)."
            if inputs.weights
            else f", the {spec.front} export from EXPORT (or $REPRO_EXPORT)."
            if inputs.export
            else "."
        ),
        f"Seen failing with: {versions or 'see the finding'}"
        + (f" (cell {_safe(inputs.cell_id)})." if inputs.cell_id else "."),
        "",
        "Prints one line. Exit 1 with FAIL when the problem is present, 0 with PASS when it is not,",
        "125 with SKIP when the libraries cannot be imported (git bisect's skip), so",
        "`llmcompat bisect PKG RANGE this.py` takes it as is.",
        '"""',
        "import base64, json, os, sys, tempfile, zlib",
        "",
        "FILES = {",
        *[f"    {name!r}: {_packed(data)!r}," for name, data in sorted(inputs.files.items())],
        "}",
        f"CASE = json.loads({json.dumps(inputs.case, ensure_ascii=False)!r})",
        f"TEMPLATE = {inputs.template!r}",
        *([f"SPECIAL = {dict(inputs.special)!r}"] if inputs.special is not None else []),
        f"WEIGHTS = os.environ.get('REPRO_WEIGHTS', {inputs.weights!r})",
        *([f"EXPORT = os.environ.get('REPRO_EXPORT', {inputs.export!r})"] if inputs.export else []),
        "",
        "",
        "class Skip(Exception):",
        '    """The check cannot be judged here (git bisect skip)."""',
        "",
        "",
        "def model_dir():",
        '    """The tiny model\'s files in a fresh directory (weights linked when there are some)."""',
        "    d = tempfile.mkdtemp(prefix='repro-model-')",
        "    for name, data in FILES.items():",
        "        with open(os.path.join(d, name), 'wb') as f:",
        "            f.write(zlib.decompress(base64.b85decode(data)))",
        "    if WEIGHTS:",
        "        os.symlink(os.path.abspath(WEIGHTS), os.path.join(d, 'model.safetensors'))",
        "    return d",
        "",
        "",
        "def first_difference(a, b):",
        "    i = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))",
        "    return None if (i == len(a) == len(b)) else i",
        "",
        "",
        "def diverges(expected, got, what):",
        "    i = first_difference(expected, got)",
        "    if i is None:",
        "        return ''",
        "    lo = max(0, i - 8)",
        "    return (f'{what} diverge at {i} (expected {len(expected)}, got {len(got)}): '",
        "            f'expected {expected[lo:i + 8]!r}, got {got[lo:i + 8]!r}')",
        "",
    ]
    body = _BODIES[spec.kind](spec)
    main = [
        "",
        "",
        "def main():",
        "    try:",
        "        lib = load()",
        "    except ImportError as exc:",
        f"        print(f'SKIP {spec.front} cannot be imported here: {{exc}}')",
        f"        return {SKIP}",
        "    try:",
        "        problem = check(lib)",
        "    except Skip as exc:",
        f"        print(f'SKIP {spec.front}: {{exc}}')",
        f"        return {SKIP}",
        "    except Exception as exc:  # the library raising is the problem being reproduced",
        "        problem = f'{type(exc).__name__}: {exc}'.splitlines()[0][:500]",
        "    if problem:",
        f"        print(f'FAIL {spec.front}: {{problem}}')",
        "        return 1",
        f"    print('PASS {spec.front}: ' + {_pass_line(spec)!r})",
        "    return 0",
        "",
        "",
        "if __name__ == '__main__':",
        "    sys.exit(main())",
        "",
    ]
    return "\n".join(header) + "\n" + body + "\n".join(main)


def _pass_line(spec: Spec) -> str:
    return {
        "render": "the render equals the golden",
        "needles": "every needle survives into the render",
        "ids": "the ids equal the golden and decode back to the text",
        "bos": "at most one BOS at the start",
        "incremental": "the pieces concatenate to the full decode",
        "generate": "the generated ids equal the golden",
        "engine-text": "identical ids, and the engine's text equals the reference decode",
        "parser-stream": "whole and streamed parses identical",
    }[spec.kind]


def _render_body(spec: Spec) -> str:
    if spec.front == "jinja2":
        helpers = (
            _sources(PROBE / "chat_messages.py", _MESSAGE_HELPERS)
            + "\n\n\n"
            + _sources(PROBE / "stage_template.py", _RENDER_HELPERS)
        )
        load = (
            "def load():\n    import jinja2.sandbox  # the library under test: missing is SKIP, not FAIL\n\n"
            "    return lambda: jinja2_renderer(TEMPLATE, SPECIAL, {})\n"
        )
        render = "    render = lib()\n    text = render(CASE)\n"
    else:
        helpers = _sources(PROBE / "chat_messages.py", ("default_generation_prompt",))
        load = (
            "def load():\n    from transformers import AutoTokenizer\n"
            "    return AutoTokenizer.from_pretrained(model_dir())\n"
        )
        render = (
            "    kwargs = dict(CASE.get('template_kwargs', {}))\n"
            "    if CASE.get('continue_final_message'):\n        kwargs['continue_final_message'] = True\n"
            f"    if {spec.source != 'hf'!r}:\n        kwargs['chat_template'] = TEMPLATE\n"
            "    text = lib.apply_chat_template(CASE['messages'], tools=CASE.get('tools'), tokenize=False,\n"
            "                                   add_generation_prompt=default_generation_prompt(CASE), **kwargs)\n"
        )
    if spec.kind == "needles":
        judge = (
            "    missing = [n for n in CASE['needles'] if n not in text]\n"
            "    return f'needle {missing[0]!r} is not in the render ({len(missing)} of "
            "{len(CASE[\"needles\"])} missing)' if missing else ''\n"
        )
    else:
        judge = (
            "    want = CASE['expect']\n"
            "    if want.get('error'):\n"
            "        return f\"rendered, but the case expects an error containing {want['error']!r}\"\n"
            "    return diverges(want['render'], text, 'render chars')\n"
        )
    return f"{helpers}\n\n\n{load}\n\ndef check(lib):\n{render}{judge}"


def _tokenizer_load(front: str) -> str:
    if front == "tokenizers":
        return (
            "def load():\n    from tokenizers import Tokenizer\n"
            "    tok = Tokenizer.from_file(os.path.join(model_dir(), 'tokenizer.json'))\n"
            "    cfg = json.loads(zlib.decompress(base64.b85decode(FILES['tokenizer_config.json'])))\n"
            "    bos = cfg.get('bos_token')\n    bos = bos.get('content') if isinstance(bos, dict) else bos\n"
            "    return {'encode': lambda t, s: list(tok.encode(t, add_special_tokens=s).ids),\n"
            "            'decode': lambda ids: tok.decode(ids, skip_special_tokens=False),\n"
            "            'bos': tok.token_to_id(bos) if bos else None}\n"
        )
    slow = ", use_fast=False" if front == "transformers-slow" else ""
    return (
        "def load():\n    from transformers import AutoTokenizer\n"
        f"    tok = AutoTokenizer.from_pretrained(model_dir(){slow})\n"
        "    return {'encode': lambda t, s: list(tok(t, add_special_tokens=s)['input_ids']),\n"
        "            'decode': lambda ids: tok.decode(ids, skip_special_tokens=False,"
        " clean_up_tokenization_spaces=False),\n"
        "            'bos': tok.bos_token_id}\n"
    )


def _ids_body(spec: Spec) -> str:
    if spec.kind == "bos":
        check = (
            "def check(lib):\n    ids = lib['encode'](CASE['expect']['render'], True)\n"
            "    n = 0\n    while lib['bos'] is not None and n < len(ids) and ids[n] == lib['bos']:\n        n += 1\n"
            "    return f\"{n} BOS ids ({lib['bos']}) at the start with add_special_tokens=True\" if n >= 2 else ''\n"
        )
    else:
        check = (
            "def check(lib):\n    text = CASE['expect']['render']\n    ids = lib['encode'](text, False)\n"
            "    problem = diverges(CASE['expect']['ids'], ids, 'ids')\n"
            "    return problem or diverges(text, lib['decode'](ids), 'decode round trip chars')\n"
        )
    return _tokenizer_load(spec.front) + "\n\n" + check


def _incremental_body(spec: Spec) -> str:
    if spec.front == "tokenizers":
        load = (
            "def load():\n    from tokenizers import Tokenizer\n    from tokenizers.decoders import DecodeStream\n"
            "    tok = Tokenizer.from_file(os.path.join(model_dir(), 'tokenizer.json'))\n\n"
            "    def pieces(ids):\n        ds = DecodeStream(skip_special_tokens=False)\n"
            "        return [ds.step(tok, int(i)) for i in ids]\n\n"
            "    return {'encode': lambda t: list(tok.encode(t, add_special_tokens=False).ids),\n"
            "            'decode': lambda ids: tok.decode(list(ids), skip_special_tokens=False), 'pieces': pieces}\n"
        )
    else:
        load = (
            "def load():\n    from transformers import AutoTokenizer, TextStreamer\n"
            "    tok = AutoTokenizer.from_pretrained(model_dir())\n\n"
            "    class Ids:\n        def __init__(self, ids):\n            self.ids, self.shape = list(ids), (len(ids),)\n\n"
            "        def tolist(self):\n            return list(self.ids)\n\n"
            "    def pieces(ids):\n        out = []\n\n        class Collect(TextStreamer):\n"
            "            def on_finalized_text(self, text, stream_end=False):\n                out.append(text)\n\n"
            "        st = Collect(tok, skip_prompt=False, skip_special_tokens=False, clean_up_tokenization_spaces=False)\n"
            "        for i in ids:\n            st.put(Ids([int(i)]))\n        st.end()\n        return out\n\n"
            "    return {'encode': lambda t: list(tok(t, add_special_tokens=False)['input_ids']),\n"
            "            'decode': lambda ids: tok.decode(list(ids), skip_special_tokens=False,"
            " clean_up_tokenization_spaces=False), 'pieces': pieces}\n"
        )
    check = (
        "def check(lib):\n    ids = CASE['ids'] if 'ids' in CASE else lib['encode'](CASE['text'])\n"
        "    full = lib['decode'](ids)\n    joined = ''.join(p for p in lib['pieces'](ids) if p)\n"
        "    extra = joined.count('\\ufffd') - full.count('\\ufffd')\n"
        "    problem = diverges(full, joined, f'{len(ids)} ids fed one at a time: chars')\n"
        "    if extra > 0:\n        problem = (problem + '; ' if problem else '') + f'{extra} U+FFFD more than the full decode'\n"
        "    return problem\n"
    )
    return load + "\n\n" + check


def _generate_body(spec: Spec) -> str:
    return (
        "def load():\n    import torch\n    from transformers import AutoModelForCausalLM\n"
        "    torch.manual_seed(0)\n"
        "    return AutoModelForCausalLM.from_pretrained(model_dir(), dtype=torch.float32).eval(), torch\n\n\n"
        "def check(lib):\n    model, torch = lib\n    gen = CASE['expect']['gen']\n"
        "    prompt = torch.tensor([CASE['expect']['ids']])\n"
        "    with torch.no_grad():\n"
        "        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,\n"
        "                             max_new_tokens=gen['max_new_tokens'], min_new_tokens=gen['max_new_tokens'],\n"
        "                             pad_token_id=0)\n"
        "    return diverges(gen['ids'], out[0, prompt.shape[1]:].tolist(), 'generated ids')\n"
    )


def _engine_text_body(spec: Spec) -> str:
    same = (
        "    if ids != gen['ids']:\n"
        "        raise Skip('the engine generated other ids than the golden (not this check): '"
        " + diverges(gen['ids'], ids, 'ids'))\n"
    )
    if spec.front == "mistralrs":
        return (
            # the probe's own identity template and architecture table (read, never imported)
            f"IDENTITY = {_assign(PROBE / 'engines_extra.py', 'IDENTITY_TEMPLATE')!r}\n"
            f"ARCH = {_assign(PROBE / 'engines_extra.py', '_MISTRALRS_ARCH')!r}\n\n\n"
            "def load():\n    os.environ.setdefault('MISTRALRS_CPU_KV_F32', '1')\n"
            "    os.environ.setdefault('RAYON_NUM_THREADS', '2')\n"
            "    import mistralrs\n    from mistralrs import ChatCompletionRequest, Runner, Which\n"
            "    d = model_dir()\n    with open(os.path.join(d, 'identity.jinja'), 'w') as f:\n"
            "        f.write(IDENTITY)\n"
            "    model_type = json.loads(zlib.decompress(base64.b85decode(FILES['config.json']))).get('model_type', '')\n"
            "    arch = getattr(getattr(mistralrs, 'Architecture', None), ARCH.get(model_type, ''), None)\n"
            "    dtype = getattr(getattr(mistralrs, 'ModelDType', None), 'F32', None)\n"
            "    which = Which.Plain(model_id=d, arch=arch, **({'dtype': dtype} if dtype is not None else {}))\n"
            "    kw = {'token_source': 'none', 'jinja_explicit': os.path.join(d, 'identity.jinja'), 'prefix_cache_n': 16}\n"
            "    try:\n        runner = Runner(which=which, no_paged_attn=True, **kw)\n"
            "    except TypeError:  # older wheels take fewer keywords\n"
            "        runner = Runner(which=which, **kw)\n"
            "    return runner, ChatCompletionRequest\n\n\n"
            "def check(lib):\n    runner, request = lib\n    gen = CASE['expect']['gen']\n"
            "    req = request(messages=CASE['expect']['render'], model='default', max_tokens=gen['max_new_tokens'],\n"
            "                  n_choices=1, logprobs=True, top_logprobs=5, temperature=0.0, top_k=1, top_p=1.0,\n"
            "                  min_p=None, repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,\n"
            "                  ignore_eos=True)\n"
            "    choice = runner.send_chat_completion_request(req).choices[0]\n    ids = []\n"
            "    for step in (choice.logprobs.content if choice.logprobs is not None else None) or []:\n"
            "        tops = [t for t in step.top_logprobs if t.logprob == step.logprob and t.bytes == step.token] \\\n"
            "            or [t for t in step.top_logprobs if t.logprob == step.logprob]\n"
            "        ids.append(int(tops[0].token) if tops else None)\n"
            + same
            + "    return diverges(gen['text'], choice.message.content, 'text chars')\n"
        )
    return (
        "def load():\n    import onnxruntime_genai as og\n"
        "    if hasattr(og, 'Config'):\n        cfg = og.Config(EXPORT)\n        cfg.clear_providers()  # CPU\n"
        "        model = og.Model(cfg)\n    else:\n        model = og.Model(EXPORT)\n"
        "    return og, model, og.Tokenizer(model)\n\n\n"
        "def check(lib):\n    og, model, tok = lib\n    gen = CASE['expect']['gen']\n"
        "    prompt, n = [int(i) for i in CASE['expect']['ids']], gen['max_new_tokens']\n"
        "    params = og.GeneratorParams(model)\n"
        "    params.set_search_options(max_length=len(prompt) + n, min_length=0, num_beams=1, do_sample=False,\n"
        "                              repetition_penalty=1.0)\n"
        "    g = og.Generator(model, params)\n    g.append_tokens(prompt)\n    ids = []\n"
        "    while len(ids) < n and not g.is_done():\n        g.generate_next_token()\n"
        "        ids.append(int(g.get_next_tokens()[0]))\n"
        + same
        + "    return diverges(gen['text'], tok.decode(ids), 'text chars')\n"
    )


def _parser_stream_body(spec: Spec) -> str:
    parser = _sources(PROBE / "postprocess_parsers.py", ("transformers_parser",))
    return (
        "PARSER_PREFIX = CASE['prefix']\n\n\nclass Unavailable(ImportError):\n"
        '    """This transformers has no response parser: nothing to check (skip)."""\n\n\n'
        + parser
        + "\n\n\ndef load():\n    whole, streamed, _ = transformers_parser({'model_dir': model_dir()})\n"
        "    return whole, streamed\n\n\n"
        "def check(lib):\n    whole, streamed = (f(CASE['text'], CASE['prefix']) for f in lib)\n    diffs = []\n"
        "    for i, field in enumerate(('reasoning', 'content')):\n"
        "        d = diverges(whole[i] or '', streamed[i] or '', field + ' chars')\n"
        "        if d:\n            diffs.append(d)\n"
        "    wa = [(c.name, c.arguments) for c in whole[2] or []]\n"
        "    wb = [(c.name, c.arguments) for c in streamed[2] or []]\n"
        "    if wa != wb:\n        diffs.append(f'tool calls: whole {wa!r}, streamed {wb!r}')\n"
        "    return ('whole vs streamed: ' + '; '.join(diffs)) if diffs else ''\n"
    )


_BODIES = {
    "render": _render_body,
    "needles": _render_body,
    "ids": _ids_body,
    "bos": _ids_body,
    "incremental": _incremental_body,
    "generate": _generate_body,
    "engine-text": _engine_text_body,
    "parser-stream": _parser_stream_body,
}


# ------------------------------------------------------------------------------------ files


def filename(finding) -> str:
    """``<fingerprint>.py``: the name the page links and the issue body names."""
    fp = re.sub(r"[^0-9A-Za-z_-]", "", str(_get(finding, "fingerprint") or ""))
    if not fp:
        raise ValueError("a finding without a fingerprint has no script name")
    return f"{fp}.py"


def write_scripts(findings: Iterable, directory: Path, cells: Mapping[str, Mapping] | None = None) -> dict[str, Path]:
    """Write each finding's script to ``directory/<fingerprint>.py`` (the page's ``repro/``
    folder); ``cells`` maps a cell key to its store row (the finding's ``bad_key`` is looked up).
    Findings without a reproduction are left out. Returns fingerprint -> path."""
    from matrix import atomic

    directory = Path(directory)
    out: dict[str, Path] = {}
    for f in findings:
        try:
            text = script(f, cell_row=(cells or {}).get(_get(f, "bad_key") or ""))
        except Unsupported:
            continue
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / filename(f)
        atomic.write_text(path, text)
        out[_get(f, "fingerprint")] = path
    return out


# ------------------------------------------------------------------------------------ verification


@dataclass(frozen=True)
class Run:
    """One run of a script in one environment."""

    where: str
    code: int
    line: str


@dataclass(frozen=True)
class Verification:
    """``verified``: True (fails in bad, passes in good), False (it does not show the problem),
    None (no reproduction, or it could not run); ``detail`` says what each run printed."""

    verified: bool | None
    detail: str
    runs: tuple[Run, ...] = ()


def run_script(text: str, python: Path, *, timeout: float = TIMEOUT, where: str = "") -> Run:
    """Run a script with ``python`` (an environment's interpreter) in a scratch directory."""
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="llmcompat-repro-", dir=scratch.directory()) as tmp:
        path = Path(tmp, "repro.py")
        path.write_text(text, encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["HF_HUB_OFFLINE"] = "1"
        try:
            proc = subprocess.run(
                [str(python), "-I", str(path)],
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=tmp,
                env=env,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return Run(where, -1, f"timed out after {timeout:.0f}s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("PASS", "FAIL", "SKIP"))]
    line = lines[-1] if lines else (proc.stdout + proc.stderr).strip().splitlines()[-1:] or [""]
    return Run(where, proc.returncode, line if isinstance(line, str) else line[0])


def judge(bad: Run, good: Run | None) -> Verification:
    """Pure: verified when bad exits 1 and good (when there is one) exits 0."""
    runs = (bad,) + ((good,) if good else ())
    detail = "; ".join(f"{r.where}: exit {r.code}: {r.line[:300]}" for r in runs)
    if bad.code not in (0, 1) or (good is not None and good.code not in (0, 1)):
        return Verification(None, "could not run: " + detail, runs)
    ok = bad.code == 1 and (good is None or good.code == 0)
    return Verification(ok, ("reproduced: " if ok else "not reproduced: ") + detail, runs)


def _env_python(cell_row: Mapping, env_root: Path | None) -> Path:
    """The interpreter of a cell's environment, built from its lock with uv (cached by lock)."""
    from matrix.env import uv as envs

    lock_data = cell_row.get("lock") or {}
    if isinstance(lock_data, str):
        lock_data = json.loads(lock_data)
    if not lock_data.get("pins"):
        raise envs.ResolveError((), f"cell {cell_row.get('cell_id')} has no lock (it did not run)")
    lock = envs.Lock(tuple(sorted(lock_data["pins"].items())), lock_data.get("python") or "3.11")
    return Path((envs.ensure(lock, env_root) if env_root else envs.ensure(lock)).python)


def verify(
    finding, cells: Mapping[str, Mapping], *, env_root: Path | None = None, timeout: float = TIMEOUT
) -> Verification:
    """Run ``finding``'s script in its bad cell's environment and, for a regression, its good cell's."""
    from matrix.env import uv as envs

    bad_row = cells.get(_get(finding, "bad_key") or "")
    if bad_row is None:
        return Verification(None, "the bad cell is not in the store")
    try:
        text = script(finding, cell_row=bad_row)
    except Unsupported as exc:
        return Verification(None, f"no standalone reproduction: {exc}")
    good_row = cells.get(_get(finding, "good_key") or "")
    try:
        bad = run_script(text, _env_python(bad_row, env_root), timeout=timeout, where="bad " + bad_row["cell_id"])
        good = (
            run_script(text, _env_python(good_row, env_root), timeout=timeout, where="good " + good_row["cell_id"])
            if good_row is not None
            else None
        )
    except (envs.ResolveError, OSError) as exc:
        return Verification(None, f"could not build the environment: {str(exc)[:300]}")
    return judge(bad, good)


def with_check(finding, results: Iterable[Mapping]):
    """A regression names a case and a stage, not a check (the worst check of that case and
    stage regressed): the finding with the check its bad cell failed there (the first one a
    script can reproduce, else the first), taken from the cell's ``results`` rows."""
    if _get(finding, "check_name"):
        return finding
    failed = [
        r
        for r in results
        if r.get("case_id") == _get(finding, "case_id")
        and r.get("stage") == _get(finding, "stage")
        and r.get("outcome") == "fail"
    ]
    if not failed:
        return finding

    def scriptable(r) -> bool:
        try:
            spec_for({"stage": r["stage"], "check_name": r["check_name"]})
        except Unsupported:
            return False
        return True

    r = next((r for r in failed if scriptable(r)), failed[0])
    extra = {"check_name": r["check_name"], "klass": _get(finding, "klass") or r.get("klass") or ""}
    if isinstance(finding, Mapping):
        return {**finding, **extra}
    from dataclasses import replace

    return replace(finding, **extra)


def checked(store, findings: Iterable) -> list:
    """``findings`` with their checks named (:func:`with_check`, from the store's results)."""
    return [with_check(f, store.results(_get(f, "bad_key") or "")) for f in findings]


def verified_under(finding) -> str:
    """The tag a verification is saved under: the bad and good cell keys it ran in. A finding whose
    range moved (other cells) is verified again; one whose cells are the same is not."""
    return f"[{(_get(finding, 'bad_key') or '')[:12]}/{(_get(finding, 'good_key') or '')[:12]}] "


def is_stale(finding) -> bool:
    """Not verified in its current cells, or without a verdict (no script then, or it could not run)."""
    return _get(finding, "repro_verified") is None or not str(_get(finding, "repro_detail") or "").startswith(
        verified_under(finding)
    )


def verify_store(
    store, findings=None, *, env_root: Path | None = None, stale_only: bool = False, timeout: float = TIMEOUT
) -> dict[str, Verification]:
    """Verify every open finding's reproduction (or ``findings``; with ``stale_only`` only those
    not yet verified in their current cells); saved on the finding (``repro_verified``,
    ``repro_detail``, the latter tagged with the cells, :func:`verified_under`)."""
    cells = {c["key"]: c for c in store.cells()}
    chosen = checked(store, findings if findings is not None else store.findings(status="open"))
    out = {
        _get(f, "fingerprint"): (f, verify(f, cells, env_root=env_root, timeout=timeout))
        for f in chosen
        if not stale_only or is_stale(f)
    }
    store.set_repro({fp: (v.verified, verified_under(f) + v.detail) for fp, (f, v) in out.items()})
    return {fp: v for fp, (_, v) in out.items()}
