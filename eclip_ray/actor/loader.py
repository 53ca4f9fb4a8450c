"""Turning a served model's ``loader`` into a buildable zoo entry.

A loader is a zoo name (``resnet50``, ``transformers:RobertaConfig``, ...), a
``module:factory`` import path of the user's own ``nn.Module`` factory, or
``onnx:<path>`` of a ``.onnx`` file. Import paths are honoured only for modules
under ``allowed_modules``, ONNX files only under ``allowed_model_dirs`` (after
resolving symlinks): a config is not a way to run arbitrary code or read
arbitrary files. Weights are built under a fixed seed so that
replicas of a random-weight model on several GPUs answer alike.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from pathlib import Path

from eclip_ray.actor.spec import ServedModel, TensorInfo, torch_dtype
from eclip_ray.models.zoo import ZooModel

SEED = 0
ONNX_PREFIX = "onnx:"


def is_import_path(loader: str) -> bool:
    # "transformers:BertConfig" is the zoo's own syntax, and "onnx:<path>" a file, not import paths.
    return ":" in loader and not loader.startswith(("transformers:", ONNX_PREFIX))


def is_onnx(loader: str) -> bool:
    return loader.startswith(ONNX_PREFIX)


def check_onnx_allowed(loader: str, allowed_dirs: Sequence[str]) -> Path:
    """The resolved ``.onnx`` file of an ``onnx:<path>`` loader; ValueError unless it lies under ``allowed_dirs``."""
    from eclip_ray.models.onnx import allowed_path

    path = loader[len(ONNX_PREFIX) :]
    if not path:
        raise ValueError(f"loader {loader!r}: give the model file, as onnx:/path/to/model.onnx")
    try:
        return allowed_path(path, allowed_dirs)
    except ValueError as e:
        raise ValueError(f"loader {loader!r}: {e} (allowed_model_dirs: {list(allowed_dirs)})") from None


def onnx_entry(
    loader: str, allowed_dirs: Sequence[str], name: str | None = None, inputs: Sequence[TensorInfo] = ()
) -> ZooModel:
    """The zoo entry of an ``onnx:<path>`` loader; ``inputs`` (declared specs) fix symbolic dimensions."""
    from eclip_ray.models import onnx as onnx_models

    path = check_onnx_allowed(loader, allowed_dirs)
    shapes = {t.name: t.shape for t in inputs if t.shape is not None}
    return onnx_models.zoo_entry(path, allowed_dirs, name=name, input_shapes=shapes)


def check_allowed(loader: str, allowed_modules: Sequence[str]) -> None:
    """Raise ValueError unless ``loader``'s module lies under one of ``allowed_modules``."""
    module = loader.split(":", 1)[0]
    if not any(module == m or module.startswith(m + ".") for m in allowed_modules):
        raise ValueError(
            f"loader {loader!r}: module {module!r} is not under allowed_modules {list(allowed_modules)}; "
            "add it there to load your own model factory"
        )


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


def _seeded(build: Callable, seed: int) -> Callable:
    def seeded_build():
        import torch

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build()

    return seeded_build


def _inputs_from_specs(inputs: Sequence[TensorInfo]) -> Callable:
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


def zoo_entry(
    model: ServedModel, allowed_modules: Sequence[str] = (), seed: int = SEED, allowed_model_dirs: Sequence[str] = ()
) -> ZooModel:
    """The zoo entry the runtime builds ``model`` from, with seeded weights."""
    if is_onnx(model.loader):
        spec = onnx_entry(model.loader, allowed_model_dirs, model.name, model.inputs)
    elif is_import_path(model.loader):
        factory = _import_factory(model.loader, allowed_modules)
        spec = ZooModel(
            name=model.name,
            build=factory,
            make_inputs=_inputs_from_specs(model.inputs),
            kind="custom",
            input_names=tuple(t.name for t in model.inputs),
            input_shapes=tuple(t.shape for t in model.inputs),
            input_dtypes=tuple(t.datatype for t in model.inputs),
        )
    else:
        from eclip_ray.models.zoo import get

        spec = get(model.loader)
    return dataclasses.replace(spec, build=_seeded(spec.build, seed))


def zoo_inputs(loader: str) -> tuple[TensorInfo, ...]:
    """The input specs of a zoo model, with the value range of each input that indexes an embedding (no weights
    are built)."""
    from eclip_ray.models.zoo import get

    return entry_inputs(get(loader))


def entry_inputs(spec: ZooModel) -> tuple[TensorInfo, ...]:
    """The input specs of a zoo entry, value ranges included."""
    io = zip(spec.input_names, spec.input_shapes, spec.input_dtypes, spec.ranges(), strict=True)
    return tuple(TensorInfo(n, d, tuple(s), r) for n, s, d, r in io)
