"""The load search: the largest load scale at which a trial still passes, by bisection (pure: no GPU).

SLO attainment falls as the load rises, so the passing scales form an interval
from zero. The search brackets it from above with ``hi`` (a scale that cannot
pass: each model's SLO-goodput alone, or its isolated capacity) and tries
``floor * hi`` first: a policy that misses there gets no more windows (it
meets the SLO at no load worth the name). Otherwise it bisects ``[floor * hi,
hi]`` with the remaining ``steps - 1`` trials; the answer is the largest scale
that passed, within ``(1 - floor) * hi / 2**(steps - 1)`` of the true edge.

A search stopped early (``budget`` says no) keeps what it has and says so.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Settings:
    """How a search spends GPU time: trials, their windows, and the final measured window."""

    steps: int = 5  # trials per search, the floor's included
    window_s: float = 1.0  # each trial's measured window
    warmup_s: float = 0.3  # before each window, under the same load
    final_window_s: float = 2.0  # the window at the answer: energy, p99, attainment (>= 2 s for NVML)
    floor: float = 0.125  # the first trial, as a fraction of the bracket's top

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"a search needs at least one step, got {self.steps}")
        if not 0 < self.floor < 1:
            raise ValueError(f"the floor is a fraction of the bracket's top in (0, 1), got {self.floor}")
        if min(self.window_s, self.final_window_s) <= 0 or self.warmup_s < 0:
            raise ValueError("windows must be > 0 s and the warm-up >= 0 s")

    def trial_s(self) -> float:
        return self.warmup_s + self.window_s

    def search_s(self) -> float:
        """Seconds of GPU time a full search takes, its final window included (setup not counted)."""
        return self.steps * self.trial_s() + self.warmup_s + self.final_window_s

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Trial:
    """One tried scale and what came of it (``metrics`` is whatever the caller's trial returned)."""

    scale: float
    passed: bool
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    best: float | None  # the largest scale that passed; None: not even the floor
    bracket: tuple[float, float]
    trials: list[Trial]
    complete: bool  # False: the budget stopped it before its last step
    note: str = ""

    def best_trial(self) -> Trial | None:
        passed = [t for t in self.trials if t.passed]
        return max(passed, key=lambda t: t.scale) if passed else None

    def lowest_trial(self) -> Trial | None:
        return min(self.trials, key=lambda t: t.scale) if self.trials else None


def bisect(
    trial: Callable[[float], Trial],
    hi: float,
    settings: Settings,
    budget: Callable[[], bool] = lambda: True,
) -> Result:
    """Search ``(0, hi)``: ``trial(scale)`` runs one window and says whether it passed; ``budget()`` whether
    there is time for another."""
    if not hi > 0:
        raise ValueError(f"the bracket's top must be > 0, got {hi}")
    lo = settings.floor * hi
    trials: list[Trial] = []
    if not budget():
        return Result(None, (lo, hi), trials, False, "no time for a single trial")
    first = trial(lo)
    trials.append(first)
    if not first.passed:
        return Result(None, (lo, hi), trials, True, f"missed at the floor ({settings.floor:g} of the bracket)")
    good, bad = lo, hi
    for _ in range(settings.steps - 1):
        if not budget():
            return Result(good, (lo, hi), trials, False, "the budget ended the search early")
        t = trial((good + bad) / 2)
        trials.append(t)
        if t.passed:
            good = t.scale
        else:
            bad = t.scale
    return Result(good, (lo, hi), trials, True)
