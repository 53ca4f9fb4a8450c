"""Kernel grouping: units merged into stages by how they scale with SMs (no GPU)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from planner_fixtures import SIZES, flat, scaling

from eclip_ray.errors import PlanError
from eclip_ray.planner import synthetic, timing
from eclip_ray.planner.grouping import group_units, knee


def _rows(units):
    return np.array([[u[s] for s in SIZES] for u in units])


def _cuts(n):
    return [None] + [f"u{i}#0" for i in range(1, n)]


def test_knee_is_the_fewest_sms_near_the_best_time():
    assert knee(np.array([4.0, 2.0, 1.4, 1.0]), SIZES, 0.1) == 132
    assert knee(np.array([0.5, 0.5, 0.5, 0.5]), SIZES, 0.1) == 32
    assert knee(np.array([2.0, 1.05, 1.02, 1.0]), SIZES, 0.1) == 64


def test_runs_of_units_that_scale_alike_form_groups():
    units = [flat(0.1), flat(0.2), scaling(60), scaling(90), flat(0.1)]
    groups = group_units(_rows(units), SIZES, _cuts(5), max_groups=10)
    assert [(g.first, g.stop) for g in groups] == [(0, 2), (2, 4), (4, 5)]
    assert [g.cut for g in groups] == [None, "u2#0", "u4#0"]


@pytest.mark.parametrize("bound", [1, 2, 5, 17])
def test_groups_cover_every_unit_in_order_within_the_bound(bound):
    prof = synthetic.profile("m", 200, seed=3)
    ms = timing.unit_ms(prof, list(SIZES))
    groups = group_units(ms, SIZES, [u.cut for u in prof.units], max_groups=bound)
    assert 1 <= len(groups) <= bound
    assert groups[0].first == 0 and groups[-1].stop == 200
    assert all(a.stop == b.first for a, b in itertools.pairwise(groups))
    assert [g.cut for g in groups] == [prof.units[g.first].cut for g in groups]


def test_grouping_is_deterministic():
    prof = synthetic.profile("m", 120, seed=5)
    ms = timing.unit_ms(prof, list(SIZES))
    cuts = [u.cut for u in prof.units]
    assert group_units(ms, SIZES, cuts, 12) == group_units(ms.copy(), SIZES, list(cuts), 12)


def test_the_smallest_group_merges_into_the_neighbour_that_scales_alike():
    tiny = {32: 0.02, 64: 0.01, 96: 0.01, 132: 0.01}  # knee 64: a run of its own, nearly flat
    units = [scaling(200), tiny, flat(1.0)]
    groups = group_units(_rows(units), SIZES, _cuts(3), max_groups=2)
    assert [(g.first, g.stop) for g in groups] == [(0, 1), (1, 3)]  # joins the flat unit, on its right


def test_bad_arguments_are_refused():
    with pytest.raises(PlanError):
        group_units(_rows([flat(1.0)]), SIZES, [None], max_groups=0)
    with pytest.raises(PlanError):
        group_units(_rows([flat(1.0)]), SIZES, [None, "x#0"], max_groups=2)
