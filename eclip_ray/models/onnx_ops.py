"""onnx2torch converters for what newer exporters emit (opset 18 and later).

onnx2torch 1.5 converts opsets up to about 17; ``torch.onnx.export`` (dynamo)
writes opset 18+. Three kinds of additions, registered once and only where
onnx2torch has none:

* a new version whose schema equals the newest converted one (same attributes,
  same inputs and outputs: only the allowed tensor types grew) reuses that
  converter; the schema comparison is what makes this safe, not a list;
* ``Reduce*`` 18, whose axes moved from an attribute to a constant input;
* ``Gelu`` 20, a new operator, and ``Split`` 18, which may give a number of
  outputs instead of their sizes.

``Cast`` 19 added ``saturate``, which changes only casts to float8, and onnx2torch
converts no float8 type, so ``Cast`` is compared without it. ``normalized``
rewrites what is equivalent but refused: the dynamo exporter marks every
``Reshape`` ``allowzero=1``, which only matters when the target shape holds a 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache
from typing import Any

import torch
from torch import nn

# Attributes that may differ between versions without changing what onnx2torch converts.
_TYPE_ONLY_ATTRIBUTES = {"Cast": {"saturate"}}
_REDUCE_18 = (
    "ReduceL1",
    "ReduceL2",
    "ReduceLogSum",
    "ReduceLogSumExp",
    "ReduceMax",
    "ReduceMean",
    "ReduceMin",
    "ReduceProd",
    "ReduceSumSquare",
)


def _registry():
    from onnx2torch.node_converters.registry import add_converter, get_converter

    return add_converter, get_converter


def _has_converter(op: str, version: int, domain: str = "") -> bool:
    _, get_converter = _registry()
    try:
        get_converter(op, version, domain)
    except NotImplementedError:
        return False
    return True


def _signature(schema: Any, ignore: set[str]) -> tuple:
    attrs = sorted((name, int(a.type), a.required) for name, a in schema.attributes.items() if name not in ignore)
    inputs = [(p.name, int(p.option)) for p in schema.inputs]
    outputs = [(p.name, int(p.option)) for p in schema.outputs]
    return attrs, inputs, outputs, schema.min_input, schema.max_input, schema.min_output, schema.max_output


def type_only_change(op: str, old: int, new: int, domain: str = "") -> bool:
    """Whether version ``new`` of ``op`` differs from ``old`` only in the tensor types it allows."""
    from onnx import defs

    ignore = _TYPE_ONLY_ATTRIBUTES.get(op, set())
    a = defs.get_schema(op, max_inclusive_version=old, domain=domain)
    b = defs.get_schema(op, max_inclusive_version=new, domain=domain)
    return _signature(a, ignore) == _signature(b, ignore)


def _older_versions(op: str, version: int, domain: str) -> list[int]:
    from onnx import defs

    history = defs.get_all_schemas_with_history()
    return sorted(
        (s.since_version for s in history if s.name == op and s.domain == domain and s.since_version < version),
        reverse=True,
    )


def alias_type_only(op: str, version: int, domain: str = "") -> bool:
    """Register the newest older converter of ``op`` for ``version`` when only types changed; True if converted."""
    if _has_converter(op, version, domain):
        return True
    add_converter, get_converter = _registry()
    for old in _older_versions(op, version, domain):
        if not _has_converter(op, old, domain):
            continue
        if not type_only_change(op, old, version, domain):
            return False
        add_converter(op, version, domain)(get_converter(op, old, domain))
        return True
    return False


# With no axes and noop_with_empty_axes=1 a reduction reduces nothing but keeps its element-wise part.
_NO_REDUCTION = {
    "ReduceSumSquare": torch.square,
    "ReduceL1": torch.abs,
    "ReduceL2": torch.abs,
    "ReduceLogSum": torch.log,
}


class ElementWise(nn.Module):
    """What a reduction over no axes leaves: ``fn`` applied to each element."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.op = op

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = _NO_REDUCTION.get(self.op)
        return fn(x) if fn is not None else x


def _reduce_axes_input(node: Any, graph: Any) -> Any:
    from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult, get_const_value

    axes = None
    if len(node.input_values) > 1 and node.input_values[1]:
        try:
            axes = get_const_value(node.input_values[1], graph).tolist()
        except KeyError:
            raise NotImplementedError(f"{node.operation_type} with axes computed at run time") from None
    if not axes and node.attributes.get("noop_with_empty_axes", 0):
        module: nn.Module = ElementWise(node.operation_type)
    else:
        module = OnnxReduceStaticAxes(node.operation_type, axes, node.attributes.get("keepdims", 1))
    mapping = OnnxMapping(inputs=(node.input_values[0],), outputs=node.output_values)
    return OperationConverterResult(torch_module=module, onnx_mapping=mapping)


def _gelu(node: Any, graph: Any) -> Any:
    from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node

    module = nn.GELU(approximate=node.attributes.get("approximate", "none"))
    return OperationConverterResult(torch_module=module, onnx_mapping=onnx_mapping_from_node(node))


class Split18(nn.Module):
    """ONNX Split 18: the sizes given, or ``parts`` chunks of ceil(length / parts), the last one smaller."""

    def __init__(self, axis: int, parts: int) -> None:
        super().__init__()
        self.axis, self.parts = axis, parts

    def forward(self, x: torch.Tensor, split: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        sizes = split.tolist() if split is not None else -(-x.shape[self.axis] // self.parts)
        return torch.split(x, sizes, dim=self.axis)


def _split(node: Any, graph: Any) -> Any:
    from onnx2torch.utils.common import OnnxMapping, OperationConverterResult

    module = Split18(node.attributes.get("axis", 0), len(node.output_values))
    inputs = tuple(v for v in node.input_values if v)
    return OperationConverterResult(torch_module=module, onnx_mapping=OnnxMapping(inputs, node.output_values))


@cache
def register_newer_opsets() -> None:
    """Add the Reduce-18, Split-18 and Gelu-20 converters onnx2torch lacks (once per process)."""
    add_converter, _ = _registry()
    for op in _REDUCE_18:
        if not _has_converter(op, 18):
            add_converter(op, 18)(_reduce_axes_input)
    for op in ("ReduceMax", "ReduceMin"):  # version 20 only added bool inputs
        alias_type_only(op, 20)
    if not _has_converter("Gelu", 20):
        add_converter("Gelu", 20)(_gelu)
    if not _has_converter("Split", 18):
        add_converter("Split", 18)(_split)


def _constants(graph: Any) -> dict[str, Any]:
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def normalized(model: Any) -> Any:
    """A copy of ``model`` with ``Reshape(allowzero=1)`` to a constant shape without zeros made ``allowzero=0``."""
    out = type(model)()
    out.CopyFrom(model)
    constants = _constants(out.graph)
    for node in out.graph.node:
        shape = constants.get(node.input[1]) if node.op_type == "Reshape" and len(node.input) > 1 else None
        if shape is not None and 0 not in shape.tolist():
            kept = [a for a in node.attribute if a.name != "allowzero"]
            del node.attribute[:]
            node.attribute.extend(kept)
    return out


def unconvertible(model: Any) -> list[str]:
    """``op-version`` of every node onnx2torch cannot convert, after registering what can be aliased."""
    from onnx import defs

    register_newer_opsets()
    opsets = {("" if o.domain in ("", "ai.onnx") else o.domain): o.version for o in model.opset_import}
    missing = set()
    for node in _nodes(model.graph.node):
        domain = "" if node.domain in ("", "ai.onnx") else node.domain
        try:
            version = defs.get_schema(node.op_type, opsets.get(domain, 1), domain).since_version
        except defs.SchemaError:
            missing.add(f"{domain + '.' if domain else ''}{node.op_type}")
            continue
        if not alias_type_only(node.op_type, version, domain):
            missing.add(f"{node.op_type}-{version}")
        elif node.op_type == "Reshape" and any(a.name == "allowzero" and a.i for a in node.attribute):
            missing.add(f"Reshape-{version} (allowzero=1 to a computed shape)")
    return sorted(missing)


def _nodes(nodes: Iterable[Any]) -> Iterable[Any]:
    for node in nodes:
        yield node
        for attr in node.attribute:  # control flow: If / Loop bodies
            for graph in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _nodes(graph.node)
