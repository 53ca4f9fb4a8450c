"""Steering: choosing each request's plan while a mix runs, from what its models are doing now.

A static policy gives every model one plan for the whole run. A *steering*
chooses again before every request (per-batch placement) and looks at the
models' recent behaviour every ``period_s`` (an online guard that moves to a
safer plan when an SLO is breached). The request loop that drives models (the
benchmark's driver, the GPU actor) hands it a :class:`LaneView` of every model
and issues each request under the plan it returns; every plan it may return
must have been captured before the loop started.

Pure data and a protocol: no torch, CUDA or Ray, so the same steering runs in
the benchmark, in the actor and in tests with a fake executor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from eclip_ray.graph.plan import Plan


@dataclass(frozen=True)
class LaneView:
    """What one model instance is doing, as the request loop sees it at one moment.

    ``recent`` holds ``(completed_at_s, latency_ms)`` of its last completions, oldest
    first (at most the loop's history length); times are the loop's clock
    (``time.perf_counter`` seconds in the benchmark and the actor).
    """

    name: str
    inflight: int  # requests issued to the device and not finished
    backlog: int  # requests arrived and not issued yet
    arrivals: int  # requests arrived since the loop started
    completed: int  # requests finished since the loop started
    recent: Sequence[tuple[float, float]] = field(default=())


class Steering(Protocol):
    """Chooses the plan of every request of a running mix."""

    period_s: float  # how often the loop calls observe(); 0: never

    def plan(self, lane: str, views: Mapping[str, LaneView]) -> Plan:
        """The plan of ``lane``'s next request, called just before it is issued."""
        ...

    def observe(self, now: float, views: Mapping[str, LaneView]) -> None:
        """A look at every lane, about every ``period_s`` seconds (``now``: the loop's clock)."""
        ...


class Fixed:
    """The static policy as a steering: every request of a lane under that lane's one plan."""

    period_s = 0.0

    def __init__(self, plans: Mapping[str, Plan]) -> None:
        self.plans = dict(plans)

    def plan(self, lane: str, views: Mapping[str, LaneView]) -> Plan:
        return self.plans[lane]

    def observe(self, now: float, views: Mapping[str, LaneView]) -> None:
        return None
