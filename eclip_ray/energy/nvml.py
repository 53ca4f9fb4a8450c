"""Energy from NVML (nvidia-ml-py): the total-energy counter, in mJ since the driver loaded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from eclip_ray.energy.meter import EnergyMeter
from eclip_ray.errors import BackendError, BackendUnavailable


def _nvml():
    try:
        import pynvml
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise BackendUnavailable("NVML energy needs nvidia-ml-py: pip install 'eclip-ray[nvidia]'") from e
    return pynvml


def nvml_call(fn: Callable[..., Any], *args: Any) -> Any:
    """Call an NVML function, turning NVMLError into BackendError with the function's name and code."""
    nv = _nvml()
    try:
        return fn(*args)
    except nv.NVMLError as e:
        raise BackendError(fn.__name__, f"NVML error {getattr(e, 'value', '?')}: {e}") from e


class NvmlMeter(EnergyMeter):
    """Windows over ``nvmlDeviceGetTotalEnergyConsumption``.

    The counter on the H100 moves in coarse steps, so windows under
    ``min_window_s`` (1 s by default) come back marked unreliable; benchmarks
    measure over windows of 10 s.
    """

    def __init__(self, device_index: int = 0, min_window_s: float = 1.0, uuid: str | None = None) -> None:
        super().__init__()
        self._nv = nv = _nvml()
        nvml_call(nv.nvmlInit)
        # NVML numbers every GPU of the host; CUDA (and Ray, through CUDA_VISIBLE_DEVICES) only the visible
        # ones, so a CUDA device is found by its UUID when one is given.
        if uuid is not None:
            self._handle = nvml_call(nv.nvmlDeviceGetHandleByUUID, uuid)
        else:
            self._handle = nvml_call(nv.nvmlDeviceGetHandleByIndex, device_index)
        self.min_window_s = min_window_s
        self._counter_j()  # fail at start, not in the first window, if the counter is not supported

    def _counter_j(self) -> float:
        return nvml_call(self._nv.nvmlDeviceGetTotalEnergyConsumption, self._handle) / 1e3

    def power_w(self) -> float:
        return nvml_call(self._nv.nvmlDeviceGetPowerUsage, self._handle) / 1e3

    def power_limit_w(self) -> float:
        """Enforced power limit, in watts."""
        return nvml_call(self._nv.nvmlDeviceGetEnforcedPowerLimit, self._handle) / 1e3

    def describe(self) -> dict:
        return {
            "energy": "nvmlDeviceGetTotalEnergyConsumption",
            "min_window_s": self.min_window_s,
            "driver": nvml_call(self._nv.nvmlSystemGetDriverVersion),
            "device": nvml_call(self._nv.nvmlDeviceGetName, self._handle),
            "power_limit_w": self.power_limit_w(),
        }

    def close(self) -> None:
        nvml_call(self._nv.nvmlShutdown)
