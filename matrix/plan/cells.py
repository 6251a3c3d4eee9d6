"""A cell: one combination of exact component versions, on one runner, for one model."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from matrix.declare.config import AXES


@dataclass(frozen=True, order=True)
class Choice:
    """One component at one exact version (the version of its primary package)."""

    component: str
    version: str

    def __str__(self) -> str:
        return f"{self.component}=={self.version}"


@dataclass(frozen=True)
class Cell:
    """A planned cell. ``choices`` maps every axis in :data:`AXES` to a :class:`Choice`.

    ``reasons`` says why the plan holds it (``baseline-latest``, ``baseline-previous``,
    ``pairwise``, ``sweep:<component>==<version>``); it is not part of identity.
    """

    runner: str
    model: str
    choices: tuple[tuple[str, Choice], ...]
    reasons: tuple[str, ...] = field(default=(), compare=False, hash=False)

    @classmethod
    def make(cls, runner: str, model: str, choices: dict[str, Choice], reasons=()) -> Cell:
        missing = [a for a in AXES if a not in choices]
        if missing:
            raise ValueError(f"cell lacks axes {missing}")
        return cls(runner, model, tuple((a, choices[a]) for a in AXES), tuple(reasons))

    def choice(self, axis: str) -> Choice:
        return dict(self.choices)[axis]

    @property
    def as_dict(self) -> dict[str, Choice]:
        return dict(self.choices)

    @property
    def id(self) -> str:
        """Readable, stable, parseable id: ``runner/model/engine@v/tokenizer@v/template@v/client@v``.

        Used in nox session names (``nox -s "cell(<id>)"``) and reproduction commands.
        """
        parts = [self.runner, self.model] + [f"{c.component}@{c.version}" for _, c in self.choices]
        return "/".join(_SAFE.sub("_", p) for p in parts)

    @classmethod
    def parse(cls, cell_id: str) -> Cell:
        """The inverse of :attr:`id`; raises ValueError naming the bad part."""
        parts = cell_id.split("/")
        if len(parts) != 2 + len(AXES):
            raise ValueError(f"cell id {cell_id!r}: expected runner/model/{'/'.join(a + '@version' for a in AXES)}")
        choices = {}
        for axis, part in zip(AXES, parts[2:]):
            name, sep, version = part.rpartition("@")
            if not sep or not name or not version:
                raise ValueError(f"cell id {cell_id!r}: {axis} part {part!r} is not component@version")
            choices[axis] = Choice(name, version)
        return cls.make(parts[0], parts[1], choices)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "runner": self.runner,
            "model": self.model,
            "choices": {a: {"component": c.component, "version": c.version} for a, c in self.choices},
            "reasons": list(self.reasons),
        }


_SAFE = re.compile(r"[^A-Za-z0-9._+@-]")
