"""Source distributions from the index pip is configured with, fetched once (the adapter).

Some engines ship only as source; the llama.cpp git source and the template corpus read the
sources vendored in them. Each ``package==version`` is downloaded once, hash-checked where the
index gives a hash, into ``cache_dir()/sdists/`` (a temporary sibling, then one rename).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import pypi_simple
import requests
from packaging.utils import canonicalize_name, parse_sdist_filename

from matrix.paths import cache_dir
from matrix.releases import index as package_index


class SdistError(Exception):
    """No source distribution could be had: none on the index, a download failed, a bad hash."""


def _sdist_candidates(package: str, version: str) -> list[tuple[str, str | None]]:
    """(url, sha256 or None) of ``package==version``'s sdists on the configured indexes and
    find-links, in pip's order of preference (index first)."""
    name = canonicalize_name(package)
    config = package_index.pip_config()
    found: list[tuple[str, str | None]] = []

    def take(packages):
        for p in packages:
            if p.package_type != "sdist" or not p.filename.endswith(".tar.gz"):
                continue
            try:
                n, v = parse_sdist_filename(p.filename)
            except Exception:  # noqa: BLE001 - foreign file names on a find-links page
                continue
            if n == name and str(v) == str(version) and not p.is_yanked:
                found.append((p.url, (p.digests or {}).get("sha256")))

    for index in config.indexes:
        scheme = urlsplit(index).scheme.lower()
        try:
            if scheme in ("http", "https"):
                r = requests.get(
                    index.rstrip("/") + f"/{name}/",
                    timeout=(10, config.timeout or 60),
                    headers={"Accept": pypi_simple.ACCEPT_JSON_PREFERRED},
                    verify=config.cert or True,
                )
                if r.status_code in (404, 410):
                    continue
                r.raise_for_status()
                take(pypi_simple.ProjectPage.from_response(r, name).packages)
            elif scheme == "file":
                page = Path(url2pathname(urlsplit(index).path)) / name / "index.html"
                if page.is_file():
                    take(pypi_simple.ProjectPage.from_html(name, page.read_bytes(), base_url=page.as_uri()).packages)
        except (requests.RequestException, OSError) as exc:
            found.append(("error:" + str(exc), None))
    for location in config.find_links:
        p = Path(url2pathname(urlsplit(location).path)) if location.startswith("file:") else Path(location)
        if p.is_dir():
            for f in sorted(p.glob("*.tar.gz")):
                try:
                    n, v = parse_sdist_filename(f.name)
                except Exception:  # noqa: BLE001
                    continue
                if n == name and str(v) == str(version):
                    found.append((f.as_uri(), None))
    return found


def sdist(package: str, version: str, root: Path | None = None) -> Path:
    """``package==version``'s source distribution, fetched once into ``cache_dir()/sdists``."""
    root = root or cache_dir() / "sdists"
    found = cached_sdist(package, version, root)
    if found is not None:
        return found
    candidates = _sdist_candidates(package, version)
    errors = [u[6:] for u, _ in candidates if u.startswith("error:")]
    candidates = [c for c in candidates if not c[0].startswith("error:")]
    if not candidates:
        raise SdistError(
            f"no source distribution of {package}=={version} on the configured index"
            + (f" ({'; '.join(errors)})" if errors else "")
        )
    url, sha256 = candidates[0]
    filename = Path(url2pathname(urlsplit(url).path)).name
    path = root / filename
    root.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{filename}.")
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            if urlsplit(url).scheme == "file":
                with open(url2pathname(urlsplit(url).path), "rb") as src:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        h.update(chunk)
                        out.write(chunk)
            else:
                config = package_index.pip_config()
                with requests.get(
                    url, stream=True, timeout=(10, config.timeout or 60), verify=config.cert or True
                ) as r:
                    r.raise_for_status()
                    for chunk in r.iter_content(1 << 20):
                        h.update(chunk)
                        out.write(chunk)
        if sha256 and h.hexdigest() != sha256:
            raise SdistError(f"{filename}: sha256 {h.hexdigest()} does not match the index's {sha256}")
        os.replace(tmp, path)
    except requests.RequestException as exc:
        Path(tmp).unlink(missing_ok=True)
        raise SdistError(f"downloading {url}: {exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def cached_sdist(package: str, version: str, root: Path | None = None) -> Path | None:
    """``package==version``'s source distribution if it is already in the cache (no index)."""
    root = root or cache_dir() / "sdists"
    name = canonicalize_name(package)
    cached = sorted(root.glob(f"{name.replace('-', '_')}-{version}.tar.gz")) if root.is_dir() else []
    return cached[0] if cached else None
