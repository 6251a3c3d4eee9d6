"""The npm adapter: release discovery and per-version installs of npm packages (run by Node).

Where to look comes from npm's own configuration (``npm config``, ``.npmrc``, ``npm_config_*``),
never from a host written here. TLS: Node verifies against its bundled CAs plus
``NODE_EXTRA_CA_CERTS``; when that is unset, the CA bundle the machine gives pip / OpenSSL
(``PIP_CERT``, ``SSL_CERT_FILE``, ``REQUESTS_CA_BUNDLE``, ``CURL_CA_BUNDLE``) is handed to npm
as ``NODE_EXTRA_CA_CERTS``, so it works behind TLS-intercepting proxies.

- :func:`releases`: every published version with its upload time, from
  ``npm view PKG time versions --json``; cached per package in one JSON file (atomic writes)
  with a TTL; ``offline`` uses the cache whatever its age; a failing registry falls back to a
  stale cache with a warning; nothing cached raises :class:`NpmUnavailable`.
- :func:`ensure_package`: installs exactly one version once into
  ``CACHE/npm/<safe-name>@<version>`` (a temporary directory renamed into place under a file
  lock: never installed twice, never half-installed) and returns the directory that holds
  ``node_modules``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from matrix import atomic
from matrix.errors import LlmcompatError
from matrix.releases.cache import ReleaseCache
from matrix.releases.versions import Release, order

log = logging.getLogger(__name__)

__all__ = [
    "CACHE_FORMAT",
    "MARKER",
    "NpmError",
    "NpmUnavailable",
    "NpmInstallError",
    "releases",
    "ensure_package",
    "installed",
    "node_modules",
    "package_dir",
    "safe_name",
    "npm_env",
    "validate_name",
    "validate_version",
]

CACHE_FORMAT = 1
"""Version of the releases cache layout; files of another format are ignored (refetched)."""

MARKER = "llmcompat-npm.json"
"""Written into an install directory last, before it is renamed into place."""

VIEW_TIMEOUT = 120
INSTALL_TIMEOUT = 600
CA_SOURCES = ("PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")

# npm names: lower case, URL-safe, optionally scoped (``@scope/name``), at most 214 characters.
_NAME = re.compile(r"^(?:@([a-z0-9][a-z0-9._~-]*)/)?([a-z0-9][a-z0-9._~-]*)$")
# an exact semver version (no ranges, no tags)
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
_META_KEYS = frozenset({"created", "modified"})


class NpmError(LlmcompatError):
    """npm could not do what was asked (base class)."""


class NpmUnavailable(NpmError):
    """No releases can be had for ``package``: npm failed (or offline) and nothing is cached."""

    def __init__(self, package: str, reason: str):
        self.package = package
        self.reason = reason
        super().__init__(f"npm registry unavailable for {package!r}: {reason}")


class NpmInstallError(NpmError):
    """``npm install`` of one exact version failed; ``reason`` ends with npm's own words."""

    def __init__(self, package: str, version: str, reason: str):
        self.package = package
        self.version = version
        self.reason = reason
        super().__init__(f"npm install {package}@{version} failed: {reason}")


# --------------------------------------------------------------------------- names and paths


def validate_name(package: str) -> str:
    if not isinstance(package, str) or len(package) > 214 or not _NAME.match(package):
        raise ValueError(f"not a valid npm package name: {package!r}")
    return package


def validate_version(version: str) -> str:
    if not isinstance(version, str) or not _SEMVER.match(version):
        raise ValueError(f"not an exact npm (semver) version: {version!r}")
    return version


def safe_name(package: str) -> str:
    """A file-name-safe, unambiguous form: ``@scope/name`` -> ``scope+name`` (``+`` is not valid in npm names)."""
    m = _NAME.match(validate_name(package))
    assert m is not None
    return f"{m[1]}+{m[2]}" if m[1] else m[2]


def package_dir(prefix: Path, package: str) -> Path:
    """The installed package's own directory under an install prefix."""
    return Path(prefix, "node_modules", *package.split("/"))


def node_modules(prefix: Path) -> Path:
    return Path(prefix, "node_modules")


def _install_root(cache_dir: Path) -> Path:
    return Path(cache_dir) / "npm"


def _install_dir(cache_dir: Path, package: str, version: str) -> Path:
    return _install_root(cache_dir) / f"{safe_name(package)}@{validate_version(version)}"


# --------------------------------------------------------------------------- running npm


def npm_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment npm runs in: the caller's, with the machine's CA bundle for Node.

    ``NODE_EXTRA_CA_CERTS`` is kept when set; otherwise the first existing file named by
    :data:`CA_SOURCES` is used. Update checks, funding and audit messages are turned off.
    """
    env = dict(os.environ if base is None else base)
    if not env.get("NODE_EXTRA_CA_CERTS"):
        for var in CA_SOURCES:
            path = env.get(var)
            if path and os.path.isfile(path):
                env["NODE_EXTRA_CA_CERTS"] = path
                break
    env.setdefault("npm_config_update_notifier", "false")
    env.setdefault("npm_config_fund", "false")
    env.setdefault("npm_config_audit", "false")
    return env


def _npm() -> str:
    found = shutil.which("npm")
    if not found:
        raise NpmError("npm is not installed (install Node.js, which brings npm)")
    return found


def _tail(text: str, n: int = 2000) -> str:
    # drop npm's chatter about unknown user config keys; keep the rest
    lines = [ln for ln in (text or "").splitlines() if "Unknown user config" not in ln]
    return "\n".join(lines).strip()[-n:]


# --------------------------------------------------------------------------- releases


def _utc(text: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def parse_view(data: dict) -> list[Release]:
    """Releases from the JSON of ``npm view PKG time versions --json``.

    ``time`` maps each version (and ``created`` / ``modified``) to an ISO time; versions that are
    in ``time`` but not in ``versions`` were unpublished and are left out. Ascending (PEP 440;
    versions PEP 440 cannot read are dropped), the published strings kept.
    """
    times = data.get("time") or {}
    if not isinstance(times, dict):
        raise ValueError("'time' is not a mapping")
    listed = data.get("versions")
    if isinstance(listed, str):  # a package with a single version
        listed = [listed]
    live = set(listed) if isinstance(listed, list) else None
    out = []
    for version, when in times.items():
        if version in _META_KEYS or (live is not None and version not in live):
            continue
        out.append(Release(version=version, upload_time=_utc(when) if isinstance(when, str) else None))
    if live is not None:  # listed but without a time (should not happen): still a release
        out += [Release(version=v) for v in live if v not in times]
    return order(out)


def _view(package: str) -> list[Release]:
    try:
        proc = subprocess.run(
            [_npm(), "view", package, "time", "versions", "--json"],
            capture_output=True,
            text=True,
            timeout=VIEW_TIMEOUT,
            env=npm_env(),
        )
    except subprocess.TimeoutExpired:
        raise _ViewFailed(f"npm view timed out after {VIEW_TIMEOUT}s") from None
    except OSError as exc:
        raise _ViewFailed(f"cannot run npm: {exc}") from exc
    try:
        data = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except ValueError:
        data = {}
    if proc.returncode != 0:
        error = data.get("error", {}) if isinstance(data, dict) else {}
        if isinstance(error, dict) and error.get("code") == "E404":
            log.warning("%s: not found on the configured npm registry", package)
            return []
        summary = error.get("summary") if isinstance(error, dict) else None
        raise _ViewFailed(f"npm view exited {proc.returncode}: {summary or _tail(proc.stderr)}")
    if not isinstance(data, dict):
        raise _ViewFailed(f"unexpected output of npm view: {proc.stdout[:200]!r}")
    try:
        return parse_view(data)
    except ValueError as exc:
        raise _ViewFailed(f"unexpected output of npm view: {exc}") from exc


class _ViewFailed(Exception):
    pass


def _cache_path(cache_dir: Path, package: str) -> Path:
    return _install_root(cache_dir) / "releases" / f"{safe_name(package)}.json"


def _release_from_json(r: dict) -> Release:
    return Release(version=str(r["version"]), upload_time=_utc(r["upload_time"]) if r.get("upload_time") else None)


def _release_to_json(r: Release) -> dict:
    return {"version": r.version, "upload_time": r.upload_time.isoformat() if r.upload_time else None}


def releases(
    package: str,
    cache_dir: str | Path,
    ttl: float = 6 * 3600,
    offline: bool = False,
    *,
    clock=time.time,
) -> list[Release]:
    """Every published version of ``package`` with its upload time, ascending (PEP 440).

    Cached in ``CACHE/npm/releases/<safe-name>.json``: a cache younger than ``ttl`` seconds is
    used without running npm; ``offline`` uses the cache whatever its age; when npm fails a stale
    cache is used with a warning. Nothing usable raises :class:`NpmUnavailable`. A package the
    registry does not know has no releases (``[]``, with a warning).
    """
    validate_name(package)
    cache = ReleaseCache(
        CACHE_FORMAT, "package", _release_to_json, _release_from_json, log, ttl=ttl, offline=offline, clock=clock
    )
    return cache.releases(
        _cache_path(Path(cache_dir), package),
        package,
        lambda: _view(package),
        errors=(_ViewFailed, NpmError),
        unavailable=lambda reason: NpmUnavailable(package, reason),
        what="npm view",
    )


# --------------------------------------------------------------------------- installs


def installed(prefix: Path, package: str, version: str) -> bool:
    """Whether ``prefix`` is a finished install of exactly ``package@version``."""
    try:
        marker = json.loads(Path(prefix, MARKER).read_text(encoding="utf-8"))
        pkg = json.loads(package_dir(prefix, package).joinpath("package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("package") == package
        and marker.get("version") == version
        and isinstance(pkg, dict)
        and pkg.get("version") == version
    )


def _tool_version(cmd: list[str]) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=npm_env())
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def ensure_package(package: str, version: str, cache_dir: str | Path) -> Path:
    """Install exactly ``package@version`` once; return the directory holding its ``node_modules``.

    ``npm install --no-save --ignore-scripts --no-audit --no-fund --prefix TMP package@version``
    into a temporary directory beside the target, checked (the installed ``package.json`` names
    that version), marked with :data:`MARKER` and renamed to ``CACHE/npm/<safe-name>@<version>``.
    A per-version file lock makes concurrent callers wait for one install instead of doing two.
    Raises :class:`NpmInstallError` (npm failed; nothing is left behind) or :class:`NpmError`.
    """
    validate_name(package)
    validate_version(version)
    final = _install_dir(Path(cache_dir), package, version)

    def install(tmp: Path) -> dict:
        started = time.monotonic()
        try:
            proc = subprocess.run(
                [
                    _npm(),
                    "install",
                    "--no-save",
                    "--ignore-scripts",
                    "--no-audit",
                    "--no-fund",
                    "--no-package-lock",
                    "--prefix",
                    str(tmp),
                    f"{package}@{version}",
                ],
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT,
                env=npm_env(),
                cwd=tmp,
            )
        except subprocess.TimeoutExpired:
            raise NpmInstallError(package, version, f"timed out after {INSTALL_TIMEOUT}s") from None
        except OSError as exc:
            raise NpmInstallError(package, version, f"cannot run npm: {exc}") from exc
        seconds = time.monotonic() - started
        if proc.returncode != 0:
            raise NpmInstallError(package, version, f"npm exited {proc.returncode}: {_tail(proc.stderr + proc.stdout)}")
        try:
            got = json.loads(package_dir(tmp, package).joinpath("package.json").read_text(encoding="utf-8"))["version"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise NpmInstallError(package, version, f"installed package.json unreadable: {exc}") from None
        if got != version:
            raise NpmInstallError(package, version, f"npm installed version {got!r}")
        log.info("installed %s@%s in %.1f s into %s", package, version, seconds, final)
        return {
            "package": package,
            "version": version,
            "installed": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(seconds, 3),
            "node": _tool_version(["node", "--version"]),
            "npm": _tool_version([_npm(), "--version"]),
        }

    atomic.build_once(
        final,
        install,
        marker=MARKER,
        done=lambda p: installed(p, package, version),
        lock_path=final.parent / ".locks" / f"{final.name}.lock",
    )
    return final
