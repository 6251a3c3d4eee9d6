"""The uv adapter against the real package index: locks, unresolvable cells, envs by digest."""

import subprocess

import pytest

from matrix.env import uv as envs


@pytest.fixture(scope="module")
def lock():
    got = envs.resolve(["jinja2==3.1.5"], python="3.11")
    assert isinstance(got, envs.Lock)
    return got


def test_resolve_gives_exact_pins_of_the_whole_graph(lock):
    assert lock.version("jinja2") == "3.1.5"
    assert lock.version("MarkupSafe") is not None  # a transitive dependency is pinned too
    assert lock.text.splitlines() == sorted(lock.text.splitlines())


def test_unsatisfiable_versions_are_unresolvable_with_the_resolvers_reason():
    got = envs.resolve(["jinja2==3.1.5", "markupsafe<1"], python="3.11")
    assert isinstance(got, envs.Unresolvable)
    assert "markupsafe" in got.reason.lower()
    assert got.requirements == ("jinja2==3.1.5", "markupsafe<1")


def test_cpu_override_keeps_torch_on_the_cpu_build():
    got = envs.resolve(["torch"], python="3.11", overrides=["torch==2.13.0+cpu"])
    if isinstance(got, envs.Unresolvable):
        pytest.skip(f"the configured index has no CPU torch build: {got.reason.splitlines()[0]}")
    assert got.version("torch") == "2.13.0+cpu"
    assert not any(name.startswith("nvidia-") for name, _ in got.pins)


def test_environment_is_built_once_per_lock(lock, tmp_path):
    first = envs.ensure(lock, root=tmp_path)
    assert first.created and (first.path / envs.MARKER).is_file()
    out = subprocess.run(
        [str(first.python), "-c", "import jinja2; print(jinja2.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "3.1.5"
    again = envs.ensure(lock, root=tmp_path)
    assert not again.created and again.path == first.path
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temporary left behind


def test_failed_build_leaves_nothing(tmp_path):
    bogus = envs.Lock((("jinja2", "0.0.0.0.1"),), "3.11")
    with pytest.raises(envs.ResolveError):
        envs.ensure(bogus, root=tmp_path)
    assert list(tmp_path.iterdir()) == []
