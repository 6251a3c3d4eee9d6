"""The import graph of the project's own modules, read with ``ast`` (nothing is imported).

Every import counts, at module level or inside a function (an import placed in a function to
dodge a cycle is still a cycle), except those under ``if TYPE_CHECKING:``. Absolute and relative
imports are resolved to the project's modules; ``matrix/probe/*.py`` is a flat namespace of its
own (the probe runs as a script in a cell's environment and its modules import each other by bare
name). Importing ``a.b.c`` also runs the packages ``a`` and ``a.b``: those edges count too, except
towards a package the importer itself lives in (it is already being initialised) or an empty
``__init__.py`` (it imports nothing).
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("matrix", "bot", "reports")
PROBE = "matrix.probe"


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    in_function: bool


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted name -> file, for every module of the project's packages (``pkg`` for ``pkg/__init__.py``)."""
    out: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_package(name: str, known: dict[str, Path]) -> bool:
    return name in known and known[name].name == "__init__.py"


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a project module."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in known:
            return candidate
        parts.pop()
    return None


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for body in node.body for n in ast.walk(body))
    return skip


def _function_nodes(tree: ast.AST) -> set[int]:
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            inside.update(id(n) for n in ast.walk(node) if n is not node)
    return inside


def _absolute(module: str, node: ast.ImportFrom, known: dict[str, Path]) -> str:
    """The module a ``from ... import`` names, relative levels resolved."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not _is_package(module, known):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _named(module: str, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> Iterator[str]:
    """The project modules one import statement names (before their parent packages)."""
    in_probe = module.startswith(PROBE + ".")
    if isinstance(node, ast.Import):
        wanted = [(a.name, a.name) for a in node.names]
    else:
        prefix = _absolute(module, node, known)
        wanted = [(f"{prefix}.{a.name}" if prefix else a.name, prefix) for a in node.names]
    for name, fallback in wanted:
        bare = name.split(".")[0]
        if in_probe and not getattr(node, "level", 0) and f"{PROBE}.{bare}" in known:
            yield f"{PROBE}.{bare}"  # the probe's flat namespace
        elif name in known:
            yield name
        elif (target := _resolve(fallback, known)) is not None:
            yield target  # ``from pkg.mod import name``: the module that holds the name


def _targets(module: str, node: ast.Import | ast.ImportFrom, known: dict[str, Path]) -> Iterator[str]:
    for target in _named(module, node, known):
        yield target
        parts = target.split(".")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent in known and known[parent].stat().st_size and not module.startswith(parent + "."):
                yield parent


def imports(root: Path = ROOT) -> list[Import]:
    """Every project-internal import of the project's modules (self-imports left out)."""
    return list(_imports(root))


@functools.lru_cache(maxsize=4)
def _imports(root: Path) -> tuple[Import, ...]:
    known = modules(root)
    out: list[Import] = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        skip, inside = _type_checking_nodes(tree), _function_nodes(tree)
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in skip:
                continue
            for target in dict.fromkeys(_targets(module, node, known)):
                if target != module:
                    out.append(Import(module, target, node.lineno, id(node) in inside))
    return tuple(out)


def graph(edges: list[Import]) -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for e in edges:
        g.setdefault(e.source, set()).add(e.target)
        g.setdefault(e.target, set())
    return g


def components(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    sccs: list[set[str]] = []
    counter = 0

    def visit(v: str) -> None:  # recursion depth is bounded by the module count (a few hundred)
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = set()
            while True:
                w = stack.pop()
                on.discard(w)
                scc.add(w)
                if w == v:
                    break
            if len(scc) > 1:
                sccs.append(scc)

    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(sorted(scc) for scc in sccs)


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Per strongly connected component, a shortest cycle through each of its modules (deduplicated):
    enough to name every import that holds the component together."""
    out: list[list[str]] = []
    seen: set[frozenset[tuple[str, str]]] = set()
    for scc in components(g):
        for start in scc:
            cycle = _cycle_from(g, set(scc), start)
            edges = frozenset(zip(cycle, cycle[1:]))
            if edges not in seen:
                seen.add(edges)
                out.append(cycle)
    return out


def _cycle_from(g: dict[str, set[str]], scc: set[str], start: str) -> list[str]:
    """A shortest cycle through ``start`` inside its component (breadth first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(g[v] & scc):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    nxt.append(w)
        frontier = nxt
    return [start]
