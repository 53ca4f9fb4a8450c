"""The optimizer's search: a sequence of MILPs, each judged by the exact cost model.

The slowdown a worker sees depends on where the other workers run, which makes
the exact problem bilinear. Two linearisations, both exact for what they hold
fixed (see docs/optimizer.md):

1. Joint MILP (ECLIP's formulation): every worker's plan is chosen at once,
   with each partition's slowdown ``alpha`` computed from the other workers'
   occupancy in a reference state. Iterated as a fixed point: the solution
   becomes the next reference. Started from plain multi-stream (every worker
   on the whole GPU) and from every worker on its smallest private partition.
2. Best response: one worker's plan is chosen with the others fixed. Then the
   slowdown it sees *and the slowdown it causes* each other worker are linear
   in its variables, so a worker can learn that moving off a neighbour's SMs
   shortens the round. Swept over the workers until nothing improves.

Every state a MILP returns is evaluated with :func:`cost.evaluate`; the best
one that meets every SLO wins. Plain multi-stream is itself a candidate, so the
result is never worse than it under the cost model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eclip_ray.partition.layout import WHOLE
from eclip_ray.planner import cost, milp
from eclip_ray.planner.cost import Mix, Prediction, State, Worker
from eclip_ray.planner.objective import score

FEASIBLE_TOL = 1e-9


@dataclass(frozen=True)
class Candidate:
    state: State
    prediction: Prediction
    score: float
    violation: float  # largest relative SLO excess; <= 0 when every SLO holds


@dataclass
class SearchLimits:
    """How long the search may iterate: fixed-point rounds per start, best-response sweeps."""

    rounds: int = 4
    sweeps: int = 2
    switch_budget: int = 14
    time_limit_s: float = 10.0


def violation(mix: Mix, p: Prediction) -> float:
    excess = [p.latency_ms[w.name] / w.slo_ms - 1 for w in mix.workers if w.slo_ms is not None]
    return max(excess, default=-1.0)


class Search:
    """Explores plans of one mix for one objective; ``run()`` returns every candidate it evaluated."""

    def __init__(self, mix: Mix, weights: milp.Weights, limits: SearchLimits) -> None:
        self.mix, self.weights, self.limits = mix, weights, limits
        self.seen: dict[State, Candidate] = {}

    def consider(self, state: State) -> Candidate:
        if state not in self.seen:
            p = cost.evaluate(self.mix, state)
            self.seen[state] = Candidate(state, p, score(self.weights, p), violation(self.mix, p))
        return self.seen[state]

    def best(self) -> Candidate | None:
        ok = [c for c in self.seen.values() if c.violation <= FEASIBLE_TOL]
        return min(ok, key=lambda c: c.score) if ok else None

    def least_violating(self) -> Candidate:
        return min(self.seen.values(), key=lambda c: (c.violation, c.score))

    def run(self) -> list[Candidate]:
        self.consider(on_partition(self.mix, lambda w: self.mix.layout.names.index(WHOLE)))
        if len(self.mix.workers) == 1:
            self._fixed_point(None, rounds=1)  # no co-runner: one exact MILP
            return list(self.seen.values())
        self._fixed_point(self.least_violating().state, self.limits.rounds)
        self._fixed_point(on_partition(self.mix, lambda w: w.parts[0]), self.limits.rounds)
        self._sweep()
        return list(self.seen.values())

    def _fixed_point(self, reference: State | None, rounds: int) -> None:
        if reference is not None:
            self.consider(reference)
        for _ in range(rounds):
            state = self._solve(*joint(self.mix, reference, self.limits.switch_budget))
            if state is None:
                return
            revisited = state in self.seen  # a fixed point, or a cycle: going on would repeat it
            self.consider(state)
            if revisited:
                return
            reference = state

    def _sweep(self) -> None:
        for _ in range(self.limits.sweeps):
            improved = False
            for v in range(len(self.mix.workers)):
                current = self.best() or self.least_violating()
                blocks, rows = best_response(self.mix, current.state, v, self.limits.switch_budget)
                choice = self._solve(blocks, rows, only=v, base=current.state)
                if choice is not None and choice not in self.seen:
                    new = self.consider(choice)
                    improved |= (new.violation, new.score) < (current.violation, current.score)
            if not improved:
                return

    def _solve(
        self, blocks: list[milp.Block], rows: list[milp.Row], only: int | None = None, base: State | None = None
    ) -> State | None:
        cols = None
        for elastic in (False, True):  # elastic SLOs only when the hard ones admit nothing at this reference
            cols = milp.solve(blocks, rows, self.weights, elastic=elastic, time_limit_s=self.limits.time_limit_s)
            if cols is not None:
                break
        if cols is None:
            return None
        workers = self.mix.workers if only is None else (self.mix.workers[only],)
        chosen = [tuple(w.parts[int(c)] for c in col) for w, col in zip(workers, cols, strict=True)]
        if only is None:
            return tuple(chosen)
        return tuple(chosen[0] if i == only else s for i, s in enumerate(base))  # type: ignore[arg-type]


def on_partition(mix: Mix, pick) -> State:
    """Every group of each worker on partition ``pick(worker)`` (a layout index)."""
    return tuple((pick(w),) * len(w.groups) for w in mix.workers)


def _block(mix: Mix, w: Worker, budget: int) -> milp.Block:
    per_sm = mix.watts_per_sm()
    dyn = None if per_sm is None else np.outer(w.work, per_sm[list(w.parts)])
    return milp.Block(len(w.groups), len(w.parts), dyn, min(budget, max(len(w.groups) - 1, 0)))


def joint(mix: Mix, reference: State | None, budget: int) -> tuple[list[milp.Block], list[milp.Row]]:
    """The joint MILP with slowdowns from ``reference`` (None: no slowdown at all)."""
    alpha = np.zeros((len(mix.workers), len(mix.layout.partitions)))
    if reference is not None:
        round_ms = cost.evaluate(mix, reference).round_ms
        alpha = cost.received(mix, cost.work_on(mix, reference), round_ms)
    blocks = [_block(mix, w, budget) for w in mix.workers]
    rows = [
        milp.Row(0.0, {i: w.ms * (1 + alpha[i, list(w.parts)])[None, :]}, i, w.switch_ms, w.slo_ms)
        for i, w in enumerate(mix.workers)
    ]
    return blocks, rows


def best_response(mix: Mix, state: State, v: int, budget: int) -> tuple[list[milp.Block], list[milp.Row]]:
    """The MILP for worker ``v`` alone, the others fixed at ``state``: slowdown received and caused."""
    round_ms = cost.evaluate(mix, state).round_ms
    work = cost.work_on(mix, state)
    on = cost.time_on(mix, state)
    alone = cost.alone_ms(mix, state)
    k = mix.interference / round_ms
    me = mix.workers[v]
    rows = []
    for i, w in enumerate(mix.workers):
        if i == v:
            alpha = cost.received(mix, work, round_ms)[v, list(me.parts)]
            rows.append(milp.Row(0.0, {0: me.ms * (1 + alpha)[None, :]}, 0, me.switch_ms, me.slo_ms))
            continue
        rest = work.sum(axis=0) - work[i] - work[v]  # everyone but i and v: fixed
        exposure = on[i] @ mix.share  # [q]: slowdown per SM-ms of work placed on q
        const = alone[i] + k * float(exposure @ rest)
        rows.append(milp.Row(const, {0: k * np.outer(me.work, exposure[list(me.parts)])}, None, 0.0, w.slo_ms))
    return [_block(mix, me, budget)], rows
