"""The GPU actor's energy: the meter read over windows, and joules per inference per model.

The GPU's energy counter is read over windows of several seconds (it moves in
coarse steps, ``eclip_ray/energy/meter.py``). :class:`EnergyLoop` opens a window
with the actor's first batch and closes one every ``window_s``; the
:class:`EnergyLedger` splits each window's joules among the models by their
SM-time (``eclip_ray.energy.attribute``) and divides by each model's inferences
in the window. The meter never fails a request: NVML failing at start or later
turns energy off (the meter becomes an ``UnavailableMeter`` with the reason), and
one failed window is dropped, not the actor.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from eclip_ray.energy import Measurement, UnavailableMeter, attribute
from eclip_ray.errors import EclipError, EnergyUnavailable

log = logging.getLogger(__name__)

WINDOW = "eclip_ray.actor"


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


class EnergyLoop:
    """Energy windows of ``runtime.meter`` every ``window_s``, published through ``metrics`` and ``on_model``.

    ``on_model(model, joules_per_inference)`` is called for each model that ran in a closed window. ``gpu`` names
    the GPU in logs and reasons.
    """

    def __init__(
        self,
        runtime: Any,
        metrics: Any,
        window_s: float,
        gpu: int,
        on_model: Callable[[str, float], None],
    ) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.window_s = window_s
        self.gpu = gpu
        self.on_model = on_model
        self.ledger = EnergyLedger()
        self.joules = 0.0
        self.power_w: float | None = None
        self.task: asyncio.Task | None = None

    def record(self, model: str, rows: int, seconds: float, sms: float) -> None:
        self.ledger.record(model, rows, seconds, sms)

    def start(self) -> None:
        """Open the first window and start the loop (once, from the event loop), if the meter is available."""
        if self.task is not None or not self.runtime.meter.available:
            return
        try:
            self.runtime.meter.begin_window(WINDOW)
        except EclipError as e:  # NVML failing must not fail the batch that opened the window
            self.off(e)
            return
        self.task = asyncio.get_running_loop().create_task(self._loop())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    def off(self, e: Exception) -> None:
        """Energy off for good, with the reason in ``describe()``."""
        reason = f"the energy meter failed on GPU {self.gpu} ({type(e).__name__}: {e}); energy metrics stop"
        log.warning("%s", reason)
        meter, self.runtime.meter = self.runtime.meter, UnavailableMeter(reason)
        try:
            meter.close()
        except EclipError:
            log.exception("closing the failed energy meter of GPU %d", self.gpu)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.window_s)
            try:
                self.tick()
            except EnergyUnavailable as e:
                self.off(e)
                return
            except EclipError:  # an NVML hiccup costs one window, not the actor
                log.exception("energy window failed on GPU %d", self.gpu)
                meter = self.runtime.meter
                meter.discard_window(WINDOW)
                try:
                    meter.begin_window(WINDOW)
                except EclipError as e:
                    self.off(e)
                    return

    def tick(self) -> None:
        """Close the energy window, publish power, energy and joules per inference, and open the next."""
        meter = self.runtime.meter
        window = meter.end_window(WINDOW)
        meter.begin_window(WINDOW)
        self.joules += window.joules
        self.power_w = meter.power_w()
        self.metrics.energy(window.joules)
        self.metrics.power(self.power_w)
        for model, joules in self.ledger.close(window).items():
            self.on_model(model, joules)
            self.metrics.joules_per_inference(model, joules)

    def describe(self) -> dict[str, Any]:
        """``available``, and the joules and watts so far, or the reason energy is off."""
        meter = self.runtime.meter
        if meter.available:
            return {"available": True, "joules": self.joules, "watts": self.power_w}
        return {"available": False, "reason": meter.describe().get("reason")}
