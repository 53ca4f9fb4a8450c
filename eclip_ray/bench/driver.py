"""The request loop: drives model instances under a load and measures one window.

One Python thread issues every instance's requests (``ModelRunner.submit``
returns at once on the GPU) and polls their completion events, so every
policy runs through the same executor and only the sharing differs. Warm-up
requests run under the same load and are not counted. The window starts at
``start_at`` (or after ``warmup_s``; if a call holds the loop past that
instant, when the loop sees it) and lasts ``window_s``: a request counts when
its completion is seen inside it, and the energy meter's window spans it
exactly. Requests still queued when it ends are finished but not counted; in
open loop their ages are kept (``LaneResult.unfinished_ms``), so that an
overloaded policy's queue counts against its SLO.

Each instance runs in closed loop or gets Poisson arrivals, as the load says
(``Load.closed``): a batch job beside services runs both in one window. A
steering (``eclip_ray.planner.steering``) may choose every request's plan; it
sees each lane through a :class:`LaneView` built when it asks.

``serial=True`` is time-sharing: every request waits on the GPU for the one
issued before it, whatever its model, so requests run one at a time in
arrival order, as on a single stream, while the host still queues ahead.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from eclip_ray.bench.load import Load, lane_rng, poisson_arrivals
from eclip_ray.energy import EnergyMeter, Measurement
from eclip_ray.graph.plan import Plan
from eclip_ray.planner.steering import LaneView, Steering


class Pending(Protocol):
    event: Any

    def done(self) -> bool: ...

    def result(self) -> Any: ...


class Submitter(Protocol):
    on_gpu: bool

    def submit(self, inputs: Sequence[Any], plan: Plan) -> Pending: ...


HISTORY = 512  # completions each lane keeps for a steering (LaneView.recent)


@dataclass
class Lane:
    """One model instance: its runner, its plan under the policy, and its fixed request inputs."""

    name: str
    runner: Submitter
    plan: Plan
    batch_size: int
    inputs: tuple[Any, ...]
    index: int = 0  # place in the mix: fixes its Poisson seed
    inflight: deque = field(default_factory=deque, repr=False)  # (arrival time, Pending), in issue order
    backlog: deque = field(default_factory=deque, repr=False)  # arrival times not yet issued
    arrivals: np.ndarray | None = field(default=None, repr=False)
    next_arrival: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    arrived_in_window: int = 0
    closed: bool = True  # set from the load: closed loop, or open (Poisson) arrivals
    depth: int = 1  # most requests on the GPU at once
    recent: deque = field(default_factory=lambda: deque(maxlen=HISTORY), repr=False)  # (completed_at, ms)
    total_arrived: int = 0  # since the loop started, warm-up included (a steering's view)
    total_completed: int = 0


@dataclass(frozen=True)
class LaneResult:
    """What one instance did in the window."""

    name: str
    batch_size: int
    latencies_ms: list[float]  # of the requests completed in the window, in completion order
    arrivals: int  # requests that arrived in the window (closed loop: issued)
    unserved: int  # arrived but never issued when the window closed (open loop over capacity)
    # Open loop: the age at the window's end of every request that had arrived and not finished
    # (queued on the host or on the GPU). One older than its SLO has missed it already.
    unfinished_ms: list[float] = field(default_factory=list)
    closed: bool = True  # closed loop (requests issued back to back) or open (Poisson arrivals)

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "batch_size": self.batch_size,
            "latencies_ms": self.latencies_ms,
            "arrivals": self.arrivals,
            "unserved": self.unserved,
            "unfinished_ms": self.unfinished_ms,
            "closed": self.closed,
        }

    @classmethod
    def from_dict(cls, d: dict) -> LaneResult:
        return cls(
            d["name"],
            d["batch_size"],
            list(d["latencies_ms"]),
            d["arrivals"],
            d["unserved"],
            list(d.get("unfinished_ms", ())),
            bool(d.get("closed", True)),
        )


@dataclass(frozen=True)
class Window:
    """One measured window: per-instance results, its length and the energy drawn (None: not measured)."""

    seconds: float
    lanes: dict[str, LaneResult]
    energy: Measurement | None
    energy_note: str = ""
    # Mean time of one pass of the host loop over every instance, in microseconds: when it nears a
    # request's GPU time, the host, not the sharing policy, limits the throughput.
    loop_us: float | None = None


class _Views(Mapping[str, LaneView]):
    """What a steering sees of every lane, built only for the lanes it looks at, when it looks.

    ``recent`` is the lane's live history (a deque the loop appends to): copy it to keep it.
    """

    __slots__ = ("_lanes",)

    def __init__(self, lanes: Sequence[Lane]) -> None:
        self._lanes = {ln.name: ln for ln in lanes}

    def __getitem__(self, name: str) -> LaneView:
        ln = self._lanes[name]
        return LaneView(ln.name, len(ln.inflight), len(ln.backlog), ln.total_arrived, ln.total_completed, ln.recent)

    def __iter__(self) -> Iterator[str]:
        return iter(self._lanes)

    def __len__(self) -> int:
        return len(self._lanes)


@dataclass
class _Issuer:
    """Issues requests: the plan from the lane or the steering, in arrival order when time-sharing."""

    serial: _Serial | None
    steering: Steering | None
    views: _Views | None

    def issue(self, lane: Lane, arrival: float) -> None:
        plan = lane.plan if self.steering is None else self.steering.plan(lane.name, self.views)  # type: ignore[arg-type]
        if self.serial is not None:
            self.serial.before(lane.runner)
        pending = lane.runner.submit(lane.inputs, plan)
        if self.serial is not None:
            self.serial.after(pending)
        lane.inflight.append((arrival, pending))


class _Serial:
    """Orders requests of different runners on the GPU: each waits for the one issued before it."""

    def __init__(self) -> None:
        self.last: Pending | None = None

    def before(self, runner: Submitter) -> None:
        if self.last is not None and self.last.event is not None:
            runner.stream.wait_event(self.last.event)  # type: ignore[attr-defined]

    def after(self, pending: Pending) -> None:
        self.last = pending


def _reap(lane: Lane, now: float, counting: bool) -> None:
    """Retire finished requests (a runner finishes in issue order, so only the head is checked)."""
    while lane.inflight and lane.inflight[0][1].done():
        arrival, _ = lane.inflight.popleft()
        ms = 1e3 * (now - arrival)
        lane.recent.append((now, ms))
        lane.total_completed += 1
        if counting:
            lane.latencies_ms.append(ms)
        if lane.closed:
            lane.backlog.append(now)
            lane.total_arrived += 1
            if counting:
                lane.arrived_in_window += 1


def _arrive(lane: Lane, now: float, t0: float, t_start: float) -> None:
    times = lane.arrivals
    while times is not None and lane.next_arrival < len(times) and t0 + times[lane.next_arrival] <= now:
        at = t0 + float(times[lane.next_arrival])
        lane.backlog.append(at)
        lane.arrived_in_window += at >= t_start
        lane.next_arrival += 1
        lane.total_arrived += 1


def _dispatch(lanes: Sequence[Lane], issuer: _Issuer) -> None:
    if issuer.serial is None:
        for lane in lanes:
            while lane.backlog and len(lane.inflight) < lane.depth:
                issuer.issue(lane, lane.backlog.popleft())
        return
    while True:  # time-share: the earliest arrival of any instance goes first
        ready = [ln for ln in lanes if ln.backlog and len(ln.inflight) < ln.depth]
        if not ready:
            return
        lane = min(ready, key=lambda ln: ln.backlog[0])
        issuer.issue(lane, lane.backlog.popleft())


def _prepare(lanes: Sequence[Lane], load: Load, seed: int, horizon_s: float, t0: float) -> None:
    for lane in lanes:
        lane.inflight.clear()
        lane.backlog.clear()
        lane.recent.clear()
        lane.latencies_ms = []
        lane.arrived_in_window = lane.next_arrival = lane.total_arrived = lane.total_completed = 0
        lane.closed = load.closed(lane.index)
        lane.depth = load.depth(lane.index)
        if lane.closed:
            lane.arrivals = None
            lane.backlog.extend([t0] * load.inflight)
            lane.total_arrived = load.inflight
        else:
            rate = load.rate(lane.index, len(lanes))
            lane.arrivals = poisson_arrivals(rate, horizon_s, lane_rng(seed, lane.index))


def _finish(lane: Lane, t_stop: float) -> LaneResult:
    """The lane's result; what is still queued is finished (not counted) so the next window starts clean."""
    unfinished = [] if lane.closed else [1e3 * (t_stop - a) for a in (*lane.backlog, *(a for a, _ in lane.inflight))]
    unserved = 0 if lane.closed else len(lane.backlog)
    for _, pending in lane.inflight:
        pending.result()
    lane.inflight.clear()
    return LaneResult(
        lane.name, lane.batch_size, lane.latencies_ms, lane.arrived_in_window, unserved, unfinished, lane.closed
    )


def drive(
    lanes: Sequence[Lane],
    load: Load,
    *,
    warmup_s: float,
    window_s: float,
    serial: bool = False,
    meter: EnergyMeter | None = None,
    energy_note: str = "",
    seed: int = 0,
    start_at: float | None = None,
    steering: Steering | None = None,
) -> Window:
    """Run ``lanes`` under ``load``; measure ``window_s`` seconds from ``start_at`` (``perf_counter`` time).

    ``meter`` None (or unavailable) leaves energy unmeasured, with ``energy_note``
    saying why. ``serial`` runs the requests one at a time in arrival order.
    ``steering`` chooses the plan of every request (``steering.plan`` just before
    it is issued, ``steering.observe`` about every ``period_s``); without one each
    lane's ``plan`` is used. Every plan it returns must be captured already.
    """
    if window_s <= 0:
        raise ValueError(f"window_s must be > 0, got {window_s}")
    if serial and any(getattr(ln.runner, "on_gpu", False) for ln in lanes):
        missing = [ln.name for ln in lanes if getattr(ln.runner, "stream", None) is None]
        if missing:
            raise ValueError(f"time-sharing needs each GPU runner's stream; {missing} have none")
    t0 = time.perf_counter()
    t_start = start_at if start_at is not None else t0 + warmup_s
    t_stop = t_start + window_s
    if t_stop <= t0:
        raise RuntimeError(f"the window ended {t0 - t_stop:.3f} s before the loop started (start_at is past)")
    _prepare(lanes, load, seed, t_stop - t0 + window_s, t0)  # room for a window the loop saw open late
    views = _Views(lanes) if steering is not None else None
    issuer = _Issuer(_Serial() if serial else None, steering, views)
    period = steering.period_s if steering is not None else 0.0
    next_look = t0 + period if period > 0 else float("inf")
    open_lanes = [ln for ln in lanes if not ln.closed]
    measure = meter is not None and meter.available
    counting, began, now, passes = False, t_start, t0, 0
    while True:
        now = time.perf_counter()
        if not counting and now >= t_start:
            counting, began = True, now
            # A call that held the loop past the start (an eager model on the CPU backend) still gets a
            # whole window; on a GPU the loop sees the start within microseconds.
            t_stop = max(t_stop, now + window_s)
            if measure:
                meter.begin_window("bench")  # type: ignore[union-attr]
        if now >= t_stop:
            for lane in open_lanes:  # arrivals up to the window's end count, served or not
                _arrive(lane, t_stop, t0, t_start)
            break
        passes += counting
        for lane in lanes:
            _reap(lane, now, counting)
        for lane in open_lanes:
            _arrive(lane, now, t0, t_start)
        if now >= next_look:
            steering.observe(now, views)  # type: ignore[union-attr,arg-type]
            next_look = now + period
        _dispatch(lanes, issuer)
    energy = meter.end_window("bench") if measure else None  # type: ignore[union-attr]
    seconds = energy.seconds if energy is not None else now - began
    results = {lane.name: _finish(lane, t_stop) for lane in lanes}
    note = "" if measure else (energy_note or "no energy meter")
    return Window(seconds, results, energy, note, 1e6 * (now - began) / passes if passes else None)
