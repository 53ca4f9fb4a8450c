"""Joules per inference: SM-time and inference counts per model over one energy window.

The GPU's energy counter is read over windows of several seconds (it moves in
coarse steps, eclip_ray.energy.meter); the window's joules are split among the
models by their SM-time (``eclip_ray.energy.attribute``) and divided by each
model's inferences in the window.
"""

from __future__ import annotations

from collections import defaultdict

from eclip_ray.energy import Measurement, attribute


class EnergyLedger:
    def __init__(self) -> None:
        self._sm_ms: dict[str, float] = defaultdict(float)
        self._inferences: dict[str, int] = defaultdict(int)

    def record(self, model: str, rows: int, seconds: float, sms: float) -> None:
        """A batch of ``rows`` inferences that kept ``sms`` SMs busy for ``seconds``."""
        self._sm_ms[model] += 1e3 * seconds * sms
        self._inferences[model] += rows

    def close(self, window: Measurement) -> dict[str, float]:
        """Joules per inference of each model that ran in the window; empty when the window is unreliable."""
        sm_ms = {m: v for m, v in self._sm_ms.items() if self._inferences[m] > 0}
        counts = dict(self._inferences)
        self._sm_ms.clear()
        self._inferences.clear()
        if not window.reliable or not sm_ms or sum(sm_ms.values()) <= 0:
            return {}
        joules = attribute(window, sm_ms)
        return {m: joules[m] / counts[m] for m in sm_ms}
