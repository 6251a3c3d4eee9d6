"""The one TTL cache of releases, per project, that the package index and npm share.

One JSON file per project (written atomically): a cache younger than ``ttl`` seconds (and, where
the source names itself, from the same sources) is used without asking the source; ``offline``
uses the cache whatever its age; when the source fails, a stale cache is used with a warning;
nothing usable raises the caller's "unavailable" error. A cache file of another format, another
project or unreadable is ignored (refetched).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from matrix import atomic
from matrix.releases.versions import Release, order


@dataclass(frozen=True)
class Cached:
    releases: list[Release]
    fetched_at: float
    sources: str


@dataclass
class ReleaseCache:
    """How one source's releases are cached: the file ``format`` number, the field naming the
    project (``project`` for the index, ``package`` for npm), a release's JSON form both ways,
    and ``sources`` (a digest of where the releases come from; None: not recorded)."""

    format: int
    name_field: str
    encode: Callable[[Release], dict]
    decode: Callable[[dict], Release]
    log: logging.Logger
    ttl: float = 6 * 3600
    offline: bool = False
    clock: Callable[[], float] = time.time
    sources: Callable[[], str] | None = None
    ensure_ascii: bool = False

    def releases(
        self,
        path: Path,
        name: str,
        fetch: Callable[[], list[Release]],
        *,
        errors: tuple[type[BaseException], ...],
        unavailable: Callable[[str], Exception],
        what: str,
    ) -> list[Release]:
        """``name``'s releases: cached, or ``fetch()``ed and cached; a ``fetch`` that raises one
        of ``errors`` falls back to a stale cache (``what`` names the source in the warning)."""
        cached = self.read(path, name)
        if self.offline:
            if cached is not None:
                return cached.releases
            raise unavailable(f"offline mode and no cached releases in {path}")
        if cached is not None and self.fresh(cached):
            return cached.releases
        started = time.monotonic()
        try:
            found = fetch()
        except errors as exc:
            if cached is not None:
                age_h = (self.clock() - cached.fetched_at) / 3600
                self.log.warning("%s: %s failed (%s); using cached releases from %.1f h ago", name, what, exc, age_h)
                return cached.releases
            raise unavailable(str(exc)) from exc
        self.log.debug("%s: %d releases fetched in %.2f s", name, len(found), time.monotonic() - started)
        self.write(path, name, found)
        return found

    def fresh(self, cached: Cached) -> bool:
        age = self.clock() - cached.fetched_at
        return -60 <= age < self.ttl and (self.sources is None or cached.sources == self.sources())

    def read(self, path: Path, name: str) -> Cached | None:
        data = atomic.read_json(path, self.log)
        if data is None:
            return None
        if not isinstance(data, dict):
            self.log.warning("ignoring malformed cache file %s: not a JSON object", path)
            return None
        try:
            if data.get("format") != self.format or data.get(self.name_field) != name:
                return None
            return Cached(
                order(self.decode(r) for r in data["releases"]), float(data["fetched_at"]), str(data.get("sources", ""))
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self.log.warning("ignoring malformed cache file %s: %s", path, exc)
            return None

    def write(self, path: Path, name: str, releases: Iterable[Release]) -> None:
        """Written atomically; a cache that cannot be written is only a warning."""
        data = {
            "format": self.format,
            self.name_field: name,
            "fetched_at": self.clock(),
            **({"sources": self.sources()} if self.sources is not None else {}),
            "releases": [self.encode(r) for r in releases],
        }
        try:
            atomic.write_json(path, data, ensure_ascii=self.ensure_ascii, sort_keys=False)
        except OSError as exc:
            self.log.warning("could not write cache file %s: %s", path, exc)
