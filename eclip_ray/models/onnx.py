"""ONNX models: a ``.onnx`` file from a configured directory, as an nn.Module whose stages can be cut.

Loading reads only files under ``allowed_dirs`` (after resolving symlinks), with
``onnx.load`` (protobuf: nothing is unpickled), and external weight files only
from beside the model. The file is read once and the parsed graph kept, so what
was checked is what runs.

Inputs come from the graph (names, KServe datatypes, shapes without the batch
dimension); a symbolic dimension other than the batch must be given in
``input_shapes``. Conversion is onnx2torch's, with ``onnx_ops`` for opsets 18+,
or, where it still lacks an operator, after onnx's version converter takes the
model down to opset 17. The module it gives calls one submodule per ONNX node,
so every node is a cut point. onnxruntime's CPU execution provider is the
reference: each conversion is checked against it on random inputs.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from eclip_ray.models import onnx_ops
from eclip_ray.models.onnx_capture import host_shape_math
from eclip_ray.models.zoo import ZooModel

CONVERTER_OPSET = 17  # onnx2torch's own converters reach this opset
_INSTALL = "pip install 'eclip-ray[onnx]'"
# ONNX TensorProto element types -> KServe datatypes (the names served tensors use).
_DATATYPES = {1: "FP32", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 9: "BOOL"}
_DATATYPES |= {10: "FP16", 11: "FP64", 12: "UINT32", 13: "UINT64"}
_TORCH = {"FP32": torch.float32, "FP16": torch.float16, "FP64": torch.float64, "BOOL": torch.bool}
_TORCH |= {"UINT8": torch.uint8, "INT8": torch.int8, "INT16": torch.int16, "INT32": torch.int32, "INT64": torch.int64}
_TORCH |= {"UINT16": torch.uint16, "UINT32": torch.uint32, "UINT64": torch.uint64}


def _need(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ModuleNotFoundError(f"ONNX models need {module.split('.')[0]}: {_INSTALL}") from e


@dataclass(frozen=True)
class OnnxInput:
    """One graph input; ``shape`` excludes the batch dimension.

    ``high`` is the number of rows of the smallest table an integer input
    indexes (a Gather on an initializer), None when it indexes none: its
    values must lie in [0, high - 1], and random inputs are drawn there
    (zeros when no table is found).
    """

    name: str
    shape: tuple[int, ...]
    datatype: str
    high: int | None = None


@dataclass(frozen=True, eq=False)
class OnnxModel:
    """A checked ``.onnx`` file held in memory: its inputs, outputs and batch size (None: any)."""

    path: Path
    proto: Any = field(repr=False)
    inputs: tuple[OnnxInput, ...]
    outputs: tuple[str, ...]
    batch_size: int | None
    opset: int

    def make_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """Random inputs of ``batch_size`` rows, as the graph declares them."""
        if self.batch_size is not None and batch_size != self.batch_size:
            raise ValueError(f"{self.path.name} was exported for batches of {self.batch_size}, not {batch_size}")
        out = []
        for inp in self.inputs:
            dtype = _TORCH[inp.datatype]
            shape = (batch_size, *inp.shape)
            if dtype.is_floating_point:
                out.append(torch.randn(shape).to(dtype))
            elif inp.high:
                out.append(torch.randint(0, inp.high, shape, dtype=dtype))
            else:
                out.append(torch.zeros(shape, dtype=dtype))
        return tuple(out)

    def session(self, threads: int | None = None) -> Any:
        """An onnxruntime session on the CPU execution provider (``threads``: intra-op threads, None: all)."""
        ort = _need("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        return ort.InferenceSession(self.proto.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def reference(self, inputs: Sequence[torch.Tensor], session: Any = None) -> tuple[torch.Tensor, ...]:
        """The outputs onnxruntime's CPU execution provider gives for ``inputs``."""
        session = session or self.session()
        feeds = {inp.name: t.detach().cpu().numpy() for inp, t in zip(self.inputs, inputs, strict=True)}
        return tuple(torch.from_numpy(o) for o in session.run(list(self.outputs), feeds))

    def to_module(self, verify: bool = True, atol: float = 1e-4, rtol: float = 1e-3) -> nn.Module:
        """The model as an nn.Module (fp32, CPU); with ``verify``, checked against onnxruntime first."""
        convert = _need("onnx2torch").convert
        proto = onnx_ops.normalized(self.proto)
        missing = onnx_ops.unconvertible(proto)
        module = convert(self._downgraded(proto, missing) if missing else proto).eval()
        module = host_shape_math(module)  # CUDA graph capture forbids device shape arithmetic
        if verify:
            self.verify(module, atol, rtol)
        return module

    def _downgraded(self, proto: Any, missing: list[str]) -> Any:
        version_converter = _need("onnx.version_converter")
        hint = f"onnx2torch cannot convert {missing} of {self.path.name}"
        try:
            lower = version_converter.convert_version(proto, CONVERTER_OPSET)
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"{hint}, and onnx cannot take it to opset {CONVERTER_OPSET}: {e}") from e
        still = onnx_ops.unconvertible(lower)
        if still:
            raise ValueError(f"{hint}, nor {still} at opset {CONVERTER_OPSET}")
        return lower

    def verify(self, module: nn.Module, atol: float = 1e-4, rtol: float = 1e-3) -> None:
        """Raise ValueError unless ``module`` gives onnxruntime's outputs on random inputs."""
        inputs = self.make_inputs(self.batch_size or 2)
        with torch.inference_mode():
            got = module(*inputs)
        got = (got,) if isinstance(got, torch.Tensor) else tuple(got)
        for name, ours, ref in zip(self.outputs, got, self.reference(inputs), strict=True):
            diff = _difference(ours, ref, atol, rtol)
            if diff:
                raise ValueError(f"{self.path.name}: converted output {name!r} differs from onnxruntime: {diff}")


def _difference(ours: torch.Tensor, ref: torch.Tensor, atol: float, rtol: float) -> str | None:
    if ours.shape != ref.shape:
        return f"shape {tuple(ours.shape)}, not {tuple(ref.shape)}"
    a, b = ours.float(), ref.float()
    if torch.allclose(a, b, rtol=rtol, atol=atol, equal_nan=True):
        return None
    return f"by up to {(a - b).abs().nan_to_num().max().item():.3g}"


def allowed_path(path: str | Path, allowed_dirs: Sequence[str | Path]) -> Path:
    """``path`` resolved, if it is an ``.onnx`` file under one of ``allowed_dirs``; ValueError otherwise."""
    if not allowed_dirs:
        raise ValueError("ONNX models load only from configured directories, and allowed_dirs is empty")
    real = Path(path).resolve()
    roots = [Path(d).resolve() for d in allowed_dirs]
    if not any(real.is_relative_to(root) for root in roots):
        raise ValueError(f"{path} resolves to {real}, outside the allowed directories {[str(r) for r in roots]}")
    if real.suffix != ".onnx" or not real.is_file():
        raise ValueError(f"{real} is not an .onnx file")
    return real


def _tensors(graph: Any) -> list[Any]:
    found = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            found += [attr.t] if attr.HasField("t") else list(attr.tensors)
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                found += _tensors(sub)
    return found


def _load_external_data(model: Any, base: Path) -> None:
    # onnx would follow any relative path in a tensor's "location"; only files beside the model are read.
    helper = _need("onnx.external_data_helper")
    external = [t for t in _tensors(model.graph) if helper.uses_external_data(t)]
    for t in external:
        location = {e.key: e.value for e in t.external_data}.get("location", "")
        target = (base / location).resolve()
        if not target.is_relative_to(base) or not target.is_file():
            raise ValueError(f"tensor {t.name!r}: external data {location!r} is not a file beside the model")
    if external:
        helper.load_external_data_for_model(model, str(base))


def _dims(value_info: Any) -> list[int | str]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


# Nodes whose first output holds the values of their first input (in another type or shape): indices that
# pass through them still index the table of the Gather they reach.
_VALUE_PRESERVING = {"Cast", "Identity", "Reshape", "Unsqueeze", "Squeeze", "Flatten"}


def _gather_axis(node: Any) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _embedding_rows(model: Any) -> dict[str, int]:
    """Graph input -> rows of the smallest table it indexes: a Gather whose data is an initializer and whose
    indices are that input (token ids, token types), directly or through casts and reshapes."""
    shapes = {t.name: list(t.dims) for t in model.graph.initializer}
    source = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type in _VALUE_PRESERVING and n.input}
    rows: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type != "Gather" or len(n.input) < 2 or n.input[0] not in shapes:
            continue
        dims, axis = shapes[n.input[0]], _gather_axis(n)
        if not -len(dims) <= axis < len(dims):
            continue
        indices = n.input[1]
        while indices in source:
            indices = source[indices]
        rows[indices] = min(dims[axis], rows.get(indices, dims[axis]))
    return rows


def _read_input(value_info: Any, given: Mapping[str, Sequence[int]], rows: Mapping[str, int]) -> tuple[OnnxInput, Any]:
    name, dims = value_info.name, _dims(value_info)
    elem = value_info.type.tensor_type.elem_type
    if elem not in _DATATYPES:
        raise ValueError(f"input {name!r} has ONNX element type {elem}, which eclip_ray does not serve")
    if not dims:
        raise ValueError(f"input {name!r} is a scalar; served inputs need a batch dimension")
    shape = tuple(given[name]) if name in given else tuple(dims[1:])
    if any(not isinstance(d, int) or d <= 0 for d in shape):
        raise ValueError(
            f"input {name!r} has symbolic dimensions {list(dims[1:])}: give input_shapes={{{name!r}: ...}}"
        )
    datatype = _DATATYPES[elem]
    high = rows.get(name) if not _TORCH[datatype].is_floating_point else None
    return OnnxInput(name, shape, datatype, high), dims[0]


def load(
    path: str | Path, allowed_dirs: Sequence[str | Path], input_shapes: Mapping[str, Sequence[int]] | None = None
) -> OnnxModel:
    """Read and check the ``.onnx`` file at ``path`` (which must lie under ``allowed_dirs``).

    ``input_shapes`` gives, per input name, the shape without the batch
    dimension, for inputs whose graph leaves dimensions symbolic.
    """
    onnx = _need("onnx")
    real = allowed_path(path, allowed_dirs)
    model = onnx.load(str(real), load_external_data=False)
    _load_external_data(model, real.parent)
    onnx.checker.check_model(model)
    initializers = {t.name for t in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    read = [_read_input(i, input_shapes or {}, _embedding_rows(model)) for i in graph_inputs]
    firsts = {b for _, b in read}  # every input's batch dimension: one fixed number, or symbolic (any batch)
    batch = next(iter(firsts)) if len(firsts) == 1 else None
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    outputs = tuple(o.name for o in model.graph.output)
    fixed = batch if isinstance(batch, int) else None
    return OnnxModel(real, model, tuple(i for i, _ in read), outputs, fixed, opset)


def zoo_entry(
    path: str | Path,
    allowed_dirs: Sequence[str | Path],
    name: str | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    verify: bool = True,
) -> ZooModel:
    """A zoo entry for the ONNX model at ``path``: ``build()`` converts it, inputs are read from the graph.

    Register it with ``eclip_ray.models.register`` to load it by ``name``
    (default: the file's stem). ``meta["onnx"]`` holds the :class:`OnnxModel`,
    for the onnxruntime runner of the CPU backend.
    """
    model = load(path, allowed_dirs, input_shapes)
    return ZooModel(
        name=name or model.path.stem,
        build=partial(model.to_module, verify),
        make_inputs=model.make_inputs,
        kind="onnx",
        input_names=tuple(i.name for i in model.inputs),
        input_shapes=tuple(i.shape for i in model.inputs),
        input_dtypes=tuple(i.datatype for i in model.inputs),
        meta={"onnx": model, "path": str(model.path), "opset": model.opset, "outputs": list(model.outputs)},
        value_ranges=lambda: tuple(None if not i.high else (0, i.high - 1) for i in model.inputs),
    )
