"""The power model: GPU power at idle and with a compute-bound kernel on ``n`` SMs.

Read from ``power.json`` next to the profiles::

    {"idle_w": 90.0, "active_w": {"32": 210.0, "64": 330.0, "96": 450.0, "132": 560.0}}

``active_w[n]`` is the whole board's power while a compute-bound kernel keeps
``n`` SMs busy. The dynamic power of ``N`` busy SMs, wherever they are, is
``active_w(N) - idle_w``, interpolated linearly in ``N`` from 0 W at 0 SMs and
held at the largest measured count beyond it (the board's power limit caps
it there). On the H100 a mix drew the same power under plans that placed its
models very differently (benchmarks/results/h100/validation.json), so power
follows how many SMs are busy, not which.
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

    def dynamic_w(self, busy_sms: float) -> float:
        """Power above idle, in W, with ``busy_sms`` SMs busy on average (anywhere on the device)."""
        counts = sorted(self.active_w)
        dyn = [0.0] + [self.active_w[c] - self.idle_w for c in counts]
        return float(np.interp(max(busy_sms, 0.0), [0, *counts], dyn))

    def marginal_w(self, busy_sms: float) -> float:
        """Extra W for one more busy SM at ``busy_sms`` (0 past the largest measured count)."""
        counts = [0, *sorted(self.active_w)]
        dyn = [0.0] + [self.active_w[c] - self.idle_w for c in counts[1:]]
        for lo, hi, a, b in zip(counts, counts[1:], dyn, dyn[1:], strict=False):
            if busy_sms < hi:
                return (b - a) / (hi - lo)
        return 0.0

    def scaled(self, factor: float) -> PowerModel:
        """The same idle power with ``factor`` x the dynamic power at every count."""
        if factor <= 0:
            raise PlanError(f"power scale must be > 0, got {factor}")
        return PowerModel(self.idle_w, {n: self.idle_w + factor * (w - self.idle_w) for n, w in self.active_w.items()})

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
