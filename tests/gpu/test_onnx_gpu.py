"""On the GPU: ONNX models through the partition path (converted module, one graph across three partitions),
against onnxruntime's CPU execution provider. Needs onnx, onnxruntime and onnx2torch on the GPU machine."""

from __future__ import annotations

import pytest
import torch
from onnx_export import export_zoo

from eclip_ray.graph import Plan, leaf_cuts
from eclip_ray.graph.onnx_runner import runner_for
from eclip_ray.models import onnx as onnx_models

pytestmark = pytest.mark.gpu
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx2torch")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("onnx")
    return {name: export_zoo(name, root / f"{name}.onnx") for name in ("tiny-cnn", "tiny-bert")}


@pytest.mark.parametrize("zoo_name", ["tiny-cnn", "tiny-bert"])
def test_onnx_model_replays_across_three_partitions_like_onnxruntime(exported, pool, zoo_name):
    path = exported[zoo_name]
    model = onnx_models.load(path, allowed_dirs=[path.parent])
    runner = runner_for(zoo_name, model, pool, dtype=torch.float16)
    leaves = leaf_cuts(runner.calls)
    plan = Plan((leaves[len(leaves) // 3].id, leaves[2 * len(leaves) // 3].id), ("w0.32", "w1.64", "whole"))
    runner.capture(plan, 4)
    x = model.make_inputs(3)  # fp32 on the CPU, as a request brings them; padded to the captured batch of 4
    out = runner.submit(x, plan).result()[0].float().cpu()
    ref = model.reference(x)[0].float()
    err = float(torch.linalg.vector_norm(out - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-12))
    assert out.shape == ref.shape and err < 2e-2, f"fp16 graph vs onnxruntime: relative L2 error {err:.3g}"
    runner.close()
