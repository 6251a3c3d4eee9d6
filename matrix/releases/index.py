"""Version discovery from the package index that pip is configured with (the adapter).

Where to look comes from pip's own configuration, never from a host written here:
``PIP_INDEX_URL`` / ``PIP_EXTRA_INDEX_URL`` / ``PIP_FIND_LINKS`` / ``PIP_NO_INDEX`` and pip's
configuration files (what ``python3 -m pip config list`` shows), read once per process. Without
a configured ``index-url`` the default is :data:`pypi_simple.PYPI_SIMPLE_ENDPOINT`.

Sources, all merged per version (earliest known upload time wins):

- http(s) indexes: PEP 691 JSON preferred (PEP 700 ``upload-time``), PEP 503 HTML accepted;
- ``file://`` directory indexes: ``<dir>/<normalized-project>/index.html`` (PEP 503 HTML,
  no upload time);
- find-links: local directories (wheel / sdist file names), local or remote HTML pages.

A project missing from one source is not an error. :class:`PackageIndex` caches the merged
releases of each project in one JSON file (atomic writes), honours a TTL, can run offline, and
falls back to a stale cache, with a warning, when the network fails.

:func:`uv_index_args` and :func:`tls_env` hand the same configuration to uv so that environments
resolve against exactly what pip would see.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import logging
import os
import posixpath
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit
from urllib.request import pathname2url, url2pathname

import pypi_simple
import requests
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import InvalidVersion, Version
from requests.adapters import HTTPAdapter
from urllib3.util import Retry

from matrix.errors import LlmcompatError
from matrix.releases.cache import ReleaseCache
from matrix.releases.versions import Release, order

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
"""Version of the cache file layout; files of another format are ignored (refetched)."""

ACCEPT = pypi_simple.ACCEPT_JSON_PREFERRED
"""PEP 691 content negotiation: JSON (with PEP 700 upload times) first, PEP 503 HTML accepted."""

RETRY_STATUSES = (429, 500, 502, 503, 504)

_PROJECT_NAME = re.compile(r"^([A-Z0-9]|[A-Z0-9][A-Z0-9._-]*[A-Z0-9])$", re.IGNORECASE)
_TRUE = {"1", "true", "yes", "on", "y"}


class IndexUnavailable(LlmcompatError):
    """No releases can be had for ``project``: the index failed (or offline) and nothing is cached."""

    def __init__(self, project: str, reason: str):
        self.project = project
        self.reason = reason
        super().__init__(f"package index unavailable for {project!r}: {reason}")


# --------------------------------------------------------------------------- pip configuration


@dataclass(frozen=True)
class IndexConfig:
    """The package sources and TLS settings pip is configured with."""

    index_url: str
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    cert: str | None = None
    """pip ``cert`` (``PIP_CERT``): CA bundle for verifying the index."""
    client_cert: str | None = None
    timeout: float | None = None
    """pip ``timeout`` / ``default-timeout`` in seconds, used as the read timeout."""
    origin: str = "default"
    """How it was read: ``pip`` (in process), ``pip-subprocess``, ``environment``, ``default``."""

    @property
    def indexes(self) -> tuple[str, ...]:
        """Index URLs in pip's order: ``index-url`` then every ``extra-index-url`` (none with no-index)."""
        if self.no_index:
            return ()
        return (self.index_url, *self.extra_index_urls)

    def fingerprint(self) -> str:
        """A digest of the sources (credentials removed); a cache from other sources is not fresh."""
        text = json.dumps(
            {"indexes": [redact(u) for u in self.indexes], "find_links": [redact(f) for f in self.find_links]},
            sort_keys=True,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def redact(url: str) -> str:
    """``url`` without a password (``user:secret@host`` becomes ``user:***@host``), for logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None and "@" not in parts.netloc:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    netloc = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
    return urlunsplit(parts._replace(netloc=netloc))


def _pip_items_in_process() -> dict[str, str]:
    from pip._internal.configuration import Configuration  # optional, private API: imported only here

    pip_log = logging.getLogger("pip")  # pip logs every file it tries at debug level: not ours to show
    level, pip_log.level = pip_log.level, logging.WARNING
    try:
        conf = Configuration(isolated=False)
        conf.load()
    finally:
        pip_log.setLevel(level)
    items: dict[str, str] = {}
    for key, value in conf.items():
        if isinstance(value, dict):  # pip >= 25: (file, {key: value}), in load order (later wins)
            items.update((k, str(v)) for k, v in value.items())
        else:  # older pip: (key, value)
            items[key] = str(value)
    return items


def _pip_items_subprocess() -> dict[str, str]:
    """Parse ``pip config list`` (``key='value'`` lines, values printed with ``repr``)."""
    pythons = [sys.executable]
    other = shutil.which("python3")
    if other and other not in pythons:
        pythons.append(other)
    last: Exception | None = None
    for python in pythons:
        try:
            out = subprocess.run(
                [python, "-m", "pip", "config", "list"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            last = exc
            continue
        items: dict[str, str] = {}
        for line in out.splitlines():
            key, sep, value = line.partition("=")
            if not sep:
                continue
            try:
                items[key.strip()] = str(ast.literal_eval(value.strip()))
            except (ValueError, SyntaxError):
                items[key.strip()] = value.strip().strip("'\"")
        return items
    raise RuntimeError(f"pip config list failed: {last}")


def _pip_items_environment() -> dict[str, str]:
    """Only ``PIP_*`` variables, named as pip names them (``:env:.index-url``)."""
    return {f":env:.{k[4:].lower().replace('_', '-')}": v for k, v in os.environ.items() if k.startswith("PIP_")}


def _lookup(items: dict[str, str], *names: str) -> str | None:
    """pip's precedence for ``pip install``: environment, then ``[install]``, then ``[global]``."""
    for section in (":env:", "install", "global"):
        for name in names:
            value = items.get(f"{section}.{name}")
            if value is not None:
                return value
    return None


def config_from_items(items: dict[str, str], origin: str = "pip") -> IndexConfig:
    """Build an :class:`IndexConfig` from pip configuration items (``section.key`` -> value)."""
    index_url = (_lookup(items, "index-url", "i") or "").strip() or pypi_simple.PYPI_SIMPLE_ENDPOINT
    extras = tuple((_lookup(items, "extra-index-url") or "").split())
    find_links = tuple((_lookup(items, "find-links", "f") or "").split())
    no_index = (_lookup(items, "no-index") or "").strip().lower() in _TRUE
    cert = (_lookup(items, "cert") or "").strip() or None
    client_cert = (_lookup(items, "client-cert") or "").strip() or None
    timeout: float | None = None
    raw_timeout = _lookup(items, "timeout", "default-timeout")
    if raw_timeout:
        try:
            timeout = float(raw_timeout)
        except ValueError:
            log.warning("ignoring pip timeout %r: not a number", raw_timeout)
    return IndexConfig(index_url, extras, find_links, no_index, cert, client_cert, timeout, origin)


@functools.lru_cache(maxsize=1)
def pip_config() -> IndexConfig:
    """pip's index configuration, read once per process (see :func:`clear_pip_config_cache`).

    Read with pip's own ``Configuration`` class; where pip cannot be imported, from
    ``python3 -m pip config list``; where neither works, from the ``PIP_*`` variables alone.
    """
    readers: tuple[tuple[str, Callable[[], dict[str, str]]], ...] = (
        ("pip", _pip_items_in_process),
        ("pip-subprocess", _pip_items_subprocess),
    )
    for origin, reader in readers:
        try:
            items = reader()
        except Exception as exc:  # noqa: BLE001 - any failure means: try the next reader
            log.debug("reading pip configuration via %s failed: %s", origin, exc)
            continue
        return config_from_items(items, origin)
    log.warning("pip configuration could not be read; using PIP_* environment variables only")
    return config_from_items(_pip_items_environment(), "environment")


def clear_pip_config_cache() -> None:
    """Forget the per-process pip configuration (after changing ``PIP_*`` variables or files)."""
    pip_config.cache_clear()


def uv_index_args(config: IndexConfig | None = None, *, index_strategy: str | None = "unsafe-best-match") -> list[str]:
    """pip's sources as uv arguments: ``--index-url``, ``--extra-index-url``..., ``--find-links``...

    uv, unlike pip, by default takes a package only from the first index that has it (extra
    indexes first), so a local index holding one version of a project hides every other version
    of it. ``--index-strategy unsafe-best-match`` restores pip's behaviour (every version from
    every index); pass ``index_strategy=None`` to keep uv's default.
    """
    cfg = config or pip_config()
    args: list[str] = []
    if cfg.no_index:
        args.append("--no-index")
    else:
        args += ["--index-url", cfg.index_url]
        for url in cfg.extra_index_urls:
            args += ["--extra-index-url", url]
    for location in cfg.find_links:
        args += ["--find-links", location]
    if index_strategy and not cfg.no_index:
        args += ["--index-strategy", index_strategy]
    return args


def tls_env(config: IndexConfig | None = None) -> dict[str, str]:
    """Environment for uv so it trusts what pip trusts (TLS-intercepting proxies).

    uv does not read pip's ``cert`` nor ``REQUESTS_CA_BUNDLE``; it reads ``SSL_CERT_FILE`` (or
    ``SSL_CERT_DIR``). The bundle is pip's ``cert`` (``PIP_CERT`` first, then the configuration
    files), else an existing ``SSL_CERT_FILE``. pip's ``client-cert`` becomes ``SSL_CLIENT_CERT``.
    """
    cfg = config or pip_config()
    env: dict[str, str] = {}
    cert = cfg.cert or os.environ.get("SSL_CERT_FILE")
    if cert:
        env["SSL_CERT_DIR" if os.path.isdir(cert) else "SSL_CERT_FILE"] = cert
    if cfg.client_cert:
        env["SSL_CLIENT_CERT"] = cfg.client_cert
    return env


# --------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class _File:
    version: Version
    upload_time: datetime | None
    yanked: bool
    requires_python: str | None


class _SourceError(Exception):
    """One source failed (network, HTTP status, unparsable page)."""


def _utc(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    if dt.tzinfo is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def parse_filename(filename: str) -> tuple[str, Version] | None:
    """(normalized project, version) of a wheel or sdist file name, or None when not one."""
    try:
        if filename.endswith(".whl"):
            name, version, _, _ = parse_wheel_filename(filename)
        elif filename.endswith((".tar.gz", ".zip")):
            name, version = parse_sdist_filename(filename)
        else:
            return None
    except (InvalidWheelFilename, InvalidSdistFilename, InvalidVersion):
        return None
    return str(name), version


def _files_from_packages(
    packages: Iterable[pypi_simple.DistributionPackage], project: str, *, listing: bool
) -> list[_File]:
    """Files of ``project`` on a project page; ``listing`` (find-links pages) filters by file name."""
    files: list[_File] = []
    for pkg in packages:
        # PEP 503 wants the anchor text to be the file name; pip trusts the URL: accept either.
        url_name = posixpath.basename(unquote(urlsplit(pkg.url).path)) if pkg.url else ""
        parsed = parse_filename(pkg.filename) or parse_filename(url_name)
        if parsed is not None:
            name, version = parsed
            if name != project:
                continue
        elif listing or pkg.version is None:
            continue  # unknown archive type on a mixed listing: cannot tell whose it is
        else:
            try:  # legacy archives (.tar.bz2, .egg, ...) on the project's own page
                version = Version(pkg.version)
            except InvalidVersion:
                continue
        files.append(_File(version, _utc(pkg.upload_time), bool(pkg.is_yanked), pkg.requires_python or None))
    return files


def _file_url_path(url: str) -> Path:
    return Path(url2pathname(urlsplit(url).path))


def merge_files(files: Iterable[_File]) -> list[Release]:
    """One :class:`Release` per version: earliest upload, yanked only if every file is yanked."""
    groups: dict[Version, list[_File]] = {}
    for f in files:
        groups.setdefault(f.version, []).append(f)
    releases = []
    for version, group in groups.items():
        times = [f.upload_time for f in group if f.upload_time is not None]
        live = [f for f in group if not f.yanked] or group
        pythons = Counter(f.requires_python for f in live if f.requires_python)
        releases.append(
            Release(
                version=str(version),
                upload_time=min(times) if times else None,
                yanked=all(f.yanked for f in group),
                requires_python=pythons.most_common(1)[0][0] if pythons else None,
            )
        )
    return order(releases)


# --------------------------------------------------------------------------- the index


class _Retry(Retry):
    """urllib3 retry whose ``Retry-After`` waits are capped (a 429 must not stall a run for hours)."""

    RETRY_AFTER_MAX = 30.0

    def get_retry_after(self, response):  # type: ignore[override]
        value = super().get_retry_after(response)
        return None if value is None else min(value, self.RETRY_AFTER_MAX)


def _release_to_json(r: Release) -> dict:
    return {
        "version": r.version,
        "upload_time": r.upload_time.isoformat() if r.upload_time else None,
        "yanked": r.yanked,
        "requires_python": r.requires_python,
    }


def _release_from_json(d: dict) -> Release:
    t = d.get("upload_time")
    return Release(
        version=str(d["version"]),
        upload_time=_utc(datetime.fromisoformat(t)) if t else None,
        yanked=bool(d.get("yanked", False)),
        requires_python=d.get("requires_python"),
    )


class PackageIndex:
    """Releases of projects from pip's configured sources, with a per-project JSON disk cache.

    - A cache younger than ``ttl`` seconds (and from the same sources) is used without network.
    - ``offline``: the cache is used whatever its age; nothing cached raises :class:`IndexUnavailable`.
    - Network failure: a stale cache is used with a warning; nothing cached raises
      :class:`IndexUnavailable`.

    HTTP goes through one ``requests`` session with retries (backoff on 429/5xx and connection
    errors) and timeouts; TLS verification uses pip's ``cert`` (``PIP_CERT``), else
    ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE``, else certifi.
    """

    def __init__(
        self,
        cache_dir: Path,
        ttl: float = 6 * 3600,
        offline: bool = False,
        *,
        config: IndexConfig | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float | tuple[float, float] | None = None,
        max_workers: int = 4,
        clock: Callable[[], float] = time.time,
    ):
        self.cache_dir = Path(cache_dir)
        self.ttl = float(ttl)
        self.offline = offline
        self._config = config
        self._retries = retries
        self._backoff = backoff
        self._timeout = timeout
        self.max_workers = max(1, max_workers)
        self._clock = clock
        self._session: requests.Session | None = None

    # -- configuration
    @property
    def config(self) -> IndexConfig:
        if self._config is None:
            self._config = pip_config()
        return self._config

    def cache_path(self, project: str) -> Path:
        return self.cache_dir / f"{_normalize(project)}.json"

    # -- public API
    def releases(self, project: str) -> list[Release]:
        """Every release of ``project`` over all configured sources, ascending (PEP 440)."""
        name = _normalize(project)

        def fetch() -> list[Release]:
            found = self._fetch(name)
            if not found:
                log.warning("%s: no releases on any configured source", name)
            return found

        return self._cache().releases(
            self.cache_path(name),
            name,
            fetch,
            errors=(_SourceError,),
            unavailable=lambda reason: IndexUnavailable(project, reason),
            what="package index",
        )

    def releases_many(self, projects: Iterable[str]) -> dict[str, list[Release]]:
        """:meth:`releases` of several projects, fetched in a small thread pool; keyed as given.

        Every project is attempted; the first failure (in the given order) is raised afterwards.
        """
        projects = list(dict.fromkeys(projects))
        if not projects:
            return {}
        if not self.offline:
            self._get_session()  # create it once, before the threads share it
        with ThreadPoolExecutor(max_workers=min(self.max_workers, len(projects)), thread_name_prefix="index") as pool:
            futures = {p: pool.submit(self.releases, p) for p in projects}
        result: dict[str, list[Release]] = {}
        for project, future in futures.items():
            result[project] = future.result()
        return result

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> PackageIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- cache
    def _cache(self) -> ReleaseCache:
        """The TTL cache (:mod:`matrix.releases.cache`) with this index's current settings; a
        cache from other sources is not fresh."""
        return ReleaseCache(
            CACHE_FORMAT,
            "project",
            _release_to_json,
            _release_from_json,
            log,
            ttl=self.ttl,
            offline=self.offline,
            clock=self._clock,
            sources=lambda: self.config.fingerprint(),
            ensure_ascii=True,
        )

    # -- fetching
    def _get_session(self) -> requests.Session:
        if self._session is None:
            retry = _Retry(
                total=self._retries,
                connect=self._retries,
                read=self._retries,
                status=self._retries,
                backoff_factor=self._backoff,
                backoff_max=10,
                status_forcelist=RETRY_STATUSES,
                allowed_methods=frozenset({"GET", "HEAD"}),
                respect_retry_after_header=True,
                raise_on_status=False,
            )
            session = requests.Session()
            adapter = HTTPAdapter(max_retries=retry, pool_connections=8, pool_maxsize=max(10, self.max_workers))
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            session.headers["User-Agent"] = "llmcompat (version discovery)"
            if self.config.client_cert:
                session.cert = self.config.client_cert
            self._session = session
        return self._session

    def _verify(self) -> str | bool:
        """pip's cert wins over REQUESTS_CA_BUNDLE (passed per request: requests would otherwise
        let the environment override the session's setting)."""
        return self.config.cert or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True

    def _timeouts(self) -> tuple[float, float]:
        if isinstance(self._timeout, tuple):
            return self._timeout
        if self._timeout is not None:
            return (min(10.0, self._timeout), self._timeout)
        return (10.0, self.config.timeout or 30.0)

    def _get(self, url: str, accept: str) -> requests.Response | None:
        """GET with retries; None for 404/410 (project absent there)."""
        try:
            response = self._get_session().get(
                url, headers={"Accept": accept}, timeout=self._timeouts(), verify=self._verify()
            )
        except (requests.RequestException, OSError) as exc:  # OSError: e.g. a missing CA bundle file
            raise _SourceError(f"{redact(url)}: {type(exc).__name__}: {exc}") from exc
        if response.status_code in (404, 410):
            return None
        if response.status_code >= 400:
            raise _SourceError(f"{redact(url)}: HTTP {response.status_code} {response.reason}")
        return response

    def _fetch(self, name: str) -> list[Release]:
        files: list[_File] = []
        for index in self.config.indexes:
            files += self._from_index(index, name)
        for location in self.config.find_links:
            files += self._from_find_links(location, name)
        return merge_files(files)

    def _from_index(self, index: str, name: str) -> list[_File]:
        scheme = urlsplit(index).scheme.lower()
        if scheme in ("http", "https"):
            url = index.rstrip("/") + f"/{name}/"
            response = self._get(url, ACCEPT)
            if response is None:
                return []
            try:
                page = pypi_simple.ProjectPage.from_response(response, name)
            except Exception as exc:  # pypi_simple raises several types for bad pages; re-raised as ours
                raise _SourceError(f"{redact(url)}: unparsable project page: {exc}") from exc
            return _files_from_packages(page.packages, name, listing=False)
        if scheme == "file":
            page_path = _file_url_path(index) / name / "index.html"
            try:
                html = page_path.read_bytes()
            except FileNotFoundError:
                return []
            except OSError as exc:
                raise _SourceError(f"{page_path}: {exc}") from exc
            base = "file://" + pathname2url(str(page_path))
            page = pypi_simple.ProjectPage.from_html(name, html, base_url=base)
            return _files_from_packages(page.packages, name, listing=False)
        raise _SourceError(f"{redact(index)}: unsupported index URL scheme {scheme!r}")

    def _from_find_links(self, location: str, name: str) -> list[_File]:
        scheme = urlsplit(location).scheme.lower()
        if scheme in ("http", "https"):
            response = self._get(location, "text/html")
            if response is None:
                return []
            page = pypi_simple.ProjectPage.from_html(name, response.content, base_url=response.url)
            return _files_from_packages(page.packages, name, listing=True)
        path = _file_url_path(location) if scheme == "file" else Path(location).expanduser()
        if path.is_dir():
            found = []
            for filename in sorted(os.listdir(path)):
                parsed = parse_filename(filename)
                if parsed is not None and parsed[0] == name:
                    found.append(_File(parsed[1], None, False, None))
            return found
        if path.is_file():
            if path.suffix.lower() in (".html", ".htm"):
                page = pypi_simple.ProjectPage.from_html(name, path.read_bytes(), base_url=path.as_uri())
                return _files_from_packages(page.packages, name, listing=True)
            parsed = parse_filename(path.name)
            return [_File(parsed[1], None, False, None)] if parsed and parsed[0] == name else []
        log.debug("find-links location %s does not exist", location)
        return []


def _normalize(project: str) -> str:
    if not isinstance(project, str) or not _PROJECT_NAME.match(project):
        raise ValueError(f"not a valid project name: {project!r}")
    return canonicalize_name(project)
