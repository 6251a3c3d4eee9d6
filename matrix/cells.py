"""A cell: one combination of exact component versions, on one runner, for one model."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from matrix.config import AXES


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
    def make(cls, runner: str, model: str, choices: dict[str, Choice], reasons=()) -> "Cell":
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
        """Readable, stable id used for nox session names and result files."""
        parts = [self.runner, self.model] + [f"{c.component}-{c.version}" for _, c in self.choices]
        return _SAFE.sub("_", "--".join(parts))

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "runner": self.runner,
            "model": self.model,
            "choices": {a: {"component": c.component, "version": c.version} for a, c in self.choices},
            "reasons": list(self.reasons),
        }

    @classmethod
    def from_json(cls, data: dict) -> "Cell":
        choices = {a: Choice(v["component"], v["version"]) for a, v in data["choices"].items()}
        return cls.make(data["runner"], data["model"], choices, data.get("reasons", ()))


_SAFE = re.compile(r"[^A-Za-z0-9._+-]")
