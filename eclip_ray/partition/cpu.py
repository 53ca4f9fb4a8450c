"""The CPU backend: no partitioning, same API, so every layer above runs in CI.

Layouts are validated against a nominal geometry (by default the H100's 132 SMs)
so that plans made for a GPU load and run unchanged; nothing is restricted.
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from eclip_ray.partition.backend import Partition, PartitionBackend
from eclip_ray.partition.layout import DeviceGeometry, PartitionSpec

NOMINAL_SMS = 132


class CpuBackend(PartitionBackend):
    name = "cpu"
    partitions_sms = False

    def __init__(self, nominal_sms: int = NOMINAL_SMS) -> None:
        self._geometry = DeviceGeometry(sm_count=nominal_sms)

    def geometry(self) -> DeviceGeometry:
        return self._geometry

    def device(self) -> torch.device:
        return torch.device("cpu")

    def create(self, spec: PartitionSpec) -> Partition:
        return Partition(spec=spec, sm_count=spec.count, stream=None)

    def new_stream(self, partition: Partition, priority: int = 0) -> None:
        return None  # no streams, so no priorities: requests run eagerly on the calling thread

    def context_fault(self) -> str | None:
        return None  # the host has no device context to lose

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "device": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "nominal_sms": self._geometry.sm_count,
            "stream_priorities": "ignored: the cpu backend has no streams",
        }
