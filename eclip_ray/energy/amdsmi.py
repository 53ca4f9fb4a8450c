"""Energy from amdsmi: the GPU's energy accumulator, in counter ticks of ``counter_resolution`` microjoules.

The amdsmi device is found by the PCI address of the HIP device, because the
two libraries may number GPUs differently (``HIP_VISIBLE_DEVICES``). Nothing
here has run on an AMD GPU yet (docs/amd.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata
from typing import Any

from eclip_ray.energy.meter import EnergyMeter
from eclip_ray.errors import BackendError, BackendUnavailable
from eclip_ray.partition.cumask import parse_bdf


def _amdsmi():
    try:
        import amdsmi
    # amdsmi raises KeyError, not ImportError, when libamd_smi.so is missing
    except (ImportError, KeyError, OSError) as e:
        raise BackendUnavailable(
            "AMD energy needs amdsmi and ROCm's libamd_smi.so: pip install 'eclip-ray[amd]' on a ROCm machine"
        ) from e
    return amdsmi


def amdsmi_call(sm: Any, name: str, *args: Any) -> Any:
    """Call ``sm.<name>``, turning AmdSmiException into BackendError with the function's name and code."""
    try:
        return getattr(sm, name)(*args)
    except sm.AmdSmiException as e:
        raise BackendError(name, f"amdsmi error {getattr(e, 'err_code', '?')}: {e}") from e


def counter_joules(reading: dict) -> float:
    """Joules of an ``amdsmi_get_energy_count`` reading (older amdsmi named the accumulator ``power``)."""
    ticks = reading["energy_accumulator"] if "energy_accumulator" in reading else reading["power"]
    return ticks * reading["counter_resolution"] / 1e6


def match_bdf(bdfs: Sequence[str], target: str) -> int:
    """Index of the PCI address in ``bdfs`` that is ``target`` (compared as numbers, not text)."""
    want = parse_bdf(target)
    for i, bdf in enumerate(bdfs):
        if parse_bdf(bdf) == want:
            return i
    raise BackendUnavailable(f"amdsmi sees no GPU at {target}; it sees {list(bdfs)}")


def _watts(info: dict) -> float | None:
    # "current" is instantaneous on MI300-class GPUs; older GPUs report only the average ("N/A" otherwise).
    for key in ("current_socket_power", "average_socket_power"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return float(value)
    return None


class AmdSmiMeter(EnergyMeter):
    """Windows over ``amdsmi_get_energy_count``.

    Windows under ``min_window_s`` come back marked unreliable, as with NVML:
    the counter is read from firmware that updates it on its own schedule.
    """

    def __init__(self, device_index: int = 0, min_window_s: float = 1.0, bdf: str | None = None) -> None:
        super().__init__()
        self._sm = sm = _amdsmi()
        if bdf is None:
            from eclip_ray.partition.rocm import pci_bus_id

            bdf = pci_bus_id(device_index)
        self.bdf = bdf
        amdsmi_call(sm, "amdsmi_init")
        handles = amdsmi_call(sm, "amdsmi_get_processor_handles")
        bdfs = [amdsmi_call(sm, "amdsmi_get_gpu_device_bdf", h) for h in handles]
        self._handle = handles[match_bdf(bdfs, bdf)]
        self.min_window_s = min_window_s
        self._counter_j()  # fail at start, not in the first window, if the counter is not supported

    def _counter_j(self) -> float:
        return counter_joules(amdsmi_call(self._sm, "amdsmi_get_energy_count", self._handle))

    def power_w(self) -> float:
        info = amdsmi_call(self._sm, "amdsmi_get_power_info", self._handle)
        watts = _watts(info)
        if watts is None:
            raise BackendError("amdsmi_get_power_info", "N/A", f"no socket power reading for the GPU at {self.bdf}")
        return watts

    def describe(self) -> dict:
        reading = amdsmi_call(self._sm, "amdsmi_get_energy_count", self._handle)
        return {
            "energy": "amdsmi_get_energy_count",
            "counter_resolution_uj": reading["counter_resolution"],
            "min_window_s": self.min_window_s,
            "device": self.bdf,
            "amdsmi": metadata.version("amdsmi"),
        }

    def close(self) -> None:
        amdsmi_call(self._sm, "amdsmi_shut_down")
