"""Declaring a served model in Python: an ``nn.Module`` (class, factory or instance) and an example input.

:func:`model` returns a :class:`ModelConfig` (``eclip_ray/actor/spec.py``) whose ``source`` is the object,
serialised by value (``eclip_ray/actor/source.py``), and whose input and output specs are inferred from ``example``
where they are not given:

* inputs: one per tensor of the example (a tensor, a tuple or a list takes the names of ``forward``'s parameters,
  else ``input`` or ``input0``, ``input1``, ...; a dict names them itself and is put in ``forward``'s order),
  with the KServe datatype of its dtype and its shape without the first axis, the example's batch;
* outputs: the module is built here, on the CPU, under the GPU actor's seed (``eclip_ray/actor/loader.py``), and
  run once on the example: ``output0``, ``output1``, ... with their datatypes and per-row shapes.

Given specs win over inferred ones; where the example disagrees with them (a shape, a datatype, a count, a name),
the error names the model and the tensor. The config then goes into an :class:`AppConfig` and ``build_app``
(``eclip_ray/serve/api.py``) like any other model; the GPU actor builds the object from the source
(``eclip_ray/actor/worker.py``'s ``_load``, through ``zoo_entry``). This module runs where the app is built, never
in the HTTP front: it imports torch.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from eclip_ray.actor.source import ModelSource
from eclip_ray.actor.spec import DATATYPES, MODEL_NAME, ModelConfig, TensorSpec, datatype_of

__all__ = ["infer_specs", "model"]

# ModelConfig fields that model() takes as keyword arguments beside the ones it names.
_OWN = {"name", "loader", "source", "inputs", "outputs", "slo_ms", "max_batch_size", "batch_wait_timeout_s"}
_PASSTHROUGH = {f.name for f in dataclasses.fields(ModelConfig)} - _OWN


def model(
    module: Any,
    example: Any = None,
    *,
    name: str | None = None,
    inputs: Sequence[TensorSpec | Mapping[str, Any]] | None = None,
    outputs: Sequence[TensorSpec | Mapping[str, Any]] | None = None,
    slo_ms: float | None = None,
    max_batch_size: int = 8,
    batch_wait_timeout_s: float = 0.002,
    **options: Any,
) -> ModelConfig:
    """A served model from ``module``: an ``nn.Module`` class (constructed with no arguments in the GPU actor), a
    factory returning one (e.g. ``functools.partial(Net, width=64)``) or an instance (moved to the actor with its
    weights).

    ``example`` is a batch of inputs (a tensor or numpy array, a tuple or list of them, or a dict name -> tensor;
    the first axis is the batch): the inputs and outputs are inferred from it where ``inputs`` and ``outputs`` are
    not given. Without an example, ``inputs`` are required and the outputs are learnt by the GPU actor.
    ``slo_ms``, ``max_batch_size`` and ``batch_wait_timeout_s`` are ModelConfig's, and so are the other keyword
    arguments (``batch_sizes``, ``max_queue_size``, ``max_ongoing_requests``, ``replicas``, ``expected_rps``,
    ``profile``). ``name`` defaults to the class's (or the factory's) name.
    """
    unknown = sorted(set(options) - _PASSTHROUGH)
    if unknown:
        raise TypeError(f"model() got unknown options {unknown}; it takes {sorted(_PASSTHROUGH)} beside its own")
    source = ModelSource.of(module)  # pickled now: later changes to the object do not reach the served model
    name = name or _default_name(module, source)
    given_in, given_out = _specs(inputs, name, "inputs"), _specs(outputs, name, "outputs")
    if example is None:
        if given_in is None:
            raise ValueError(f"model {name!r}: give an example input (or declare its inputs)")
        found_in, found_out = given_in, given_out
    else:
        found_in, found_out = infer_specs(module, source, example, name, given_in, given_out)
    return ModelConfig(
        name=name,
        source=source,
        inputs=found_in,
        outputs=found_out,
        slo_ms=slo_ms,
        max_batch_size=max_batch_size,
        batch_wait_timeout_s=batch_wait_timeout_s,
        **options,
    )


def _default_name(module: Any, source: ModelSource) -> str:
    target = type(module) if source.kind == "instance" else getattr(module, "func", module)
    name = getattr(target, "__name__", "")
    if not MODEL_NAME.match(name):
        raise ValueError(f"{source.label} has no usable model name ({name!r}); pass name=...")
    return name


def _specs(specs: Sequence[TensorSpec | Mapping[str, Any]] | None, model: str, what: str) -> tuple | None:
    if specs is None:
        return None
    if isinstance(specs, (TensorSpec, Mapping, str)):
        raise TypeError(f"model {model!r}: {what} is a list of tensor specs, not one {type(specs).__name__}")
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(tuple[TensorSpec, ...]).validate_python(tuple(specs))
    except ValidationError as e:
        raise ValueError(f"model {model!r}: bad {what}: {e}") from None


# -- inference from the example -------------------------------------------------------------------


def infer_specs(
    module: Any,
    source: ModelSource,
    example: Any,
    name: str,
    inputs: tuple[TensorSpec, ...] | None = None,
    outputs: tuple[TensorSpec, ...] | None = None,
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The input and output specs of ``module`` run on ``example`` (built here as the actor builds it), with the
    given ``inputs`` and ``outputs`` winning where they agree with it."""
    import torch

    from eclip_ray.actor.loader import seeded

    built = module if source.kind == "instance" else seeded(module)()
    if not isinstance(built, torch.nn.Module):
        raise TypeError(f"model {name!r}: {source.label} returned {type(built).__name__}, not an nn.Module")
    named = _example_tensors(built, example, name)
    found_in = _merged_inputs(name, named, inputs, keyed=isinstance(example, Mapping))
    returned = _run(built, [t for _, t in named], name, source.label)
    return found_in, _merged_outputs(name, returned, outputs)


def _example_tensors(module: Any, example: Any, model: str) -> list[tuple[str, Any]]:
    """``(name, tensor)`` of each input, in ``forward``'s order; checks that they agree on the batch."""
    params = _forward_params(module)
    if isinstance(example, Mapping):
        keys = list(example)
        extra = [k for k in keys if k not in params]
        if extra:
            raise ValueError(f"model {model!r}: example inputs {extra} are not parameters of forward {params}")
        order = [p for p in params if p in example]
        named = [(k, example[k]) for k in order]
    elif isinstance(example, (tuple, list)):
        names = params[: len(example)] if len(params) >= len(example) else []
        names = names or [f"input{i}" for i in range(len(example))]
        named = list(zip(names, example, strict=True))
    else:
        named = [(params[0] if params else "input", example)]
    if not named:
        raise ValueError(f"model {model!r}: the example has no tensors")
    tensors = [(n, _tensor(model, n, x)) for n, x in named]
    rows = {n: int(t.shape[0]) if t.dim() else 0 for n, t in tensors}
    if any(r < 1 for r in rows.values()) or len(set(rows.values())) != 1:
        raise ValueError(
            f"model {model!r}: every example input needs the batch as its first axis, of one size >= 1; got {rows}"
        )
    return tensors


def _forward_params(module: Any) -> list[str]:
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds]


def _tensor(model: str, name: str, x: Any):
    import torch

    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, np.ndarray):
        try:
            datatype_of(x.dtype)
        except ValueError as e:
            raise ValueError(f"model {model!r}: example input {name!r}: {e}") from None
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"model {model!r}: example input {name!r} is a {type(x).__name__}, not a tensor or numpy array")


def _datatype(t: Any, model: str, what: str) -> str:
    import torch

    if t.dtype == torch.bfloat16:
        return "FP32"  # no KServe datatype here; floats leave as FP32 (the actor's default)
    try:
        return datatype_of(torch.empty(0, dtype=t.dtype).numpy().dtype)
    except (TypeError, ValueError):
        raise ValueError(f"model {model!r}: {what} has dtype {t.dtype}, which has no KServe datatype") from None


def _merged_inputs(model: str, named: list[tuple[str, Any]], given: tuple[TensorSpec, ...] | None, keyed: bool):
    """The inferred inputs, or the ``given`` ones checked against them (a dict example's names must match)."""
    found = [TensorSpec(n, _datatype(t, model, f"input {n!r}"), tuple(t.shape[1:])) for n, t in named]
    if given is None:
        return tuple(found)
    if len(given) != len(found):
        raise ValueError(
            f"model {model!r} is declared with inputs {[t.name for t in given]}; the example has "
            f"{[t.name for t in found]}"
        )
    for g, f in zip(given, found, strict=True):
        if keyed and g.name != f.name:
            raise ValueError(
                f"model {model!r}: input {g.name!r} is declared where the example (in forward's order) has {f.name!r}"
            )
        if g.shape != f.shape:
            raise ValueError(
                f"model {model!r}: input {g.name!r} is declared with shape {list(g.shape or ())}; the example's "
                f"rows have {list(f.shape)}"
            )
        float_in = DATATYPES[f.datatype].kind == "f"
        if g.datatype != f.datatype and not (g.normalize is not None and float_in):
            raise ValueError(
                f"model {model!r}: input {g.name!r} is declared {g.datatype}; the example is {f.datatype}"
                + (" (a UINT8 input with normalize takes the model's float input as example)" if g.normalize else "")
            )
    return given


def _run(module: Any, tensors: list[Any], model: str, label: str) -> tuple:
    """``module``'s outputs on ``tensors``, in eval mode and without gradients (its mode is restored)."""
    import torch

    from eclip_ray.graph.runner import as_outputs

    device = next(iter([*module.parameters(), *module.buffers()]), torch.empty(0)).device
    training = module.training
    module.train(False)
    try:
        with torch.no_grad():
            out = module(*(t.to(device) for t in tensors))
    except Exception as e:
        raise ValueError(f"model {model!r}: {label} failed on the example: {type(e).__name__}: {e}") from e
    finally:
        module.train(training)
    try:
        outs = as_outputs(out)
    except TypeError as e:
        raise ValueError(f"model {model!r}: {e}") from None
    rows = int(tensors[0].shape[0])
    for i, o in enumerate(outs):
        if o.dim() == 0 or o.shape[0] != rows:
            raise ValueError(
                f"model {model!r}: output {i} has shape {list(o.shape)}; every output must keep the batch of "
                f"{rows} rows as its first axis"
            )
    return outs


def _merged_outputs(model: str, outs: tuple, given: tuple[TensorSpec, ...] | None) -> tuple[TensorSpec, ...]:
    found = [
        TensorSpec(f"output{i}", _datatype(o, model, f"output {i}"), tuple(o.shape[1:])) for i, o in enumerate(outs)
    ]
    if given is None:
        return tuple(found)
    if len(given) != len(found):
        raise ValueError(
            f"model {model!r} is declared with outputs {[t.name for t in given]}; on the example it returns "
            f"{len(found)} tensors"
        )
    merged = []
    for g, f in zip(given, found, strict=True):
        if g.shape is not None and g.shape != f.shape:
            raise ValueError(
                f"model {model!r}: output {g.name!r} is declared with shape {list(g.shape)}; on the example its "
                f"rows have {list(f.shape)}"
            )
        merged.append(dataclasses.replace(g, shape=f.shape))  # the declared datatype wins: the actor casts to it
    return tuple(merged)
