"""The cost model and the baselines it predicts (no GPU)."""

from __future__ import annotations

import pytest
from planner_fixtures import POWER, flat, hand_profile, layout, scaling

from eclip_ray.planner import baselines, cost
from eclip_ray.planner.mixes import build_mix
from eclip_ray.planner.search import everyone_whole
from eclip_ray.planner.settings import PlannerSettings


def _on(mix, *names):
    """State with every group of worker i on partition names[i]."""
    return tuple((mix.layout.names.index(n),) * len(w.groups) for w, n in zip(mix.workers, names, strict=True))


def test_alone_a_model_takes_its_group_times_plus_its_switches():
    prof = hand_profile("m", [scaling(66.0), flat(0.5)], meta={"switch_ms": 0.02})
    mix = build_mix({"m": prof}, layout(1))
    assert mix.workers[0].switch_ms == 0.02
    whole, small = mix.layout.names.index("whole"), mix.layout.names.index("w0.32")
    p = cost.evaluate(mix, ((whole, small),))
    assert p.latency_ms["m"] == pytest.approx(0.5 + 0.5 + 0.02)
    assert p.throughput == pytest.approx(1e3 / p.latency_ms["m"])
    assert p.switches == {"m": 1}


def test_switch_cost_setting_overrides_the_profile():
    prof = hand_profile("m", [flat(0.5)], meta={"switch_ms": 0.02})
    assert build_mix({"m": prof}, layout(1), settings=PlannerSettings(switch_ms=0.0)).workers[0].switch_ms == 0.0


def test_two_saturating_models_on_the_same_sms_each_take_twice_as_long():
    profs = {"a": hand_profile("a", [scaling(132.0)]), "b": hand_profile("b", [scaling(132.0)])}
    mix = build_mix(profs, layout(2))
    p = cost.evaluate(mix, everyone_whole(mix))
    assert p.latency_ms == pytest.approx({"a": 2.0, "b": 2.0})


def test_disjoint_partitions_do_not_slow_each_other():
    profs = {"a": hand_profile("a", [scaling(64.0)]), "b": hand_profile("b", [scaling(64.0)])}
    mix = build_mix(profs, layout(2))
    p = cost.evaluate(mix, _on(mix, "w0.64", "w1.64"))  # [0, 64) and [64, 128)
    assert p.latency_ms == pytest.approx({"a": 1.0, "b": 1.0})


def test_a_launch_bound_neighbour_slows_less_than_a_saturating_one():
    base = hand_profile("a", [scaling(132.0)])
    light = build_mix({"a": base, "b": hand_profile("b", [flat(1.0)])}, layout(2))
    heavy = build_mix({"a": base, "b": hand_profile("b", [scaling(132.0)])}, layout(2))
    slow_light = cost.evaluate(light, everyone_whole(light)).latency_ms["a"]
    slow_heavy = cost.evaluate(heavy, everyone_whole(heavy)).latency_ms["a"]
    assert 1.0 < slow_light < slow_heavy


def test_energy_per_inference_is_board_power_over_throughput():
    prof = hand_profile("m", [scaling(64.0)], batch_size=4)
    mix = build_mix({"m": prof}, layout(1), power=POWER)
    p = cost.evaluate(mix, _on(mix, "w0.64"))  # 1 ms per batch of 4, 64 SMs busy all the time
    assert p.busy_sms == pytest.approx(64.0)
    assert p.throughput == pytest.approx(4000.0)
    assert p.energy_j == pytest.approx(POWER.active_w[64] / 4000.0)  # W / (inferences/s)


def test_power_follows_busy_sms_not_where_they_are():
    profs = {"a": hand_profile("a", [flat(1.0)]), "b": hand_profile("b", [flat(1.0)])}
    mix = build_mix(profs, layout(2), power=POWER, settings=PlannerSettings(interference=0.0))
    apart, shared = cost.evaluate(mix, _on(mix, "w0.32", "w1.32")), cost.evaluate(mix, everyone_whole(mix))
    assert apart.busy_sms == pytest.approx(shared.busy_sms) == pytest.approx(64.0)
    watts = [p.energy_j * p.throughput for p in (apart, shared)]
    assert watts[0] == pytest.approx(watts[1]) == pytest.approx(POWER.active_w[64])


def test_energy_is_none_with_the_reason_without_a_power_model():
    mix = build_mix({"m": hand_profile("m", [flat(1.0)])}, layout(1), power_note="no power.json in /x")
    p = cost.evaluate(mix, everyone_whole(mix))
    assert p.energy_j is None and p.energy_note == "no power.json in /x"


def test_baselines_time_share_multi_stream_and_model_wise():
    profs = {"a": hand_profile("a", [scaling(64.0)]), "b": hand_profile("b", [flat(2.0)])}
    mix = build_mix(profs, layout(2), slo_ms={"a": 1.6, "b": 2.0})
    base = baselines.predict(mix)
    ts = base["time-share"].prediction
    period = 64 / 132 + 2.0  # each request waits for one turn of the other model
    assert ts.latency_ms == pytest.approx({"a": period, "b": period})
    assert ts.throughput == pytest.approx(2e3 / period)
    assert base["multi-stream"].prediction == cost.evaluate(mix, everyone_whole(mix))
    mw = base["model-wise"].prediction
    # a: 2.0 ms at 32 SMs, 1.0 at 64, 1.5 at 48 (interpolated): the fewest in steps of 8 under 1.6 ms.
    # b is flat: the smallest profiled size, 32.
    assert mw.latency_ms == pytest.approx({"a": 1.5, "b": 2.0})


def test_model_wise_is_unavailable_when_the_partitions_do_not_fit():
    profs = {n: hand_profile(n, [scaling(132.0)]) for n in ("a", "b")}
    mix = build_mix(profs, layout(2), slo_ms={"a": 1.1, "b": 1.1})  # each needs 120 SMs
    mw = baselines.predict(mix)["model-wise"]
    assert mw.prediction is None and "132 SMs" in mw.note
