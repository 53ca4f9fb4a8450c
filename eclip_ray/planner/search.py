"""The optimizer's search: MILP steps judged by the exact cost model.

Candidates are plain multi-stream (every model on the whole GPU), every static
placement (each model wholly on one of its partitions, up to ``STATIC_LIMIT``
of them), and the plans of a few MILP steps. Each step minimises the linear
model of the objective at the best plan so far (``objective.weights``); the
MILP (``formulation.py``) is exact for that model and for every constraint
(partitions, switch budget, SLOs). Steps stop when one does not improve the
exact criterion, after ``steps`` of them, or when the time budget is spent.
The best candidate that meets every SLO wins, so the answer is never worse
than multi-stream or any static placement under the cost model, even when a
MILP stops at its time limit. When the SLOs admit no plan, ``diagnosis.py``
says why.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

from eclip_ray.errors import PlanError
from eclip_ray.partition.layout import WHOLE
from eclip_ray.planner import cost, formulation
from eclip_ray.planner.cost import Mix, Prediction, State
from eclip_ray.planner.objective import Weights, criterion, weights

FEASIBLE_TOL = 1e-9
STATIC_LIMIT = 512  # static placements evaluated at most (4 partitions per worker: up to 4 workers)
MIN_STEP_S = 0.05  # a MILP step with less time than this left is not started


@dataclass(frozen=True)
class Candidate:
    state: State
    prediction: Prediction
    score: float  # the exact criterion, lower is better
    violation: float  # largest relative SLO excess; <= 0 when every SLO holds


def violation(mix: Mix, p: Prediction) -> float:
    """The largest relative SLO excess of ``p``'s predicted p99s (<= 0: every SLO holds; -1 without SLOs)."""
    excess = [p.tail(w.name) / w.slo_ms - 1 for w in mix.workers if w.slo_ms is not None]
    return max(excess, default=-1.0)


def everyone_whole(mix: Mix) -> State:
    """Plain multi-stream: every group of every worker on the whole GPU."""
    whole = mix.layout.names.index(WHOLE)
    return tuple((whole,) * len(w.groups) for w in mix.workers)


def static_placements(mix: Mix) -> list[State]:
    """Every way of putting each worker wholly on one of its partitions (none past ``STATIC_LIMIT``)."""
    if math.prod(len(w.parts) for w in mix.workers) > STATIC_LIMIT:
        return []
    return [
        tuple((p,) * len(w.groups) for w, p in zip(mix.workers, combo, strict=True))
        for combo in itertools.product(*(w.parts for w in mix.workers))
    ]


class Search:
    """Plans of one mix for one objective; ``run()`` fills ``seen`` with every candidate evaluated."""

    def __init__(self, mix: Mix, objective: str, switch_budget: int, time_limit_s: float, steps: int = 3) -> None:
        self.mix, self.objective, self.steps = mix, objective, steps
        self.switch_budget, self.time_limit_s = switch_budget, time_limit_s
        self.multi_stream = cost.evaluate(mix, everyone_whole(mix))
        self.seen: dict[State, Candidate] = {}
        self.optimal = True  # False when a MILP stopped at its time limit

    def consider(self, state: State) -> Candidate:
        if state not in self.seen:
            p = cost.evaluate(self.mix, state)
            score = criterion(self.objective, p, self.multi_stream)
            self.seen[state] = Candidate(state, p, score, violation(self.mix, p))
        return self.seen[state]

    def best(self) -> Candidate | None:
        ok = [c for c in self.seen.values() if c.violation <= FEASIBLE_TOL]
        return min(ok, key=lambda c: c.score) if ok else None

    def run(self) -> Candidate | None:
        """The best candidate that meets every SLO, or None when there is none."""
        self.consider(everyone_whole(self.mix))
        for state in static_placements(self.mix):
            self.consider(state)
        deadline = time.perf_counter() + self.time_limit_s
        for _ in range(self.steps):
            at = self.best() or self.consider(everyone_whole(self.mix))
            left = deadline - time.perf_counter()
            if left < MIN_STEP_S or not self._step(at, left):
                break
        return self.best()

    def _step(self, at: Candidate, time_left_s: float) -> bool:
        """One MILP step from ``at``; whether it found a better plan."""
        w = weights(self.objective, self.mix, at.prediction, self.multi_stream)
        try:
            state = self.solve(w, time_limit_s=time_left_s)
        except PlanError:
            self.optimal = False  # no plan within the time left: the candidates so far stand
            return False
        if state is None:
            return False  # infeasible SLOs: no later step can do better
        new = self.consider(state)
        return (new.violation > FEASIBLE_TOL, new.score) < (at.violation > FEASIBLE_TOL, at.score - 1e-12)

    def solve(self, w: Weights, elastic: bool = False, time_limit_s: float | None = None) -> State | None:
        """The MILP's plan for weights ``w`` (with ``elastic`` SLOs: the one that misses them least)."""
        f = formulation.build(self.mix, w, self.switch_budget, elastic)
        solution = f.program.solve(self.time_limit_s if time_limit_s is None else time_limit_s)
        if solution is None:
            return None
        self.optimal &= solution.optimal
        return f.decode(self.mix, solution.values)
