"""How a request's inputs become a model's: uint8 images normalised on the device, parts of a batch joined.

An input declared UINT8 with a ``Normalize`` (``eclip_ray/actor/spec.py``) crosses
the network and the PCIe bus as bytes, a quarter of FP32's, and becomes the float
input the model was built for as ``x * (scale / std) - mean / std`` per channel
(channels on the first axis after the batch). ``ModelRunner`` applies it at the
start of ``forward``, so a captured CUDA graph replays it on the device right after
the copy in, and adds no submodule: cut points and plans keep their names. The
onnxruntime runner of the CPU backend applies the same prologue before its session.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from eclip_ray.actor.spec import Normalize

# One input of a request or batch in host memory: a tensor, or the parts (rows of each request) to join.
HostInput = torch.Tensor | Sequence[torch.Tensor]


def parts_of(x: HostInput) -> Sequence[torch.Tensor]:
    return (x,) if isinstance(x, torch.Tensor) else x


class Prologue:
    """Per input of a model (``make_inputs`` gives its own inputs): normalise uint8, or pass it through."""

    def __init__(
        self,
        name: str,
        make_inputs: Callable[[int], tuple[torch.Tensor, ...]],
        device: torch.device,
        dtype: torch.dtype,
        normalize: Sequence[Normalize | None] = (),
    ) -> None:
        self.make_inputs, self.device, self.dtype = make_inputs, device, dtype
        made = make_inputs(1)
        self.factors: list[tuple[torch.Tensor, torch.Tensor] | None] = []
        for i, x in enumerate(made):
            norm = normalize[i] if i < len(normalize) else None
            if norm is None:
                self.factors.append(None)
                continue
            if not x.is_floating_point() or x.dim() < 2 or x.shape[1] != len(norm.mean):
                raise ValueError(
                    f"{name!r}: input {i} is {x.dtype} of shape {list(x.shape[1:])}; normalize needs a float "
                    f"input with {len(norm.mean)} channels first"
                )
            mean = torch.tensor(norm.mean, dtype=torch.float64).reshape(1, -1)
            std = torch.tensor(norm.std, dtype=torch.float64).reshape(1, -1)
            self.factors.append(((norm.scale / std).to(device, dtype), (-mean / std).to(device, dtype)))
        self.input_dtypes = tuple(t.dtype for t in self.example(1))  # as requests bring them

    def example(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """Random inputs of ``batch_size`` on the device as requests bring them: floats in ``dtype``, uint8 for
        the inputs normalised here."""
        out = []
        for t, factors in zip(self.make_inputs(batch_size), self.factors, strict=True):
            if factors is not None:
                t = torch.randint(0, 256, tuple(t.shape), dtype=torch.uint8)
            t = t.to(self.device)
            out.append(t.to(self.dtype) if t.is_floating_point() else t)
        return tuple(out)

    def __call__(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The model's inputs from the request's."""
        if not any(self.factors):
            return tuple(inputs)
        out = []
        for x, factors in zip(inputs, self.factors, strict=True):
            if factors is not None:
                scale, shift = (f.reshape(*f.shape, *([1] * (x.dim() - 2))) for f in factors)
                x = torch.addcmul(shift, x.to(self.dtype), scale)
            out.append(x)
        return tuple(out)

    def host(self, inputs: Sequence[HostInput]) -> tuple[torch.Tensor, ...]:
        """One tensor per input in host memory, cast to the dtype requests bring. Parts are joined into a copy
        (of the read-only buffers Ray hands over, which eager user code may want to write to)."""
        out = []
        for x, dt in zip(inputs, self.input_dtypes, strict=True):
            out.append((x if isinstance(x, torch.Tensor) else torch.cat(list(x))).to(dt))
        return tuple(out)
