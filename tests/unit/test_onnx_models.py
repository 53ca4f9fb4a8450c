"""ONNX models: exported from the zoo, converted, run on multi-stage plans, compared with onnxruntime (CPU)."""

import pickle
import warnings
from unittest import mock

import pytest
import torch
from onnx_export import export

from eclip_ray.errors import PlanError
from eclip_ray.graph import ModelRunner, Plan, leaf_cuts
from eclip_ray.graph.onnx_runner import OrtRunner, runner_for
from eclip_ray.models import get, register
from eclip_ray.models import onnx as onnx_models
from eclip_ray.partition import StreamPool
from eclip_ray.partition.cpu import CpuBackend
from eclip_ray.partition.layout import ladder

EXPORTERS = ("torchscript", "dynamo")  # torch's legacy exporter (opset 17) and its dynamo one (opset 18+)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """name -> (torch module, onnx path), for the zoo's TinyCNN and tiny-bert through both exporters."""
    root = tmp_path_factory.mktemp("onnx")
    out = {}
    torch.manual_seed(0)
    for zoo_name, input_name in (("tiny-cnn", "input"), ("tiny-bert", "input_ids")):
        spec = get(zoo_name)
        module = spec.build().eval()
        for exporter in EXPORTERS:
            path = export(module, spec.make_inputs(2), root / f"{zoo_name}-{exporter}.onnx", [input_name], exporter)
            out[f"{zoo_name}-{exporter}"] = (module, path)
    return out


@pytest.fixture(scope="module")
def pool():
    be = CpuBackend()
    with StreamPool(be, ladder(be.geometry(), 2)) as p:
        yield p


def three_stage_plan(runner):
    leaves = leaf_cuts(runner.calls)
    a, b = leaves[len(leaves) // 3], leaves[2 * len(leaves) // 3]
    return Plan((a.id, b.id), ("w0.32", "w1.64", "whole"))


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("zoo_name", ["tiny-cnn", "tiny-bert"])
def test_converted_model_on_a_multi_stage_plan_matches_onnxruntime(models, pool, zoo_name, exporter):
    original, path = models[f"{zoo_name}-{exporter}"]
    spec = onnx_models.zoo_entry(path, allowed_dirs=[path.parent])
    runner = ModelRunner(f"{zoo_name}-{exporter}", spec.build(), spec.make_inputs, pool)
    plan = three_stage_plan(runner)
    assert plan.switches == 2
    x = runner.example_inputs(3)
    out = runner.run(x, plan)[0]
    ref = spec.meta["onnx"].reference(x)[0]
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-3)
    with torch.inference_mode():
        torch.testing.assert_close(out, original(*x), atol=1e-4, rtol=1e-3)
    runner.close()


def test_input_specs_are_read_from_the_graph(models):
    cnn = onnx_models.zoo_entry(models["tiny-cnn-dynamo"][1], [models["tiny-cnn-dynamo"][1].parent], name="cnn")
    assert (cnn.name, cnn.kind, cnn.input_names, cnn.input_shapes, cnn.input_dtypes) == (
        "cnn",
        "onnx",
        ("input",),
        ((3, 32, 32),),
        ("FP32",),
    )
    path = models["tiny-bert-torchscript"][1]
    model = onnx_models.load(path, [path.parent])
    (ids,) = model.inputs
    assert (ids.name, ids.shape, ids.datatype, ids.high) == ("input_ids", (16,), "INT64", 1000)  # vocab from the graph
    assert model.batch_size is None and model.opset == 17
    (x,) = model.make_inputs(4)
    assert x.shape == (4, 16) and x.dtype == torch.int64 and int(x.min()) >= 0 and int(x.max()) < 1000


def test_fixed_batch_export_is_kept(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "cnn-b2.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(get("tiny-cnn").build().eval(), (torch.randn(2, 3, 32, 32),), path, dynamo=False)
    model = onnx_models.load(path, [tmp_path])
    assert model.batch_size == 2 and model.make_inputs(2)[0].shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="exported for batches of 2, not 3"):
        model.make_inputs(3)


def test_onnxruntime_runs_onnx_models_on_the_cpu_backend(models, pool):
    path = models["tiny-bert-dynamo"][1]
    model = onnx_models.load(path, [path.parent])
    runner = runner_for("bert-ort", model, pool)
    assert isinstance(runner, OrtRunner)
    plan = three_stage_plan(runner)
    x = runner.example_inputs(2)
    torch.testing.assert_close(runner.run(x, plan)[0], model.reference(x)[0])
    assert runner.submit(x, plan).done()
    with pytest.raises(PlanError, match="not module calls"):
        runner.run(x, Plan(("nope#0",), ("whole", "w0.32")))
    with pytest.raises(PlanError, match="lacks"):
        runner.run(x, Plan.single("w7.8"))
    runner.close()


def test_registered_onnx_model_is_a_zoo_model(models):
    path = models["tiny-cnn-torchscript"][1]
    register(onnx_models.zoo_entry(path, [path.parent], name="onnx-test-cnn"))
    spec = get("onnx-test-cnn")
    assert spec.kind == "onnx" and spec.meta["path"] == str(path.resolve())
    assert spec.build()(*spec.make_inputs(1)).shape == (1, 10)


def test_models_load_only_from_allowed_directories(models, tmp_path):
    path = models["tiny-cnn-torchscript"][1]
    with pytest.raises(ValueError, match="outside the allowed directories"):
        onnx_models.load(path, [tmp_path])
    with pytest.raises(ValueError, match="allowed_dirs is empty"):
        onnx_models.load(path, [])
    (tmp_path / "link.onnx").symlink_to(path)  # a link inside the allowed directory to a file outside it
    with pytest.raises(ValueError, match="outside the allowed directories"):
        onnx_models.load(tmp_path / "link.onnx", [tmp_path])
    (tmp_path / "model.pt").write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match=r"not an \.onnx file"):
        onnx_models.load(tmp_path / "model.pt", [tmp_path])


def test_external_data_is_read_only_from_beside_the_model(models, tmp_path):
    import onnx

    proto = onnx.load(str(models["tiny-cnn-torchscript"][1]))
    allowed = tmp_path / "models"
    allowed.mkdir()
    onnx.save(proto, str(allowed / "cnn.onnx"), save_as_external_data=True, location="cnn.weights", size_threshold=0)
    model = onnx_models.load(allowed / "cnn.onnx", [allowed])
    x = model.make_inputs(2)
    torch.testing.assert_close(model.to_module()(*x), model.reference(x)[0])

    (tmp_path / "secret.bin").write_bytes((allowed / "cnn.weights").read_bytes())
    escaping = onnx.load(str(allowed / "cnn.onnx"), load_external_data=False)
    for t in escaping.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../secret.bin"
    onnx.save(escaping, str(allowed / "escaping.onnx"))
    with pytest.raises(ValueError, match=r"external data '\.\./secret\.bin' is not a file beside the model"):
        onnx_models.load(allowed / "escaping.onnx", [allowed])


def test_nothing_is_unpickled(models, pool):
    path = models["tiny-bert-dynamo"][1]
    refuse = mock.Mock(side_effect=AssertionError("unpickling"))
    with (
        mock.patch.object(pickle, "load", refuse),
        mock.patch.object(pickle, "loads", refuse),
        mock.patch.object(torch, "load", refuse),
    ):
        model = onnx_models.load(path, [path.parent])
        model.to_module()
        OrtRunner("no-pickle", model, pool).run(model.make_inputs(1), Plan.single("whole"))
    refuse.assert_not_called()


def test_a_conversion_that_disagrees_with_onnxruntime_is_refused(models):
    path = models["tiny-cnn-torchscript"][1]
    model = onnx_models.load(path, [path.parent])
    module = model.to_module()
    with torch.no_grad():
        next(module.parameters()).add_(1.0)
    with pytest.raises(ValueError, match="differs from onnxruntime"):
        model.verify(module)


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("zoo_name", ["tiny-cnn", "tiny-bert"])
def test_converted_model_does_its_shape_arithmetic_on_the_host(models, zoo_name, exporter):
    # On the meta device every read of a device value (.item(), torch.Size(tensor)) raises, and so
    # would a CUDA graph capture: the converted graph must run there with only its shape values on the host.
    _, path = models[f"{zoo_name}-{exporter}"]
    onnx = onnx_models.load(path, allowed_dirs=[path.parent])
    module = onnx.to_module().to("meta")
    for batch, dtype in ((1, torch.float32), (3, torch.float16)):
        (x,) = onnx.make_inputs(batch)
        x = x.to("meta", dtype) if x.is_floating_point() else x.to("meta")
        out = module.to(dtype)(x)
        out = out if isinstance(out, torch.Tensor) else out[0]
        assert out.device.type == "meta" and out.shape[0] == batch and out.dtype == dtype


def test_without_the_host_rewrite_a_transformer_reads_device_values(tmp_path):
    # The check above can fail: onnx2torch's own conversion of tiny-bert reads shape values from the device.
    onnx2torch = pytest.importorskip("onnx2torch")
    spec = get("tiny-bert")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = export(spec.build().eval(), spec.make_inputs(2), tmp_path / "b.onnx", ["input_ids"])
    raw = onnx2torch.convert(str(path)).eval().to("meta")
    with pytest.raises((RuntimeError, TypeError)):
        raw(spec.make_inputs(2)[0].to("meta"))
