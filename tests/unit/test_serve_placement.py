"""The placement planner: which GPU actors host which models."""

from __future__ import annotations

import pytest

from eclip_ray.serve._private.placement import Demand, Placement, demand_of, place


def test_without_loads_it_balances_model_counts_in_declaration_order():
    p = place([Demand("a"), Demand("b"), Demand("c")], gpus=2)
    assert p.gpus == (("a", "c"), ("b",)) and p.method == "count" and p.loads == (None, None)


def test_a_hot_model_gets_replicas_on_distinct_gpus():
    p = place([Demand("hot", replicas=2), Demand("b"), Demand("c")], gpus=2)
    assert p.gpus == (("hot", "b"), ("hot", "c")) and p.gpus_of("hot") == [0, 1]


def test_replicas_must_fit_the_gpus():
    with pytest.raises(ValueError, match="3 replicas cannot go on 2 GPUs"):
        place([Demand("a", replicas=3)], gpus=2)


def test_with_loads_it_places_heaviest_first_on_the_least_loaded_gpu():
    demands = [Demand("small", load=0.1), Demand("big", load=0.6), Demand("mid", load=0.3), Demand("mid2", load=0.3)]
    p = place(demands, gpus=2)
    assert p.method == "load"
    assert p.gpus == (("big", "small"), ("mid", "mid2"))
    assert p.loads == pytest.approx((0.7, 0.6))
    assert p.warnings == ()


def test_replicas_split_the_load_and_overload_is_warned():
    p = place([Demand("hot", replicas=2, load=2.4), Demand("b", load=0.1)], gpus=2)
    assert p.loads == pytest.approx((1.3, 1.2))
    assert p.warnings == ("GPU 0 is predicted 130% busy (over 100%)", "GPU 1 is predicted 120% busy (over 100%)")


def test_one_unknown_load_falls_back_to_counts():
    p = place([Demand("a", load=0.9), Demand("b", load=None), Demand("c", load=0.1)], gpus=2)
    assert p.method == "count" and p.gpus == (("a", "c"), ("b",))


def test_round_trips_through_a_dict():
    p = place([Demand("a", replicas=2), Demand("b")], gpus=2)
    assert Placement.from_dict(p.to_dict()) == p


def test_demand_from_a_profile(tmp_path):
    from eclip_ray.planner import profile

    key = profile.ProfileKey("H100", 132, "570", "2.11", "m", 8, "float16")
    stat = lambda ms: profile.Stat(ms, ms, ms)  # noqa: E731
    prof = profile.ModelProfile(key, [32, 132], [], {32: stat(40.0), 132: stat(16.0)})
    path = prof.save(tmp_path)
    d = demand_of("m", replicas=1, slo_ms=10.0, expected_rps=100.0, profile=str(path))
    assert d.solo_ms == 16.0
    assert d.load == pytest.approx(100 * 16.0 / 8 / 1000)  # 2 ms per inference at 100 requests/s
    p = place([d], gpus=1)
    assert p.warnings == ("model 'm': profiled latency 16.0 ms alone exceeds its SLO 10.0 ms",)
