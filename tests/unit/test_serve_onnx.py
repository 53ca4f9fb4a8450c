"""Served ONNX models: 'onnx:<path>' loaders read only .onnx files under allowed_model_dirs (config and actor)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from onnx_export import export_zoo
from pydantic import ValidationError

from eclip_ray.actor import GpuWorker, ServedModel, TensorInfo
from eclip_ray.actor.loader import is_import_path, zoo_entry
from eclip_ray.serve import AppConfig

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx2torch")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """(allowed dir holding tiny-cnn.onnx, a dir outside it holding another copy)."""
    allowed, outside = tmp_path_factory.mktemp("allowed"), tmp_path_factory.mktemp("outside")
    export_zoo("tiny-cnn", allowed / "tiny-cnn.onnx")
    (outside / "tiny-cnn.onnx").write_bytes((allowed / "tiny-cnn.onnx").read_bytes())
    return allowed, outside


def _app(loader: str, allowed_dirs: list, **model) -> dict:
    return {"models": [{"name": "m", "loader": loader, **model}], "allowed_model_dirs": [str(d) for d in allowed_dirs]}


def test_an_onnx_loader_under_an_allowed_dir_gets_its_inputs_from_the_graph(dirs):
    allowed, _ = dirs
    cfg = AppConfig.model_validate(_app(f"onnx:{allowed / 'tiny-cnn.onnx'}", [allowed])).resolved()
    assert [t.model_dump() for t in cfg.model("m").inputs] == [
        {"name": "input", "datatype": "FP32", "shape": (3, 32, 32), "value_range": None}
    ]
    assert not is_import_path(cfg.model("m").loader_name)


def test_allowed_model_dirs_is_empty_by_default(dirs):
    allowed, _ = dirs
    assert AppConfig.model_validate({"models": [{"name": "tiny-cnn"}]}).allowed_model_dirs == []
    with pytest.raises(ValidationError, match="allowed_dirs is empty"):
        AppConfig.model_validate(_app(f"onnx:{allowed / 'tiny-cnn.onnx'}", []))


def _symlink_escape(allowed, outside):
    link = allowed / "escape.onnx"
    if not link.exists():
        link.symlink_to(outside / "tiny-cnn.onnx")
    return link


def _wrong_suffix(allowed, outside):
    path = allowed / "tiny-cnn.txt"
    path.write_bytes((allowed / "tiny-cnn.onnx").read_bytes())
    return path


BAD = {  # id: (path in or out of the allowed dir, words of the error)
    "outside dir": (lambda a, o: o / "tiny-cnn.onnx", "outside the allowed directories"),
    "dot-dot escape": (lambda a, o: a / ".." / o.name / "tiny-cnn.onnx", "outside the allowed directories"),
    "symlink escape": (_symlink_escape, "outside the allowed directories"),
    "wrong suffix": (_wrong_suffix, "is not an .onnx file"),
    "missing file": (lambda a, o: a / "none.onnx", "is not an .onnx file"),
}


@pytest.mark.parametrize(("where", "words"), BAD.values(), ids=BAD)
def test_onnx_loaders_outside_the_allowed_dirs_are_config_errors(dirs, where, words):
    allowed, outside = dirs
    loader = f"onnx:{where(allowed, outside)}"
    with pytest.raises(ValidationError, match=words) as e:
        AppConfig.model_validate(_app(loader, [allowed]))
    assert "allowed_model_dirs" in str(e.value)
    # checked again in the actor, so that a config that skipped validation cannot read other files
    served = ServedModel("m", loader, (1,), (TensorInfo("input", "FP32", (3, 32, 32)),))
    with pytest.raises(ValueError, match=words):
        zoo_entry(served, allowed_model_dirs=[str(allowed)])


def test_an_empty_onnx_path_is_a_config_error(dirs):
    with pytest.raises(ValidationError, match="give the model file"):
        AppConfig.model_validate(_app("onnx:", [dirs[0]]))


def test_a_fixed_batch_export_is_refused_with_the_reason(dirs):
    allowed, _ = dirs
    path = export_zoo("tiny-cnn", allowed / "fixed.onnx", dynamic=False)
    with pytest.raises(ValueError, match="exactly 2 rows; export it with a dynamic batch dimension"):
        AppConfig.model_validate(_app(f"onnx:{path}", [allowed])).resolved()


def test_the_actor_serves_an_onnx_model_as_onnxruntime_does(dirs):
    allowed, outside = dirs
    cfg = AppConfig.model_validate(_app(f"onnx:{allowed / 'tiny-cnn.onnx'}", [allowed], max_batch_size=4))
    served = cfg.resolved().model("m").served()
    w = GpuWorker([served], backend="cpu", allowed_model_dirs=[str(allowed)])
    try:
        x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype("f4")
        result = asyncio.run(w.infer("m", [x]))
        session = ort.InferenceSession(str(allowed / "tiny-cnn.onnx"), providers=["CPUExecutionProvider"])
        assert result.names == ("output0",)
        np.testing.assert_allclose(result.outputs[0], session.run(None, {"input": x})[0], rtol=1e-4, atol=1e-5)
    finally:
        w.close()
    # the actor loads nothing from a dir its own allow-list lacks, whatever the config said
    w = GpuWorker([served], backend="cpu", allowed_model_dirs=[str(outside)])
    try:
        assert "outside the allowed directories" in w.failed["m"]
    finally:
        w.close()
