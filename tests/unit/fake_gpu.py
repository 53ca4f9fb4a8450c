"""A fake GPU for the planner's online tests: request latency depends on the plan and on the load.

An event simulation in virtual time (no sleeping, no threads). Every lane is one model
instance whose requests run one at a time in arrival order (a runner's stream); a lane
runs a closed loop (the next request as soon as one ends) or Poisson arrivals at a rate
that may change with time. A request's service time is fixed when it starts:

    (launch_ms + work_sm_ms / n) * (1 + sum over running neighbours of press * (shared / n) ** 4)

``n`` being the SMs of its partition and ``shared`` the SMs it shares with the
neighbour's partition: a small kernel finds free SMs unless nearly all are held, so a
nested plan (the neighbour confined, this model on the whole GPU) protects it and
multi-stream does not. Each request asks the steering for its plan as it starts, and
the steering observes every lane every ``period_s``, as the real request loops do.
Nothing here describes a real GPU.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from eclip_ray.partition.layout import Layout
from eclip_ray.planner.steering import LaneView, Steering

Rate = float | Callable[[float], float] | None  # batches/s, a function of time, or None: a closed loop


@dataclass(frozen=True)
class FakeModel:
    batch: int
    launch_ms: float
    work_sm_ms: float
    press: float  # how much its running batch slows a neighbour that shares all of that neighbour's SMs


@dataclass
class _Lane:
    name: str
    model: FakeModel
    rate: Rate
    queue: deque = field(default_factory=deque)
    busy_until: float = -1.0
    part: str | None = None
    arrivals: int = 0
    completed: int = 0
    recent: deque = field(default_factory=lambda: deque(maxlen=512))
    done: list = field(default_factory=list)  # (completed at, latency ms, partition)
    wide: int = 0


class FakeGpu:
    """Lanes of ``models`` on ``layout``; ``run`` drives them under a steering for some virtual seconds."""

    def __init__(self, layout: Layout, models: Mapping[str, FakeModel], seed: int = 0) -> None:
        self.layout = layout
        self.models = dict(models)
        self.rng = np.random.default_rng(seed)
        self.now = 0.0

    def service_ms(self, lane: _Lane, part: str, lanes: Mapping[str, _Lane]) -> float:
        p = self.layout[part]
        ms = lane.model.launch_ms + lane.model.work_sm_ms / p.count
        slow = sum(
            o.model.press * (p.overlap(self.layout[o.part]) / p.count) ** 4
            for o in lanes.values()
            if o is not lane and o.part is not None and o.busy_until > self.now
        )
        return ms * (1 + slow)

    def run(
        self, steering: Steering, rates: Mapping[str, Rate], seconds: float, period_s: float | None = None
    ) -> dict[str, _Lane]:
        """Drive every lane for ``seconds`` of virtual time from ``self.now``; the lanes with what they did."""
        lanes = {n: _Lane(n, m, rates.get(n)) for n, m in self.models.items()}
        stop = self.now + seconds
        events: list[tuple[float, int, str, str]] = []
        seq = 0

        def push(t: float, kind: str, name: str) -> None:
            nonlocal seq
            seq += 1
            heapq.heappush(events, (t, seq, kind, name))

        for ln in lanes.values():
            if ln.rate is None:
                ln.queue.append(self.now)
                ln.arrivals += 1
            else:
                push(self.now + self._gap(ln, self.now), "arrive", ln.name)
        period = steering.period_s if period_s is None else period_s
        if period > 0:
            push(self.now + period, "observe", "")
        self._start_all(lanes, steering, push)
        while events and events[0][0] < stop:
            t, _, kind, name = heapq.heappop(events)
            self.now = t
            if kind == "arrive":
                ln = lanes[name]
                ln.queue.append(t)
                ln.arrivals += 1
                push(t + self._gap(ln, t), "arrive", name)
            elif kind == "finish":
                self._finish(lanes[name], t)
            else:
                steering.observe(t, self.views(lanes))
                push(t + period, "observe", "")
            self._start_all(lanes, steering, push)
        self.now = stop
        return lanes

    def _gap(self, ln: _Lane, t: float) -> float:
        rate = ln.rate(t) if callable(ln.rate) else ln.rate
        return float(self.rng.exponential(1.0 / rate))

    def _finish(self, ln: _Lane, t: float) -> None:
        arrived = ln.queue.popleft()
        ms = 1e3 * (t - arrived)
        ln.completed += 1
        ln.recent.append((t, ms))
        ln.done.append((t, ms, ln.part))
        if ln.rate is None:  # a closed loop issues the next at once
            ln.queue.append(t)
            ln.arrivals += 1

    def _start_all(self, lanes: Mapping[str, _Lane], steering: Steering, push) -> None:
        for ln in lanes.values():
            if ln.queue and ln.busy_until <= self.now:
                plan = steering.plan(ln.name, self.views(lanes))
                ln.part = plan.partitions[0]
                ln.wide += ln.part == "whole"
                ms = self.service_ms(ln, ln.part, lanes)
                ln.busy_until = self.now + ms / 1e3
                push(ln.busy_until, "finish", ln.name)

    def views(self, lanes: Mapping[str, _Lane]) -> dict[str, LaneView]:
        out = {}
        for n, ln in lanes.items():
            running = int(ln.busy_until > self.now)
            out[n] = LaneView(n, running, max(0, len(ln.queue) - running), ln.arrivals, ln.completed, tuple(ln.recent))
        return out


def metrics(lanes: Mapping[str, _Lane], since: float, until: float) -> dict:
    """The keys of ``eclip_ray.bench.stats.window_metrics`` that the selection reads, for ``[since, until)``."""
    seconds = until - since
    models, p99, total = {}, {}, 0
    for n, ln in lanes.items():
        lat = sorted(ms for t, ms, _ in ln.done if since <= t < until)
        p99[n] = lat[max(0, math.ceil(0.99 * len(lat)) - 1)] if lat else None
        models[n] = {"throughput_rps": len(lat) * ln.model.batch / seconds}
        total += len(lat) * ln.model.batch
    return {
        "p99_ms": p99,
        "throughput_rps": total / seconds,
        "joules_per_inference": None,
        "window_s": seconds,
        "models": models,
    }


class FakeClock:
    """A clock the fake trials advance, for the selection's time budget."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


SVC = FakeModel(batch=1, launch_ms=0.5, work_sm_ms=40.0, press=0.2)  # 0.8 ms alone on 132 SMs
JOB = FakeModel(batch=16, launch_ms=0.2, work_sm_ms=500.0, press=3.0)  # 4.0 ms alone on 132 SMs
SLO_MS = {"svc": 2.4, "job": 20.0}


def service_pair() -> dict:
    """Profiles shaped like SVC and JOB (a batch-1 service beside a batch-16 job) for the candidate generator."""
    from eclip_ray.planner import synthetic

    return {
        "svc": synthetic.profile("svc", 12, seed=1, whole_ms=0.8, heavy=0.2),
        "job": synthetic.profile("job", 12, batch_size=16, seed=2, whole_ms=4.0, heavy=0.9),
    }


def trial_on(gpu: FakeGpu, rates: Mapping[str, Rate], clock: FakeClock, latency_critical, warmup_s: float = 0.2):
    """A selection trial that runs a candidate on ``gpu`` (virtual time) and advances ``clock`` by what it took."""
    from eclip_ray.planner.placement import steering_for
    from eclip_ray.planner.selection import Trial

    calls: list[str] = []

    def trial(candidate, window_s: float) -> Trial:
        calls.append(candidate.name)
        t0 = gpu.now
        lanes = gpu.run(steering_for(candidate, latency_critical), rates, warmup_s + window_s)
        clock.t += warmup_s + window_s
        return Trial.of(candidate.name, metrics(lanes, t0 + warmup_s, t0 + warmup_s + window_s))

    trial.calls = calls  # type: ignore[attr-defined]
    return trial
