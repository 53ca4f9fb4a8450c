"""Making a converted ONNX graph capturable as a CUDA graph: its shape arithmetic runs on the host.

onnx2torch turns ``Shape`` into ``torch.tensor(x.shape, device=x.device)``: a copy from
pageable host memory to the GPU, which CUDA graph capture forbids, and the shape
arithmetic after it (``Gather``, ``Concat``, ``Reshape``) reads those values back
with ``.item()`` and ``torch.Size(...)``: device-to-host syncs, forbidden too. Exports
with a dynamic batch dimension are full of such chains (every transformer).

:func:`host_shape_math` rewrites the fx graph so that this arithmetic never touches
the GPU:

* ``Shape`` returns a host tensor.
* Small integer constants and initializers stay on the host. They become plain
  attributes, which ``.to(device)`` leaves alone.
* ``ConstantOfShape`` is rebuilt on the host (onnx2torch's reads its fill value from
  the device).
* An op whose inputs are all host tensors and that holds no tensors of its own
  computes on the host.
* Where a host tensor meets device tensors, ops that read it as sizes (``Reshape``,
  ``Expand``, ``Slice``, ...) take it as it is. Any other op gets it through
  :class:`ToDeviceOf`, which copies each value to the device once, before capture,
  and keeps it.

Every shape is fixed within one captured graph, so these values are constants of the
capture.
"""

from __future__ import annotations

from operator import attrgetter

import torch
from torch import fx, nn

# onnx2torch modules that read a host tensor input as sizes, indices or axes (Python values), not as data.
SIZE_READERS = frozenset(
    {
        "OnnxReshape",
        "OnnxExpand",
        "OnnxConstantOfShape",
        "OnnxSlice",
        "OnnxSliceV9",
        "OnnxSqueezeDynamicAxes",
        "OnnxUnsqueezeDynamicAxes",
        "OnnxTile",
        "OnnxRange",
    }
)
SMALL = 64  # integer constants up to this many elements are treated as shape values


class HostShape(nn.Module):
    """``Shape``: the sizes of the input (dimensions ``start:end``) as an int64 tensor on the host."""

    def __init__(self, start: int = 0, end: int | None = None) -> None:
        super().__init__()
        self.start, self.end = start, end

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor(x.shape[self.start : self.end], dtype=torch.int64)


class HostConstant(nn.Module):
    """A small integer constant kept on the host: a plain attribute, so ``.to(device)`` does not move it."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.host_value = value.detach().cpu().clone()

    def forward(self) -> torch.Tensor:
        return self.host_value


class HostConstantOfShape(nn.Module):
    """``ConstantOfShape`` on the host, its fill value a Python number (onnx2torch's reads a device scalar)."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.fill = value.detach().cpu().reshape(-1)[0].item()
        self.dtype = value.dtype

    def forward(self, shape: torch.Tensor) -> torch.Tensor:
        return torch.full(torch.Size(shape.tolist()), self.fill, dtype=self.dtype)


class ToDeviceOf(nn.Module):
    """A host tensor on the device of ``like`` (a floating one in ``like``'s floating dtype).

    The device copy of each distinct value is made once, outside graph capture (the runner's
    warm-up runs come first), and kept: a graph captured later reads that tensor at every replay
    and records no copy at all."""

    def __init__(self) -> None:
        super().__init__()
        self._on_device: dict[tuple, torch.Tensor] = {}

    def forward(self, host: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if host.is_floating_point() and like.is_floating_point() and host.dtype != like.dtype:
            host = host.to(like.dtype)  # as .half() on the whole model would have cast it
        if host.device == like.device:
            return host
        if like.device.type != "cuda":
            return host.to(like.device)
        key = (like.device, host.dtype, tuple(host.shape), tuple(host.flatten().tolist()))
        out = self._on_device.get(key)
        if out is None:
            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError(
                    f"shape value {key[3]} first seen during CUDA graph capture: run the model once at this "
                    "batch size before capturing it"
                )
            out = self._on_device[key] = host.to(like.device)
        return out


def _small_int(value: object) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and not value.is_floating_point()
        and not value.is_complex()
        and value.dtype != torch.bool
        and value.numel() <= SMALL
    )


def _is_small_int_constant(mod: nn.Module) -> bool:
    return type(mod).__name__ == "OnnxConstant" and _small_int(getattr(mod, "value", None))


def _holds_tensors(mod: nn.Module) -> bool:
    return any(True for _ in mod.parameters()) or any(True for _ in mod.buffers())


def host_shape_math(gm: fx.GraphModule) -> fx.GraphModule:
    """Rewrite ``gm`` (an onnx2torch result) in place so that its shape arithmetic runs on the host; returns it."""
    host: set[fx.Node] = set()
    transfers = 0
    for node in list(gm.graph.nodes):
        if node.op == "get_attr":  # initializers: small integer ones are shape values (dynamo exports)
            value = attrgetter(node.target)(gm)
            if _small_int(value):
                name = f"eclip_host_{node.target.replace('.', '_')}"
                gm.add_submodule(name, HostConstant(value))
                with gm.graph.inserting_after(node):
                    constant = gm.graph.call_module(name)
                node.replace_all_uses_with(constant)
                gm.graph.erase_node(node)
                host.add(constant)
            continue
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        kind = type(mod).__name__
        if kind == "OnnxShape":
            gm.add_submodule(node.target, HostShape(mod._start, mod._end))
            host.add(node)
            continue
        if kind == "OnnxConstantOfShape":
            gm.add_submodule(node.target, HostConstantOfShape(mod.value))
            if all(a in host for a in node.all_input_nodes):
                host.add(node)
            continue
        if _is_small_int_constant(mod):
            gm.add_submodule(node.target, HostConstant(mod.value))
            host.add(node)
            continue
        inputs = node.all_input_nodes
        hosted = [a for a in inputs if a in host]
        if not hosted:
            continue
        if len(hosted) == len(inputs) and not _holds_tensors(mod):
            host.add(node)  # computes on its (host) inputs
            continue
        if kind in SIZE_READERS:
            continue  # reads the host values as sizes
        like = next((a for a in inputs if a not in host), None)
        if like is None:  # all inputs on the host, but the module's own tensors are on the device
            continue
        for a in hosted:
            name = f"eclip_to_device_{transfers}"
            transfers += 1
            gm.add_submodule(name, ToDeviceOf())
            with gm.graph.inserting_before(node):
                moved = gm.graph.call_module(name, (a, like))
            node.replace_input_with(a, moved)
    gm.graph.lint()
    gm.recompile()
    return gm
