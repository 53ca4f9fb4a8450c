"""Energy per inference: measurement windows over a vendor's energy counter."""

from __future__ import annotations

from eclip_ray.energy.meter import EnergyMeter, Measurement, UnavailableMeter, attribute


def open_meter(backend_name: str, device_index: int = 0) -> EnergyMeter:
    """The energy meter that goes with a partition backend (``cuda``: NVML; ``cpu``: unavailable)."""
    if backend_name == "cuda":
        from eclip_ray.energy.nvml import NvmlMeter

        return NvmlMeter(device_index)
    return UnavailableMeter(f"the {backend_name} backend has no energy counter")


__all__ = ["EnergyMeter", "Measurement", "UnavailableMeter", "attribute", "open_meter"]
