"""Planning: the cells to run, from the matrix and each component's selected versions.

Pure functions over plain data (no I/O): versions are discovered elsewhere and passed in as
``versions[(axis, component)]``, ascending. A *target* is one selected (runner, model) pair the
model can run on; each target gets its own cells:

1. ``baseline-latest``: a pairwise array over every runnable component at its latest version;
2. ``baseline-previous``: the same at each component's previous release, where it has one;
3. ``pairwise``: a covering array over all versions, seeded with the baseline cells;
4. ``sweep:<component>==<version>``: each version newer than everything in ``seen`` for that
   component, the other axes as in the target's first baseline-latest cell.

Cells come in that order (all targets' baselines before any pairwise cell), each once, with the
reasons of its duplicates merged.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from matrix.declare.config import AXES, Component, Matrix, Model, Runner
from matrix.plan import covering
from matrix.plan.cells import Cell, Choice

__all__ = ["Target", "coverage_report", "github_matrix", "plan", "targets"]

GITHUB_MAX_JOBS = 256
"""GitHub Actions runs at most this many jobs from one matrix."""


@dataclass(frozen=True)
class Target:
    """One selected (runner, model) pair with what can be planned on it.

    ``factors[i]`` lists the :class:`Choice` values of axis ``AXES[i]``: every runnable selected
    component at every selected version, in matrix order then ascending version.
    """

    runner: Runner
    model: Model
    components: tuple[tuple[Component, ...], ...]
    factors: tuple[tuple[Choice, ...], ...]
    allowed: Callable[[dict[int, Choice]], bool]

    def latest(self, versions: Mapping[tuple[str, str], Sequence[str]]) -> list[list[Choice]]:
        return [
            [Choice(c.name, _versions(versions, a, c)[-1]) for c in comps] for a, comps in zip(AXES, self.components)
        ]

    def previous(self, versions: Mapping[tuple[str, str], Sequence[str]]) -> list[list[Choice]] | None:
        """Each component's previous release; an axis where none has one keeps its latest.
        None when no component anywhere has a previous release."""
        out: list[list[Choice]] = []
        any_previous = False
        for a, comps, latest in zip(AXES, self.components, self.latest(versions)):
            prev = [Choice(c.name, vs[-2]) for c in comps if len(vs := _versions(versions, a, c)) >= 2]
            any_previous = any_previous or bool(prev)
            out.append(prev or latest)
        return out if any_previous else None


def _versions(versions: Mapping[tuple[str, str], Sequence[str]], axis: str, c: Component) -> list[str]:
    return list(dict.fromkeys(versions.get((axis, c.name), ())))


def _runs(needs: frozenset[str], runner: Runner) -> bool:
    return needs <= runner.provides


def _select_components(matrix: Matrix, components: Collection[tuple[str, str]] | None) -> dict[str, list[Component]]:
    named: dict[str, set[str]] = {}
    for axis, name in sorted(components or ()):
        if axis not in AXES:
            raise matrix.error("axes", axis, f"no such axis (axes are {', '.join(AXES)})")
        try:
            matrix.component(axis, name)
        except KeyError:
            raise matrix.error(f"axes.{axis}", name, "no such component") from None
        named.setdefault(axis, set()).add(name)
    out: dict[str, list[Component]] = {}
    for axis in AXES:
        # a corpus (ecosystem: corpus) is a template source every cell renders, never a choice
        comps = [c for c in matrix.axes.get(axis, ()) if c.ecosystem != "corpus"]
        if axis in named:
            out[axis] = [c for c in comps if c.name in named[axis]]
        else:
            out[axis] = [c for c in comps if c.default]
    return out


def _select_named(matrix: Matrix, field: str, items: Sequence[Any], names: Collection[str] | None) -> list[Any]:
    if names is None:
        chosen = [x for x in items if x.default]
    else:
        known = {x.name for x in items}
        for name in sorted(names):
            if name not in known:
                raise matrix.error(field, name, f"no such {field[:-1]} (known: {', '.join(sorted(known))})")
        chosen = [x for x in items if x.name in names]
    if not chosen:
        raise matrix.error(field, sorted(names) if names is not None else [], f"no {field} selected")
    return chosen


def _compile_constraints(matrix: Matrix, values: Sequence[Sequence[Choice]]) -> Callable[[dict[int, Choice]], bool]:
    """``allowed(partial)``: False when the partial assignment matches every condition of a constraint."""
    compiled: list[list[tuple[int, frozenset[Choice]]]] = []
    for ci, constraint in enumerate(matrix.constraints):
        conds: list[tuple[int, frozenset[Choice]]] = []
        for cond in constraint.conditions:
            where = f"constraints.{ci}.exclude.{cond.axis}"
            if cond.axis not in AXES:
                raise matrix.error(where, cond.axis, f"no such axis (axes are {', '.join(AXES)})")
            try:
                spec = SpecifierSet(cond.specifier) if cond.specifier else None
            except InvalidSpecifier:
                raise matrix.error(where, cond.specifier, "not a version specifier") from None
            ai = AXES.index(cond.axis)
            conds.append((ai, frozenset(ch for ch in values[ai] if _matches(ch, cond.component, spec))))
        compiled.append(conds)

    def allowed(partial: dict[int, Choice]) -> bool:
        for conds in compiled:
            if all(ai in partial and partial[ai] in match for ai, match in conds):
                return False
        return True

    return allowed


def _matches(choice: Choice, component: str, spec: SpecifierSet | None) -> bool:
    if choice.component != component:
        return False
    if spec is None:
        return True
    try:
        return spec.contains(Version(choice.version), prereleases=True)
    except InvalidVersion:
        return False


def targets(
    matrix: Matrix,
    versions: Mapping[tuple[str, str], Sequence[str]],
    *,
    components: Collection[tuple[str, str]] | None = None,
    runners: Collection[str] | None = None,
    models: Collection[str] | None = None,
) -> list[Target]:
    """The selected (runner, model) pairs, in matrix order, with their factors and constraints.

    By default the components, runners and models marked ``default``. ``components`` names
    ``(axis, name)`` pairs: on every axis it names, exactly those are selected (so heavy
    components are opt-in); axes it does not name keep their defaults. ``runners`` and
    ``models`` select by name instead of the defaults. A runner runs a component or model when
    its ``needs`` are a subset of the runner's ``provides``; models a runner cannot run are left
    out of that runner. Raises :class:`~matrix.errors.ConfigError` for unknown names, an empty
    selection, an axis with no component runnable on a target, a selected component without
    versions, or constraints that exclude every cell of a target.
    """
    selected = _select_components(matrix, components)
    chosen_runners = _select_named(matrix, "runners", matrix.runners, runners)
    chosen_models = _select_named(matrix, "models", matrix.models, models)
    out: list[Target] = []
    for runner in chosen_runners:
        for model in chosen_models:
            if not _runs(model.needs, runner):
                continue
            comps: list[tuple[Component, ...]] = []
            factors: list[tuple[Choice, ...]] = []
            for axis in AXES:
                runnable = tuple(c for c in selected[axis] if _runs(c.needs, runner))
                if not runnable:
                    names = [c.name for c in selected[axis]]
                    raise matrix.error(
                        f"axes.{axis}",
                        names,
                        f"no selected component runs on runner {runner.name!r} "
                        f"(it provides {', '.join(sorted(runner.provides)) or 'nothing'})",
                    )
                values: list[Choice] = []
                for c in runnable:
                    vs = _versions(versions, axis, c)
                    if not vs:
                        raise matrix.error(f"axes.{axis}.{c.name}.versions", [], "no versions selected")
                    values.extend(Choice(c.name, v) for v in vs)
                comps.append(runnable)
                factors.append(tuple(values))
            allowed = _compile_constraints(matrix, factors)
            if covering.complete(factors, {}, allowed) is None:
                raise _no_cell_error(matrix, runner, model, factors)
            out.append(Target(runner, model, tuple(comps), tuple(factors), allowed))
    if not out:
        raise matrix.error(
            "models",
            [m.name for m in chosen_models],
            f"no selected model runs on a selected runner ({', '.join(r.name for r in chosen_runners)})",
        )
    return out


def _no_cell_error(matrix: Matrix, runner: Runner, model: Model, factors: Sequence[Sequence[Choice]]):
    """Name the first constraint without which some cell would be allowed."""
    where = f"for runner {runner.name!r} and model {model.name!r}"
    for ci, constraint in enumerate(matrix.constraints):
        rest = [c for i, c in enumerate(matrix.constraints) if i != ci]
        without = _compile_constraints(_with_constraints(matrix, rest), factors)
        if covering.complete(factors, {}, without) is not None:
            value = ", ".join(f"{c.axis}={c.component}{c.specifier}" for c in constraint.conditions)
            return matrix.error(f"constraints.{ci}", value, f"excludes every remaining cell {where}")
    return matrix.error("constraints", len(matrix.constraints), f"together exclude every cell {where}")


def _with_constraints(matrix: Matrix, constraints: Sequence[Any]) -> Matrix:
    return replace(matrix, constraints=tuple(constraints))


def _rows_to_cells(target: Target, rows: Sequence[Sequence[Choice]], reason: str) -> list[Cell]:
    return [Cell.make(target.runner.name, target.model.name, dict(zip(AXES, row)), (reason,)) for row in rows]


def _newer(version: str, seen: Collection[str], order: Sequence[str]) -> bool:
    """Whether ``version`` is newer than every seen version (PEP 440; list order as a fallback)."""
    for s in seen:
        if s == version:
            return False
        try:
            if Version(version) <= Version(s):
                return False
        except InvalidVersion:
            if s in order and order.index(version) <= order.index(s):
                return False
    return True


def plan(
    matrix: Matrix,
    versions: Mapping[tuple[str, str], Sequence[str]],
    *,
    components: Collection[tuple[str, str]] | None = None,
    runners: Collection[str] | None = None,
    models: Collection[str] | None = None,
    seen: Mapping[tuple[str, str], Collection[str]] = {},
) -> list[Cell]:
    """The cells to run (see the module docstring); selection as in :func:`targets`.

    ``seen[(axis, component)]`` lists versions already tested; a component with a key there gets
    a sweep cell for each selected version newer than all of them (all of its versions when the
    collection is empty). Components without a key get no sweep.
    """
    tgs = targets(matrix, versions, components=components, runners=runners, models=models)
    latest: list[Cell] = []
    previous: list[Cell] = []
    pairs: list[Cell] = []
    sweeps: list[Cell] = []
    for t in tgs:
        latest_rows = covering.pairwise(t.latest(versions), t.allowed)
        prev_factors = t.previous(versions)
        prev_rows = covering.pairwise(prev_factors, t.allowed) if prev_factors else []
        seeds = [dict(enumerate(r)) for r in latest_rows + prev_rows]
        all_rows = covering.pairwise(t.factors, t.allowed, seed_rows=seeds)
        latest += _rows_to_cells(t, latest_rows, "baseline-latest")
        previous += _rows_to_cells(t, prev_rows, "baseline-previous")
        pairs += _rows_to_cells(t, all_rows, "pairwise")

        base = dict(enumerate(latest_rows[0])) if latest_rows else {}
        for ai, (axis, comps) in enumerate(zip(AXES, t.components)):
            for c in comps:
                if (axis, c.name) not in seen:
                    continue
                vs = _versions(versions, axis, c)
                already = list(seen[(axis, c.name)])
                for v in vs:
                    if not _newer(v, already, vs):
                        continue
                    choice = Choice(c.name, v)
                    prefer = {i: x for i, x in base.items() if i != ai}
                    row = covering.complete(t.factors, {ai: choice}, t.allowed, prefer=prefer)
                    if row is not None:
                        sweeps += _rows_to_cells(t, [row], f"sweep:{choice}")
    return _merge(latest + previous + pairs + sweeps)


def _merge(cells: Sequence[Cell]) -> list[Cell]:
    """Each cell once, at its first place, with the reasons of all its duplicates."""
    reasons: dict[Cell, list[str]] = {}
    for cell in cells:
        got = reasons.setdefault(cell, [])
        got.extend(r for r in cell.reasons if r not in got)
    return [Cell(c.runner, c.model, c.choices, tuple(rs)) for c, rs in reasons.items()]


def _pair_label(pair: covering.Pair) -> dict[str, str]:
    (i, a), (j, b) = pair
    return {AXES[i]: str(a), AXES[j]: str(b)}


def coverage_report(
    matrix: Matrix,
    versions: Mapping[tuple[str, str], Sequence[str]],
    cells: Sequence[Cell],
    *,
    components: Collection[tuple[str, str]] | None = None,
    runners: Collection[str] | None = None,
    models: Collection[str] | None = None,
) -> dict:
    """How well ``cells`` cover the allowed pairs of the selection (as :func:`plan` selects).

    Returns ``allowed`` and ``covered`` (pair counts), ``coverage`` (1.0 when nothing is required),
    ``missing`` (each ``{"runner", "model", "pair": {axis: "component==version", ...}}``),
    ``disallowed`` (ids of cells that a constraint excludes), ``outside`` (ids of cells of no
    selected target, or with a choice the selection lacks) and ``targets`` (per-target counts).
    """
    tgs = targets(matrix, versions, components=components, runners=runners, models=models)
    by_target: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        by_target.setdefault((cell.runner, cell.model), []).append(cell)
    total_allowed = total_covered = 0
    missing: list[dict] = []
    disallowed: list[str] = []
    outside: list[str] = []
    per_target: list[dict] = []
    known = {(t.runner.name, t.model.name) for t in tgs}
    for key, cs in by_target.items():
        if key not in known:
            outside += [c.id for c in cs]
    for t in tgs:
        cs = by_target.get((t.runner.name, t.model.name), [])
        required = covering.allowed_pairs(t.factors, t.allowed)
        rows = []
        for c in cs:
            row = tuple(c.choice(a) for a in AXES)
            if any(x not in f for x, f in zip(row, t.factors)):
                outside.append(c.id)
                continue
            if not t.allowed(dict(enumerate(row))):
                disallowed.append(c.id)
                continue
            rows.append(row)
        lacking = covering.uncovered(t.factors, rows, t.allowed)
        total_allowed += len(required)
        total_covered += len(required) - len(lacking)
        per_target.append(
            {
                "runner": t.runner.name,
                "model": t.model.name,
                "cells": len(cs),
                "allowed": len(required),
                "covered": len(required) - len(lacking),
            }
        )
        for pair in sorted(lacking, key=lambda p: (p[0][0], str(p[0][1]), p[1][0], str(p[1][1]))):
            missing.append({"runner": t.runner.name, "model": t.model.name, "pair": _pair_label(pair)})
    return {
        "allowed": total_allowed,
        "covered": total_covered,
        "coverage": total_covered / total_allowed if total_allowed else 1.0,
        "missing": missing,
        "disallowed": disallowed,
        "outside": outside,
        "targets": per_target,
    }


def github_matrix(cells: Sequence[Cell], matrix: Matrix, max_jobs: int = GITHUB_MAX_JOBS) -> list[dict]:
    """GitHub Actions ``strategy.matrix`` objects for ``cells``.

    Each is ``{"include": [{"cell": id, "runner": name, "runs-on": [labels...], "environment":
    "uv" | "image"}, ...]}`` with
    at most ``max_jobs`` entries and cells of one runner only; runners in matrix order, cells in
    the given order, each cell id once.
    """
    if not 1 <= max_jobs <= GITHUB_MAX_JOBS:
        raise ValueError(f"max_jobs must be within 1..{GITHUB_MAX_JOBS}, got {max_jobs}")
    by_name = {r.name: r for r in matrix.runners}
    groups: dict[str, list[dict]] = {r.name: [] for r in matrix.runners}
    ids: set[str] = set()
    for cell in cells:
        runner = by_name.get(cell.runner)
        if runner is None:
            raise matrix.error("runners", cell.runner, f"cell {cell.id} names a runner the matrix lacks")
        if cell.id in ids:
            continue
        ids.add(cell.id)
        groups[runner.name].append(
            {
                "cell": cell.id,
                "runner": runner.name,
                "runs-on": list(runner.labels),
                "environment": getattr(runner, "environment", "uv"),
            }
        )
    out: list[dict] = []
    for jobs in groups.values():
        for start in range(0, len(jobs), max_jobs):
            out.append({"include": jobs[start : start + max_jobs]})
    return out
