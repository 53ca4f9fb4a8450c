"""Percentiles, SLO attainment, window metrics and the packing-efficiency bound (no GPU)."""

from __future__ import annotations

import pytest
from planner_fixtures import flat, hand_profile, scaling

from eclip_ray.bench import packing, stats
from eclip_ray.bench.driver import LaneResult, Window
from eclip_ray.energy import Measurement
from eclip_ray.planner import timing


def test_nearest_rank_percentiles_are_observed_values():
    samples = [float(x) for x in range(100, 0, -1)]  # 1..100, unsorted
    assert stats.percentile(samples, 50) == 50.0
    assert stats.percentile(samples, 95) == 95.0
    assert stats.percentile(samples, 99) == 99.0
    assert stats.percentile(samples, 100) == 100.0
    assert stats.percentile(samples, 0) == 1.0
    assert stats.percentile([3.0, 1.0, 2.0], 99) == 3.0  # rounds up: a tail is never understated
    assert stats.percentile([7.5], 50) == 7.5
    with pytest.raises(ValueError):
        stats.percentile([], 50)
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_attainment_and_slo_met_agree_with_p99():
    samples = [1.0] * 990 + [10.0] * 10  # p99 = 1.0: exactly 99% within an SLO of 1
    assert stats.attainment(samples, 1.0) == pytest.approx(0.99)
    assert stats.slo_met({"a": stats.attainment(samples, 1.0)}, 99.0)
    assert stats.percentile(samples, 99) <= 1.0
    worse = [1.0] * 989 + [10.0] * 11
    assert not stats.slo_met({"a": stats.attainment(worse, 1.0)}, 99.0)
    assert stats.percentile(worse, 99) > 1.0
    assert not stats.slo_met({"a": 1.0, "b": 0.5}, 99.0)


def test_cdf_points_are_monotone_and_end_at_the_maximum():
    samples = [0.5 * i for i in range(1, 201)]
    pts = stats.cdf(samples)
    assert [q for q, _ in pts] == list(stats.CDF_POINTS)
    values = [v for _, v in pts]
    assert values == sorted(values) and values[-1] == max(samples) and values[0] == min(samples)


def _window(energy: Measurement | None) -> Window:
    lanes = {
        "a": LaneResult("a", 1, [1.0] * 99 + [5.0], 100, 0),
        "b": LaneResult("b", 4, [2.0] * 50, 50, 0),
    }
    return Window(2.0, lanes, energy, "" if energy else "no meter here")


def test_window_metrics_count_inferences_and_energy():
    m = stats.window_metrics(_window(Measurement(2.0, 600.0, True)), {"a": 2.0, "b": 3.0}, 99.0)
    inferences = 100 * 1 + 50 * 4
    assert m["inferences"] == inferences
    assert m["throughput_rps"] == inferences / 2.0
    assert m["models"]["b"]["throughput_rps"] == 50 * 4 / 2.0
    assert m["joules_per_inference"] == 600.0 / inferences
    assert m["avg_power_w"] == 300.0
    assert m["p99_ms"] == {"a": 1.0, "b": 2.0} and m["p95_ms"]["a"] == 1.0
    assert m["slo_attainment"]["a"] == 0.99 and m["slo_met"] is True


def test_window_metrics_without_energy_say_why_and_never_report_zero():
    m = stats.window_metrics(_window(None), {"a": 0.5, "b": 3.0}, 99.0)
    assert m["joules_per_inference"] is None and m["avg_power_w"] is None
    assert m["energy_note"] == "no meter here"
    assert m["slo_met"] is False  # a misses 0.5 ms


def test_window_metrics_model_without_completions():
    w = Window(1.0, {"a": LaneResult("a", 1, [], 3, 3), "b": LaneResult("b", 1, [1.0], 1, 0)}, None, "n/a")
    m = stats.window_metrics(w, {"a": 1.0, "b": 1.0}, 99.0)
    assert m["p99_ms"]["a"] is None and m["slo_attainment"]["a"] == 0.0 and m["slo_met"] is False


def test_packing_bound_takes_each_unit_at_its_most_sm_efficient_size():
    # A unit that scales perfectly costs its work at any size; a flat one is cheapest on the fewest SMs.
    prof = hand_profile("m", [scaling(66.0), flat(0.5)], batch_size=2)
    expect = (66.0 + 32 * 0.5) / 2
    assert packing.sm_ms_per_inference(prof) == pytest.approx(expect)
    assert packing.sm_ms_per_inference(prof) == pytest.approx(timing.unit_work(prof).sum() / 2)


def test_packing_efficiency_is_useful_sm_time_over_the_device():
    work = {"a": 10.0, "b": 40.0}
    rps = {"a": 1000.0, "b": 500.0}
    eff, bound = packing.efficiency(work, rps, 132)
    assert eff == pytest.approx((1000 * 10 + 500 * 40) / (1000 * 132))
    assert bound == pytest.approx(1500 / eff)
    assert packing.bound_rps(work, {"a": 1, "b": 1}, 132) == pytest.approx(1000 * 132 / 25.0)
    with pytest.raises(ValueError):
        packing.bound_rps(work, {"a": 0, "b": 0}, 132)


def test_requests_still_waiting_past_their_slo_count_as_misses():
    assert stats.attainment([1.0] * 99, 2.0, unfinished_ms=[5.0, 1.0]) == pytest.approx(99 / 100)
    assert stats.attainment([], 2.0, unfinished_ms=[3.0]) == 0.0
    w = Window(1.0, {"a": LaneResult("a", 1, [1.0] * 100, 103, 1, [0.5, 9.0, 8.0])}, None, "n/a")
    m = stats.window_metrics(w, {"a": 2.0}, 99.0)
    assert m["slo_attainment"]["a"] == pytest.approx(100 / 102) and m["slo_met"] is False and m["unserved"] == 1


def test_only_the_checked_models_must_meet_their_slo_and_throughput_is_normalised():
    m = stats.window_metrics(
        _window(None), {"a": 2.0, "b": 1.0}, 99.0, checked=["a"], isolated_rps={"a": 100, "b": 200}
    )
    assert m["slo_attainment"]["b"] == 0.0 and m["slo_met"] is True and m["slo_checked"] == ["a"]
    assert m["normalised_throughput"] == pytest.approx(50 / 100 + 100 / 200)
    assert stats.window_metrics(_window(None), {"a": 2.0, "b": 1.0}, 99.0)["normalised_throughput"] is None


def test_an_open_lane_with_nothing_late_misses_nothing_a_starved_closed_one_everything():
    quiet = LaneResult("a", 1, [], 1, 1, [0.2], closed=False)  # one request, just arrived
    starved = LaneResult("b", 1, [], 0, 0, [], closed=True)
    m = stats.window_metrics(Window(1.0, {"a": quiet, "b": starved}, None, "n/a"), {"a": 2.0, "b": 2.0}, 99.0)
    assert m["slo_attainment"] == {"a": 1.0, "b": 0.0}
    assert LaneResult.from_dict(quiet.to_dict()) == quiet
