"""The resource-allocation optimizer: one plan per model of a co-location mix.

``optimize(profiles, layout, slo_ms, objective)`` groups every model's units,
costs the groups on the partitions each model may use, searches plans with
MILPs (``search.py``) and returns a :class:`MixPlan`: a
:class:`~eclip_ray.graph.plan.Plan` per model instance with the predicted
round time, throughput, latencies and energy per inference. An SLO no plan
can meet raises :class:`~eclip_ray.errors.InfeasibleSLO` naming the model and
the best latency the planner found for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from eclip_ray.errors import InfeasibleSLO
from eclip_ray.graph.plan import Plan
from eclip_ray.partition.layout import WHOLE, Layout
from eclip_ray.planner import cost, milp
from eclip_ray.planner.cost import Mix, Prediction, State, Worker
from eclip_ray.planner.mixes import build_mix
from eclip_ray.planner.objective import weights
from eclip_ray.planner.power import PowerModel
from eclip_ray.planner.profile import ModelProfile
from eclip_ray.planner.search import FEASIBLE_TOL, Search, SearchLimits, joint, on_partition


@dataclass(frozen=True)
class PlannerSettings:
    """Knobs of grouping, the cost model and the search (defaults follow ECLIP where it has one)."""

    switch_budget: int = 14  # partition switches per request (ECLIP's switchMax)
    max_groups: int = 30  # groups per model: the MILP's resolution
    knee_tol: float = 0.1  # a unit's knee: fewest SMs within this fraction of its best time
    interference: float = 1.0  # slowdown when another worker keeps all of a partition's SMs busy
    switch_ms: float | None = None  # None: the profile's meta["switch_ms"], else cost.DEFAULT_SWITCH_MS
    rounds: int = 4  # fixed-point rounds per start
    sweeps: int = 2  # best-response sweeps
    time_limit_s: float = 10.0  # per MILP


@dataclass(frozen=True)
class Stage:
    """A run of groups on one partition, with its SM range and predicted time in the mix."""

    partition: str
    sm_start: int
    sm_count: int
    groups: tuple[int, int]  # [first, stop) group indices
    units: tuple[int, int]  # [first, stop) unit indices
    kernels: int
    modules: tuple[str, str]  # first and last unit's module
    start_ms: float  # offset from the request's start
    ms: float


@dataclass(frozen=True)
class WorkerPlan:
    """One model instance's plan in a mix."""

    name: str
    model: str
    batch_size: int
    slot: int
    plan: Plan
    stages: tuple[Stage, ...]


@dataclass(frozen=True)
class MixPlan:
    """The optimizer's answer for a mix: a plan per model instance and what the cost model predicts."""

    objective: str
    workers: dict[str, WorkerPlan]
    predicted: Prediction
    mix: Mix = field(repr=False, compare=False)

    def plans(self) -> dict[str, Plan]:
        """Model instance name -> Plan."""
        return {n: w.plan for n, w in self.workers.items()}


def optimize(
    profiles: Mapping[str, ModelProfile],
    layout: Layout,
    slo_ms: Mapping[str, float | None] | None = None,
    objective: str = "throughput",
    *,
    power: PowerModel | None = None,
    power_note: str = "no power model given",
    slots: Mapping[str, int] | None = None,
    settings: PlannerSettings | None = None,
) -> MixPlan:
    """Plan a co-location mix: ``profiles`` maps model instance names to their profiles.

    ``slo_ms`` maps instance names to latency SLOs (absent or None: no SLO);
    ``objective`` is ``throughput``, ``energy`` or ``balanced`` (the last two
    need ``power``); ``slots`` fixes each instance's worker index in ``layout``
    (default: the order of ``profiles``). Raises InfeasibleSLO when an SLO
    cannot be met.
    """
    s = settings or PlannerSettings()
    mix = build_mix(
        profiles, layout, slots=slots, slo_ms=slo_ms, power=power, power_note=power_note,
        interference=s.interference, max_groups=s.max_groups, knee_tol=s.knee_tol, switch_ms=s.switch_ms,
    )  # fmt: skip
    return optimize_mix(mix, objective, s)


def optimize_mix(mix: Mix, objective: str = "throughput", settings: PlannerSettings | None = None) -> MixPlan:
    """Plan an already costed mix (see :func:`optimize`)."""
    s = settings or PlannerSettings()
    limits = SearchLimits(s.rounds, s.sweeps, s.switch_budget, s.time_limit_s)
    solo = {w.name: solo_best_ms(mix, i, limits) for i, w in enumerate(mix.workers) if w.slo_ms is not None}
    _check_alone(mix, solo, s.switch_budget)
    reference = cost.evaluate(mix, on_partition(mix, lambda w: mix.layout.names.index(WHOLE)))
    search = Search(mix, weights(objective, mix, reference), limits)
    search.run()
    best = search.best()
    if best is None:
        raise _infeasible_together(mix, search.least_violating().prediction, solo)
    return MixPlan(objective, worker_plans(mix, best.state, best.prediction), best.prediction, mix)


def solo_best_ms(mix: Mix, i: int, limits: SearchLimits) -> float:
    """Worker ``i``'s lowest predicted latency alone on the device (its lower bound in any mix)."""
    alone = Mix(mix.layout, (mix.workers[i],), mix.interference)
    blocks, rows = joint(alone, None, limits.switch_budget)
    rows[0].slo_ms = None
    cols = milp.solve(blocks, rows, milp.Weights(1.0, 0.0, 0.0), time_limit_s=limits.time_limit_s)
    assert cols is not None, "a MILP without SLOs always has a solution"
    w = mix.workers[i]
    return cost.evaluate(alone, (tuple(w.parts[int(c)] for c in cols[0]),)).round_ms


def _describe(w: Worker) -> str:
    return f"{w.name} ({w.model}, batch {w.batch_size})"


def _check_alone(mix: Mix, solo: dict[str, float], budget: int) -> None:
    bad = [w for w in mix.workers if w.slo_ms is not None and solo[w.name] > w.slo_ms * (1 + FEASIBLE_TOL)]
    if not bad:
        return
    w = max(bad, key=lambda w: solo[w.name] / w.slo_ms)  # type: ignore[operator]
    raise InfeasibleSLO(
        w.name,
        w.slo_ms,  # type: ignore[arg-type]
        solo[w.name],
        f"{_describe(w)}: no plan meets its SLO of {w.slo_ms:.3g} ms; the best latency achievable is "
        f"{solo[w.name]:.3f} ms, alone on the GPU with at most {budget} partition switches",
    )


def _infeasible_together(mix: Mix, least: Prediction, solo: dict[str, float]) -> InfeasibleSLO:
    w = max((w for w in mix.workers if w.slo_ms is not None), key=lambda w: least.latency_ms[w.name] / w.slo_ms)
    others = ", ".join(f"{o.name} {o.slo_ms:.3g} ms" for o in mix.workers if o is not w and o.slo_ms is not None)
    best = least.latency_ms[w.name]
    return InfeasibleSLO(
        w.name,
        w.slo_ms,  # type: ignore[arg-type]
        best,
        f"{_describe(w)}: no plan meets its SLO of {w.slo_ms:.3g} ms in this mix"
        + (f" together with the SLOs of {others}" if others else "")
        + f"; the best latency achievable found is {best:.3f} ms (in the plan that violates the SLOs least; "
        f"alone on the GPU it could take {solo[w.name]:.3f} ms)",
    )


def worker_plans(mix: Mix, state: State, p: Prediction) -> dict[str, WorkerPlan]:
    """The plans of ``state`` with per-stage SM ranges and predicted times."""
    alpha = cost.received(mix, cost.work_on(mix, state), p.round_ms)
    out = {}
    for i, (w, choice) in enumerate(zip(mix.workers, state, strict=True)):
        stages = _stages(mix, w, choice, alpha[i])
        out[w.name] = WorkerPlan(w.name, w.model, w.batch_size, w.slot, w.plan(choice, mix.layout), stages)
    return out


def _stages(mix: Mix, w: Worker, choice: tuple[int, ...], alpha: np.ndarray) -> tuple[Stage, ...]:
    stages, first, clock = [], 0, 0.0
    for g in range(1, len(choice) + 1):
        if g < len(choice) and choice[g] == choice[first]:
            continue
        stage = _stage(mix, w, choice[first], first, g, clock, alpha)
        stages.append(stage)
        clock = stage.start_ms + stage.ms + w.switch_ms
        first = g
    return tuple(stages)


def _stage(mix: Mix, w: Worker, part: int, first: int, stop: int, clock: float, alpha: np.ndarray) -> Stage:
    spec = mix.layout.partitions[part]
    u0, u1 = w.groups[first].first, w.groups[stop - 1].stop
    units = w.profile.units[u0:u1]
    ms = float(w.ms[first:stop, w.column(part)].sum() * (1 + alpha[part]))
    return Stage(
        spec.name, spec.start, spec.count, (first, stop), (u0, u1),
        sum(len(u.kernels) for u in units), (units[0].module, units[-1].module), clock, ms,
    )  # fmt: skip
