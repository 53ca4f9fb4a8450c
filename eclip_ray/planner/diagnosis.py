"""Why no plan meets the SLOs: the best latency each model can reach, in the mix and alone.

A model's best latency *in the mix* is the optimum of the MILP that minimises
its latency alone, every other model free to go wherever slows it least (no
SLOs). Alone, it is the same with no other model. If some model's best in the
mix misses its SLO, that model is named. Otherwise the SLOs only conflict with
each other: an elastic MILP (SLO excess allowed, heavily penalised) finds the
plan that misses them least, and the model that misses its SLO most there is
named.
"""

from __future__ import annotations

from eclip_ray.errors import InfeasibleSLO, PlanError
from eclip_ray.planner import cost, formulation
from eclip_ray.planner.cost import Mix, Worker
from eclip_ray.planner.objective import latency_of, weights
from eclip_ray.planner.search import Search


def best_latency_ms(mix: Mix, i: int, budget: int, time_limit_s: float = 10.0) -> float:
    """Worker ``i``'s lowest predicted p99 in ``mix`` (SLOs ignored, the others placed to help it).

    The MILP minimises its median latency; the plan's tail is what is reported (they coincide
    without a tail model)."""
    free = mix.without_slos()
    f = formulation.build(free, latency_of(free, i), budget)
    solution = f.program.solve(time_limit_s)
    if solution is None:
        raise AssertionError("a MILP without SLOs always has a plan")
    return cost.evaluate(free, f.decode(free, solution.values)).tail(mix.workers[i].name)


def explain(search: Search) -> InfeasibleSLO:
    """The error for a searched mix whose SLOs no plan meets."""
    mix, budget = search.mix, search.switch_budget
    slo = [i for i, w in enumerate(mix.workers) if w.slo_ms is not None]
    in_mix = {i: best_latency_ms(mix, i, budget, search.time_limit_s) for i in slo}
    missed = [i for i in slo if in_mix[i] > mix.workers[i].slo_ms]  # type: ignore[operator]
    if missed:
        i = max(missed, key=lambda i: in_mix[i] / mix.workers[i].slo_ms)  # type: ignore[operator]
        return _unreachable(mix, i, in_mix[i], budget, search.time_limit_s)
    return _conflicting(search, in_mix)


def _unreachable(mix: Mix, i: int, best: float, budget: int, time_limit_s: float) -> InfeasibleSLO:
    w = mix.workers[i]
    solo = best_latency_ms(mix.only(i), 0, budget, time_limit_s)
    return InfeasibleSLO(
        w.name,
        w.slo_ms,  # type: ignore[arg-type]
        best,
        f"{_describe(w)}: no plan meets its SLO of {w.slo_ms:g} ms; the best latency achievable is "
        f"{best:.3f} ms in this mix ({solo:.3f} ms alone on the GPU), with at most {budget} partition switches",
    )


def _conflicting(search: Search, in_mix: dict[int, float]) -> InfeasibleSLO:
    mix = search.mix
    try:
        # at the time limit the best found will do: it only words the message
        state = search.solve(weights(search.objective, mix, search.multi_stream, search.multi_stream), elastic=True)
    except PlanError:
        state = None
    least = search.consider(state) if state is not None else min(search.seen.values(), key=lambda c: c.violation)
    late = {w.name: least.prediction.tail(w.name) for w in mix.workers}
    w = max((w for w in mix.workers if w.slo_ms is not None), key=lambda w: late[w.name] / w.slo_ms)  # type: ignore[operator]
    i = mix.workers.index(w)
    others = ", ".join(f"{o.name} ({o.slo_ms:g} ms)" for o in mix.workers if o is not w and o.slo_ms is not None)
    return InfeasibleSLO(
        w.name,
        w.slo_ms,  # type: ignore[arg-type]
        in_mix[i],
        f"{_describe(w)}: its SLO of {w.slo_ms:g} ms cannot be met together with the SLOs of {others}: "
        f"its best latency in this mix is {in_mix[i]:.3f} ms, but in the plan that misses the SLOs least "
        f"it takes {late[w.name]:.3f} ms",
    )


def _describe(w: Worker) -> str:
    return f"{w.name} ({w.model}, batch {w.batch_size})"
