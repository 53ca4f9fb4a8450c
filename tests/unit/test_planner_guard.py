"""The online guard and per-batch placement on a fake GPU whose latencies follow the plan and the load."""

from __future__ import annotations

import itertools
import math

import pytest
from fake_gpu import JOB, SLO_MS, SVC, FakeClock, FakeGpu, service_pair, trial_on
from planner_fixtures import H100

from eclip_ray.errors import PlanError
from eclip_ray.graph.plan import Plan
from eclip_ray.planner.adaptive import Adaptive
from eclip_ray.planner.candidates import generate
from eclip_ray.planner.guard import Guard, GuardSettings, Level, nearest
from eclip_ray.planner.placement import PerBatch, steering_for
from eclip_ray.planner.steering import Fixed, LaneView

WHOLE = Plan.single("whole")


@pytest.fixture(scope="module")
def cands():
    return generate(service_pair(), H100, SLO_MS)


def _adaptive(cands, *rates: float, guard: GuardSettings | None = None) -> Adaptive:
    ad = Adaptive(cands, SLO_MS, guard=guard)
    for r in rates:
        clock = FakeClock()
        gpu = FakeGpu(cands.layout, {"svc": SVC, "job": JOB}, seed=1)
        ad.choose(f"svc{r:g}", {"svc": r, "job": None}, trial_on(gpu, {"svc": r, "job": None}, clock, {"svc"}), clock)
    return ad


def _svc_p99(lanes, since: float, until: float) -> float:
    lat = sorted(ms for t, ms, _ in lanes["svc"].done if since <= t < until)
    return lat[max(0, math.ceil(0.99 * len(lat)) - 1)]


def test_a_breach_moves_to_a_safer_candidate_within_a_second_and_back_once_the_slack_holds(cands):
    ad = _adaptive(cands, 20)
    guard = ad.guard("svc20")
    start = guard.current
    gpu = FakeGpu(cands.layout, {"svc": SVC, "job": JOB}, seed=3)
    lanes = gpu.run(guard, {"svc": lambda t: 150.0 if 10 <= t < 20 else 20.0, "job": None}, 40.0)
    breach = [s for s in guard.switches if s.kind == "breach"]
    assert breach and 10.0 <= breach[0].at_s <= 11.0  # within a second of the load step
    assert breach[0].source == start and "its SLO" in breach[0].reason
    back = [s for s in guard.switches if s.kind == "recover"]
    assert back and back[-1].target == start and back[-1].at_s >= 20.0 + guard.settings.hold_s
    assert guard.current == start and sum(guard.counts.values()) <= 6
    assert _svc_p99(lanes, 12.0, 20.0) <= SLO_MS["svc"]  # the safer candidate held the service's SLO
    described = guard.describe()
    assert described["switches"] == len(guard.switches) and described["selection"]["chosen"] == start


def test_it_does_not_flap_at_a_load_where_the_preferred_candidate_breaches_now_and_then(cands):
    ad = _adaptive(cands, 20, guard=GuardSettings(hold_s=1.0))
    guard = ad.guard("svc20")
    gpu = FakeGpu(cands.layout, {"svc": SVC, "job": JOB}, seed=4)
    gpu.run(guard, {"svc": 60.0, "job": None}, 120.0)
    moves = [s for s in guard.switches if s.kind in ("breach", "recover")]
    assert moves  # it does try
    gaps = [b.at_s - a.at_s for a, b in itertools.pairwise(moves) if b.kind == "recover"]
    assert len(moves) <= 16 and guard.hold_s > 1.0  # every failed return doubles the wait
    assert all(g >= 1.0 for g in gaps)


def test_a_new_load_level_moves_to_the_choice_measured_nearest_it(cands):
    ad = _adaptive(cands, 20, 200)
    light, heavy = ad.selections["svc20"].chosen, ad.selections["svc200"].chosen
    assert light != heavy
    guard = ad.guard("svc20")
    gpu = FakeGpu(cands.layout, {"svc": SVC, "job": JOB}, seed=5)
    gpu.run(guard, {"svc": lambda t: 200.0 if t >= 5 else 20.0, "job": None}, 15.0)
    assert guard.preferred == heavy and guard.current == heavy
    assert guard.counts["load"] + guard.counts["breach"] >= 1
    assert nearest([Level({"svc": 20.0}, "a"), Level({"svc": 200.0}, "b")], {"svc": 100.0}) == "b"
    assert nearest([Level({"svc": 20.0}, "a"), Level({"svc": 200.0}, "b")], {"svc": 900.0}) == "b"
    assert nearest([Level({"svc": 20.0}, "a"), Level({"svc": 200.0}, "b")], {"svc": 15.0}) == "a"


def test_with_nowhere_safer_it_stays_and_counts_it():
    views = {"a": LaneView("a", 0, 0, 10, 10, tuple((0.05 * i, 9.0) for i in range(10)))}
    g = Guard({"x": Fixed({"a": WHOLE})}, {"a": 5.0}, "x", {"x": {"a": 1.8}})
    g.observe(0.5, views)
    assert g.current == "x" and g.no_safer == 1 and not g.switches
    with pytest.raises(PlanError, match="recover < breach"):
        GuardSettings(recover=1.2)
    with pytest.raises(PlanError, match="preferred"):
        Guard({"x": Fixed({"a": WHOLE})}, {"a": 5.0}, "y", {})


def test_per_batch_placement_goes_wide_only_while_no_service_request_is_in_flight_or_queued():
    confined = Plan.single("s0.96")
    pb = PerBatch({"svc": WHOLE, "job": confined}, {"job": WHOLE}, {"svc"})
    idle = {"svc": LaneView("svc", 0, 0, 5, 5), "job": LaneView("job", 1, 0, 9, 8)}
    assert pb.plan("job", idle) == WHOLE and pb.plan("svc", idle) == WHOLE
    for busy in (LaneView("svc", 1, 0, 6, 5), LaneView("svc", 0, 2, 7, 5)):
        assert pb.plan("job", {**idle, "svc": busy}) == confined
    assert pb.describe() == {"wide_batches": 1, "confined_batches": 2, "wide_share": 1 / 3}


def test_per_batch_placement_buys_the_job_throughput_and_costs_the_service_its_tail(cands):
    static = next(c for c in cands.candidates if c.kind == "nested" and c.sizes["job"] == 96)
    adaptive = next(c for c in cands.candidates if c.adapts == static.name)
    assert isinstance(steering_for(adaptive, {"svc"}), PerBatch) and isinstance(steering_for(static, {"svc"}), Fixed)
    runs = {}
    for c in (static, adaptive):
        gpu = FakeGpu(cands.layout, {"svc": SVC, "job": JOB}, seed=6)
        runs[c.kind] = gpu.run(steering_for(c, {"svc"}), {"svc": 20.0, "job": None}, 10.0)
    jobs = {k: v["job"].completed for k, v in runs.items()}
    assert jobs["per-batch"] > 1.15 * jobs["nested"]  # the job mostly runs on the whole GPU
    assert runs["per-batch"]["job"].wide > 0.8 * runs["per-batch"]["job"].completed
    assert _svc_p99(runs["per-batch"], 0, 10) > _svc_p99(runs["nested"], 0, 10)  # what the selection weighs
