"""The planner's knobs: grouping, the cost model and the search (defaults follow ECLIP where it has one)."""

from __future__ import annotations

from dataclasses import dataclass

from eclip_ray.planner.cost import Pressure


@dataclass(frozen=True)
class PlannerSettings:
    """Knobs of grouping, the cost model and the search."""

    switch_budget: int = 14  # partition switches per request (ECLIP's switchMax)
    max_groups: int = 20  # groups per model: the MILP's resolution (and its size)
    knee_tol: float = 0.1  # a unit's knee: fewest SMs within this fraction of its best time
    interference: float = 1.0  # slowdown when another worker keeps all of a partition's SMs busy
    contention: float = 0.0  # slowdown when the others keep every SM of the device busy, on any SMs (cost.py)
    blocking: float = 0.0  # per victim kernel, per ms of a neighbour's kernels on its SMs (cost.py)
    queueing: float = 1.0  # scale of the M/D/1 wait under open-loop arrivals
    coverage: float = 1.0  # > 1: a neighbour covering part of a victim's SMs presses less (cost.py, nesting)
    tail: Pressure | None = None  # coefficients of p99 latency (corun.json's "tail"); None: tails as medians
    switch_ms: float | None = None  # None: the profile's meta["switch_ms"], else cost.DEFAULT_SWITCH_MS
    # Per MILP. HiGHS usually finds the optimum in well under a second but can take seconds more to prove
    # it; at the limit the best plan found is used (MixPlan.optimal is then False). Raise it offline.
    time_limit_s: float = 0.6
