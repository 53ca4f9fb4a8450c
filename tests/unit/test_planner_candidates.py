"""Candidate sets: multi-stream, nested and per-batch levels, a disjoint split, the cost model's k best (no GPU)."""

from __future__ import annotations

import pytest
from fake_gpu import SLO_MS, service_pair
from planner_fixtures import H100, hand_profile, random_mix

from eclip_ray.errors import PlanError
from eclip_ray.graph.plan import Plan
from eclip_ray.planner import roles, synthetic
from eclip_ray.planner.candidates import CandidateSet, generate, streams_needed

WHOLE = Plan.single("whole")


@pytest.fixture(scope="module")
def pair() -> CandidateSet:
    return generate(service_pair(), H100, SLO_MS)


def test_multi_stream_nested_per_batch_and_disjoint_are_always_there(pair):
    kinds = [c.kind for c in pair.candidates]
    assert kinds.count("multi-stream") == 1 and pair["multi-stream"].plans == {"svc": WHOLE, "job": WHOLE}
    assert pair.latency_critical == {"svc"}
    nested = [c for c in pair.candidates if c.kind == "nested"]
    assert len(nested) == 3
    for c in nested:  # the service on the whole GPU, the job confined from slot 0
        assert c.plans["svc"] == WHOLE and c.sizes["svc"] is None
        assert c.plans["job"] == Plan.single(f"s0.{c.sizes['job']}")
        adapted = [a for a in pair.candidates if a.adapts == c.name]
        assert len(adapted) == 1 and adapted[0].kind == "per-batch"
        assert adapted[0].plans == c.plans and adapted[0].wide == {"job": WHOLE}  # only the batch model goes wide
    (split,) = [c for c in pair.candidates if c.kind == "disjoint"]
    parts = [pair.layout[split.plans[n].partitions[0]] for n in ("svc", "job")]
    assert parts[0].overlap(parts[1]) == 0 and sum(p.count for p in parts) == 132  # no SM left idle


def test_planned_candidates_are_the_cost_models_best_distinct_plans(pair):
    planned = [c for c in pair.candidates if c.kind == "planned"]
    assert 1 <= len(planned) <= 8
    static = [tuple(sorted(c.plans.items())) for c in pair.candidates if not c.adaptive]
    assert len(set(static)) == len(static)  # no plan twice
    assert all(c.predicted and set(c.predicted["tail_ms"]) == {"svc", "job"} for c in pair.candidates)


def test_the_pool_holds_every_partition_and_fits_the_work_queues(pair):
    named = {q for ps in pair.plans().values() for plan in ps for q in plan.partitions}
    assert named == set(pair.layout.names)
    assert len({p.count for p in pair.layout.partitions}) <= 6
    assert pair.streams() == streams_needed(pair.layout, pair.candidates) <= 32
    assert all(WHOLE in ps for ps in pair.plans().values())


def test_the_set_survives_json(pair):
    back = CandidateSet.from_dict(pair.to_dict())
    assert back.names == pair.names and back.layout == pair.layout and back.batch == {"svc": 1, "job": 16}
    assert back.latency_critical == pair.latency_critical and back.plans() == pair.plans()
    assert back["per-batch svc=whole,job=112"].wide == pair["per-batch svc=whole,job=112"].wide


def test_a_tight_stream_budget_drops_low_ranked_candidates_but_never_multi_stream():
    small = generate(service_pair(), H100, SLO_MS, max_streams=9)
    assert small.streams() <= 9 and "multi-stream" in small
    assert len(small) < len(generate(service_pair(), H100, SLO_MS))
    assert any("more than 9 streams" in n for n in small.notes)


def test_k_bounds_the_planned_candidates_and_sizes_respect_each_profiles_range():
    profiles = service_pair()
    profiles["job"] = synthetic.profile("job", 12, batch_size=16, seed=2, whole_ms=4.0, sizes=(64, 96, 132))
    cs = generate(profiles, H100, SLO_MS, k=2)
    assert sum(c.kind == "planned" for c in cs.candidates) <= 2
    job_parts = {cs.layout[q].count for plan in cs.plans()["job"] for q in plan.partitions}
    assert min(job_parts) >= 64  # never costed (or run) below what its profile measured


def test_two_services_beside_a_batch_model_both_keep_the_whole_gpu():
    profiles = random_mix(3, 3, units=8)
    profiles["m2"] = synthetic.profile("m2", 8, batch_size=8, seed=9, whole_ms=3.0)
    cs = generate(profiles, H100)
    assert cs.latency_critical == {"m0", "m1"}
    for c in (c for c in cs.candidates if c.kind == "nested"):
        assert c.plans["m0"] == c.plans["m1"] == WHOLE and c.plans["m2"] != WHOLE


def test_without_roles_each_instance_is_protected_in_turn():
    cs = generate(random_mix(1, 3, units=8), H100)
    assert cs.latency_critical == frozenset()
    nested = [c for c in cs.candidates if c.kind == "nested"]
    assert sorted(next(n for n, s in c.sizes.items() if s is None) for c in nested) == ["m0", "m1", "m2"]
    assert not any(c.kind == "per-batch" for c in cs.candidates)


def test_roles_come_from_batch_sizes_then_slos_then_the_caller():
    a = hand_profile("a", [{32: 2.0, 64: 1.2, 96: 1.0, 132: 1.0}])
    b = hand_profile("b", [{32: 2.0, 64: 1.2, 96: 1.0, 132: 1.0}])
    big = hand_profile("c", [{32: 8.0, 64: 4.0, 96: 3.0, 132: 2.5}], batch_size=16)
    assert roles.latency_critical({"a": a, "c": big}) == {"a"}
    assert roles.latency_critical({"a": a, "b": b}) == frozenset()
    assert roles.latency_critical({"a": a, "b": b}, {"a": 1.5, "b": 10.0}) == {"a"}  # 1.5x its latency vs 10x
    assert roles.latency_critical({"a": a, "b": b}, {"a": 3.0, "b": 3.2}) == frozenset()  # alike: no roles
    assert roles.latency_critical({"a": a, "c": big}, explicit=["c"]) == {"c"}
    with pytest.raises(PlanError, match="not in the mix"):
        roles.latency_critical({"a": a}, explicit=["zzz"])
    assert roles.right_size(a, None, 8, 8) == 56  # within 1.5x of 1.0 ms: 1.4 ms on 56 SMs (interpolated)
    assert roles.right_size(a, 2.2, 8, 8) == 80  # within half of 2.2 ms: 1.1 ms on 80 SMs
    assert roles.right_size(a, 50.0, 8, 8) == 56 and roles.right_size(a, 1.0, 8, 8) == 132  # 0.5 ms: nowhere


def test_an_energy_objective_needs_a_power_model():
    with pytest.raises(PlanError, match="power"):
        generate(service_pair(), H100, SLO_MS, objective="energy")
