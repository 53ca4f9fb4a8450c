"""The resource-allocation optimizer: one plan per model of a co-location mix.

``optimize(profiles, layout, slo_ms, objective)`` groups every model's units,
costs the groups on the partitions each model may use, searches plans with
MILPs (``search.py``) and returns a :class:`MixPlan`: a
:class:`~eclip_ray.graph.plan.Plan` per model instance with the predicted
throughput, latencies and energy per inference. An SLO no plan
can meet raises :class:`~eclip_ray.errors.InfeasibleSLO` naming the model and
the best latency it can reach.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from eclip_ray.graph.plan import Plan
from eclip_ray.partition.layout import Layout
from eclip_ray.planner import cost, diagnosis
from eclip_ray.planner.cost import Mix, Prediction, State, Worker
from eclip_ray.planner.mixes import build_mix
from eclip_ray.planner.objective import check as objective_check
from eclip_ray.planner.power import PowerModel
from eclip_ray.planner.profile import ModelProfile
from eclip_ray.planner.search import Search
from eclip_ray.planner.settings import PlannerSettings


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
    optimal: bool  # False when the MILP stopped at its time limit (the plan is then the best found)
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
    ``objective`` is ``throughput``, ``energy`` or ``balanced``; ``power`` (the
    device's power model) lets the prediction include energy per inference;
    ``slots`` fixes each instance's worker index in ``layout`` (default: the
    order of ``profiles``). Raises InfeasibleSLO when an SLO cannot be met.
    """
    s = settings or PlannerSettings()
    mix = build_mix(profiles, layout, slots=slots, slo_ms=slo_ms, power=power, power_note=power_note, settings=s)
    return optimize_mix(mix, objective, s)


def optimize_mix(mix: Mix, objective: str = "throughput", settings: PlannerSettings | None = None) -> MixPlan:
    """Plan an already costed mix (see :func:`optimize`)."""
    s = settings or PlannerSettings()
    objective_check(objective, mix)
    search = Search(mix, objective, s.switch_budget, s.time_limit_s)
    best = search.run()
    if best is None:
        raise diagnosis.explain(search)
    return MixPlan(objective, worker_plans(mix, best.state, best.prediction), best.prediction, search.optimal, mix)


def worker_plans(mix: Mix, state: State, p: Prediction) -> dict[str, WorkerPlan]:
    """The plans of ``state`` with per-stage SM ranges and predicted times."""
    work = cost.work_on(mix, state)
    alpha, wait = cost.received(mix, work), cost.blocked(mix, work)
    out = {}
    for i, (w, choice) in enumerate(zip(mix.workers, state, strict=True)):
        stages = _stages(mix, w, choice, alpha[i], wait[i])
        out[w.name] = WorkerPlan(w.name, w.model, w.batch_size, w.slot, w.plan(choice, mix.layout), stages)
    return out


def _stages(mix: Mix, w: Worker, choice: tuple[int, ...], alpha: np.ndarray, wait: np.ndarray) -> tuple[Stage, ...]:
    stages, first, clock = [], 0, 0.0
    for g in range(1, len(choice) + 1):
        if g < len(choice) and choice[g] == choice[first]:
            continue
        stage = _stage(mix, w, choice[first], first, g, clock, alpha, wait)
        stages.append(stage)
        clock = stage.start_ms + stage.ms + w.switch_ms
        first = g
    return tuple(stages)


def _stage(
    mix: Mix, w: Worker, part: int, first: int, stop: int, clock: float, alpha: np.ndarray, wait: np.ndarray
) -> Stage:
    spec = mix.layout.partitions[part]
    u0, u1 = w.groups[first].first, w.groups[stop - 1].stop
    units = w.profile.units[u0:u1]
    ms = float(w.ms[first:stop, w.column(part)].sum() * (1 + alpha[part]) + w.launches[first:stop].sum() * wait[part])
    return Stage(
        partition=spec.name,
        sm_start=spec.start,
        sm_count=spec.count,
        groups=(first, stop),
        units=(u0, u1),
        kernels=sum(len(u.kernels) for u in units),
        modules=(units[0].module, units[-1].module),
        start_ms=clock,
        ms=ms,
    )
