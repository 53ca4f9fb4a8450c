"""The HTTP front's admission limit per model: a ceiling, and AIMD on the front's time against the SLO."""

from __future__ import annotations

import pytest

from eclip_ray.serve._private.admission import FrontLimit


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_without_an_slo_the_limit_is_the_ceiling():
    limit = FrontLimit(3, None)
    assert [limit.admit() for _ in range(4)] == [True, True, True, False]
    limit.done(100.0)  # however long it took
    assert limit.limit == 3 and limit.admit() and not limit.admit()


def test_late_requests_shrink_the_limit_once_per_slo_and_never_below_the_floor():
    clock = Clock()
    limit = FrontLimit(32, 0.05, clock=clock)
    for _ in range(10):
        assert limit.admit()
    for _ in range(10):  # ten late answers in one spell: one cut
        limit.done(0.2)
    assert limit.limit == 22  # 32 x 0.7
    for _ in range(20):
        clock.t += 0.05
        assert limit.admit()
        limit.done(0.2)
    assert limit.limit == 1 and limit.ongoing == 0
    assert limit.admit() and not limit.admit()  # one at a time, never none


def test_requests_in_time_grow_the_limit_back_to_the_ceiling():
    clock = Clock()
    limit = FrontLimit(8, 0.05, clock=clock)
    limit.window = 2.0
    grown = []
    for _ in range(40):
        limit.admit()
        limit.done(0.01)
        grown.append(limit.limit)
    assert grown[0] == 2 and grown == sorted(grown) and grown[-1] == 8  # by about one per window of requests
    assert grown.index(4) > 2  # additive, not a jump


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="floor <= ceiling"):
        FrontLimit(0, None)
    with pytest.raises(ValueError, match="floor 4 and ceiling 2"):
        FrontLimit(2, None, floor=4)
