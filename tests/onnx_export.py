"""Exporting zoo models to ONNX for the tests (importable from every test directory: it sits beside conftest.py)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from eclip_ray.models import get

INPUT_NAMES = {"tiny-cnn": "input", "tiny-bert": "input_ids"}


def export(module, inputs, path, names, exporter: str = "torchscript", dynamic: bool = True) -> Path:
    """``module`` at ``inputs`` as ONNX: torch's legacy exporter (opset 17) or its dynamo one (opset 18+)."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch = torch.export.Dim("batch")
            shapes = tuple({0: batch} for _ in inputs) if dynamic else None
            torch.onnx.export(module, inputs, path, input_names=names, dynamic_shapes=shapes, dynamo=True)
        else:
            axes = {n: {0: "batch"} for n in names} if dynamic else None
            torch.onnx.export(
                module, inputs, str(path), input_names=names, dynamic_axes=axes, opset_version=17, dynamo=False
            )
    return Path(path)


def export_zoo(zoo_name: str, path, exporter: str = "torchscript", dynamic: bool = True) -> Path:
    """Zoo model ``zoo_name`` with seeded weights, exported at batch 2 (dynamic batch unless told otherwise)."""
    spec = get(zoo_name)
    torch.manual_seed(0)
    return export(spec.build().eval(), spec.make_inputs(2), path, [INPUT_NAMES[zoo_name]], exporter, dynamic)
