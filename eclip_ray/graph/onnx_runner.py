"""ONNX models on the CPU backend: onnxruntime's CPU execution provider runs each request.

``OrtRunner`` has ``ModelRunner``'s CPU surface (``example_inputs``,
``validate``, ``eager``, ``submit``, ``run``, ``close``). Plans are checked
against the cut points of the converted module, so a plan accepted here is one
the GPU path accepts too; onnxruntime then runs the whole graph at once, which
on the CPU backend (no partitions) is all a plan could mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from eclip_ray.graph.plan import Plan
from eclip_ray.graph.runner import ModelRunner, Pending, check_plan
from eclip_ray.graph.stages import CutPoint, trace_calls
from eclip_ray.models.onnx import OnnxModel
from eclip_ray.partition.pool import StreamPool


class OrtRunner:
    """An ONNX model served by onnxruntime on the CPU backend. ``threads``: intra-op threads (None: all)."""

    on_gpu = False
    dtype = torch.float32

    def __init__(self, name: str, model: OnnxModel, pool: StreamPool, threads: int | None = None) -> None:
        if pool.device.type != "cpu":
            raise ValueError(f"{name!r}: onnxruntime runs ONNX models on the cpu backend; on a GPU use runner_for()")
        self.name, self.model, self.pool, self.device = name, model, pool, pool.device
        module = model.to_module(verify=False)  # only for its cut points; onnxruntime runs the requests
        self.calls: list[CutPoint] = trace_calls(module, model.make_inputs(model.batch_size or 1))
        self._session = model.session(threads)

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """Random inputs of ``batch_size``, as the graph declares them."""
        return self.model.make_inputs(batch_size)

    def validate(self, plan: Plan) -> None:
        """Raise PlanError unless every cut point and partition of ``plan`` exists."""
        check_plan(self.name, self.calls, self.pool, plan)

    def eager(self, inputs: Sequence[torch.Tensor], plan: Plan) -> tuple[torch.Tensor, ...]:
        """Run one request (onnxruntime's session is thread-safe, so no lock)."""
        self.validate(plan)
        return self.model.reference(inputs, self._session)

    def submit(self, inputs: Sequence[torch.Tensor], plan: Plan) -> Pending:
        """Run one request; the Pending is already finished."""
        return Pending(self.eager(inputs, plan), None, int(inputs[0].shape[0]))

    def run(self, inputs: Sequence[torch.Tensor], plan: Plan) -> tuple[torch.Tensor, ...]:
        """Run one request and return its outputs."""
        return self.submit(inputs, plan).result()

    def close(self) -> None:
        self._session = None


def runner_for(
    name: str, model: OnnxModel, pool: StreamPool, dtype: torch.dtype | None = None, priority: int = 0
) -> OrtRunner | ModelRunner:
    """onnxruntime on the CPU backend (no streams: ``priority`` ignored); on a GPU, the converted module."""
    if pool.device.type == "cpu":
        return OrtRunner(name, model, pool)
    return ModelRunner(name, model.to_module(), model.make_inputs, pool, dtype=dtype, priority=priority)
