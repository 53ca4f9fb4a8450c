"""Calibrated unit times, SM work, and the power model (no GPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from planner_fixtures import SIZES, flat, hand_profile, scaling

from eclip_ray.errors import PlanError
from eclip_ray.planner import timing
from eclip_ray.planner.power import PowerModel


def test_unit_times_are_scaled_to_the_graph_total():
    prof = hand_profile("m", [scaling(64.0), flat(0.3)], gap=0.25)
    ms = timing.unit_ms(prof, list(SIZES))
    for j, s in enumerate(SIZES):
        assert ms[:, j].sum() == pytest.approx(prof.total_ms[s].median)
    # launch gaps are spread in proportion to the kernels' time, not added to one unit
    assert ms[1, 0] / ms[0, 0] == pytest.approx(0.3 / 2.0)


def test_sizes_between_measurements_are_interpolated_and_outside_refused():
    prof = hand_profile("m", [{32: 4.0, 64: 2.0, 96: 1.5, 132: 1.0}])
    assert timing.unit_ms(prof, [48])[0, 0] == pytest.approx(3.0)
    assert timing.model_ms(prof, 80) == pytest.approx(1.75)
    with pytest.raises(PlanError, match=r"outside"):
        timing.unit_ms(prof, [16])


def test_work_is_the_fewest_sm_milliseconds():
    prof = hand_profile("m", [scaling(64.0), flat(0.5), {32: 3.0, 64: 1.0, 96: 0.9, 132: 0.8}])
    np.testing.assert_allclose(timing.unit_work(prof), [64.0, 16.0, 64.0])


def test_dynamic_power_interpolates_from_zero_and_holds_at_the_top():
    pm = PowerModel(100.0, {64: 260.0, 132: 400.0})
    assert pm.dynamic_w(64) == pytest.approx(160.0)
    assert pm.dynamic_w(32) == pytest.approx(80.0)  # half of 64's dynamic power
    assert pm.dynamic_w(98) == pytest.approx(230.0)
    assert pm.dynamic_w(0) == 0.0
    assert pm.dynamic_w(500) == pytest.approx(300.0)  # the power limit caps it


def test_power_model_rejects_nonsense_and_round_trips(tmp_path):
    with pytest.raises(PlanError):
        PowerModel(100.0, {32: 50.0})  # below idle
    with pytest.raises(PlanError):
        PowerModel.from_dict({"idle_w": 1.0})
    pm = PowerModel(90.0, {32: 200.0, 132: 500.0})
    (tmp_path / "power.json").write_text(json.dumps({**pm.to_dict(), "window_s": 3.0}))  # extra keys are kept out
    assert PowerModel.load(tmp_path) == pm
