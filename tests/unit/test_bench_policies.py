"""Policy -> plans: what each of the six policies runs, built from profiles without a GPU."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
from bench_fixtures import SIZES, tiny_profile

from eclip_ray.bench import mps, policies
from eclip_ray.bench.policies import WHOLE_PLAN, MixInputs
from eclip_ray.graph.plan import Plan
from eclip_ray.partition.layout import DeviceGeometry
from eclip_ray.planner import timing

H100 = DeviceGeometry(132)


def _inputs(slo_scale: float = 3.0, **kw) -> MixInputs:
    profiles = {"cnn": tiny_profile("tiny-cnn", seed=1), "bert": tiny_profile("tiny-bert", seed=2)}
    slo = {n: slo_scale * timing.model_ms(p, 132) for n, p in profiles.items()}
    return MixInputs(tuple(profiles), slo, H100, profiles, **kw)


def test_time_share_and_multi_stream_run_everything_on_the_whole_gpu():
    mix = _inputs()
    ts, ms = policies.build("time-share", mix), policies.build("multi-stream", mix)
    assert ts.plans == ms.plans == {"cnn": WHOLE_PLAN, "bert": WHOLE_PLAN}
    assert ts.serial and not ms.serial and ts.in_process and not ts.partitions


def test_model_wise_gives_each_model_the_fewest_sms_that_meet_its_slo():
    profiles = {"cnn": tiny_profile("tiny-cnn", seed=1), "bert": tiny_profile("tiny-bert", seed=2)}
    # SLOs just above each model's latency on 64 and on 40 SMs.
    slo = {"cnn": timing.model_ms(profiles["cnn"], 64) * 1.0001, "bert": timing.model_ms(profiles["bert"], 40) * 1.0001}
    mix = MixInputs(("cnn", "bert"), slo, H100, profiles)
    s = policies.build("model-wise", mix)
    assert not s.skipped
    sizes = s.details["sms"]
    for name, count in sizes.items():
        assert timing.model_ms(profiles[name], count) <= slo[name]
        if count - 8 >= min(SIZES):
            assert timing.model_ms(profiles[name], count - 8) > slo[name]
    parts = {p.name: p for p in s.partitions}
    assert [parts[s.plans[n].partitions[0]].count for n in mix.instances] == [sizes["cnn"], sizes["bert"]]
    a, b = parts.values()
    assert a.overlap(b) == 0 and sum(p.count for p in parts.values()) <= 132


def test_model_wise_skips_with_the_reason():
    tight = _inputs(slo_scale=0.5)  # below each model's whole-GPU latency
    s = policies.build("model-wise", tight)
    assert s.skipped and "on no partition" in s.skipped and not s.plans
    profiles = dict(tight.profiles)
    slo = {n: timing.model_ms(p, 96) * 1.0001 for n, p in profiles.items()}  # both need 96 SMs: not side by side
    s = policies.build("model-wise", MixInputs(tight.instances, slo, H100, profiles))
    assert s.skipped and "more than the device's 132 SMs" in s.skipped


def test_profiled_policies_skip_without_profiles():
    mix = MixInputs(("a",), {"a": 1.0}, H100, {}, profile_note="no profile of a")
    for p in policies.PROFILED:
        s = policies.build(p, mix)
        assert s.skipped.endswith("no profile of a") and not s.plans


def test_mps_is_skipped_cleanly_without_the_daemon():
    reason = mps.unavailable("cpu")
    assert "backend" in reason
    s = policies.build("mps", _inputs(mps_note=reason))
    assert s.skipped == reason and s.mps_percent is None and not s.in_process


def test_mps_unavailable_without_the_control_binary(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert mps.CONTROL in mps.unavailable("cuda")
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/" + name)
    assert mps.unavailable("cuda") == ""


def test_mps_shares_follow_model_wise_sizes_or_are_equal():
    mix = _inputs()
    s = policies.build("mps", mix)
    sizes = policies.right_sizes(mix)
    assert s.mps_percent == {n: math.ceil(100 * c / 132) for n, c in sizes.items()}
    eq = policies.build("mps-equal", _inputs())
    assert eq.mps_percent == {"cnn": 50, "bert": 50} and not eq.in_process and not s.in_process


def _alternating(model: str) -> np.ndarray:
    """Units alternating between launch-bound (flat) and perfectly scaling."""
    units = len(tiny_profile(model).units)
    n = np.asarray(SIZES, dtype=float)
    return np.array([np.full(4, 0.05) if i % 2 else 13.2 / n for i in range(units)])


def test_kw_prealloc_switches_at_every_group_without_a_budget():
    profiles = {"bert": tiny_profile("tiny-bert", times=_alternating("tiny-bert"))}
    slo = {"bert": 10 * timing.model_ms(profiles["bert"], 132)}
    mix = MixInputs(("bert",), slo, H100, profiles)
    kw = policies.build("kw-prealloc", mix)
    plan = kw.plans["bert"]
    units = len(profiles["bert"].units)
    # A flat unit is at its best on the fewest SMs, a scaling one on the whole GPU: a switch between every two.
    assert plan.switches == units - 1 > mix.planner.switch_budget
    assert set(plan.partitions) == {"w0.32", "whole"}
    eclip = policies.build("eclip", mix)
    assert eclip.plans["bert"].switches <= mix.planner.switch_budget


def test_eclip_brings_its_pool_and_an_adaptive_policy_whose_plans_name_only_its_partitions():
    mix = _inputs()
    setups = policies.build_all(policies.POLICIES, mix)
    e = setups["eclip"]
    assert not e.skipped and set(e.plans) == set(mix.instances)
    assert e.details["adaptive"] and "multi-stream" in e.details["candidates"]
    for policy, setup in setups.items():  # every policy's plans name only partitions of its own pool
        named = {p for plan in setup.plans.values() for p in plan.partitions}
        assert named <= set(policies.policy_layout(mix, setup).names), policy
    assert policies.policy_layout(mix, e) is e.layout
    every = {p for plans in e.adaptive.plans().values() for plan in plans for p in plan.partitions}
    assert every <= set(e.layout.names)


def test_eclip_measures_even_when_the_cost_model_says_no_plan_meets_the_slos():
    s = policies.build("eclip", _inputs(slo_scale=0.5))  # below each model's whole-GPU latency
    assert not s.skipped and s.adaptive is not None  # the GPU decides; the selection says when none meets them


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown policies"):
        policies.build("fastest", _inputs())
    with pytest.raises(ValueError, match="unknown policies"):
        policies.check_names(["fixed:"])


def _roles(**roles) -> MixInputs:
    mix = _inputs()
    return MixInputs(
        mix.instances, mix.slo_ms, H100, mix.profiles, roles=roles, models={"cnn": "tiny-cnn", "bert": "tiny-bert"}
    )


def test_stream_priority_puts_the_latency_critical_models_first():
    s = policies.build("stream-priority", _roles(cnn="latency", bert="batch"))
    assert s.plans == {"cnn": WHOLE_PLAN, "bert": WHOLE_PLAN} and not s.serial
    assert s.priorities["bert"] == 0 and s.priorities["cnn"] < 0  # lower is more urgent (CUDA's convention)
    assert s.describe()["stream_priority_asked"] == s.priorities
    # Without a batch job every stream would get the same priority: that is multi-stream, not a new policy.
    assert "no batch job" in policies.build("stream-priority", _roles(cnn="latency", bert="latency")).skipped


def test_a_fixed_plan_nests_a_model_on_the_whole_gpu_over_a_confined_one():
    s = policies.build("fixed:cnn=whole,tiny-bert=112", _roles())
    assert s.plans == {"cnn": WHOLE_PLAN, "bert": Plan.single("s0.112")} and not s.skipped
    assert s.layout.names == ["s0.112", "whole"] and s.details["sms"] == {"cnn": "whole", "bert": 112}
    assert policies.policy_layout(_roles(), s) is s.layout and not policies.is_baseline(s.policy)


def test_a_fixed_plan_puts_confined_models_side_by_side():
    s = policies.fixed(_roles(), "cnn=16,bert=-1")
    assert s.plans == {"cnn": Plan.single("s0.16"), "bert": Plan.single("s16.116")}
    parts = {p.name: p for p in s.layout.partitions}
    assert parts["s0.16"].overlap(parts["s16.116"]) == 0 and parts["s16.116"].stop == 132
    assert {p.name for p in s.partitions} == {"s0.16", "s16.116"}  # checked with the %smid probe on a GPU
    assert policies.fixed(_roles(), "bert=64").plans["cnn"] == WHOLE_PLAN  # left out: the whole GPU


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("gpt=64", "names no instance"),
        ("cnn=lots", "SM count"),
        ("cnn=64,cnn=32", "twice"),
        ("cnn=12", "steps of 8|multiple of 8"),
    ],
)
def test_a_bad_fixed_plan_says_what_is_wrong(text, match):
    with pytest.raises(ValueError, match=match):
        policies.fixed(_roles(), text)


def test_a_model_twice_must_be_named_by_instance_in_a_plan():
    mix = MixInputs(("a", "a-2"), {"a": 1.0, "a-2": 1.0}, H100, models={"a": "tiny-cnn", "a-2": "tiny-cnn"})
    with pytest.raises(ValueError, match="name the instance"):
        policies.fixed(mix, "tiny-cnn=64")
    assert policies.fixed(mix, "a-2=64").plans["a-2"] == Plan.single("s0.64")


def test_runner_streams_take_the_priority_and_the_cpu_backend_ignores_it():
    from eclip_ray.runtime import Runtime

    with Runtime(backend="cpu", layout=policies.fixed(_roles(), "bert=64").layout) as rt:
        runner = rt.load("cnn", "tiny-cnn", priority=-3)
        assert runner.priority == -3 and rt.pool.stream("s0.64", owner="cnn", priority=-3) is None
        assert "ignored" in rt.describe()["stream_priorities"]
        out = runner.run(runner.example_inputs(2), WHOLE_PLAN)
        assert out[0].shape[0] == 2
