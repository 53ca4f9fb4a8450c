"""The bench's eclip policy through the harness contract, with a fake trial (no GPU, virtual time)."""

from __future__ import annotations

import pytest
from fake_gpu import JOB, SLO_MS, SVC, FakeGpu, metrics, service_pair
from planner_fixtures import H100

from eclip_ray.bench import policies
from eclip_ray.bench.eclip_policy import load_rates
from eclip_ray.bench.load import Load
from eclip_ray.errors import PlanError
from eclip_ray.planner.guard import Guard
from eclip_ray.planner.placement import PerBatch
from eclip_ray.planner.steering import Fixed


@pytest.fixture
def setup():
    mix = policies.MixInputs(("svc", "job"), SLO_MS, H100, service_pair(), latency_critical=("svc",))
    return policies.build("eclip", mix)


class Harness:
    """What the harness does: a trial runs the mix at the level's load under a plan map or a steering."""

    def __init__(self, layout) -> None:
        self.gpu = FakeGpu(layout, {"svc": SVC, "job": JOB}, seed=1)
        self.calls: list[type] = []

    def trial_at(self, load: dict):
        rates = {"svc": load["rates_rps"][0], "job": None}

        def trial(what, window_s: float) -> dict:
            self.calls.append(type(what))
            steering = what if hasattr(what, "plan") else Fixed(what)
            t0 = self.gpu.now
            lanes = self.gpu.run(steering, rates, 0.2 + window_s)
            return metrics(lanes, t0 + 0.2, t0 + 0.2 + window_s)

        return trial


def _poisson(svc_rps: float) -> dict:
    return {"kind": "poisson", "rates_rps": [svc_rps, None]}  # the job runs in a closed loop beside the service


def test_the_policy_brings_its_pool_and_every_plan_it_may_run(setup):
    assert setup.adaptive is not None and setup.layout is policies.policy_layout(None, setup)  # type: ignore[arg-type]
    plans = setup.adaptive.plans()
    assert set(plans) == {"svc", "job"} and all(
        p.partitions[0] in setup.layout.names for ps in plans.values() for p in ps
    )
    assert setup.details["latency_critical"] == ["svc"]


def test_each_load_is_measured_once_and_runs_under_the_guard(setup):
    h = Harness(setup.layout)
    policy = setup.adaptive
    s = policy.steering(_poisson(20.0), h.trial_at(_poisson(20.0)))
    assert isinstance(s, Guard)
    described = s.describe()
    sel = described["selection"]
    assert sel["met"] and described["candidate"] == sel["chosen"] and len(sel["trials"]) == len(h.calls)
    assert dict in h.calls and PerBatch in h.calls  # plan maps for static candidates, a steering for per-batch ones
    n = len(h.calls)
    policy.steering(_poisson(20.0), h.trial_at(_poisson(20.0)))
    assert len(h.calls) == n  # the same load again: nothing re-measured
    high = policy.steering(_poisson(200.0), h.trial_at(_poisson(200.0))).describe()["selection"]
    assert "multi-stream" in high["skipped"] and "lower load" in high["skipped"]["multi-stream"]
    assert set(policy.describe()["selections"]) == {load_rates(_poisson(r), ["svc", "job"])[0] for r in (20.0, 200.0)}


def test_load_levels_read_as_rates_per_instance():
    names = ["a", "b"]
    assert load_rates(Load("closed", 1), names)[1] == {"a": None, "b": None}
    assert load_rates(Load("poisson", rates_rps=(50.0,)), names)[1] == {"a": 50.0, "b": 50.0}
    assert load_rates({"kind": "poisson", "rates_rps": [50.0, None]}, names)[1] == {"a": 50.0, "b": None}
    with pytest.raises(PlanError, match="3 rates for 2 instances"):
        load_rates({"kind": "poisson", "rates_rps": [1.0, 2.0, 3.0]}, names)
