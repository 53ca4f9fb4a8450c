"""ONNX models on the CPU backend: onnxruntime's CPU execution provider runs each request.

``OrtRunner`` has ``ModelRunner``'s CPU surface (``example_inputs``,
``host``, ``validate``, ``eager``, ``submit``, ``run``, ``close``). Plans are checked
against the cut points of the converted module, so a plan accepted here is one
the GPU path accepts too; onnxruntime then runs the whole graph at once, which
on the CPU backend (no partitions) is all a plan could mean.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from eclip_ray.graph.host import HostIO
from eclip_ray.graph.plan import Plan
from eclip_ray.graph.prologue import HostInput, Prologue
from eclip_ray.graph.runner import ModelRunner, Pending, check_plan
from eclip_ray.graph.stages import CutPoint, trace_calls
from eclip_ray.models.onnx import OnnxModel
from eclip_ray.partition.pool import StreamPool

if TYPE_CHECKING:
    from eclip_ray.actor.spec import Normalize


class OrtRunner:
    """An ONNX model served by onnxruntime on the CPU backend. ``threads``: intra-op threads (None: all)."""

    on_gpu = False
    dtype = torch.float32

    def __init__(
        self,
        name: str,
        model: OnnxModel,
        pool: StreamPool,
        threads: int | None = None,
        normalize: Sequence[Normalize | None] = (),
    ) -> None:
        if pool.device.type != "cpu":
            raise ValueError(f"{name!r}: onnxruntime runs ONNX models on the cpu backend; on a GPU use runner_for()")
        self.name, self.model, self.pool, self.device = name, model, pool, pool.device
        module = model.to_module(verify=False)  # only for its cut points; onnxruntime runs the requests
        self.prologue = Prologue(name, model.make_inputs, self.device, self.dtype, normalize)
        self.calls: list[CutPoint] = trace_calls(module, model.make_inputs(model.batch_size or 1))
        self._session = model.session(threads)
        self.host = HostIO(name, self.device, len(self.input_dtypes))

    @property
    def input_dtypes(self) -> tuple[torch.dtype, ...]:
        return self.prologue.input_dtypes

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """Random inputs of ``batch_size``, as requests bring them (uint8 for inputs it normalises)."""
        return self.prologue.example(batch_size)

    def validate(self, plan: Plan) -> None:
        """Raise PlanError unless every cut point and partition of ``plan`` exists."""
        check_plan(self.name, self.calls, self.pool, plan)

    def eager(self, inputs: Sequence[torch.Tensor], plan: Plan) -> tuple[torch.Tensor, ...]:
        """Run one request (onnxruntime's session is thread-safe, so no lock)."""
        self.validate(plan)
        return self.model.reference(self.prologue(inputs), self._session)

    def submit(self, inputs: Sequence[HostInput], plan: Plan) -> Pending:
        """Run one request (each input a tensor, or the parts of a batch); the Pending is already finished."""
        tensors = self.prologue.host(inputs)
        return Pending(self.eager(tensors, plan), None, int(tensors[0].shape[0]))

    def run(self, inputs: Sequence[HostInput], plan: Plan) -> tuple[torch.Tensor, ...]:
        """Run one request and return its outputs."""
        return self.submit(inputs, plan).result()

    def close(self) -> None:
        self._session = None


def runner_for(
    name: str,
    model: OnnxModel,
    pool: StreamPool,
    dtype: torch.dtype | None = None,
    normalize: Sequence[Normalize | None] = (),
    priority: int = 0,
) -> OrtRunner | ModelRunner:
    """onnxruntime on the CPU backend (no streams: ``priority`` ignored); on a GPU, the converted module."""
    if pool.device.type == "cpu":
        return OrtRunner(name, model, pool, normalize=normalize)
    return ModelRunner(
        name, model.to_module(), model.make_inputs, pool, dtype=dtype, normalize=normalize, priority=priority
    )
