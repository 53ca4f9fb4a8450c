"""The power model: GPU power at idle and with a compute-bound kernel on ``n`` SMs.

Read from ``power.json`` next to the profiles::

    {"idle_w": 90.0, "active_w": {"32": 210.0, "64": 330.0, "96": 450.0, "132": 560.0}}

``active_w[n]`` is the whole board's power while a compute-bound kernel keeps
``n`` SMs busy. Busy SMs are charged ``(active_w[n] - idle_w) / n`` watts each,
interpolated linearly in ``n`` (with no dynamic power at 0 SMs); above the
largest measured count nothing is extrapolated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eclip_ray.errors import PlanError

FILENAME = "power.json"


@dataclass(frozen=True)
class PowerModel:
    """Board power in watts: ``idle_w`` at idle, ``active_w[n]`` with ``n`` SMs saturated."""

    idle_w: float
    active_w: dict[int, float]

    def __post_init__(self) -> None:
        if self.idle_w < 0 or not self.active_w:
            raise PlanError(f"power model needs idle_w >= 0 and at least one active_w entry, got {self}")
        low = {n: w for n, w in self.active_w.items() if n <= 0 or w < self.idle_w}
        if low:
            raise PlanError(f"power model: active_w {low} must be at counts > 0 and at least idle_w {self.idle_w}")

    def watts_per_sm(self, n: int) -> float:
        """Dynamic power of one busy SM when ``n`` SMs are busy, in W."""
        counts = sorted(self.active_w)
        if n > counts[-1] or n <= 0:
            raise PlanError(f"power model measured up to {counts[-1]} SMs; {n} SMs is outside it")
        dyn = [0.0] + [self.active_w[c] - self.idle_w for c in counts]
        return float(np.interp(n, [0, *counts], dyn)) / n

    def to_dict(self) -> dict:
        return {"idle_w": self.idle_w, "active_w": {str(n): w for n, w in sorted(self.active_w.items())}}

    @classmethod
    def from_dict(cls, data: dict) -> PowerModel:
        try:
            return cls(float(data["idle_w"]), {int(n): float(w) for n, w in data["active_w"].items()})
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise PlanError(f"malformed power model {data!r}: {e!r}") from e

    @classmethod
    def load(cls, path: str | Path) -> PowerModel:
        """Read ``power.json`` (or the ``power.json`` inside directory ``path``)."""
        path = Path(path)
        if path.is_dir():
            path = path / FILENAME
        return cls.from_dict(json.loads(path.read_text()))
