"""Energy measurement windows: ``begin_window(key)`` / ``end_window(key) -> Measurement``.

Vendors sit behind :class:`EnergyMeter`; the counter is converted to joules in
exactly one place (each vendor's ``_counter_j``). GPU energy counters update
coarsely (NVML's total-energy counter on the H100 moved in steps of tens of
joules, `docs/hardware.md` section 3), so a window shorter than ``min_window_s``
is returned with ``reliable=False`` instead of a made-up number.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

from eclip_ray.errors import EnergyUnavailable


@dataclass(frozen=True)
class Measurement:
    """Energy over one window."""

    seconds: float
    joules: float
    reliable: bool

    @property
    def watts(self) -> float:
        """Average power over the window, in watts."""
        return self.joules / self.seconds if self.seconds > 0 else float("nan")

    def per_inference(self, inferences: int) -> float:
        """Joules per inference over the window."""
        if inferences <= 0:
            raise ValueError("inferences must be > 0")
        return self.joules / inferences


class EnergyMeter(ABC):
    """A device's energy counter, read over named windows."""

    available: bool = True
    min_window_s: float = 1.0

    def __init__(self) -> None:
        self._open: dict[str, tuple[float, float]] = {}

    @abstractmethod
    def _counter_j(self) -> float:
        """Total energy since an arbitrary origin, in joules."""

    @abstractmethod
    def power_w(self) -> float:
        """Current power draw, in watts."""

    @abstractmethod
    def describe(self) -> dict:
        """What is measured and how, for result files."""

    def begin_window(self, key: str) -> None:
        """Start a window named ``key``; one window per key at a time."""
        if key in self._open:
            raise ValueError(f"energy window {key!r} is already open")
        self._open[key] = (time.perf_counter(), self._counter_j())

    def end_window(self, key: str) -> Measurement:
        """Close window ``key`` and return its energy."""
        try:
            t0, e0 = self._open.pop(key)
        except KeyError:
            raise ValueError(f"energy window {key!r} was never begun") from None
        e1, t1 = self._counter_j(), time.perf_counter()
        seconds = t1 - t0
        return Measurement(seconds=seconds, joules=e1 - e0, reliable=seconds >= self.min_window_s)

    def discard_window(self, key: str) -> None:
        """Forget window ``key`` without reading the counter (nothing happens if it is not open)."""
        self._open.pop(key, None)

    def close(self) -> None:
        """Release the vendor library."""


class UnavailableMeter(EnergyMeter):
    """The meter of backends that cannot measure energy: every read says so, none returns zero."""

    available = False

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    def _counter_j(self) -> float:
        raise EnergyUnavailable(self.reason)

    def power_w(self) -> float:
        raise EnergyUnavailable(self.reason)

    def describe(self) -> dict:
        return {"energy": "unavailable", "reason": self.reason}


def attribute(measurement: Measurement, sm_ms: Mapping[str, float]) -> dict[str, float]:
    """Split a window's joules among models by their share of SM-time.

    ``sm_ms`` maps each model to the SM-milliseconds it used in the window (for
    each replay, its GPU time times the SMs of the partitions it ran on). Idle
    power is spread the same way: a model that kept more of the GPU busy is
    charged more of what the GPU drew.
    """
    total = sum(sm_ms.values())
    if total <= 0:
        raise ValueError("no SM-time to attribute energy by")
    if any(v < 0 for v in sm_ms.values()):
        raise ValueError("SM-time must be >= 0")
    return {k: measurement.joules * v / total for k, v in sm_ms.items()}
