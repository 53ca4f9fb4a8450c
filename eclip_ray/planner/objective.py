"""Objectives: what "best" means for a mix, as linear weights on round time, latencies and energy.

- ``throughput``: the shortest round (the slowest worker's latency). Minimising
  the maximum is ECLIP's fairness: a worker that finishes early only leaves SMs
  idle, so every worker's objective is folded into the round.
- ``energy``: the least energy per inference: ``idle_w * round + dynamic``.
- ``balanced``: both, each relative to plain multi-stream (every model on the
  whole GPU), so neither unit dominates.

A small weight on the sum of latencies breaks ties in favour of workers that
finish early (lower latency at the same throughput).
"""

from __future__ import annotations

from dataclasses import dataclass

from eclip_ray.errors import PlanError
from eclip_ray.planner.cost import Mix, Prediction

OBJECTIVES = ("throughput", "energy", "balanced")
TIE_BREAK = 1e-3


@dataclass(frozen=True)
class Weights:
    """Objective: ``round * round_ms + latency * sum(latency_ms) + dynamic * dynamic_mj``, divided by ``scale``."""

    round: float
    latency: float
    dynamic: float
    scale: float = 1.0


def weights(objective: str, mix: Mix, reference: Prediction) -> Weights:
    """Linear weights of ``objective`` for ``mix``; ``reference`` (multi-stream) sets the scale."""
    if objective not in OBJECTIVES:
        raise PlanError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    if objective == "throughput":
        return Weights(round=1.0, latency=TIE_BREAK, dynamic=0.0, scale=reference.round_ms)
    if mix.power is None or reference.dynamic_mj is None:
        raise PlanError(f"objective {objective!r} needs a power model (power.json beside the profiles): {mix.power_note}")
    idle = mix.power.idle_w
    ref_mj = idle * reference.round_ms + reference.dynamic_mj
    if objective == "energy":
        return Weights(round=idle, latency=TIE_BREAK * idle, dynamic=1.0, scale=ref_mj)
    return Weights(
        round=1.0 / reference.round_ms + idle / ref_mj,
        latency=TIE_BREAK / reference.round_ms,
        dynamic=1.0 / ref_mj,
    )


def score(w: Weights, p: Prediction) -> float:
    """The objective value of prediction ``p`` under weights ``w`` (lower is better)."""
    dyn = p.dynamic_mj or 0.0
    return (w.round * p.round_ms + w.latency * sum(p.latency_ms.values()) + w.dynamic * dyn) / w.scale
