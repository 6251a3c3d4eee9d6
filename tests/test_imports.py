"""The house's layering, read from the source with ``ast`` (tests/import_graph.py): no import
cycles, counting imports inside functions; only the application layer (matrix.app) imports bot
or reports; reports never imports bot; neither imports the application layer."""

from __future__ import annotations

import textwrap

from tests import import_graph as ig


def _top(module: str) -> str:
    return module.split(".")[0]


def _lines(edges) -> str:
    return "\n".join(
        f"  {e.source} imports {e.target} (line {e.line}{', in a function' if e.in_function else ''})" for e in edges
    )


def test_no_import_cycles():
    edges = ig.imports()
    found = ig.cycles(ig.graph(edges))
    assert not found, "import cycles:\n" + "\n".join("  " + " -> ".join(c) for c in found)


def test_only_the_application_layer_imports_bot_and_reports():
    bad = [
        e
        for e in ig.imports()
        if e.source.startswith("matrix.")
        and not e.source.startswith("matrix.app.")
        and _top(e.target) in ("bot", "reports")
    ]
    assert not bad, "matrix modules below matrix.app import bot or reports:\n" + _lines(bad)


def test_reports_never_imports_bot_and_neither_imports_the_application_layer():
    edges = ig.imports()
    bad = [e for e in edges if _top(e.source) == "reports" and _top(e.target) == "bot"]
    bad += [e for e in edges if _top(e.source) in ("bot", "reports") and e.target.startswith("matrix.app")]
    assert not bad, "layering broken:\n" + _lines(bad)


def test_the_graph_reader_sees_every_kind_of_import(tmp_path):
    """The reader itself: relative and absolute, in functions, the probe's bare names, parents."""
    files = {
        "matrix/__init__.py": "",
        "matrix/a/__init__.py": "from . import b\n",
        "matrix/a/b.py": "def f():\n    from matrix.a import c\n",
        "matrix/a/c.py": "from .b import f\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import bot.x\n",
        "matrix/probe/one.py": "import two\n",
        "matrix/probe/two.py": "def g():\n    from one import h\n",
        "bot/__init__.py": "",
        "bot/x.py": "import matrix.a.c\n",
        "reports/__init__.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text))
    edges = {(e.source, e.target, e.in_function) for e in ig.imports(tmp_path)}
    assert ("matrix.a.b", "matrix.a.c", True) in edges and ("matrix.a.c", "matrix.a.b", False) in edges
    assert ("matrix.a", "matrix.a.b", False) in edges
    assert ("matrix.probe.one", "matrix.probe.two", False) in edges
    assert ("matrix.probe.two", "matrix.probe.one", True) in edges
    assert ("bot.x", "matrix.a", False) in edges and ("bot.x", "matrix.a.c", False) in edges
    assert not any(s == "matrix.a.c" and t.startswith("bot") for s, t, _ in edges)  # TYPE_CHECKING only
    cycles = ig.cycles(ig.graph(ig.imports(tmp_path)))
    assert ["matrix.a.b", "matrix.a.c", "matrix.a.b"] in cycles
    assert ["matrix.probe.one", "matrix.probe.two", "matrix.probe.one"] in cycles
