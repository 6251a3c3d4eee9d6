"""Figures about the house (``python -m tests.house``; ``nox -s lint`` prints them): the longest
functions, the modules at the top of ``matrix/``, the project-internal imports placed inside
functions, and the import cycles. Read with ``ast`` (nothing is imported); the issue that asked
for the layout compares them with what it measured before."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from tests import import_graph

ROOT = import_graph.ROOT


def longest_functions(n: int = 10, root: Path = ROOT) -> list[tuple[int, str]]:
    """(lines, ``path:name``) of the ``n`` longest functions and methods (decorators excluded)."""
    found = []
    for path in import_graph.modules(root).values():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append(
                    ((node.end_lineno or node.lineno) - node.lineno + 1, f"{path.relative_to(root)}:{node.name}")
                )
    return sorted(found, reverse=True)[:n]


def top_level_modules(root: Path = ROOT) -> list[str]:
    return sorted(p.name for p in (root / "matrix").glob("*.py") if p.name != "__init__.py")


def imports_inside_functions(root: Path = ROOT) -> int:
    """Import statements inside functions that name at least one project module."""
    return len({(e.source, e.line) for e in import_graph.imports(root) if e.in_function})


def main() -> int:
    longest = longest_functions()
    print("10 longest functions (lines): " + ", ".join(str(n) for n, _ in longest))
    for n, name in longest:
        print(f"  {n:4d}  {name}")
    top = top_level_modules()
    print(f"modules in matrix/ top level: {len(top)} ({', '.join(top)})")
    print(f"project-internal imports inside functions: {imports_inside_functions()}")
    cycles = import_graph.cycles(import_graph.graph(import_graph.imports()))
    print(f"import cycles: {len(cycles)}" + "".join(f"\n  {' -> '.join(c)}" for c in cycles))
    return 0


if __name__ == "__main__":
    sys.exit(main())
