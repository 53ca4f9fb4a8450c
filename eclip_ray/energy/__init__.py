"""Energy per inference: measurement windows over a vendor's energy counter."""

from __future__ import annotations

from eclip_ray.energy.meter import EnergyMeter, Measurement, UnavailableMeter, attribute


def cuda_uuid(device_index: int) -> str:
    """NVML's name (``GPU-<uuid>``) of CUDA device ``device_index`` as this process numbers it."""
    import torch

    return f"GPU-{torch.cuda.get_device_properties(device_index).uuid}"


def open_meter(backend_name: str, device_index: int = 0) -> EnergyMeter:
    """The energy meter that goes with a partition backend (``cuda``: NVML; ``rocm``: amdsmi; ``cpu``: unavailable)."""
    if backend_name == "cuda":
        from eclip_ray.energy.nvml import NvmlMeter

        return NvmlMeter(device_index, uuid=cuda_uuid(device_index))
    if backend_name == "rocm":
        from eclip_ray.energy.amdsmi import AmdSmiMeter

        return AmdSmiMeter(device_index)
    return UnavailableMeter(f"the {backend_name} backend has no energy counter")


__all__ = ["EnergyMeter", "Measurement", "UnavailableMeter", "attribute", "open_meter"]
