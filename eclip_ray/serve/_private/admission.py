"""How many requests of one model the HTTP front takes in at once.

Each ingress replica holds every model's requests in progress (reading the
body, waiting for a batch, running) to a limit, and refuses the excess at once
with 503 and Retry-After, before reading the body. The limit has a ceiling,
the model's share of ``ModelConfig.front_bound`` (two waves of full batches),
and, for a model with an SLO, it adapts to how long the front takes, as TCP's
congestion window does: it grows by one every ``limit`` requests that finish
within the SLO and shrinks by ``decrease`` when one does not, at most once per
SLO (the late requests of one congested spell count once). So when the front
itself is the bottleneck (a CPU-bound proxy or ingress, large bodies), fewer
requests are let in, and they finish in time, rather than all of them late.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class FrontLimit:
    """The admission limit of one model in one ingress replica.

    ``ceiling``: the most requests in progress; ``target_s``: the SLO (None: the limit stays at the ceiling);
    ``floor``: the least the limit falls to (one: the model is never locked out)."""

    def __init__(
        self,
        ceiling: int,
        target_s: float | None,
        floor: int = 1,
        decrease: float = 0.7,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= floor <= ceiling:
            raise ValueError(f"need 1 <= floor <= ceiling, got floor {floor} and ceiling {ceiling}")
        self.ceiling = ceiling
        self.target_s = target_s
        self.floor = floor
        self.decrease = decrease
        self._clock = clock
        self.window = float(ceiling)
        self.ongoing = 0
        self._last_cut = -float("inf")

    @property
    def limit(self) -> int:
        return max(self.floor, int(self.window))

    def admit(self) -> bool:
        """Take a request in (True), or not (False: the limit is reached)."""
        if self.ongoing >= self.limit:
            return False
        self.ongoing += 1
        return True

    def done(self, seconds: float) -> None:
        """An admitted request left the front after ``seconds``."""
        self.ongoing -= 1
        if self.target_s is None:
            return
        if seconds <= self.target_s:
            self.window = min(float(self.ceiling), self.window + 1.0 / self.window)
            return
        now = self._clock()
        if now - self._last_cut >= self.target_s:  # once per SLO: one congested spell is one signal
            self.window = max(float(self.floor), self.window * self.decrease)
            self._last_cut = now
