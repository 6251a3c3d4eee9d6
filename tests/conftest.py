"""Test-wide settings: hypothesis without wall-clock deadlines (a loaded 2-core CI machine
must not turn slowness into failures); in CI, derandomized so a run is reproducible."""

import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("default", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "default")


LLAMA_CPP = "0.2.90"
"""The llama-cpp-python release the engine tests compile (about 1 to 5 minutes on 2 cores, once)."""


def llama_env(*requirements: str, overrides=("torch==2.13.0+cpu",)):
    """A uv environment with llama-cpp-python[server] from the wheel :mod:`matrix.env.builds` made
    once per version and flags, plus ``requirements``: the way a cell gets it, never recompiled."""
    from matrix.env import builds
    from matrix.env import uv as envs

    wheel_dir = or_skip(builds.wheel, "llama-cpp-python", LLAMA_CPP)
    lock = envs.resolve(
        [f"llama-cpp-python[server]=={LLAMA_CPP}", *requirements],
        python="3.11",
        overrides=list(overrides),
        find_links=[wheel_dir],
    )
    if isinstance(lock, envs.Unresolvable):
        pytest.skip(f"cannot resolve llama-cpp-python with {requirements}: {lock.reason.splitlines()[0]}")
    return envs.ensure(lock, built={"llama-cpp-python": wheel_dir}).python


def _gpu_reason() -> str | None:
    """Why GPU tests cannot run here, or None when an NVIDIA GPU answers."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no NVIDIA GPU on this machine (nvidia-smi not found)"
    probe = subprocess.run([smi, "-L"], capture_output=True, text=True)
    return (
        None if probe.returncode == 0 and "GPU" in probe.stdout else f"nvidia-smi found no GPU: {probe.stderr.strip()}"
    )


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip cleanly, with the reason, where no GPU is present."""
    gpu_items = [i for i in items if i.get_closest_marker("gpu")]
    reason = _gpu_reason() if gpu_items else None
    for item in gpu_items if reason else ():
        item.add_marker(pytest.mark.skip(reason=f"GPU test skipped: {reason}"))


def probe_result(python, job: dict, timeout: float = 600) -> dict:
    """The probe run exactly as a cell runs it (``matrix.cell.run.run_probe``); its result."""
    from matrix.cell.run import run_probe

    result, log = run_probe(python, job, timeout=timeout)
    assert result is not None, log[-3000:]
    return result


def golden_job(model, case_ids) -> tuple[list[dict], dict]:
    """(the core suite's ``case_ids`` cases, the reference path's golden-mode job for them):
    template and tokenize make the prompt (ids and text), transformers (float32, CPU, greedy) the
    16 generated tokens with their top-5."""
    from matrix import suites

    cases = [c for c in suites.load("core").cases if c["id"] in case_ids]
    job = {
        "mode": "golden",
        "model_dir": str(model.path),
        "stages": ["template", "tokenize", "inference"],
        "renderers": ["jinja2"],
        "tokenizers": ["tokenizers"],
        "golden_renderer": "jinja2",
        "golden_tokenizer": "tokenizers",
        "cases": [dict(c, expect={}) for c in cases],
        "limits": {"render_seconds": 10},
        "gen_cases": [{"id": i} for i in case_ids],
        "reference_engine": "transformers",
    }
    return cases, job


def fresh_goldens(model, reference_python, case_ids) -> list[dict]:
    """The reference path in golden mode on ``case_ids`` (:func:`golden_job`); the cases come
    back with these goldens as their ``expect``."""
    cases, job = golden_job(model, case_ids)
    result = probe_result(reference_python, job, timeout=1500)
    assert result["stages"]["inference"]["outcome"] == "pass", result["records"]
    return [dict(c, expect=result["produced"][c["id"]]) for c in cases]


def or_skip(fn, *args, **kwargs):
    """``fn(...)``, or a skip with the reason when the package index cannot be reached (uv
    cannot resolve, or a build cannot fetch its source distribution)."""
    from matrix.env import builds
    from matrix.env import uv as envs

    try:
        return fn(*args, **kwargs)
    except envs.ResolveError as exc:
        pytest.skip(f"no package index: {str(exc).splitlines()[0] if str(exc) else exc!r}")
    except builds.BuildError as exc:
        if "no source distribution" in str(exc) or "downloading" in str(exc):
            pytest.skip(f"no package index: {str(exc).splitlines()[0]}")
        raise


@pytest.fixture(scope="session")
def model():
    """The tiny model with every part (tokenizer, weights, GGUF): the one the goldens are for."""
    from matrix import tinymodel
    from matrix.app.job import MODEL_PARTS
    from matrix.declare import loader

    return or_skip(tinymodel.ensure, arch="qwen2", parts=MODEL_PARTS, reference=loader.load_default().reference)


@pytest.fixture(scope="session")
def reference_python(model):
    """An environment with the reference pins (jinja2, transformers, tokenizers) and CPU torch."""
    from matrix.declare import loader
    from matrix.env import uv as envs

    ref = loader.load_default().reference
    pins = [f"{n}=={ref[n]}" for n in ("transformers", "tokenizers", "jinja2")] + ["torch==2.13.0+cpu"]
    lock = or_skip(envs.resolve, pins, python="3.11", overrides=["torch==2.13.0+cpu"])
    return or_skip(envs.ensure, lock).python
