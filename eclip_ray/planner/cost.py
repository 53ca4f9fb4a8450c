"""The cost model: predicted latency, throughput and energy of a mix under a plan.

A *mix* is the set of co-located model instances (workers). Each runs a closed
loop: it issues its next request (one batch) as soon as the last one ends, so
its rate is ``batch / latency`` and the mix's throughput is the sum of rates.

A worker's latency is the sum of its groups' times on their partitions, plus
``switch_ms`` per partition switch, plus the slowdown co-located workers cause:
ECLIP's ``beta (1 + alpha)``. Here ``alpha`` of a group on partition ``p`` is
``interference`` times the fraction of ``p``'s SMs the other workers keep busy
on average (ECLIP's CUAverage). Worker ``v`` keeps ``W_v(q) / (n_q S_v)`` of
partition ``q``'s SMs busy, spread evenly over ``q`` (``W_v(q)``: SM-ms of work
of its groups on ``q``; ``S_v``: its latency alone on the whole GPU, a constant
of the worker); ``p`` shares ``overlap(p, q)`` SMs with ``q``. So

    alpha_w(p) = interference * sum_{v != w} sum_q W_v(q) overlap(p, q) / (n_p n_q S_v)

Two saturating kernels on the same SMs each take twice as long (alpha = 1), as
ECLIP measured; launch-bound groups (little work for their time) slow their
neighbours little. Because ``S_v`` does not depend on the plan, the slowdown is
bilinear in the plan and the MILP can be exact.

Workers on disjoint SMs still slow each other down: they share the memory
system (L2, HBM) and the work distributor. On the H100, models alone on 32- and
64-SM partitions that share no SM ran 3-30% slower next to each other than alone
(benchmarks/results/h100/corun/). ``contention`` adds that as a device-wide term,
whatever the partitions:

    alpha_w(p) += contention * sum_{v != w} W_v / (S_v N)

(``N``: the device's SMs; ``W_v``: all of v's SM-ms), a constant of the mix that
scales each worker's time and keeps the MILP exact. Both coefficients are fitted to
measured mixes (``corun.py``) and ship beside the profiles (``corun.json``).

How hard a neighbour presses depends on its kernels and its load, not only on
the SMs it shares. A kernel that finds the SMs it wants held by a neighbour's
kernel waits for that kernel's blocks to drain: the longer the neighbour's
kernels (big batches, wide grids), the longer the wait, paid once per kernel of
the victim. So each worker ``v`` also carries ``kappa_v``, the time-weighted mean
duration of its kernels (``sum d^2 / sum d`` over its profile's kernels on the
most SMs: the expected length of the kernel a random moment falls into), and a
victim group ``g`` with ``K_g`` kernels on ``p`` pays

    blocking * K_g * sum_{v != w} sum_q kappa_v u_v W_v(q) overlap(p, q) / (n_p n_q S_v)

Nesting. A victim on ``p`` beside a neighbour confined to ``q``, a part of ``p``, can run
its kernels on the SMs of ``p`` the neighbour does not hold: a small kernel finds free SMs
unless nearly all are taken. So both terms weigh the overlap by the share of the
victim's partition it covers, raised to ``coverage - 1``: with ``coverage`` 1 (the
default, ECLIP's CUAverage) a neighbour presses the same wherever on ``p`` its busy SMs
are; with more, a neighbour confined to part of the victim's SMs presses less, one
covering them all as much as before. It is fitted with the rest (``corun.py``).

A neighbour's load enters as its *duty* ``u_v``: 1 in a closed loop, else the
share of time it has work, ``min(1, rate_v S_v)`` for ``rate_v`` batches per
second arriving. Every pressure term of ``v`` is scaled by it.

Tails. SLOs are on p99, and the p99 of a model beside a busy neighbour grows far
more than its median. ``tail`` holds a second set of coefficients (interference,
contention, blocking) fitted to measured p99s (``corun.py``); ``Prediction.tail_ms``
is the latency under them, and SLOs are checked against it (the MILP's SLO rows
use them too). Under open-loop arrivals each model also queues: with service time
``L`` and utilisation ``rho = rate L``, the mean wait is ``queueing * rho L / (2 (1 -
rho))`` (M/D/1) and the p99 wait ``queueing * L ln(100 rho) / (2 (1 - rho))``, with
``rho`` capped at ``RHO_CAP``. Queueing is in the evaluation only, not the MILP.
Without ``tail``, blocking and rates this is the closed-loop model above exactly.

Energy: the board draws ``idle_w`` plus the dynamic power of the SMs busy on
average, ``N = sum_w W_w / L_w`` (``power.py``); per inference that is
``(idle_w + dynamic(N)) / sum_w (b_w / L_w)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from eclip_ray.graph.plan import Plan
from eclip_ray.partition.layout import WHOLE, Layout
from eclip_ray.planner.grouping import Group
from eclip_ray.planner.power import PowerModel
from eclip_ray.planner.profile import ModelProfile

# Cost of one partition switch inside a CUDA graph when the profile does not
# carry a measured "switch_ms": an assumption of about one in-graph kernel
# launch plus a cross-stream dependency, not a measurement.
DEFAULT_SWITCH_MS = 0.01
RHO_CAP = 0.98  # utilisation at which queueing is charged when a plan cannot keep up with the arrivals

State = tuple[tuple[int, ...], ...]  # per worker, per group: index into layout.partitions


@dataclass(frozen=True, eq=False)
class Worker:
    """One model instance of a mix, grouped and costed on the partitions it may use."""

    name: str
    profile: ModelProfile
    slot: int  # the worker index of the layout whose partitions it may use
    groups: tuple[Group, ...]
    parts: tuple[int, ...]  # indices into layout.partitions, ascending SM count
    ms: np.ndarray  # [group, part] time alone, ms
    work: np.ndarray  # [group] SM-ms
    switch_ms: float
    slo_ms: float | None
    kernels: np.ndarray | None = None  # [group] kernel launches; None: one per unit
    kernel_ms: float = 0.0  # kappa: time-weighted mean kernel duration on the most SMs, ms

    @property
    def launches(self) -> np.ndarray:
        """Kernel launches per group (one per unit where the profile lists no kernels)."""
        if self.kernels is not None:
            return self.kernels
        return np.array([float(g.units) for g in self.groups])

    @property
    def model(self) -> str:
        return self.profile.key.model

    @property
    def batch_size(self) -> int:
        return self.profile.key.batch_size

    def column(self, partition: int) -> int:
        """Column of ``ms`` for layout partition index ``partition``."""
        return self.parts.index(partition)

    def plan(self, choice: Sequence[int], layout: Layout) -> Plan:
        """The compact Plan for partition indices ``choice`` (one per group)."""
        names = [layout.partitions[p].name for p in choice]
        return Plan.of([(g.cut, n) for g, n in zip(self.groups, names, strict=True)]).compact()


@dataclass(frozen=True)
class Pressure:
    """How co-located workers slow each other: one set predicts medians, another (``Mix.tail``) p99s."""

    interference: float = 1.0  # slowdown when another worker keeps all of a partition's SMs busy
    contention: float = 0.0  # slowdown when the others keep every SM of the device busy, on any SMs
    blocking: float = 0.0  # per victim kernel, per ms of the neighbours' kernels it finds on its SMs
    queueing: float = 1.0  # scale of the M/D/1 wait under open-loop arrivals
    coverage: float = 1.0  # overlap weighed by the share of the victim's SMs it covers, to the power coverage - 1

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("interference", "contention", "blocking", "queueing", "coverage")}


@dataclass(frozen=True, eq=False)
class Mix:
    """Workers on one layout, with the cost model's parameters."""

    layout: Layout
    workers: tuple[Worker, ...]
    interference: float = 1.0
    power: PowerModel | None = None
    power_note: str = "no power model given"
    solo_ms: tuple[float, ...] = ()  # S_v per worker; empty: each one's latency alone on the whole GPU
    contention: float = 0.0  # slowdown when the other workers keep every SM of the device busy, wherever
    blocking: float = 0.0  # per victim kernel, per ms of the neighbours' kernels on its SMs
    tail: Pressure | None = None  # the coefficients of p99 latency; None: tails are predicted as medians
    rates_rps: tuple[float | None, ...] = ()  # per worker, batches/s arriving; None or empty: a closed loop
    queueing: float = 1.0
    coverage: float = 1.0
    counts: np.ndarray = field(init=False)
    share: np.ndarray = field(init=False)  # overlap(p, q) / (n_p n_q), at coverage 1

    def __post_init__(self) -> None:
        parts = self.layout.partitions
        counts = np.array([p.count for p in parts], dtype=float)
        overlap = np.array([[a.overlap(b) for b in parts] for a in parts], dtype=float)
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "share", overlap / np.outer(counts, counts))
        if not self.solo_ms:
            whole = self.layout.names.index(WHOLE)
            object.__setattr__(self, "solo_ms", tuple(float(w.ms[:, w.column(whole)].sum()) for w in self.workers))

    @property
    def pressure(self) -> Pressure:
        """The coefficients of median latency."""
        return Pressure(self.interference, self.contention, self.blocking, self.queueing, self.coverage)

    def share_at(self, coverage: float) -> np.ndarray:
        """``overlap(p, q) / (n_p n_q) * (overlap(p, q) / n_p) ** (coverage - 1)``: how much ``q`` presses on ``p``."""
        if coverage == 1.0:
            return self.share
        covered = self.share * self.counts[None, :]  # overlap / n_p
        return self.share * covered ** (coverage - 1.0)

    @property
    def tail_pressure(self) -> Pressure:
        """The coefficients of p99 latency (the median's where no tail model was fitted)."""
        return self.tail or self.pressure

    def rate(self, i: int) -> float | None:
        """Batches per second arriving for worker ``i``; None in a closed loop."""
        return self.rates_rps[i] if self.rates_rps else None

    def duty(self) -> np.ndarray:
        """Per worker, the share of time it has work: 1 in a closed loop, ``min(1, rate S)`` under arrivals."""
        out = np.ones(len(self.workers))
        for i, s in enumerate(self.solo_ms):
            r = self.rate(i)
            if r is not None:
                out[i] = min(1.0, r * s / 1e3)
        return out

    def kernel_ms(self) -> np.ndarray:
        """Per worker, kappa: the time-weighted mean duration of its kernels, ms."""
        return np.array([w.kernel_ms for w in self.workers])

    def without_slos(self) -> Mix:
        """The same mix with no SLOs."""
        free = tuple(replace(w, slo_ms=None) for w in self.workers)
        return replace(self, workers=free)

    def only(self, i: int) -> Mix:
        """Worker ``i`` alone on the same layout (its occupancy scale kept)."""
        rates = (self.rates_rps[i],) if self.rates_rps else ()
        return replace(self, workers=(self.workers[i],), solo_ms=(self.solo_ms[i],), rates_rps=rates)

    def device_slowdown(self, pressure: Pressure | None = None) -> np.ndarray:
        """Per worker, the plan-independent part of its slowdown: ``contention`` x the others' busy SMs / N."""
        c = (pressure or self.pressure).contention
        busy = np.array([w.work.sum() for w in self.workers]) * self.duty() / np.asarray(self.solo_ms)
        return c * (busy.sum() - busy) / float(self.layout.geometry.sm_count)


@dataclass(frozen=True)
class Prediction:
    """What the cost model predicts for a mix, every model in its closed loop."""

    latency_ms: dict[str, float]
    switches: dict[str, int]
    throughput: float  # inferences per second, every worker in its closed loop
    energy_j: float | None  # per inference
    energy_note: str  # why energy_j is None; empty otherwise
    busy_sms: float  # SMs busy on average, over the device
    tail_ms: dict[str, float] = field(default_factory=dict)  # p99 latency (the tail model's); SLOs are on it

    def tail(self, name: str) -> float:
        """Predicted p99 of ``name`` (its median where no tail was predicted)."""
        return self.tail_ms.get(name, self.latency_ms[name])

    def to_dict(self) -> dict:
        return {
            "latency_ms": self.latency_ms,
            "tail_ms": self.tail_ms,
            "switches": self.switches,
            "throughput": self.throughput,
            "energy_j": self.energy_j,
            "energy_note": self.energy_note,
            "busy_sms": self.busy_sms,
        }


def time_on(mix: Mix, state: State) -> np.ndarray:
    """Each worker's time alone on each layout partition, ``[worker, partition]`` ms."""
    out = np.zeros((len(mix.workers), len(mix.layout.partitions)))
    for i, (w, choice) in enumerate(zip(mix.workers, state, strict=True)):
        cols = [w.column(p) for p in choice]
        np.add.at(out[i], list(choice), w.ms[np.arange(len(choice)), cols])
    return out


def work_on(mix: Mix, state: State) -> np.ndarray:
    """Each worker's SM-ms of work on each layout partition, ``[worker, partition]``."""
    out = np.zeros((len(mix.workers), len(mix.layout.partitions)))
    for i, (w, choice) in enumerate(zip(mix.workers, state, strict=True)):
        np.add.at(out[i], list(choice), w.work)
    return out


def switches(state: State) -> list[int]:
    return [sum(a != b for a, b in itertools.pairwise(c)) for c in state]


def kernels_on(mix: Mix, state: State) -> np.ndarray:
    """Each worker's kernel launches on each layout partition, ``[worker, partition]``."""
    out = np.zeros((len(mix.workers), len(mix.layout.partitions)))
    for i, (w, choice) in enumerate(zip(mix.workers, state, strict=True)):
        np.add.at(out[i], list(choice), w.launches)
    return out


def received(mix: Mix, work: np.ndarray, pressure: Pressure | None = None) -> np.ndarray:
    """``alpha[worker, partition]``: slowdown each worker would see on each partition."""
    c = pressure or mix.pressure
    busy = work * mix.duty()[:, None] / np.asarray(mix.solo_ms)[:, None]  # SMs of each partition kept busy
    others = busy.sum(axis=0)[None, :] - busy
    return c.interference * others @ mix.share_at(c.coverage).T + mix.device_slowdown(c)[:, None]


def blocked(mix: Mix, work: np.ndarray, pressure: Pressure | None = None) -> np.ndarray:
    """``[worker, partition]``: ms each kernel of a worker waits on that partition for the others' kernels."""
    c = pressure or mix.pressure
    if c.blocking == 0 or len(mix.workers) < 2:
        return np.zeros_like(work)
    busy = work * (mix.duty() * mix.kernel_ms())[:, None] / np.asarray(mix.solo_ms)[:, None]
    others = busy.sum(axis=0)[None, :] - busy
    return c.blocking * others @ mix.share_at(c.coverage).T


def alone_ms(mix: Mix, state: State) -> np.ndarray:
    """Each worker's latency with no co-located worker: group times plus switches."""
    sw = np.array([w.switch_ms for w in mix.workers]) * np.array(switches(state))
    return time_on(mix, state).sum(axis=1) + sw


def service_ms(mix: Mix, state: State, pressure: Pressure | None = None) -> np.ndarray:
    """Each worker's time per request in the mix under ``pressure`` (no queueing)."""
    work = work_on(mix, state)
    slowed = (time_on(mix, state) * received(mix, work, pressure)).sum(axis=1)
    waits = (kernels_on(mix, state) * blocked(mix, work, pressure)).sum(axis=1)
    return alone_ms(mix, state) + slowed + waits


def queue_ms(mix: Mix, service: np.ndarray, pressure: Pressure, tail: bool) -> np.ndarray:
    """Each worker's predicted wait before service under open-loop arrivals (0 in a closed loop)."""
    out = np.zeros(len(mix.workers))
    for i, ms in enumerate(service):
        r = mix.rate(i)
        if r is None or pressure.queueing == 0:
            continue
        rho = min(r * ms / 1e3, RHO_CAP)
        spread = max(0.0, math.log(100 * rho)) if tail else rho
        out[i] = pressure.queueing * ms * spread / (2 * (1 - rho))
    return out


def evaluate(mix: Mix, state: State) -> Prediction:
    """Predict ``mix`` with every worker in its closed loop (or at its arrival rate), concurrently, under ``state``."""
    median = service_ms(mix, state)
    p99 = median if mix.tail is None else service_ms(mix, state, mix.tail)
    latency = median + queue_ms(mix, median, mix.pressure, tail=False)
    tail = p99 + queue_ms(mix, median, mix.tail_pressure, tail=True)
    period = median.copy()
    for i in range(len(mix.workers)):
        r = mix.rate(i)
        if r is not None:  # served at the arrival rate, or at capacity when the plan cannot keep up
            period[i] = max(median[i], 1e3 / r)
    return _prediction(mix, state, latency, period, work_on(mix, state), tail)


def sequential(mix: Mix, state: State) -> Prediction:
    """Predict the workers taking turns on one stream: each request waits for one turn of every other."""
    period = float(alone_ms(mix, state).sum())
    every = np.full(len(mix.workers), period)
    return _prediction(mix, state, every, every, work_on(mix, state), every)


def _prediction(
    mix: Mix, state: State, latency: np.ndarray, period: np.ndarray, work: np.ndarray, tail: np.ndarray
) -> Prediction:
    """``period[w]``: ms between two requests of worker ``w`` (its latency, in a closed loop of its own)."""
    batch = np.array([w.batch_size for w in mix.workers], dtype=float)
    rate = batch / period  # inferences per ms
    busy = float((work.sum(axis=1) / period).sum())
    energy = None
    if mix.power is not None:
        energy = (mix.power.idle_w + mix.power.dynamic_w(busy)) / float(rate.sum()) / 1e3  # W / (inf/ms) = mJ
    return Prediction(
        latency_ms={w.name: float(x) for w, x in zip(mix.workers, latency, strict=True)},
        switches={w.name: s for w, s in zip(mix.workers, switches(state), strict=True)},
        throughput=1e3 * float(rate.sum()),
        energy_j=energy,
        energy_note="" if mix.power is not None else mix.power_note,
        busy_sms=busy,
        tail_ms={w.name: float(x) for w, x in zip(mix.workers, tail, strict=True)},
    )
