"""Per-batch placement: each batch model's next batch runs where what is running now allows.

A nested candidate confines the batch models so the latency-critical ones keep SMs to
themselves. While no latency-critical neighbour has a request in flight or queued,
that protection buys nothing, so the batch model's next batch may take its ``wide``
plan (the whole GPU); once one has, the next batch goes back to its confined
partition. Both plans' graphs are captured at start, so the choice is a dictionary
lookup per batch. A batch already running wide is not moved: a latency-critical
request that arrives meanwhile meets it, which is why the measured selection
(``selection.py``) decides whether this pays for a mix at a load, against the static
nested plan it adapts.

Pure: a :class:`~eclip_ray.planner.steering.Steering`, composed with the guard
(``guard.py``), which steers among candidates and delegates each batch to the current
one's steering.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from eclip_ray.graph.plan import Plan
from eclip_ray.planner.candidates import Candidate
from eclip_ray.planner.steering import Fixed, LaneView, Steering


class PerBatch:
    """Batch lanes take ``wide`` while every latency-critical lane is idle, else their (confined) ``plans``."""

    period_s = 0.0

    def __init__(self, plans: Mapping[str, Plan], wide: Mapping[str, Plan], latency_critical: Collection[str]) -> None:
        self.plans = dict(plans)
        self.wide = dict(wide)
        self.latency_critical = frozenset(latency_critical)
        self.wide_batches = 0
        self.confined_batches = 0

    def plan(self, lane: str, views: Mapping[str, LaneView]) -> Plan:
        if lane not in self.wide:
            return self.plans[lane]
        if any(_busy(views.get(n)) for n in self.latency_critical if n != lane):
            self.confined_batches += 1
            return self.plans[lane]
        self.wide_batches += 1
        return self.wide[lane]

    def observe(self, now: float, views: Mapping[str, LaneView]) -> None:
        return None

    def describe(self) -> dict:
        total = self.wide_batches + self.confined_batches
        return {
            "wide_batches": self.wide_batches,
            "confined_batches": self.confined_batches,
            "wide_share": self.wide_batches / total if total else None,
        }


def _busy(view: LaneView | None) -> bool:
    return view is not None and (view.inflight > 0 or view.backlog > 0)


def steering_for(candidate: Candidate, latency_critical: Collection[str]) -> Steering:
    """The steering that runs ``candidate``: its fixed plans, or per-batch placement for a per-batch one."""
    if candidate.adaptive:
        return PerBatch(candidate.plans, candidate.wide, latency_critical)
    return Fixed(candidate.plans)
