"""The load search and regimes A and B against a fake executor whose latency rises with the load (no GPU).

The fake session answers a window at once from a queueing-like model: every
open lane's latency grows as the GPU's utilisation (its arrival rates x
service times, plus what a closed-loop batch job takes) nears one, and the
latencies of a window spread evenly over [0.5, 1.5] x that mean. So the true
edge of each SLO is known and the search can be checked against it.
"""

from __future__ import annotations

import numpy as np
import pytest

from eclip_ray.bench import regimes, search, stats
from eclip_ray.bench.driver import LaneResult, Window
from eclip_ray.bench.load import Load
from eclip_ray.bench.policies import WHOLE_PLAN, Setup
from eclip_ray.graph.plan import Plan
from eclip_ray.planner.steering import Fixed

SERVICE_MS = {"svc": 1.0, "job": 4.0}  # per request alone
BATCH = {"svc": 1, "job": 8}
CONFINED = Plan.single("s0.96")


class FakeSession:
    """Windows computed, not run: ``job_share`` is how much of the GPU a closed-loop job takes."""

    def __init__(self, job_share: float = 0.3, confined_share: float = 0.1) -> None:
        self.job_share, self.confined_share = job_share, confined_share
        self.calls: list[dict] = []

    def _job_share(self, plan: Plan) -> float:
        return self.confined_share if plan == CONFINED else self.job_share

    def window(self, load, *, warmup_s, window_s, seed=0, energy=True, only=None, steering=None, plans=None):
        names = list(only) if only is not None else list(SERVICE_MS)
        plan = (plans or {}).get("job") or (steering.plan("job", {}) if steering is not None else WHOLE_PLAN)
        self.calls.append({"load": load, "window_s": window_s, "energy": energy, "plan": plan})
        busy, rates = 0.0, {}
        for n in names:
            index = list(SERVICE_MS).index(n)
            if only is None and load.closed(index):
                busy += self._job_share(plan)
            else:
                rates[n] = load.rate(index if only is None else 0, len(names) if only is None else 1)
                busy += rates[n] * SERVICE_MS[n] / 1e3
        lanes = {}
        for n in names:
            mean = SERVICE_MS[n] / max(1e-3, 1 - busy) if busy < 1 else 1e4
            count = 1000  # the same spread whatever the window: its edge does not move with the window's length
            lat = list(mean * (0.5 + np.arange(count) / count))
            lanes[n] = LaneResult(n, BATCH[n], lat, count, 0, [mean * 3] if busy >= 1 else [])
        return Window(window_s, lanes, None, "fake")


FACTS = regimes.MixFacts(
    instances=("svc", "job"),
    roles={"svc": "latency", "job": "batch"},
    batch=BATCH,
    slo_ms={"svc": 3.0, "job": 20.0},
    isolated_rps={"svc": 1000.0, "job": 2000.0},  # 1000 requests/s each alone
    base_rps={"svc": 200.0, "job": 100.0},
)


def _edge(busy_other: float, service: float, slo: float, rate_per_scale: float) -> float:
    """The scale where 99% of the service's spread latencies [0.5, 1.5] x mean fit within the SLO."""
    # 99% within slo <=> slo >= 1.49 x mean, mean = service / (1 - busy)
    busy = 1 - 1.49 * service / slo
    return (busy - busy_other) / (rate_per_scale * service / 1e3)


SETTINGS = search.Settings(steps=6, window_s=1.0, warmup_s=0.0, final_window_s=2.0, floor=0.125)


def test_bisection_finds_the_edge_within_its_resolution_and_spends_its_steps():
    seen = []

    def trial(x: float) -> search.Trial:
        seen.append(x)
        return search.Trial(x, x <= 0.63)

    r = search.bisect(trial, 1.0, SETTINGS)
    resolution = (1 - SETTINGS.floor) / 2 ** (SETTINGS.steps - 1)
    assert r.complete and len(seen) == SETTINGS.steps and seen[0] == pytest.approx(0.125)
    assert 0.63 - resolution <= r.best <= 0.63
    assert r.best_trial().scale == r.best and r.lowest_trial().scale == seen[0]


def test_a_policy_that_misses_at_the_floor_costs_one_window():
    r = search.bisect(lambda x: search.Trial(x, False), 2.0, SETTINGS)
    assert r.best is None and len(r.trials) == 1 and r.trials[0].scale == pytest.approx(0.25)
    assert "floor" in r.note and r.complete


def test_the_budget_stops_a_search_and_it_says_so():
    calls = iter([True, True, False])
    r = search.bisect(lambda x: search.Trial(x, True), 1.0, SETTINGS, budget=lambda: next(calls))
    assert not r.complete and len(r.trials) == 2 and r.best == r.trials[-1].scale
    assert search.bisect(lambda x: search.Trial(x, True), 1.0, SETTINGS, budget=lambda: False).trials == []


def test_search_settings_are_checked_and_priced():
    with pytest.raises(ValueError):
        search.Settings(steps=0)
    with pytest.raises(ValueError):
        search.Settings(floor=1.0)
    s = search.Settings(steps=4, window_s=1.0, warmup_s=0.25, final_window_s=2.0)
    assert s.search_s() == pytest.approx(4 * 1.25 + 0.25 + 2.0)


def test_alone_search_finds_what_the_slo_allows_one_model_by_itself():
    session = FakeSession()
    a = regimes.alone(session, "svc", FACTS, SETTINGS, seed=0, budget=lambda: True)
    edge = _edge(0.0, 1.0, 3.0, 1.0)  # scale = rate in requests/s
    assert a["capacity_rps"] == 1000.0 and a["rate_rps"] <= edge
    assert a["rate_rps"] >= edge - (1 - SETTINGS.floor) * 1000 / 2 ** (SETTINGS.steps - 1)
    assert all(c["load"].kind == "poisson" and not c["energy"] for c in session.calls)
    assert a["attainment"] >= 0.99 and len(a["search"]["trials"]) == SETTINGS.steps


@pytest.mark.parametrize("regime", ["A", "B"])
def test_regime_search_finds_the_mixes_edge_and_measures_a_final_window(regime):
    session = FakeSession(job_share=0.3)
    hi, why = regimes.scale_bound(regime, FACTS, {"svc": 500.0, "job": 150.0})
    assert why == "" and hi == pytest.approx(min([1.1 * 500 / 200, *([1.1 * 150 / 100] if regime == "B" else [])]))
    r = regimes.goodput(
        session, Setup("multi-stream", {"svc": WHOLE_PLAN, "job": WHOLE_PLAN}), regime, FACTS, hi, SETTINGS,
        seed=1, budget=lambda: True, final_budget=lambda: True,
    )  # fmt: skip
    if regime == "A":  # the job in closed loop takes 0.3 of the GPU; only the service's SLO counts
        edge = _edge(0.3, 1.0, 3.0, 200.0)
        assert session.calls[0]["load"].closed(1) and r["slo_checked"] == ["svc"]
    else:  # the job is Poisson too: 100 requests of 4 ms per second per unit of scale
        busy_per_scale = 200 * 1.0 / 1e3 + 100 * 4.0 / 1e3
        edge = min((1 - 1.49 * 1.0 / 3.0) / busy_per_scale, (1 - 1.49 * 4.0 / 20.0) / busy_per_scale)
        assert not session.calls[0]["load"].closed(1) and r["slo_checked"] == ["svc", "job"]
    step = (1 - SETTINGS.floor) * hi / 2 ** (SETTINGS.steps - 1)
    slack = 0.005 * edge  # 1000 requests: a window passes up to a thousandth above the continuous edge
    assert edge - step <= r["goodput_scale"] <= edge + slack
    assert r["measured_in"] == "final" and session.calls[-1]["window_s"] == 2.0 and session.calls[-1]["energy"]
    assert r["offered_rps"]["svc"] == pytest.approx(200.0 * r["goodput_scale"])
    assert r["slo_met"] and r["search"]["complete"] and len(r["search"]["trials"]) == SETTINGS.steps
    assert {"scale", "passed", "slo_attainment", "p99_ms"} <= set(r["search"]["trials"][0])
    assert r["normalised_throughput"] > 0 and r["goodput_rps"] > 0


def test_a_regime_no_load_can_pass_is_known_before_any_window():
    hi, why = regimes.scale_bound("B", FACTS, {"svc": 500.0, "job": None})
    assert hi == 0 and "job alone meets" in why
    hi, _ = regimes.scale_bound("A", FACTS, {})  # unknown alone: the capacity brackets it
    assert hi == pytest.approx(1000 / 200)
    assert "batch job" in regimes.MixFacts(("a",), {"a": "latency"}, {"a": 1}, {"a": 1}, {"a": 1}, {"a": 1}).why_not(
        "A"
    )


def test_without_time_for_the_final_window_the_best_trial_stands_in():
    session = FakeSession()
    r = regimes.goodput(
        session, Setup("multi-stream"), "A", FACTS, 4.0, SETTINGS, seed=0, budget=lambda: True,
        final_budget=lambda: False,
    )  # fmt: skip
    assert r["measured_in"] == "trial" and r["measured_scale"] == r["goodput_scale"]
    assert all(c["window_s"] == 1.0 for c in session.calls)


class Confine:
    """An adaptive policy: tries both plans of the job at each load level, keeps the one that passes."""

    def __init__(self) -> None:
        self.levels: list[Load] = []

    def plans(self):
        return {"svc": {WHOLE_PLAN}, "job": {WHOLE_PLAN, CONFINED}}

    def steering(self, load, trial):
        self.levels.append(load)
        whole = trial({"svc": WHOLE_PLAN, "job": WHOLE_PLAN}, 0.5)
        chosen = WHOLE_PLAN if whole["slo_met"] else CONFINED
        trial(Fixed({"svc": WHOLE_PLAN, "job": CONFINED}), 0.5)  # a steering is a valid trial too
        steer = Fixed({"svc": WHOLE_PLAN, "job": chosen})
        steer.describe = lambda: {"job": chosen.partitions[0]}  # type: ignore[attr-defined]
        return steer


def test_an_adaptive_policy_steers_each_load_level_after_its_trials():
    policy = Confine()
    setup = Setup("eclip", adaptive=policy)
    assert setup.all_plans()["job"] == {WHOLE_PLAN, CONFINED} and setup.describe()["candidate_plans"]["job"] == 2
    session = FakeSession(job_share=0.5, confined_share=0.05)
    r = regimes.goodput(
        session, setup, "A", FACTS, 4.0, SETTINGS, seed=0, budget=lambda: True, final_budget=lambda: True
    )
    # One steering per level: every trial's level and the final one (the best level, steered already).
    assert len(policy.levels) == len({t["scale"] for t in r["search"]["trials"]})
    assert r["selection_s"] is not None and r["selection_s"] >= 0
    # Confined, the job leaves the service more room than multi-stream's edge.
    assert r["goodput_scale"] > _edge(0.5, 1.0, 3.0, 200.0)
    assert r["search"]["trials"][-1]["steering"]["job"] in ("whole", "s0.96") and "steering" in r
    trial_windows = [c for c in session.calls if c["window_s"] == 0.5]
    assert len(trial_windows) == 2 * len(policy.levels) and not any(c["energy"] for c in trial_windows)


def test_window_metrics_of_the_fake_agree_with_the_edge():
    w = FakeSession().window(Load("poisson", rates_rps=(100.0,)), warmup_s=0, window_s=1.0, only=["svc"])
    m = stats.window_metrics(w, {"svc": 3.0}, 99.0)
    assert m["slo_met"] and m["models"]["svc"]["late_unfinished"] == 0


def test_the_runs_time_is_shared_by_weight_and_what_a_job_leaves_goes_on():
    import time

    from eclip_ray.bench.execute import Budget, left

    b = Budget(time.time() + 100.0, 5.0)  # four jobs, eclip's weighing three... and one more
    first = b.job()
    assert left(first) == pytest.approx(20.0, abs=0.5)  # 1/5 of what is left
    eclip = b.job(3.0)
    assert left(eclip) == pytest.approx(75.0, abs=1.0)  # 3/4 of the rest: nothing was spent yet
    assert left(b.job()) == pytest.approx(100.0, abs=1.0)  # the last job gets all that is left
    assert Budget(None, 3).job() is None and left(None) == float("inf")
