from eclip_ray.graph.plan import Plan
from eclip_ray.planner.steering import Fixed, LaneView


def test_fixed_steering_returns_each_lanes_own_plan():
    plans = {"a": Plan.single("whole"), "b": Plan.single("s0.112")}
    s = Fixed(plans)
    views = {n: LaneView(n, inflight=1, backlog=0, arrivals=3, completed=2) for n in plans}
    assert s.period_s == 0
    assert s.plan("b", views) == Plan.single("s0.112")
    assert s.plan("a", views) == Plan.single("whole")
