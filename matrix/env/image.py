"""The Docker adapter: a cell's image built once per key, and the probe run inside it.

- :func:`ensure_base` gives the runner's base image: a debootstrap ``minbase`` root filesystem
  with Python, imported and named by a digest of its inputs (nothing can be pulled where no
  registry is reachable), or a reference pinned by digest (a CUDA or engine vendor image).
- :func:`ensure_cell_image` renders the cell's Dockerfile (:mod:`matrix.env.dockerfile`), fills a
  build context (uv, the local wheels of each layer, the build cache's compiled wheels and
  ``llama-server``, the probe, the suites) and builds it with BuildKit, skipped when the image of
  that key exists. The package sources of pip's configuration and the CA bundle of a
  TLS-intercepting proxy reach the build as BuildKit secrets only: never a layer, never the
  history. BuildKit goes through Debian's ``docker`` client (the SDK drives only the legacy
  builder, which has no secrets); everything else goes through the docker SDK.
- :func:`run_probe` runs the probe in a container of that image: no network (servers under test
  listen on loopback inside), GPU device requests on GPU runners, limits on memory, processes
  and time, logs captured, the container removed even when the probe fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import html.parser
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urljoin, urlsplit

from packaging.utils import canonicalize_name, parse_wheel_filename

from matrix import paths, scratch
from matrix.env import dockerfile as dockerfile_mod
from matrix.errors import LlmcompatError

PROBE_SRC = Path(__file__).resolve().parent.parent / "probe"
SUITES_SRC = Path(__file__).resolve().parent.parent / "suites"
IN_IMAGE_PYTHON = "/opt/cell/bin/python"
IO_DIR = "/llmcompat/io"
MODEL_DIR = "/llmcompat/model"
EXPORTS_DIR = "/llmcompat/exports"
LLAMA_SERVER = "/opt/llmcompat/bin/llama-server"
DEBOOTSTRAP_FORMAT = 1
DEFAULT_BASE = "debootstrap:bookworm"
CONTAINER_PATH = "/opt/cell/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ImageError(LlmcompatError):
    """Docker is unreachable, the base cannot be had, or a build failed: ``log`` holds its tail."""

    def __init__(self, message: str, log: str = ""):
        super().__init__(message + (f"\n--- log (tail) ---\n{log[-6000:]}" if log else ""))
        self.log = log


# --------------------------------------------------------------------------- the engine


def client():
    """A docker SDK client for ``DOCKER_HOST`` (or the default socket), checked with a ping."""
    try:
        import docker
    except ImportError:
        raise ImageError("the docker SDK is not installed: pip install docker") from None
    try:
        c = docker.from_env(timeout=600)
        c.ping()
    except Exception as exc:  # noqa: BLE001 - any failure to reach the engine says the same
        raise ImageError(
            f"no Docker engine answers at {os.environ.get('DOCKER_HOST') or 'the default socket'}: {exc}"
        ) from None
    return c


def engine_reason() -> str | None:
    """Why cell images cannot be built here, or None when they can (for tests and the CLI)."""
    try:
        client().close()
    except ImageError as exc:
        return str(exc).splitlines()[0]
    if not docker_cli():
        return "no docker client with BuildKit (Debian's /usr/bin/docker) to build with"
    return None


def docker_cli() -> str | None:
    """The docker client that builds: ``$LLMCOMPAT_DOCKER_CLI``, else Debian's (it matches
    Debian's daemon and has BuildKit built in), else the one on PATH."""
    explicit = os.environ.get("LLMCOMPAT_DOCKER_CLI")
    if explicit:
        return explicit
    return "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else shutil.which("docker")


def exists(c, ref: str) -> bool:
    import docker.errors

    try:
        c.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


# --------------------------------------------------------------------------- base images

BASE_PACKAGES = ("python3", "libgomp1")
"""Python for the cell, and the OpenMP runtime that compiled engines (llama.cpp) link against."""


def base_inputs(suite: str, include: tuple[str, ...] = BASE_PACKAGES) -> dict:
    """What makes a debootstrap base: the image name is their digest (same inputs, same image)."""
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=False).stdout.strip()
    version = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "debootstrap"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "v": DEBOOTSTRAP_FORMAT,
        "suite": suite,
        "variant": "minbase",
        "include": sorted(include),
        "arch": arch,
        "debootstrap": version,
        "mirror": os.environ.get("LLMCOMPAT_DEBIAN_MIRROR", ""),
    }


def base_name(inputs: dict) -> str:
    raw = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return f"llmcompat-base:{inputs['suite']}-{hashlib.sha256(raw.encode()).hexdigest()[:16]}"


def ensure_base(c, base: str = DEFAULT_BASE) -> str:
    """The base image reference for ``base`` (``debootstrap:SUITE`` or a pinned reference)."""
    if base.startswith("debootstrap:"):
        return debootstrap_base(c, base.split(":", 1)[1])
    if not exists(c, base):
        try:
            c.images.pull(base)
        except Exception as exc:  # noqa: BLE001 - no registry, unknown digest: the same message
            raise ImageError(f"base image {base} is not present and cannot be pulled: {exc}") from None
    return base


def debootstrap_base(c, suite: str) -> str:
    """A ``minbase`` Debian with Python 3, imported once per inputs (30 to 90 s, needs root)."""
    inputs = base_inputs(suite)
    name = base_name(inputs)
    if exists(c, name):
        return name
    exe = shutil.which("debootstrap") or (
        "/usr/sbin/debootstrap" if os.access("/usr/sbin/debootstrap", os.X_OK) else None
    )
    if not exe:
        raise ImageError("debootstrap is not installed (apt-get install debootstrap): no base image to build on")
    if os.geteuid() != 0:
        raise ImageError("debootstrap needs root to build the base image")
    work = paths.cache_dir() / "images"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="debootstrap-", dir=work) as tmp:
        rootfs = Path(tmp, "rootfs")
        cmd = [exe, "--variant=minbase", f"--include={','.join(inputs['include'])}", suite, str(rootfs)]
        if inputs["mirror"]:
            cmd.append(inputs["mirror"])
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        if proc.returncode != 0:
            raise ImageError(f"debootstrap {suite} failed ({proc.returncode})", proc.stdout + proc.stderr)
        for sub in ("var/cache/apt", "var/lib/apt/lists", "var/log", "usr/share/doc", "usr/share/man"):
            for child in (rootfs / sub).glob("*"):
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        python = os.readlink(rootfs / "usr/bin/python3") if (rootfs / "usr/bin/python3").is_symlink() else "python3"
        tar = Path(tmp, "rootfs.tar")
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(tar), "."], check=True)
        repo, tag = name.split(":")
        changes = [
            f'LABEL io.llmcompat.base="{json.dumps(inputs, sort_keys=True).replace(chr(34), chr(39))}"',
            f'LABEL io.llmcompat.python="{python}"',
            'CMD ["/usr/bin/python3"]',
        ]
        c.api.import_image_from_file(str(tar), repository=repo, tag=tag, changes=changes)
    if not exists(c, name):
        raise ImageError(f"importing the debootstrap root filesystem as {name} failed")
    return name


# --------------------------------------------------------------------------- package sources


def index_secret(config=None, ca: str | None = None) -> str:
    """Shell lines for the build's install steps: pip's remote indexes and the CA bundle path.

    A secret, not a layer: index URLs may carry credentials, and a changed mirror must not
    change a layer. Local sources (``file://`` indexes, find-links directories) do not exist in
    the build; their wheels of the lock are copied into the build context instead.
    """
    import shlex

    from matrix.releases.index import pip_config

    cfg = config or pip_config()
    remote = [u for u in cfg.indexes if urlsplit(u).scheme in ("http", "https")]
    lines = []
    if remote:
        lines.append(f"export UV_INDEX_URL={shlex.quote(remote[0])}")
        if remote[1:]:
            lines.append(f"export UV_EXTRA_INDEX_URL={shlex.quote(' '.join(remote[1:]))}")
        lines.append("export UV_INDEX_STRATEGY=unsafe-best-match")
    else:
        lines.append("export UV_OFFLINE=1")
    if ca:
        lines.append("export SSL_CERT_FILE=/run/secrets/ca")
    return "".join(f"{line}\n" for line in lines)


def ca_bundle(explicit: str | None = None, config=None) -> str | None:
    """The CA bundle a build trusts: an explicit one (or ``$LLMCOMPAT_BUILD_CA``), else pip's
    ``cert`` (``PIP_CERT``), else ``SSL_CERT_FILE``; None when none is set (public roots only)."""
    from matrix.releases.index import pip_config

    explicit = explicit or os.environ.get("LLMCOMPAT_BUILD_CA")
    for candidate in (explicit, (config or pip_config()).cert, os.environ.get("SSL_CERT_FILE")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def _local_dir(location: str) -> Path | None:
    parts = urlsplit(location)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    return Path(location) if not parts.scheme and location else None


def local_wheels(pins: dict[str, str], config=None) -> dict[str, list[Path]]:
    """Wheels of ``pins`` (name -> version) that pip's configuration offers from local places:
    find-links directories and ``file://`` simple indexes (PEP 503 pages with relative links)."""
    from matrix.releases.index import pip_config

    cfg = config or pip_config()
    wanted = {str(canonicalize_name(n)): v for n, v in pins.items()}
    files: list[Path] = []
    for location in cfg.find_links:
        d = _local_dir(location)
        if d and d.is_dir():
            files += d.glob("*.whl")
    for index in cfg.indexes:
        d = _local_dir(index)
        if not d or not d.is_dir():
            continue
        for name in wanted:
            page = d / name / "index.html"
            if page.is_file():
                links = _Links()
                links.feed(page.read_text(encoding="utf-8", errors="replace"))
                base = page.parent.as_uri() + "/"
                files += [Path(unquote(urlsplit(urljoin(base, h)).path)) for h in links.hrefs]
    out: dict[str, list[Path]] = {}
    for f in files:
        if not f.name.endswith(".whl") or not f.is_file():
            continue
        try:
            name, version, _, _ = parse_wheel_filename(f.name)
        except ValueError:
            continue
        if wanted.get(str(name)) == str(version) and f not in out.setdefault(str(name), []):
            out[str(name)].append(f)
    return {k: v for k, v in out.items() if v}


def dependency_graph(lock_pins: dict[str, str], *, python: str, overrides=(), find_links=()) -> dict[str, set[str]]:
    """Who requires whom among a lock's packages: the resolver run again on the exact pins, with
    its ``# via`` annotations (the pins come back unchanged). Kept per lock: exact pins have one graph."""
    from matrix import atomic

    doc = json.dumps({"pins": sorted(lock_pins.items()), "python": python, "overrides": sorted(overrides)})
    cache = paths.cache_dir() / "images" / "graphs" / f"{hashlib.sha256(doc.encode()).hexdigest()[:32]}.json"
    with contextlib.suppress(OSError, ValueError):
        return {k: set(v) for k, v in json.loads(cache.read_text(encoding="utf-8")).items()}
    graph = _resolve_graph(lock_pins, python=python, overrides=overrides, find_links=find_links)
    cache.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(cache, {k: sorted(v) for k, v in graph.items()})
    return graph


def _resolve_graph(lock_pins: dict[str, str], *, python: str, overrides=(), find_links=()) -> dict[str, set[str]]:
    from matrix.env import uv as envs

    with tempfile.TemporaryDirectory(prefix="llmcompat-graph-", dir=scratch.directory()) as tmp:
        req = Path(tmp, "lock.in")
        req.write_text("".join(f"{n}=={v}\n" for n, v in sorted(lock_pins.items())))
        cmd = [
            envs.uv_bin(),
            "pip",
            "compile",
            str(req),
            "--quiet",
            "--no-header",
            "--python-version",
            python,
            "--python",
            envs.interpreter(python),
            *envs._index_args(),
            *envs._find_links(find_links),
        ]
        if overrides:
            ov = Path(tmp, "overrides.txt")
            ov.write_text("".join(f"{o}\n" for o in overrides))
            cmd += ["--overrides", str(ov)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=envs._uv_env(), check=False)
    if proc.returncode != 0:
        raise ImageError("resolving the lock's dependency graph failed", proc.stderr)
    _, graph = dockerfile_mod.parse_annotated(proc.stdout)
    return graph


# --------------------------------------------------------------------------- build context


def _place(src: Path, dest: Path) -> None:
    """``src`` at ``dest`` (a hard link where possible): unchanged files keep their metadata, so
    BuildKit's context transfer sends only what changed since the last build of this context."""
    if (
        dest.exists()
        and dest.stat().st_size == src.stat().st_size
        and (dest.samefile(src) or dest.read_bytes() == src.read_bytes())
    ):
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


def _put(dest: Path, text: str) -> None:
    if dest.is_file() and dest.read_text(encoding="utf-8") == text:
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text, encoding="utf-8")


def _sync_tree(src: Path, dest: Path, patterns: tuple[str, ...]) -> None:
    keep = set()
    for pattern in patterns:
        for f in src.rglob(pattern):
            if "__pycache__" in f.parts or not f.is_file():
                continue
            rel = f.relative_to(src)
            keep.add(rel)
            _place(f, dest / rel)
    for f in list(dest.rglob("*")) if dest.exists() else []:
        if f.is_file() and f.relative_to(dest) not in keep:
            f.unlink()


@dataclass(frozen=True)
class CellInputs:
    """What a cell's image is made of, as plain data (gathered by :mod:`matrix.cell.run`)."""

    cell_id: str
    key: str
    runner: str
    gpu: bool
    base: str
    """``debootstrap:SUITE`` or an image reference pinned by digest."""
    engine: str
    """The engine component's name (its family picks template extras and vendor image)."""
    vendor_base: str = ""
    """The runner's vendor image for this engine family, when it declares one."""
    python: str = "3.11"
    pins: tuple[tuple[str, str], ...] = ()
    engine_roots: tuple[str, ...] = ()
    """The engine component's packages and fixed requirements (the roots of its layers)."""
    engine_packages: tuple[str, ...] = ()
    """The engine component's own packages (their layer comes after its dependencies')."""
    other_roots: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    built: tuple[tuple[str, str], ...] = ()
    """(package, directory of its wheel built by :mod:`matrix.env.builds`)."""
    llama_server: str = ""
    harness: str = ""
    suite: str = ""


def spec_for(
    inputs: CellInputs, base_ref: str, graph: dict[str, set[str]], local: dict[str, list[Path]], uv_version: str
) -> tuple[dockerfile_mod.ImageSpec, dict[str, list[Path]]]:
    """The image spec of a cell and the wheels each layer's context directory holds."""
    pins = dict(inputs.pins)
    built = dict(inputs.built)
    groups = dockerfile_mod.split_layers(
        pins, graph, set(inputs.engine_roots), set(inputs.other_roots), set(inputs.engine_packages) or None
    )
    layers, wheels = [], {}
    for i, (name, members) in enumerate(groups, 1):
        files = [f for m in members for f in local.get(m, [])]
        files += [f for m in members if m in built for f in sorted(Path(built[m]).glob("*.whl"))]
        directory = f"wheels/{i}" if files else ""
        if files:
            wheels[directory] = files
        only_binary = tuple(sorted(m for m in members if m in built))
        layers.append(dockerfile_mod.Layer(name, tuple(f"{m}=={pins[m]}" for m in members), directory, only_binary))
    family = dockerfile_mod.family_of(inputs.engine)
    family_files = (("bin/llama-server", LLAMA_SERVER),) if inputs.llama_server else ()
    vendor = bool(inputs.gpu and inputs.vendor_base)
    python = inputs.python if inputs.gpu else "/usr/bin/python3"
    lbls = dockerfile_mod.labels(
        inputs.cell_id,
        inputs.key,
        inputs.runner,
        family,
        pins,
        base=inputs.vendor_base or inputs.base,
        python=inputs.python,
        uv=uv_version,
        harness=inputs.harness,
        suite=inputs.suite,
    )
    spec = dockerfile_mod.ImageSpec(
        inputs.cell_id,
        inputs.key,
        inputs.runner,
        family,
        base_ref,
        python,
        inputs.gpu,
        tuple(layers),
        lbls,
        vendor,
        family_files,
    )
    return spec, wheels


def fill_context(ctx: Path, text: str, wheels: dict[str, list[Path]], llama_server: str = "") -> None:
    """The build context: the Dockerfile, uv, each layer's wheels, the probe and the suites."""
    from matrix.env import uv as envs

    ctx.mkdir(parents=True, exist_ok=True)
    _put(ctx / "Dockerfile", text)
    _put(ctx / ".dockerignore", "**/__pycache__\n")
    _place(Path(envs.uv_bin()).resolve(), ctx / "uv")
    wanted = {Path(d) / f.name for d, files in wheels.items() for f in files}
    for d, files in wheels.items():
        for f in files:
            _place(f, ctx / d / f.name)
    for f in (ctx / "wheels").rglob("*.whl") if (ctx / "wheels").exists() else []:
        if f.relative_to(ctx) not in wanted:
            f.unlink()
    if llama_server:
        _place(Path(llama_server), ctx / "bin" / "llama-server")
    _sync_tree(PROBE_SRC, ctx / "probe", ("*.py", "*.mjs", "*.json"))
    _sync_tree(SUITES_SRC, ctx / "suites", ("*.yaml", "*.json"))


# --------------------------------------------------------------------------- build


@dataclass
class Built:
    """A cell image: its tag and id, whether this call built it, and what the build reused."""

    tag: str
    id: str = ""
    built: bool = False
    seconds: float = 0.0
    steps: int = 0
    cached: int = 0
    log: str = ""


def uv_version() -> str:
    from matrix.env import uv as envs

    out = subprocess.run([envs.uv_bin(), "--version"], capture_output=True, text=True, check=False).stdout.split()
    return out[1] if len(out) > 1 else "unknown"


def build(ctx: Path, tag: str, *, ca: str | None, config=None, timeout: float = 3600) -> Built:
    """``docker build`` with BuildKit: host network (installs fetch from pip's remote indexes),
    the index settings and the CA bundle as secrets, the layer cache of earlier builds."""
    cli = docker_cli()
    if not cli:
        raise ImageError("no docker client to build with (apt-get install docker.io)")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="llmcompat-secrets-", dir=scratch.directory()) as secrets:
        index_file = Path(secrets, "index")
        index_file.write_text(index_secret(config, ca))
        ca_file = Path(ca) if ca else Path(secrets, "no-ca")
        if not ca:
            ca_file.write_text("")
        os.chmod(index_file, 0o600)
        cmd = [
            cli,
            "build",
            "--progress",
            "plain",
            "--network",
            "host",
            "--secret",
            f"id=index,src={index_file}",
            "--secret",
            f"id=ca,src={ca_file}",
            "-t",
            tag,
            str(ctx),
        ]
        env = dict(os.environ, DOCKER_BUILDKIT="1", BUILDKIT_PROGRESS="plain")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        except subprocess.TimeoutExpired:
            raise ImageError(f"docker build of {tag} timed out after {timeout:.0f}s") from None
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise ImageError(f"docker build of {tag} failed ({proc.returncode})", log)
    steps, cached = build_steps(log)
    return Built(tag, built=True, seconds=time.perf_counter() - started, steps=steps, cached=cached, log=log)


def build_steps(log: str) -> tuple[int, int]:
    """(layer steps, steps served from the cache) of a BuildKit plain-progress log."""
    steps = {m.group(1) for m in re.finditer(r"^#(\d+) \[(?:stage-\d+ )?\s*\d+/\d+\] (?!FROM)", log, re.MULTILINE)}
    cached = {m.group(1) for m in re.finditer(r"^#(\d+) CACHED$", log, re.MULTILINE)} & steps
    return len(steps), len(cached)


def ensure_cell_image(inputs: CellInputs, *, ca: str | None = None, force: bool = False, c=None) -> Built:
    """The image of a cell key: found by its tag, else rendered, built and tagged."""
    c = c or client()
    tag = dockerfile_mod.image_tag(inputs.key)
    if not force and exists(c, tag):
        return Built(tag, c.images.get(tag).id)
    text, wheels = render_cell(inputs, c)
    ctx = paths.cache_dir() / "images" / "context" / inputs.key[:32]
    fill_context(ctx, text, wheels, inputs.llama_server)
    result = build(ctx, tag, ca=ca_bundle(ca))
    result.id = c.images.get(tag).id
    return result


def render_cell(inputs: CellInputs, c=None) -> tuple[str, dict[str, list[Path]]]:
    """A cell's Dockerfile text and the wheels of its layers (the base is made when ``c`` is given)."""
    base = inputs.vendor_base if inputs.gpu and inputs.vendor_base else inputs.base
    base_ref = (
        ensure_base(c, base)
        if c is not None
        else (base_name(base_inputs(base.split(":", 1)[1])) if base.startswith("debootstrap:") else base)
    )
    pins = dict(inputs.pins)
    graph = dependency_graph(
        pins, python=inputs.python, overrides=inputs.overrides, find_links=[Path(d) for _, d in inputs.built]
    )
    spec, wheels = spec_for(inputs, base_ref, graph, local_wheels(pins), uv_version())
    return dockerfile_mod.render(spec), wheels


# --------------------------------------------------------------------------- run


@dataclass(frozen=True)
class Limits:
    memory: str = "8g"
    pids: int = 4096
    seconds: float = 900.0


def container_job(job: dict) -> tuple[dict, dict[str, dict]]:
    """The probe's job with host paths replaced by their places in the container, and the
    read-only bind mounts that put them there."""
    if job.get("node_modules"):
        raise ImageError("npm components (Node) are not in cell images yet: run this cell with --env uv")
    out = dict(job)
    volumes: dict[str, dict] = {}
    if job.get("model_dir"):
        volumes[str(Path(job["model_dir"]).resolve())] = {"bind": MODEL_DIR, "mode": "ro"}
        out["model_dir"] = MODEL_DIR
    exports = {}
    for name, path in (job.get("exports") or {}).items():
        target = f"{EXPORTS_DIR}/{re.sub(r'[^A-Za-z0-9._-]', '_', name)}"
        volumes[str(Path(path).resolve())] = {"bind": target, "mode": "ro"}
        exports[name] = target
    if "exports" in job:
        out["exports"] = exports
    if job.get("llama_server_bin"):
        out["llama_server_bin"] = LLAMA_SERVER
    return out, volumes


def run_probe(
    tag: str, job: dict, env: dict[str, str], *, gpu: bool = False, limits: Limits = Limits(), c=None
) -> tuple[dict | None, str]:
    """Run the probe in a container of ``tag``; (result, log) as :func:`matrix.cell.run.run_probe`
    gives them. The container has no network and is removed whatever happens."""
    import docker
    import requests

    c = c or client()
    cjob, volumes = container_job(job)
    with tempfile.TemporaryDirectory(prefix="llmcompat-probe-", dir=scratch.directory()) as io:
        Path(io, "job.json").write_text(json.dumps(cjob, ensure_ascii=False), encoding="utf-8")
        os.chmod(io, 0o777)  # the probe may run as another uid inside
        volumes[io] = {"bind": IO_DIR, "mode": "rw"}
        kwargs = {}
        if gpu:
            kwargs["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
        container = c.containers.create(
            tag,
            [IN_IMAGE_PYTHON, "-I", "/opt/llmcompat/probe/probe.py", f"{IO_DIR}/job.json", f"{IO_DIR}/result.json"],
            entrypoint=[],
            environment={"PATH": CONTAINER_PATH, "HOME": "/tmp", **env, "HF_HOME": "/tmp/hf"},
            network_mode="none",
            mem_limit=limits.memory,
            memswap_limit=limits.memory,
            pids_limit=limits.pids,
            user=f"{os.getuid()}:{os.getgid()}",
            volumes=volumes,
            working_dir=IO_DIR,
            labels={"io.llmcompat.probe": "1"},
            **kwargs,
        )
        try:
            container.start()
            try:
                status = container.wait(timeout=limits.seconds)["StatusCode"]
            except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
                container.kill()
                return None, f"probe timed out after {limits.seconds:.0f}s\n{_logs(container)}"
            log = _logs(container)
            if container.attrs and c.api.inspect_container(container.id)["State"].get("OOMKilled"):
                return None, f"probe killed: out of memory (limit {limits.memory})\n{log}"
            out = Path(io, "result.json")
            if status != 0 or not out.is_file():
                return None, f"probe exited {status}\n{log}"
            return json.loads(out.read_text(encoding="utf-8")), log
        finally:
            with contextlib.suppress(Exception):
                container.remove(force=True)


def _logs(container) -> str:
    try:
        return container.logs(stdout=True, stderr=True).decode("utf-8", "replace")[-20000:]
    except Exception as exc:  # noqa: BLE001 - a log we cannot read is said, not raised
        return f"(logs unavailable: {exc})"


# --------------------------------------------------------------------------- inspection


def layer_blobs(tag: str, c=None):
    """Every layer of ``tag`` as a ``tarfile.TarFile`` (``docker save`` → tar → each layer tar),
    with the image's config JSON first (history and labels): for checks of what an image holds."""
    import io
    import tarfile

    c = c or client()
    with tempfile.TemporaryFile() as raw:
        for chunk in c.images.get(tag).save(named=False):
            raw.write(chunk)
        raw.seek(0)
        with tarfile.open(fileobj=raw) as outer:

            def member(name: str) -> IO[bytes]:
                f = outer.extractfile(name)
                if f is None:  # a link or directory where docker save writes a file
                    raise KeyError(f"{name} in the saved image {tag} is not a file")
                return f

            manifest = json.load(member("manifest.json"))[0]
            yield "config", member(manifest["Config"]).read()
            for layer in manifest["Layers"]:
                with tarfile.open(fileobj=io.BytesIO(member(layer).read())) as layer_tar:
                    yield layer, layer_tar
