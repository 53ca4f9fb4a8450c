"""Turning a model's ``loader`` into a buildable zoo entry, checked against what the app allows.

A loader is a zoo name, a ``module:factory`` import path or ``onnx:<path>``
(``eclip_ray/models/sources.py`` says which and checks it against
``allowed_modules`` and ``allowed_model_dirs``, here again whatever the config
said). A model given in Python has a ``source`` instead (``eclip_ray/actor/source.py``):
an object handed over in code, not a string, so no allowlist applies; its class or
factory is called here, in the GPU actor. Weights are built under a fixed seed so
that replicas of a random-weight model on several GPUs answer alike. The entry describes the model as built: an
input that arrives as UINT8 with ``normalize`` is still the model's float input
here; the runner normalises it on the device (``eclip_ray/graph/runner.py``).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence

from eclip_ray.actor.spec import ModelConfig, TensorSpec, torch_dtype
from eclip_ray.models.sources import check_allowed, check_onnx_allowed, is_import_path, is_onnx
from eclip_ray.models.zoo import ZooModel

SEED = 0

__all__ = [
    "SEED",
    "check_allowed",
    "check_onnx_allowed",
    "custom_entry",
    "entry_inputs",
    "is_import_path",
    "is_onnx",
    "onnx_entry",
    "seeded",
    "zoo_entry",
    "zoo_inputs",
]


def onnx_entry(
    loader: str, allowed_dirs: Sequence[str], name: str | None = None, inputs: Sequence[TensorSpec] = ()
) -> ZooModel:
    """The zoo entry of an ``onnx:<path>`` loader; ``inputs`` (declared specs) fix symbolic dimensions."""
    from eclip_ray.models import onnx as onnx_models

    path = check_onnx_allowed(loader, allowed_dirs)
    shapes = {t.name: t.shape for t in inputs if t.shape is not None}
    return onnx_models.zoo_entry(path, allowed_dirs, name=name, input_shapes=shapes)


def _import_factory(loader: str, allowed_modules: Sequence[str]) -> Callable:
    check_allowed(loader, allowed_modules)
    module, _, attr = loader.partition(":")
    factory = importlib.import_module(module)
    for part in attr.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ValueError(f"loader {loader!r}: module {module!r} has no attribute {attr!r}")
    if not callable(factory):
        raise ValueError(f"loader {loader!r} names {type(factory).__name__}, not a callable factory")
    return factory


def seeded(build: Callable, seed: int = SEED) -> Callable:
    """``build`` run under ``seed`` (torch's CPU generator, restored after): the weights every actor makes."""

    def seeded_build():
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build()

    return seeded_build


def _inputs_from_specs(inputs: Sequence[TensorSpec]) -> Callable:
    def make_inputs(batch: int):
        import torch

        out = []
        for t in inputs:
            dtype = torch_dtype(t.datatype)
            if dtype.is_floating_point:
                out.append(torch.randn(batch, *t.shape).to(dtype))
            else:  # the least valid value (zero by default): random integers may not be valid indices
                low = 0 if t.value_range is None else t.value_range[0]
                out.append(torch.full((batch, *t.shape), low, dtype=dtype))
        return tuple(out)

    return make_inputs


def custom_entry(name: str, build: Callable, inputs: Sequence[TensorSpec]) -> ZooModel:
    """The entry of a user's own module built by ``build()`` with the declared ``inputs`` (a UINT8 input with
    ``normalize`` is the model's float input here)."""
    return ZooModel(
        name=name,
        build=build,
        make_inputs=_inputs_from_specs([TensorSpec(t.name, "FP32", t.shape) if t.normalize else t for t in inputs]),
        kind="custom",
        input_names=tuple(t.name for t in inputs),
        input_shapes=tuple(t.shape for t in inputs),
        input_dtypes=tuple("FP32" if t.normalize else t.datatype for t in inputs),
    )


def zoo_entry(
    model: ModelConfig, allowed_modules: Sequence[str] = (), seed: int = SEED, allowed_model_dirs: Sequence[str] = ()
) -> ZooModel:
    """The zoo entry the runtime builds ``model`` from, with seeded weights."""
    loader = model.loader_name
    inputs = model.inputs or ()
    if model.source is not None:  # given in Python code (eclip_ray/serve/declare.py); its inputs are declared
        spec = custom_entry(model.name, model.source.build, inputs)
    elif is_onnx(loader):
        spec = onnx_entry(loader, allowed_model_dirs, model.name, inputs)
    elif is_import_path(loader):
        spec = custom_entry(model.name, _import_factory(loader, allowed_modules), inputs)
    else:
        from eclip_ray.models.zoo import get

        spec = get(loader)
    return dataclasses.replace(spec, build=seeded(spec.build, seed))


def zoo_inputs(loader: str) -> tuple[TensorSpec, ...]:
    """The input specs of a zoo model, with the value range of each input that indexes an embedding (no weights
    are built)."""
    from eclip_ray.models.zoo import get

    return entry_inputs(get(loader))


def entry_inputs(spec: ZooModel) -> tuple[TensorSpec, ...]:
    """The input specs of a zoo entry, value ranges included."""
    io = zip(spec.input_names, spec.input_shapes, spec.input_dtypes, spec.ranges(), strict=True)
    return tuple(TensorSpec(n, d, tuple(s), value_range=r) for n, s, d, r in io)
