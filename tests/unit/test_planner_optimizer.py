"""The optimizer: feasibility, switch budget, SLOs, objectives, and a brute-force cross-check (no GPU)."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
from planner_fixtures import POWER, brute_force, layout, random_mix, switchy_pair

from eclip_ray.errors import InfeasibleSLO, PlanError
from eclip_ray.partition.layout import WHOLE
from eclip_ray.planner import PlannerSettings, baselines, cost, diagnosis, formulation, optimize
from eclip_ray.planner.mixes import build_mix
from eclip_ray.planner.objective import OBJECTIVES, Weights, criterion
from eclip_ray.planner.search import everyone_whole, static_placements, violation

RANDOM = [(seed, workers) for seed in range(4) for workers in (1, 2, 3)]


def _multi_stream(mix):
    return baselines.predict(mix)["multi-stream"].prediction


@pytest.mark.parametrize(("seed", "workers"), RANDOM)
def test_every_plan_is_feasible_for_the_pool_and_the_model(seed, workers):
    profs = random_mix(seed, workers, units=16)
    result = optimize(profs, layout(workers), power=POWER)
    for slot, (name, prof) in enumerate(profs.items()):
        wp = result.workers[name]
        assert wp.slot == slot
        assert all(p == WHOLE or p.startswith(f"w{slot}.") for p in wp.plan.partitions)
        order = [u.cut for u in prof.units]
        assert [order.index(c) for c in wp.plan.cuts] == sorted(order.index(c) for c in wp.plan.cuts)
        assert wp.plan == wp.plan.compact()
        assert wp.stages[0].units[0] == 0 and wp.stages[-1].units[1] == len(prof.units)
        assert all(a.units[1] == b.units[0] for a, b in itertools.pairwise(wp.stages))
        assert sum(s.ms for s in wp.stages) + wp.plan.switches * 0.01 == pytest.approx(
            result.predicted.latency_ms[name]
        )


def _throughput(result):
    return criterion("throughput", result.predicted, _multi_stream(result.mix))


def test_the_switch_budget_is_respected_and_binds():
    scores = []
    for budget in range(5):
        result = optimize(switchy_pair(), layout(2), settings=PlannerSettings(switch_budget=budget))
        assert all(w.plan.switches <= budget for w in result.workers.values())
        scores.append(_throughput(result))
    free = optimize(switchy_pair(), layout(2))
    assert free.workers["switchy"].plan.switches > 1  # switching pays here, so the budget matters
    assert all(a >= b - 1e-9 for a, b in itertools.pairwise(scores))  # more budget never hurts
    assert scores[0] > _throughput(free)


def test_the_slo_constraint_holds_and_changes_the_plan():
    free = optimize(switchy_pair(), layout(2))
    mix = free.mix
    best = diagnosis.best_latency_ms(mix, 0, 14)  # heavy's best latency in this mix
    slo = (best + free.predicted.latency_ms["heavy"]) / 2
    assert best < slo < free.predicted.latency_ms["heavy"]
    tight = optimize(switchy_pair(), layout(2), {"heavy": slo})
    assert tight.predicted.latency_ms["heavy"] <= slo
    assert tight.plans() != free.plans()


@pytest.mark.parametrize("seed", range(3))
def test_predicted_latencies_meet_their_slos(seed):
    # Every SLO is reachable (between the model's best latency in the mix and the free plan's), and the
    # tightest one binds: the free plan misses it, so the constrained plan must differ and still meet all.
    profs = random_mix(seed, 3, units=10)
    free = optimize(profs, layout(3))
    loose = free.predicted.latency_ms
    best = {n: diagnosis.best_latency_ms(free.mix, i, 14) for i, n in enumerate(profs)}
    tight = max(profs, key=lambda n: loose[n] / best[n])
    assert loose[tight] > 1.05 * best[tight]  # room for a binding SLO in every seed
    slo = {n: 1.5 * loose[n] for n in profs}
    slo[tight] = (best[tight] + loose[tight]) / 2
    result = optimize(profs, layout(3), slo)
    assert all(result.predicted.latency_ms[n] <= slo[n] * (1 + 1e-9) for n in profs)
    assert result.predicted.latency_ms[tight] < loose[tight]
    assert result.plans() != free.plans()


def test_an_impossible_slo_names_the_model_and_its_best_latency():
    profs = switchy_pair()
    mix = build_mix(profs, layout(2))
    best = min(p.latency_ms["heavy"] for _, p in brute_force(mix, 14))
    with pytest.raises(InfeasibleSLO) as err:
        optimize(profs, layout(2), {"heavy": 0.8 * best, "switchy": 100.0})
    assert err.value.model == "heavy"
    assert err.value.slo_ms == pytest.approx(0.8 * best)
    assert err.value.best_ms == pytest.approx(best)
    assert "heavy" in str(err.value) and f"{best:.3f} ms" in str(err.value)
    assert isinstance(err.value, PlanError)


def test_slos_that_only_conflict_with_each_other_say_so():
    # heavy is fastest with switchy off its SMs; switchy is fastest with heavy squeezed: not both at once
    mix = build_mix(switchy_pair(), layout(2))
    best = {"heavy": diagnosis.best_latency_ms(mix, 0, 14), "switchy": diagnosis.best_latency_ms(mix, 1, 14)}
    slo = {n: 1.02 * ms for n, ms in best.items()}
    with pytest.raises(InfeasibleSLO, match=re.compile("together with the SLOs of")) as err:
        optimize(switchy_pair(), layout(2), slo)
    assert err.value.model in best
    assert err.value.best_ms == pytest.approx(best[err.value.model])  # achievable in the mix, not together


def test_the_objective_changes_the_plan_where_it_should():
    # POWER charges more per SM the more SMs are busy, so running switchy's scaling units on the whole GPU
    # buys throughput at a price in joules: the throughput plan pays it, the energy plan does not.
    thr = optimize(switchy_pair(), layout(2), objective="throughput", power=POWER)
    energy = optimize(switchy_pair(), layout(2), objective="energy", power=POWER)
    assert thr.plans() != energy.plans()
    assert thr.predicted.throughput > energy.predicted.throughput
    assert energy.predicted.energy_j < thr.predicted.energy_j


def test_energy_objectives_need_a_power_model():
    with pytest.raises(PlanError, match="power"):
        optimize(switchy_pair(), layout(2), objective="energy", power_note="no power.json in /p")


def test_an_unknown_objective_is_refused():
    with pytest.raises(PlanError, match="objective"):
        optimize(switchy_pair(), layout(2), objective="speed")


@pytest.mark.parametrize(("seed", "workers"), [(s, w) for s, w in RANDOM if w > 1])
@pytest.mark.parametrize("objective", OBJECTIVES)
def test_never_worse_than_multi_stream_or_any_static_placement(seed, workers, objective):
    result = optimize(random_mix(seed, workers, units=12), layout(workers), objective=objective, power=POWER)
    mix = result.mix
    ms = _multi_stream(mix)
    mine = criterion(objective, result.predicted, ms)
    assert mine <= 1.0 + 1e-12  # multi-stream scores 1
    assert all(mine <= criterion(objective, cost.evaluate(mix, s), ms) + 1e-12 for s in static_placements(mix))
    if objective == "throughput":
        assert result.predicted.throughput >= ms.throughput * (1 - 1e-12)


BRUTE = [(seed, 2, 3, seed % 3) for seed in range(5)] + [(seed, 3, 2, seed % 2) for seed in range(5, 8)]


def _instance(seed, workers, groups, budget):
    profs = random_mix(seed, workers, units=8)
    settings = PlannerSettings(switch_budget=budget, max_groups=groups, time_limit_s=60.0)
    # half the instances get SLOs: 0.8x-1.6x of multi-stream's latency, some of them unmeetable
    free = build_mix(profs, layout(workers), settings=settings)
    ms = _multi_stream(free).latency_ms
    slo = {n: ms[n] * (0.8 + 0.2 * ((seed + i) % 5)) for i, n in enumerate(profs)} if seed % 2 else None
    return profs, slo, settings, build_mix(profs, layout(workers), slo_ms=slo, power=POWER, settings=settings)


@pytest.mark.parametrize(("seed", "workers", "groups", "budget"), BRUTE)
def test_the_milp_finds_the_optimum_that_enumeration_finds(seed, workers, groups, budget):
    _, _, _, mix = _instance(seed, workers, groups, budget)
    rng = np.random.default_rng(seed)
    w = Weights(tuple(rng.uniform(0, 1, workers)))
    everything = [(s, p) for s, p in brute_force(mix, budget) if violation(mix, p) <= 1e-9]
    f = formulation.build(mix, w, budget)
    solution = f.program.solve(60.0)
    if not everything:
        assert solution is None
        return
    assert solution.optimal
    got = cost.evaluate(mix, f.decode(mix, solution.values))
    assert violation(mix, got) <= 1e-9 and all(v <= budget for v in got.switches.values())
    assert _linear(w, got) == pytest.approx(min(_linear(w, p) for _, p in everything), rel=1e-6, abs=1e-9)


def _linear(w, p):
    return float(np.dot(w.latency, list(p.latency_ms.values())))


@pytest.mark.parametrize(("seed", "workers", "groups", "budget"), BRUTE)
def test_the_optimizer_finds_the_best_plan_enumeration_finds(seed, workers, groups, budget):
    profs, slo, settings, mix = _instance(seed, workers, groups, budget)
    ms = _multi_stream(mix)
    feasible = [p for _, p in brute_force(mix, budget) if violation(mix, p) <= 1e-9]
    if not feasible:
        with pytest.raises(InfeasibleSLO):
            optimize(profs, layout(workers), slo, power=POWER, settings=settings)
        return
    for objective in OBJECTIVES:
        result = optimize(profs, layout(workers), slo, objective, power=POWER, settings=settings)
        best = min(criterion(objective, p, ms) for p in feasible)
        got = criterion(objective, result.predicted, ms)
        if objective == "throughput":  # minorise-maximise on a convex rate: the optimum itself
            assert got == pytest.approx(best, rel=1e-6)
        else:  # energy's slopes only guide; and no model is slowed on purpose to save joules
            assert best - 1e-12 <= got <= best * 1.05


def test_the_same_model_twice_is_two_workers():
    dn = random_mix(11, 1, units=30)["m0"]
    result = optimize({"densenet201": dn, "densenet201-2": dn}, layout(2))
    assert {w.slot for w in result.workers.values()} == {0, 1}
    for w in result.workers.values():
        assert all(p == WHOLE or p.startswith(f"w{w.slot}.") for p in w.plan.partitions)


def test_slots_can_be_given():
    profs = switchy_pair()
    result = optimize(profs, layout(2), slots={"heavy": 1, "switchy": 0})
    assert result.workers["heavy"].slot == 1
    assert all(p == WHOLE or p.startswith("w1.") for p in result.workers["heavy"].plan.partitions)


def test_multi_stream_state_is_every_group_on_the_whole_gpu():
    mix = build_mix(switchy_pair(), layout(2))
    whole = mix.layout.names.index(WHOLE)
    assert all(set(s) == {whole} for s in everyone_whole(mix))
