"""The package-index adapter, over real HTTP against a local server, real files and pip's config."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pypi_simple
import pytest
import requests

import matrix.releases.index as index_mod
from matrix.releases.index import (
    IndexConfig,
    IndexUnavailable,
    PackageIndex,
    clear_pip_config_cache,
    parse_filename,
    pip_config,
    redact,
    tls_env,
    uv_index_args,
)
from matrix.releases.versions import Release

JSON_CT = "application/vnd.pypi.simple.v1+json"
T0 = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
T1 = datetime(2024, 2, 1, 0, 0, 0, tzinfo=UTC)
T2 = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)


# ----------------------------------------------------------------------------- local index server


class _Handler(BaseHTTPRequestHandler):
    server: _IndexServer

    def do_GET(self):  # the name http.server calls
        srv = self.server
        with srv.lock:
            srv.requests.append((self.path, self.headers.get("Accept", "")))
            failing = srv.fail_once.get(self.path, 0) > 0 or srv.always_fail
            if srv.fail_once.get(self.path, 0) > 0:
                srv.fail_once[self.path] -= 1
        if failing:
            self._send(503, b"try again", "text/plain")
            return
        target = srv.root / self.path.split("?")[0].lstrip("/")
        if target.is_dir():
            for name, ctype in (("index.json", JSON_CT), ("index.html", "text/html; charset=utf-8")):
                if (target / name).is_file():
                    self._send(200, (target / name).read_bytes(), ctype)
                    return
        elif target.is_file():
            self._send(200, target.read_bytes(), "text/html; charset=utf-8")
            return
        self._send(404, b"not found", "text/plain")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # keep test output clean
        pass


class _IndexServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.fail_once: dict[str, int] = {}
        self.always_fail = False

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def hits(self, path: str) -> int:
        return sum(1 for p, _ in self.requests if p == path)


def _start(server: _IndexServer):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    srv = _IndexServer(root)
    _start(srv)
    yield srv
    srv.shutdown()
    srv.server_close()


def json_file(filename, upload_time=None, yanked=False, requires_python=None):
    entry = {
        "filename": filename,
        "url": f"../../files/{filename}",
        "hashes": {"sha256": "0" * 64},
        "requires-python": requires_python,
        "yanked": yanked,
        "size": 1,
    }
    if upload_time is not None:
        entry["upload-time"] = upload_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return entry


def write_json_page(root: Path, project: str, files: list[dict]) -> None:
    page_dir = root / "simple" / project
    page_dir.mkdir(parents=True, exist_ok=True)
    parsed = [parse_filename(f["filename"]) for f in files]
    assert all(p is not None for p in parsed), f"not a distribution file name among {files}"
    versions = sorted({p[1].public for p in parsed if p is not None})
    page = {"meta": {"api-version": "1.1"}, "name": project, "versions": versions, "files": files}
    (page_dir / "index.json").write_text(json.dumps(page))


def write_html_page(root: Path, project: str, anchors: list[str]) -> None:
    page_dir = root / project
    page_dir.mkdir(parents=True, exist_ok=True)
    body = "\n".join(anchors)
    (page_dir / "index.html").write_text(f"<!DOCTYPE html><html><body>\n{body}\n</body></html>\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- pip configuration

_PIP_VARS = (
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "PIP_NO_INDEX",
    "PIP_CERT",
    "PIP_CLIENT_CERT",
    "PIP_TIMEOUT",
    "PIP_DEFAULT_TIMEOUT",
)


@pytest.fixture
def pip_env(tmp_path, monkeypatch):
    """An isolated pip configuration: no PIP_* source variables, PIP_CONFIG_FILE -> a temp file.

    Returns ``write(text)`` that writes the config file and forgets the cached configuration.
    """
    for var in _PIP_VARS:
        monkeypatch.delenv(var, raising=False)
    conf = tmp_path / "pip.conf"
    conf.write_text("")
    monkeypatch.setenv("PIP_CONFIG_FILE", str(conf))
    clear_pip_config_cache()

    def write(text: str) -> IndexConfig:
        conf.write_text(text)
        clear_pip_config_cache()
        return pip_config()

    yield write
    clear_pip_config_cache()


def test_pip_config_files_and_environment(pip_env, monkeypatch, tmp_path):
    cfg = pip_env(
        "[global]\n"
        "index-url = http://127.0.0.1:9/simple/\n"
        "extra-index-url =\n    file:///srv/a/simple\n    file:///srv/b/simple\n"
        "find-links = /srv/wheels\n"
        "cert = /srv/ca.pem\n"
        "timeout = 42\n"
    )
    assert cfg.origin == "pip"
    assert cfg.index_url == "http://127.0.0.1:9/simple/"
    assert cfg.extra_index_urls == ("file:///srv/a/simple", "file:///srv/b/simple")
    assert cfg.find_links == ("/srv/wheels",)
    assert cfg.indexes == ("http://127.0.0.1:9/simple/", "file:///srv/a/simple", "file:///srv/b/simple")
    assert cfg.cert == "/srv/ca.pem" and cfg.timeout == 42.0
    assert uv_index_args() == [
        "--index-url",
        "http://127.0.0.1:9/simple/",
        "--extra-index-url",
        "file:///srv/a/simple",
        "--extra-index-url",
        "file:///srv/b/simple",
        "--find-links",
        "/srv/wheels",
        "--index-strategy",
        "unsafe-best-match",
    ]
    assert uv_index_args(index_strategy=None)[-2:] == ["--find-links", "/srv/wheels"]
    assert tls_env() == {"SSL_CERT_FILE": "/srv/ca.pem"}

    # environment variables win over the files, as in pip; the result is cached per process
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///srv/c/simple file:///srv/d/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", "/srv/x /srv/y")
    monkeypatch.setenv("PIP_CERT", "/srv/proxy-ca.pem")
    assert pip_config() is cfg
    clear_pip_config_cache()
    cfg = pip_config()
    assert cfg.extra_index_urls == ("file:///srv/c/simple", "file:///srv/d/simple")
    assert cfg.find_links == ("/srv/x", "/srv/y")
    assert tls_env() == {"SSL_CERT_FILE": "/srv/proxy-ca.pem"}

    monkeypatch.setenv("PIP_NO_INDEX", "1")
    clear_pip_config_cache()
    assert pip_config().indexes == ()
    assert uv_index_args() == ["--no-index", "--find-links", "/srv/x", "--find-links", "/srv/y"]


def test_pip_config_defaults_to_library_endpoint(pip_env, monkeypatch):
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # pip then reads no configuration file at all
    monkeypatch.setenv("SSL_CERT_FILE", "/srv/system-ca.pem")
    clear_pip_config_cache()
    cfg = pip_config()
    assert cfg.index_url == pypi_simple.PYPI_SIMPLE_ENDPOINT
    assert cfg.extra_index_urls == () and cfg.find_links == () and cfg.cert is None
    assert uv_index_args() == ["--index-url", pypi_simple.PYPI_SIMPLE_ENDPOINT, "--index-strategy", "unsafe-best-match"]
    # without pip's cert, uv gets the SSL_CERT_FILE already in the environment
    assert tls_env() == {"SSL_CERT_FILE": "/srv/system-ca.pem"}


def test_pip_config_install_section_and_env_index_url(pip_env, monkeypatch):
    cfg = pip_env("[global]\nindex-url = http://127.0.0.1:9/a/\n[install]\nindex-url = http://127.0.0.1:9/b/\n")
    assert cfg.index_url == "http://127.0.0.1:9/b/"
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/c/")
    clear_pip_config_cache()
    assert pip_config().index_url == "http://127.0.0.1:9/c/"


def test_pip_config_subprocess_fallback(pip_env, monkeypatch):
    def broken():
        raise ImportError("no pip internals here")

    monkeypatch.setattr(index_mod, "_pip_items_in_process", broken)
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "file:///srv/e/simple")
    cfg = pip_env("[global]\nindex-url = http://127.0.0.1:9/simple/\nfind-links = /srv/w1 /srv/w2\n")
    assert cfg.origin == "pip-subprocess"
    assert cfg.index_url == "http://127.0.0.1:9/simple/"
    assert cfg.extra_index_urls == ("file:///srv/e/simple",)
    assert cfg.find_links == ("/srv/w1", "/srv/w2")

    def no_subprocess():
        raise RuntimeError("pip is not installed")

    monkeypatch.setattr(index_mod, "_pip_items_subprocess", no_subprocess)
    clear_pip_config_cache()
    cfg = pip_config()
    assert cfg.origin == "environment"
    assert cfg.extra_index_urls == ("file:///srv/e/simple",)
    assert cfg.index_url == pypi_simple.PYPI_SIMPLE_ENDPOINT


def test_redact_hides_passwords():
    assert redact("https://user:s3cret@127.0.0.1/simple/") == "https://user:***@127.0.0.1/simple/"
    assert redact("https://tok@127.0.0.1/simple/") == "https://***@127.0.0.1/simple/"
    assert redact("file:///opt/x") == "file:///opt/x"
    a = IndexConfig("https://u:one@127.0.0.1/simple/")
    b = IndexConfig("https://u:two@127.0.0.1/simple/")
    assert a.fingerprint() == b.fingerprint() != IndexConfig("https://127.0.0.1/other/").fingerprint()


# ----------------------------------------------------------------------------- sources and merging


@pytest.fixture
def sources(tmp_path, server, pip_env):
    """demo-pkg spread over an http JSON index, a file:// HTML index and a find-links directory."""
    write_json_page(
        server.root,
        "demo-pkg",
        [
            json_file("demo_pkg-1.0.tar.gz", T1, requires_python=">=3.8"),
            json_file("demo_pkg-1.0-py3-none-any.whl", T0, requires_python=">=3.8"),
            json_file("demo_pkg-1.1-py3-none-any.whl", T1, yanked="broken"),
            json_file("demo_pkg-1.1.tar.gz", T1, yanked=True),
            json_file("demo_pkg-1.2-py3-none-any.whl", T2, yanked=True),
            json_file("demo_pkg-1.2.tar.gz", T2),
            json_file("demo_pkg-2.0rc1-py3-none-any.whl", T2, requires_python=">=3.12"),
        ],
    )
    file_index = tmp_path / "file-index" / "simple"
    write_html_page(
        file_index,
        "demo-pkg",
        [
            '<a href="../../files/demo_pkg-1.0-py3-none-any.whl#sha256=00">demo_pkg-1.0-py3-none-any.whl</a>',
            '<a href="../../files/demo_pkg-2.0-py3-none-any.whl" data-requires-python="&gt;=3.9">x</a>',
            '<a href="../../files/demo_pkg-0.1-py3-none-any.whl" data-yanked="">demo_pkg-0.1-py3-none-any.whl</a>',
        ],
    )
    (file_index / "no-page").mkdir()  # a project directory without index.html: missing, not an error
    links = tmp_path / "wheels"
    links.mkdir()
    for name in (
        "demo_pkg-2.1-py3-none-any.whl",
        "Demo.Pkg-2.2.tar.gz",
        "demo_pkg-2.3+cpu-cp311-cp311-linux_x86_64.whl",
        "other_pkg-9.0-py3-none-any.whl",
        "README.txt",
        "demo_pkg-bad.whl",
    ):
        (links / name).write_bytes(b"")
    cfg = pip_env(
        "[global]\n"
        f"index-url = {server.base}/simple/\n"
        f"extra-index-url = {file_index.as_uri()} {(tmp_path / 'nowhere').as_uri()}\n"
        f"find-links = {links} {tmp_path / 'no-such-dir'}\n"
    )
    return cfg


EXPECTED = [
    Release("0.1", None, True, None),
    Release("1.0", T0, False, ">=3.8"),
    Release("1.1", T1, True, None),
    Release("1.2", T2, False, None),
    Release("2.0rc1", T2, False, ">=3.12"),
    Release("2.0", None, False, ">=3.9"),
    Release("2.1", None, False, None),
    Release("2.2", None, False, None),
    Release("2.3+cpu", None, False, None),
]


def test_releases_merge_all_sources(sources, server, tmp_path):
    idx = PackageIndex(tmp_path / "cache")
    got = idx.releases("Demo_Pkg")
    assert got == EXPECTED
    assert all(r.upload_time is None or r.upload_time.tzinfo == UTC for r in got)
    # PEP 691 content negotiation, JSON first; the normalized name in the URL
    ((path, accept),) = server.requests
    assert path == "/simple/demo-pkg/"
    assert accept.startswith(JSON_CT)
    assert (tmp_path / "cache" / "demo-pkg.json").is_file()


def test_project_missing_everywhere_is_empty(sources, server, tmp_path):
    assert PackageIndex(tmp_path / "cache").releases("no-page") == []
    assert server.hits("/simple/no-page/") == 1


def test_html_project_page_over_http(server, pip_env, tmp_path):
    write_html_page(
        server.root / "simple",
        "html-only",
        [
            '<a href="/f/html_only-0.5-py3-none-any.whl" data-requires-python="&gt;=3.7">a</a>',
            '<a href="/f/html_only-0.4.tar.gz" data-yanked="old">b</a>',
        ],
    )
    (server.root / "links.html").write_text(
        '<html><body><a href="f/html_only-0.6-py3-none-any.whl">c</a><a href="f/zzz-1.0.tar.gz">d</a></body></html>'
    )
    pip_env(f"[global]\nindex-url = {server.base}/simple\nfind-links = {server.base}/links.html\n")
    got = PackageIndex(tmp_path / "cache").releases("html-only")
    assert got == [Release("0.4", None, True, None), Release("0.5", None, False, ">=3.7"), Release("0.6")]


def test_retry_after_503(sources, server, tmp_path):
    server.fail_once["/simple/demo-pkg/"] = 1
    got = PackageIndex(tmp_path / "cache", backoff=0.01).releases("demo-pkg")
    assert got == EXPECTED
    assert server.hits("/simple/demo-pkg/") == 2


def test_persistent_5xx_without_cache_is_unavailable(sources, server, tmp_path):
    server.always_fail = True
    with pytest.raises(IndexUnavailable) as info:
        PackageIndex(tmp_path / "cache", retries=2, backoff=0.01).releases("demo-pkg")
    assert info.value.project == "demo-pkg" and "503" in info.value.reason
    assert server.hits("/simple/demo-pkg/") == 3  # the first try and two retries


def test_connection_refused_without_cache_is_unavailable(pip_env, tmp_path):
    pip_env(f"[global]\nindex-url = http://127.0.0.1:{free_port()}/simple/\n")
    with pytest.raises(IndexUnavailable, match="jinja2"):
        PackageIndex(tmp_path / "cache", retries=1, backoff=0.01).releases("jinja2")


def test_invalid_project_name(tmp_path):
    with pytest.raises(ValueError):
        PackageIndex(tmp_path, config=IndexConfig("http://127.0.0.1:9/")).releases("../etc/passwd")


# ----------------------------------------------------------------------------- cache: TTL, offline, stale


class Clock:
    def __init__(self, now: float = 1_700_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_ttl(sources, server, tmp_path):
    clock = Clock()
    idx = PackageIndex(tmp_path / "cache", ttl=3600, clock=clock)
    assert idx.releases("demo-pkg") == EXPECTED
    write_json_page(server.root, "demo-pkg", [json_file("demo_pkg-3.0-py3-none-any.whl", T2)])

    clock.now += 3500  # fresh: no network, even through a new PackageIndex on the same directory
    assert PackageIndex(tmp_path / "cache", ttl=3600, clock=clock).releases("demo-pkg") == EXPECTED
    assert server.hits("/simple/demo-pkg/") == 1

    clock.now += 200  # expired: refetched and rewritten
    got = idx.releases("demo-pkg")
    assert Release("3.0", T2) in got and Release("1.1", T1, True) not in got
    assert server.hits("/simple/demo-pkg/") == 2
    assert json.loads((tmp_path / "cache" / "demo-pkg.json").read_text())["fetched_at"] == clock.now


def test_cache_from_other_sources_is_not_fresh(sources, server, tmp_path):
    PackageIndex(tmp_path / "cache").releases("demo-pkg")
    other = IndexConfig(f"{server.base}/simple/")
    got = PackageIndex(tmp_path / "cache", config=other).releases("demo-pkg")
    assert server.hits("/simple/demo-pkg/") == 2
    assert Release("2.1") not in got  # the find-links directory is not part of `other`


def test_offline(sources, server, tmp_path):
    with pytest.raises(IndexUnavailable) as info:
        PackageIndex(tmp_path / "cache", offline=True).releases("demo-pkg")
    assert info.value.project == "demo-pkg" and "offline" in str(info.value)
    assert server.requests == []

    clock = Clock()
    PackageIndex(tmp_path / "cache", clock=clock).releases("demo-pkg")
    clock.now += 10 * 365 * 86400  # however old the cache, offline mode uses it
    assert PackageIndex(tmp_path / "cache", offline=True, clock=clock).releases("demo-pkg") == EXPECTED
    assert server.hits("/simple/demo-pkg/") == 1


def test_stale_cache_on_network_failure(sources, server, tmp_path, caplog):
    clock = Clock()
    idx = PackageIndex(tmp_path / "cache", ttl=60, retries=1, backoff=0.01, clock=clock)
    assert idx.releases("demo-pkg") == EXPECTED
    clock.now += 3600
    server.always_fail = True
    with caplog.at_level(logging.WARNING, logger="matrix.releases.index"):
        assert idx.releases("demo-pkg") == EXPECTED
    assert any("using cached releases" in r.getMessage() for r in caplog.records)

    # the server gone entirely: connection errors, same fallback
    server.shutdown()
    server.server_close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="matrix.releases.index"):
        assert idx.releases("demo-pkg") == EXPECTED
    assert any("demo-pkg" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- cache: atomic writes


def _leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.endswith(".tmp"))


def test_cache_write_is_atomic(sources, server, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    clock = Clock()
    idx = PackageIndex(cache, ttl=60, clock=clock)
    idx.releases("demo-pkg")
    path = cache / "demo-pkg.json"
    before = path.read_bytes()
    data = json.loads(before)
    assert data["project"] == "demo-pkg" and data["fetched_at"] == clock.now and len(data["releases"]) == len(EXPECTED)
    assert _leftovers(cache) == []

    # a run killed in the middle of writing: the old file stays whole, no temp file is left
    import matrix.atomic as atomic_mod

    def die_before_sync(fd):
        raise KeyboardInterrupt  # the new bytes are written to the temporary file, not yet in place

    monkeypatch.setattr(atomic_mod.os, "fsync", die_before_sync)
    clock.now += 120
    with pytest.raises(KeyboardInterrupt):
        idx.releases("demo-pkg")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert _leftovers(cache) == []

    # a failing rename (full disk, read-only directory) is a warning, the releases still come back
    def no_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(index_mod.os, "replace", no_replace)
    assert idx.releases("demo-pkg") == EXPECTED
    assert path.read_bytes() == before and _leftovers(cache) == []


def test_corrupt_cache_is_ignored(sources, server, tmp_path, caplog):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "demo-pkg.json").write_text('{"format": 1, "project": "demo-pkg", "releases": [')
    with caplog.at_level(logging.WARNING, logger="matrix.releases.index"):
        assert PackageIndex(cache).releases("demo-pkg") == EXPECTED
    assert any("unreadable cache" in r.getMessage() for r in caplog.records)
    assert json.loads((cache / "demo-pkg.json").read_text())["project"] == "demo-pkg"


# ----------------------------------------------------------------------------- concurrency


def test_releases_many(sources, server, tmp_path):
    for i in range(6):
        write_json_page(server.root, f"pkg{i}", [json_file(f"pkg{i}-1.{i}-py3-none-any.whl", T0)])
    idx = PackageIndex(tmp_path / "cache", max_workers=4)
    names = [f"pkg{i}" for i in range(6)] + ["Demo.Pkg"]
    got = idx.releases_many(names)
    assert list(got) == names
    assert got["Demo.Pkg"] == EXPECTED
    assert all(got[f"pkg{i}"] == [Release(f"1.{i}", T0)] for i in range(6))
    assert len(list((tmp_path / "cache").glob("*.json"))) == 7

    server.always_fail = True
    fresh = PackageIndex(tmp_path / "other-cache", retries=0)
    with pytest.raises(IndexUnavailable):
        fresh.releases_many(["pkg0", "pkg1"])


# ----------------------------------------------------------------------------- TLS


@pytest.fixture
def tls_server(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl command not available to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    root = tmp_path / "tls-www"
    root.mkdir()
    srv = _IndexServer(root)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    _start(srv)
    yield srv, cert
    srv.shutdown()
    srv.server_close()


def test_tls_uses_pip_cert(tls_server, pip_env, monkeypatch, tmp_path):
    srv, cert = tls_server
    write_json_page(srv.root, "tls-pkg", [json_file("tls_pkg-1.0-py3-none-any.whl", T0)])
    system_bundle = requests.certs.where()  # a real bundle that does not hold the test CA
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no file sets a cert: only the variables below
    monkeypatch.setenv("PIP_INDEX_URL", f"https://127.0.0.1:{srv.server_address[1]}/simple/")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    clear_pip_config_cache()
    with pytest.raises(IndexUnavailable, match="SSL"):  # self-signed: not trusted by default
        PackageIndex(tmp_path / "c1", retries=0).releases("tls-pkg")

    # PIP_CERT wins over a REQUESTS_CA_BUNDLE that would not verify
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", system_bundle)
    monkeypatch.setenv("PIP_CERT", str(cert))
    clear_pip_config_cache()
    assert PackageIndex(tmp_path / "c2", retries=0).releases("tls-pkg") == [Release("1.0", T0)]
    assert tls_env()["SSL_CERT_FILE"] == str(cert)

    # REQUESTS_CA_BUNDLE alone is honoured too
    monkeypatch.delenv("PIP_CERT")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    clear_pip_config_cache()
    assert PackageIndex(tmp_path / "c3", retries=0).releases("tls-pkg") == [Release("1.0", T0)]


# ----------------------------------------------------------------------------- the real index


@pytest.mark.network
def test_real_configured_index_jinja2(tmp_path):
    clear_pip_config_cache()
    try:
        idx = PackageIndex(tmp_path / "cache", retries=1)
        try:
            releases = idx.releases("jinja2")
        except IndexUnavailable as exc:
            pytest.skip(f"the configured package index cannot be reached: {exc.reason}")
    finally:
        clear_pip_config_cache()
    by_version = {r.version: r for r in releases}
    assert "3.1.6" in by_version, f"jinja2 3.1.6 missing from {idx.config.indexes}"
    if all(r.upload_time is None for r in releases):
        pytest.skip("the configured index serves no upload times (no PEP 691/700 JSON API)")
    assert by_version["3.1.6"].upload_time.date() == datetime(2025, 3, 5).date()
    assert not by_version["3.1.6"].yanked
