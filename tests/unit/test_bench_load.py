"""Offered load: the seeded Poisson arrival generator and load labels (no GPU)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from eclip_ray.bench.load import Load, lane_rng, loads_from_args, poisson_arrivals


def test_poisson_arrivals_are_seeded_sorted_and_inside_the_horizon():
    a = poisson_arrivals(200.0, 5.0, lane_rng(0, 0))
    b = poisson_arrivals(200.0, 5.0, lane_rng(0, 0))
    c = poisson_arrivals(200.0, 5.0, lane_rng(0, 1))
    d = poisson_arrivals(200.0, 5.0, lane_rng(1, 0))
    assert np.array_equal(a, b)
    assert not np.array_equal(a[:50], c[:50]) and not np.array_equal(a[:50], d[:50])
    assert np.all(np.diff(a) > 0) and a[0] >= 0 and a[-1] < 5.0


@pytest.mark.parametrize("rate", [5.0, 200.0, 3000.0])
def test_poisson_rate_and_gaps_within_tolerance(rate):
    duration = 40.0
    times = poisson_arrivals(rate, duration, lane_rng(7, 0))
    expect = rate * duration
    # The count of a Poisson process has standard deviation sqrt(expect): 5 sigma never fails by chance.
    assert abs(len(times) - expect) <= 5 * math.sqrt(expect)
    gaps = np.diff(times)
    assert abs(gaps.mean() * rate - 1) <= 5 / math.sqrt(len(gaps))
    # Exponential gaps: the coefficient of variation is 1.
    assert abs(gaps.std() / gaps.mean() - 1) < 0.1


def test_poisson_long_horizon_draws_more_blocks():
    times = poisson_arrivals(1000.0, 3.0, lane_rng(3, 2))
    assert times[-1] > 2.9  # not cut short by the first block of draws


def test_poisson_rejects_nonpositive():
    with pytest.raises(ValueError):
        poisson_arrivals(0.0, 1.0, lane_rng(0, 0))
    with pytest.raises(ValueError):
        Load("poisson", rates_rps=())
    with pytest.raises(ValueError):
        Load("closed", inflight=0)
    with pytest.raises(ValueError):
        Load("open")


def test_load_labels_rates_and_round_trip():
    closed = Load("closed", 4)
    assert closed.label() == "closed4" and closed.depth() == 4
    per_lane = Load("poisson", rates_rps=(100.0, 50.0), max_inflight=8)
    assert per_lane.label() == "poisson100,50" and per_lane.depth() == 8
    assert per_lane.rate(1, 2) == 50.0
    with pytest.raises(ValueError, match="one or one each"):
        per_lane.rate(0, 3)
    assert Load("poisson", rates_rps=(30.0,)).rate(2, 3) == 30.0
    for load in (closed, per_lane):
        assert Load.from_dict(load.to_dict()) == load


def test_loads_from_command_line_values():
    assert loads_from_args("closed", [1, 4], [], 32) == [Load("closed", 1), Load("closed", 4)]
    got = loads_from_args("poisson", [1], ["100", "10,20"], 16)
    assert got == [
        Load("poisson", rates_rps=(100.0,), max_inflight=16),
        Load("poisson", rates_rps=(10.0, 20.0), max_inflight=16),
    ]
    with pytest.raises(ValueError, match="--rate"):
        loads_from_args("poisson", [1], [], 32)
