"""Users' own models for the tests, loaded by import path (``module:factory``).

In-process tests name them ``serve_models:...`` (this file sits beside conftest.py, on pytest's path);
Ray's workers import them as ``tests.serve_models:...``, from the driver's working directory (the
repository root), which Ray puts on its workers' path.
"""

from __future__ import annotations

import torch
from torch import nn

RAY_MODULE = "tests.serve_models"


class EmbedWithMask(nn.Module):
    """Token ids into a 50-row nn.Embedding, masked by a 0/1 mask that indexes nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(50, 4)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return (self.table(ids) * mask.unsqueeze(-1).to(self.table.weight.dtype)).sum(1)


class IndexedTable(nn.Module):
    """Indexes a buffer with its integer input by plain indexing, no nn.Embedding: nothing learns a range, so a
    value past the table's 64 rows reaches the device, where it is a device-side assert (an IndexError on the
    CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("table", torch.arange(64 * 4, dtype=torch.float32).reshape(64, 4))
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return (self.table[idx] * self.scale).sum(1)


class SimulatedAssert(IndexedTable):
    """IndexedTable on the CPU backend, acting as a GPU does after a device-side assert: an index past the table
    raises a device error and leaves this process's device-context probe failing for good, so that the actor's
    sticky-fault path (fail the batches in flight, exit, be restarted by Ray) runs without a GPU."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        if int(idx.max()) >= self.table.shape[0]:
            from eclip_ray.partition.cpu import CpuBackend

            CpuBackend.context_fault = lambda _self: "simulated CUDA_ERROR_ASSERT (tests/serve_models.py)"
            raise torch.AcceleratorError("CUDA error: device-side assert triggered (simulated)")
        return super().forward(idx)
