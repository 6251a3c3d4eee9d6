"""Every engine that needs a model export gets one on a fresh machine: each version the matrix
plans for it, exported from an empty export cache with the files its runtime loads."""

from pathlib import Path

import pytest

from tests.conftest import or_skip

ENGINES = ("openvino-genai", "onnxruntime-genai")


def _planned_versions(engine: str) -> list[str]:
    from matrix.app.job import Options, discover, load_matrix, package_index

    matrix = load_matrix(Options())
    versions, _ = discover(matrix, {("engine", engine)}, package_index(False))
    return list(versions[("engine", engine)])


@pytest.mark.parametrize("engine", ENGINES)
def test_each_planned_version_exports_the_tiny_model_from_an_empty_cache(engine, model, tmp_path):
    from matrix.env import model_exports

    try:
        versions = _planned_versions(engine)
    except Exception as exc:  # noqa: BLE001 - the index is the only way to know the versions
        pytest.skip(f"no package index: {exc}")
    ex = model_exports.exporter(engine)
    for version in versions:
        root = tmp_path / version  # empty: nothing of an earlier export can be reused
        built = or_skip(model_exports.ensure_export, model.path, engine, version, root=root)
        assert built.created and Path(built.path).parent == root
        missing = [name for name in ex.expect if not (Path(built.path) / name).is_file()]
        assert not missing, f"{engine} {version}: the export lacks {missing}"
        if engine == "openvino-genai":  # the tokenizer IR's ops load only into their own openvino
            release = ".".join(version.split(".")[:3])
            assert built.pins["openvino"] == release and built.pins["openvino-tokenizers"] == version
