"""The engine registry: every adapter by name, one dict built here, explicitly.

As in nox's registry, nothing registers itself by being imported: :mod:`engines` holds the core
adapters, :mod:`engines_extra` and :mod:`engines_gpu` their own, each an ``ADAPTERS`` dict, and
this module joins them (a name given twice is an error, never a silent replacement). The stages
make their adapters through :func:`make`. Standard library only.
"""

from __future__ import annotations

import engines
import engines_extra
import engines_gpu


def build(*groups: dict) -> dict:
    """One registry (name -> adapter class) from groups of adapters; a repeated name raises."""
    registry: dict = {}
    for group in groups:
        for name, cls in group.items():
            if name in registry:
                raise ValueError(f"engine {name!r} is registered twice ({registry[name].__name__}, {cls.__name__})")
            registry[name] = cls
    return registry


ENGINES = build(engines.ADAPTERS, engines_extra.ADAPTERS, engines_gpu.ADAPTERS)
"""Every engine adapter by name."""


def get(name: str):
    """The adapter class of ``name``, or None."""
    return ENGINES.get(name)


def make(spec, job: dict) -> engines.Engine:
    """An adapter from a ``job["engines"]`` entry (a name, or a mapping with ``name``)."""
    if isinstance(spec, str):
        name, opts = spec, {}
    else:
        opts = dict(spec)
        name = opts.pop("name")
    opts = {**(job.get("engine_options", {}).get(name) or {}), **opts}
    cls = ENGINES.get(name)
    if cls is None:
        raise engines.EngineUnavailable(f"unknown engine {name!r} (known: {', '.join(sorted(ENGINES))})")
    return cls(job, opts)
