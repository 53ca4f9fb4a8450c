"""SM partitions: layouts as data, vendor backends, and the stream pool built from them.

Layouts are plain data and import no torch; the backends and the stream pool need torch
and are imported when first used (``eclip_ray.partition.StreamPool`` still works).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from eclip_ray.errors import BackendUnavailable
from eclip_ray.lazy import attributes
from eclip_ray.partition.layout import WHOLE, DeviceGeometry, Layout, PartitionSpec

if TYPE_CHECKING:
    from eclip_ray.partition.backend import PartitionBackend

_LAZY = {
    "Partition": "eclip_ray.partition.backend",
    "PartitionBackend": "eclip_ray.partition.backend",
    "StreamPool": "eclip_ray.partition.pool",
}


__getattr__ = attributes(__name__, _LAZY)


BACKENDS = ("auto", "cuda", "rocm", "cpu")


def choose_backend(torch_hip: str | None, torch_sees_gpu: bool, amd_gpus: int | None) -> str:
    """The backend ``auto`` opens, from what torch and hip-python see.

    ``rocm`` for a ROCm build of torch when hip-python finds an AMD GPU, ``cuda``
    for a CUDA build that sees a GPU, else ``cpu``. ``amd_gpus`` is hip-python's
    count (None: hip-python or the HIP runtime is missing). A ROCm torch that
    sees a GPU hip-python cannot reach is an error, not a silent CPU run.
    """
    if torch_hip is None:
        return "cuda" if torch_sees_gpu else "cpu"
    if amd_gpus:
        return "rocm"
    if torch_sees_gpu:
        raise BackendUnavailable(
            "torch is a ROCm build and sees an AMD GPU, but hip-python "
            + ("is missing: pip install 'eclip-ray[amd]'" if amd_gpus is None else "finds none")
            + "; pass backend='cpu' to run without partitions"
        )
    return "cpu"


def open_backend(name: str = "auto", device_index: int = 0) -> PartitionBackend:
    """Open a partition backend by name: ``cuda``, ``rocm``, ``cpu``, or ``auto`` (see :func:`choose_backend`)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    if name == "auto":
        import torch

        amd_gpus = None
        if torch.version.hip is not None:  # hip-python is only asked on ROCm builds of torch
            from eclip_ray.partition.rocm import gpu_count

            amd_gpus = gpu_count()
        name = choose_backend(torch.version.hip, torch.cuda.is_available(), amd_gpus)
    if name == "rocm":
        from eclip_ray.partition.rocm import RocmCuMaskBackend

        return RocmCuMaskBackend(device_index)
    if name == "cuda":
        import torch

        if torch.version.hip is not None:
            raise BackendUnavailable("backend 'cuda' was asked for but torch is a ROCm build; use 'rocm'")
        if not torch.cuda.is_available():
            raise BackendUnavailable("backend 'cuda' was asked for but torch sees no CUDA device")
        from eclip_ray.partition.cuda import CudaGreenBackend

        return CudaGreenBackend(device_index)
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
    "choose_backend",
    "open_backend",
]
