"""SM partitions: layouts as data, vendor backends, and the stream pool built from them."""

from __future__ import annotations

from eclip_ray.errors import BackendUnavailable
from eclip_ray.partition.backend import Partition, PartitionBackend
from eclip_ray.partition.layout import WHOLE, DeviceGeometry, Layout, PartitionSpec
from eclip_ray.partition.pool import StreamPool

BACKENDS = ("auto", "cuda", "cpu")


def open_backend(name: str = "auto", device_index: int = 0) -> PartitionBackend:
    """Open a partition backend by name: ``cuda``, ``cpu``, or ``auto`` (cuda when a GPU is seen, else cpu)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    if name in ("auto", "cuda"):
        import torch

        if torch.cuda.is_available():
            from eclip_ray.partition.cuda import CudaGreenBackend

            return CudaGreenBackend(device_index)
        if name == "cuda":
            raise BackendUnavailable("backend 'cuda' was asked for but torch sees no CUDA device")
    from eclip_ray.partition.cpu import CpuBackend

    return CpuBackend()


__all__ = [
    "WHOLE",
    "DeviceGeometry",
    "Layout",
    "Partition",
    "PartitionBackend",
    "PartitionSpec",
    "StreamPool",
    "open_backend",
]
