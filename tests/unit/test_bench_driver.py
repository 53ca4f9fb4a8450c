"""The request loop: closed and open loops, time-sharing order and energy windows (no GPU).

Fake runners stand in for the GPU: their requests finish a set time after the
previous one of the same runner (one stream each), and they record the order
in which requests are issued and made to wait on each other.
"""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from eclip_ray.bench.driver import HISTORY, Lane, _dispatch, _Issuer, _Serial, drive
from eclip_ray.bench.load import Load, lane_rng, poisson_arrivals
from eclip_ray.energy.meter import EnergyMeter
from eclip_ray.graph.plan import Plan

WHOLE = Plan.single("whole")


class Event:
    def __init__(self, name: str, done_at: float) -> None:
        self.name, self.done_at = name, done_at

    def query(self) -> bool:
        return time.perf_counter() >= self.done_at


class Pending:
    def __init__(self, event: Event) -> None:
        self.event = event

    def done(self) -> bool:
        return self.event.query()

    def result(self) -> tuple:
        while not self.done():
            pass
        return ()


class Stream:
    def __init__(self, runner: FakeRunner) -> None:
        self.runner = runner

    def wait_event(self, event: Event) -> None:
        self.runner.log.append(("wait", self.runner.name, event.name))
        self.runner.after = max(self.runner.after, event.done_at)


class FakeRunner:
    """A runner whose requests take ``ms`` each, one after another (a stream)."""

    def __init__(self, name: str, ms: float, log: list, on_gpu: bool = True) -> None:
        self.name, self.ms, self.log, self.on_gpu = name, ms, log, on_gpu
        self.stream = Stream(self)
        self.after = 0.0
        self.count = 0
        self.issued: list[Event] = []
        self.most_outstanding = 0

    def submit(self, inputs, plan) -> Pending:
        self.issued = [e for e in self.issued if not e.query()]
        self.most_outstanding = max(self.most_outstanding, len(self.issued) + 1)
        start = max(time.perf_counter(), self.after)
        self.after = start + self.ms / 1e3
        self.count += 1
        name = f"{self.name}{self.count}"
        self.log.append(("submit", self.name, name))
        self.issued.append(Event(name, self.after))
        return Pending(self.issued[-1])


class WattMeter(EnergyMeter):
    """A counter that grows at ``watts`` joules per second of wall time."""

    def __init__(self, watts: float) -> None:
        super().__init__()
        self.watts = watts
        self.min_window_s = 0.0

    def _counter_j(self) -> float:
        return self.watts * time.perf_counter()

    def power_w(self) -> float:
        return self.watts

    def describe(self) -> dict:
        return {}


def _lanes(log: list, *ms: float, on_gpu: bool = True) -> list[Lane]:
    return [Lane(f"m{i}", FakeRunner(f"m{i}", t, log, on_gpu), WHOLE, 1, (), index=i) for i, t in enumerate(ms)]


def test_closed_loop_keeps_n_in_flight_and_counts_only_the_window():
    log: list = []
    lanes = _lanes(log, 2.0, 2.0)
    w = drive(lanes, Load("closed", 3), warmup_s=0.05, window_s=0.2)
    assert set(w.lanes) == {"m0", "m1"}
    for lane in lanes:
        r = w.lanes[lane.name]
        # Three queued requests of 2 ms each: a request waits for the two before it.
        assert r.requests > 0 and sorted(r.latencies_ms)[len(r.latencies_ms) // 2] >= 2.0 * 3 * 0.9
        assert r.unserved == 0
        assert lane.runner.most_outstanding == 3
    assert w.energy is None and w.energy_note == "no energy meter"
    assert 0 < w.loop_us < 1e6 * w.seconds
    assert not any(kind == "wait" for kind, *_ in log)  # plain multi-stream: no ordering between models


def test_time_share_runs_requests_one_at_a_time_in_arrival_order():
    log: list = []
    lanes = _lanes(log, 1.0, 3.0)
    w = drive(lanes, Load("closed", 1), warmup_s=0.02, window_s=0.2, serial=True)
    submits = [i for i, e in enumerate(log) if e[0] == "submit"]
    assert len(submits) >= 3
    for prev, cur in itertools.pairwise(submits):
        # Every request after the first waits on the GPU for the request issued just before it.
        assert log[cur - 1] == ("wait", log[cur][1], log[prev][2])
    # Serialised: the mix finishes at most one request per the sum of its requests' times.
    done = sum(r.requests for r in w.lanes.values())
    assert done <= w.seconds * 1e3 / 2.0 + 2


def test_time_share_issues_in_arrival_order_across_models():
    log: list = []
    lanes = _lanes(log, 1.0, 1.0, 1.0)
    for lane, arrivals in zip(lanes, ([3.0, 5.0], [1.0], [2.0, 4.0]), strict=True):
        lane.backlog.extend(arrivals)
        lane.depth = 2
    _dispatch(lanes, _Issuer(_Serial(), None, None))
    assert [e[1] for e in log if e[0] == "submit"] == ["m1", "m2", "m0", "m2", "m0"]
    assert [e[0] for e in log] == ["submit"] + ["wait", "submit"] * 4


def test_time_share_needs_the_runners_streams_on_a_gpu():
    lanes = _lanes([], 1.0)
    lanes[0].runner.stream = None
    with pytest.raises(ValueError, match="stream"):
        drive(lanes, Load(), warmup_s=0.0, window_s=0.01, serial=True)


def test_open_loop_arrivals_follow_the_seeded_poisson_process():
    log: list = []
    lanes = _lanes(log, 0.0, 0.0, on_gpu=False)
    rate, warm, window = 400.0, 0.05, 0.3
    w = drive(lanes, Load("poisson", rates_rps=(rate,)), warmup_s=warm, window_s=window, seed=5)
    for lane in lanes:
        times = poisson_arrivals(rate, warm + window, lane_rng(5, lane.index))
        expect = int(np.sum((times >= warm) & (times < warm + window)))
        assert abs(w.lanes[lane.name].arrivals - expect) <= 2


def test_open_loop_charges_queueing_from_arrival():
    # 10 ms per request, arrivals every 2.5 ms on average, one request on the GPU at a time:
    # the backlog grows and latency (from arrival) far exceeds the service time.
    log: list = []
    lanes = _lanes(log, 10.0, on_gpu=False)
    w = drive(lanes, Load("poisson", rates_rps=(400.0,), max_inflight=1), warmup_s=0.05, window_s=0.3, seed=1)
    r = w.lanes["m0"]
    assert r.unserved > 0
    assert max(r.latencies_ms) > 3 * 10.0
    assert r.requests <= 0.3 * 1e3 / 10.0 + 2


def test_energy_window_spans_the_measured_window():
    meter = WattMeter(300.0)
    w = drive(_lanes([], 1.0), Load(), warmup_s=0.02, window_s=0.15, meter=meter)
    assert w.energy is not None and w.energy_note == ""
    assert 0 < w.seconds <= 0.15 + 0.5  # from when the loop saw the window open to when it saw it close
    assert w.energy.watts == pytest.approx(300.0, rel=1e-3)


def test_unavailable_meter_is_not_read():
    from eclip_ray.energy import UnavailableMeter

    w = drive(_lanes([], 1.0), Load(), warmup_s=0.0, window_s=0.05, meter=UnavailableMeter("cpu"), energy_note="cpu")
    assert w.energy is None and w.energy_note == "cpu"


def test_window_must_be_positive():
    with pytest.raises(ValueError):
        drive(_lanes([], 1.0), Load(), warmup_s=0.0, window_s=0.0)


def test_mixed_load_runs_a_closed_batch_lane_beside_a_poisson_service():
    log: list = []
    lanes = _lanes(log, 0.5, 2.0, on_gpu=False)  # m0 the service, m1 the batch job
    load = Load.mixed([300.0, None], inflight=1)
    assert load.kind == "mixed" and load.closed(1) and not load.closed(0) and load.label() == "mixed300,c1"
    w = drive(lanes, load, warmup_s=0.05, window_s=0.3, seed=2)
    service, batch = w.lanes["m0"], w.lanes["m1"]
    times = poisson_arrivals(300.0, 0.35, lane_rng(2, 0))
    assert abs(service.arrivals - int(np.sum((times >= 0.05) & (times < 0.35)))) <= 2
    # The batch lane never waits for arrivals: back to back, about window / 2 ms requests.
    assert batch.requests >= 0.3 * 1e3 / 2.0 * 0.5 and batch.unserved == 0 and batch.unfinished_ms == []
    assert lanes[1].runner.most_outstanding == 1


def test_open_lanes_keep_the_ages_of_what_is_unfinished_at_the_end():
    lanes = _lanes([], 10.0, on_gpu=False)
    w = drive(lanes, Load("poisson", rates_rps=(400.0,), max_inflight=1), warmup_s=0.02, window_s=0.2, seed=3)
    r = w.lanes["m0"]
    # Over capacity: the backlog is still there at the end, and its oldest requests are old.
    assert len(r.unfinished_ms) >= r.unserved > 0 and max(r.unfinished_ms) > 50.0
    assert all(a >= 0 for a in r.unfinished_ms)


class Recorder:
    """A steering that sends m0 to partition A until it has seen 5 completions, then to B; counts its calls."""

    period_s = 0.02

    def __init__(self) -> None:
        self.plans: list[tuple[str, int, Plan]] = []
        self.looks: list[float] = []
        self.a, self.b = Plan.single("A"), Plan.single("B")

    def plan(self, lane, views):
        v = views[lane]
        assert v.name == lane and v.inflight >= 0 and v.completed >= len(v.recent)
        chosen = self.b if views["m0"].completed >= 5 else self.a
        self.plans.append((lane, v.completed, chosen))
        return chosen

    def observe(self, now, views):
        assert set(views) == {"m0", "m1"} and len(views) == 2
        self.looks.append(now)


def test_a_steering_chooses_every_plan_and_observes_on_schedule():
    submitted: list = []
    lanes = _lanes([], 1.0, 1.0)
    for lane in lanes:
        plain = lane.runner.submit
        lane.runner.submit = lambda inputs, plan, plain=plain, n=lane.name: (
            submitted.append((n, plan)) or plain(inputs, plan)
        )
    steer = Recorder()
    w = drive(lanes, Load("closed", 1), warmup_s=0.02, window_s=0.2, steering=steer)
    assert [(n, p) for n, _, p in steer.plans] == submitted  # one plan() call just before each submit
    assert submitted[0][1] == steer.a and submitted[-1][1] == steer.b
    gaps = np.diff(steer.looks)
    assert 5 <= len(steer.looks) <= 0.22 / 0.02 + 2 and np.all(gaps >= 0.02 - 1e-6)
    assert w.lanes["m0"].requests > 0


def test_lane_history_is_bounded_and_each_window_starts_afresh():
    lanes = _lanes([], 0.0, on_gpu=False)
    drive(lanes, Load("closed", 1), warmup_s=0.0, window_s=0.1)
    assert len(lanes[0].recent) == HISTORY and lanes[0].total_completed > HISTORY
    t, ms = lanes[0].recent[-1]
    assert t <= time.perf_counter() and ms >= 0
    issued_before = lanes[0].runner.count
    drive(lanes, Load("closed", 1), warmup_s=0.0, window_s=0.01)
    # Counted from the new loop's start: no more completions than that loop issued, all of them newer.
    assert 0 < lanes[0].total_completed <= lanes[0].runner.count - issued_before
    assert lanes[0].recent[0][0] > t


def test_a_window_the_loop_saw_open_late_is_still_a_whole_window():
    class Blocking(FakeRunner):
        def submit(self, inputs, plan):
            if self.count == 0:
                time.sleep(0.15)  # the first call holds the loop past warm-up and window together
            return super().submit(inputs, plan)

    lanes = [Lane("m0", Blocking("m0", 1.0, [], on_gpu=False), WHOLE, 1, ())]
    w = drive(lanes, Load("closed", 1), warmup_s=0.02, window_s=0.05)
    assert w.seconds >= 0.05 and w.lanes["m0"].requests > 0 and w.loop_us > 0
