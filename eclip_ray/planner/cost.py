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

Energy: the board draws ``idle_w`` plus the dynamic power of the SMs busy on
average, ``N = sum_w W_w / L_w`` (``power.py``); per inference that is
``(idle_w + dynamic(N)) / sum_w (b_w / L_w)``.
"""

from __future__ import annotations

import itertools
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
    counts: np.ndarray = field(init=False)
    share: np.ndarray = field(init=False)  # overlap(p, q) / (n_p n_q)

    def __post_init__(self) -> None:
        parts = self.layout.partitions
        counts = np.array([p.count for p in parts], dtype=float)
        overlap = np.array([[a.overlap(b) for b in parts] for a in parts], dtype=float)
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "share", overlap / np.outer(counts, counts))
        if not self.solo_ms:
            whole = self.layout.names.index(WHOLE)
            object.__setattr__(self, "solo_ms", tuple(float(w.ms[:, w.column(whole)].sum()) for w in self.workers))

    def without_slos(self) -> Mix:
        """The same mix with no SLOs."""
        free = tuple(replace(w, slo_ms=None) for w in self.workers)
        return replace(self, workers=free)

    def only(self, i: int) -> Mix:
        """Worker ``i`` alone on the same layout (its occupancy scale kept)."""
        return replace(self, workers=(self.workers[i],), solo_ms=(self.solo_ms[i],))

    def device_slowdown(self) -> np.ndarray:
        """Per worker, the plan-independent part of its slowdown: ``contention`` x the others' busy SMs / N."""
        busy = np.array([w.work.sum() for w in self.workers]) / np.asarray(self.solo_ms)
        return self.contention * (busy.sum() - busy) / float(self.layout.geometry.sm_count)


@dataclass(frozen=True)
class Prediction:
    """What the cost model predicts for a mix, every model in its closed loop."""

    latency_ms: dict[str, float]
    switches: dict[str, int]
    throughput: float  # inferences per second, every worker in its closed loop
    energy_j: float | None  # per inference
    energy_note: str  # why energy_j is None; empty otherwise
    busy_sms: float  # SMs busy on average, over the device

    def to_dict(self) -> dict:
        return {
            "latency_ms": self.latency_ms,
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


def received(mix: Mix, work: np.ndarray) -> np.ndarray:
    """``alpha[worker, partition]``: slowdown each worker would see on each partition."""
    busy = work / np.asarray(mix.solo_ms)[:, None]  # SM-ms of work per ms of each worker's loop
    others = busy.sum(axis=0)[None, :] - busy
    return mix.interference * others @ mix.share.T + mix.device_slowdown()[:, None]


def alone_ms(mix: Mix, state: State) -> np.ndarray:
    """Each worker's latency with no co-located worker: group times plus switches."""
    sw = np.array([w.switch_ms for w in mix.workers]) * np.array(switches(state))
    return time_on(mix, state).sum(axis=1) + sw


def evaluate(mix: Mix, state: State) -> Prediction:
    """Predict ``mix`` with every worker in its closed loop, concurrently, under ``state``."""
    work = work_on(mix, state)
    latency = alone_ms(mix, state) + (time_on(mix, state) * received(mix, work)).sum(axis=1)
    return _prediction(mix, state, latency, latency, work)


def sequential(mix: Mix, state: State) -> Prediction:
    """Predict the workers taking turns on one stream: each request waits for one turn of every other."""
    period = float(alone_ms(mix, state).sum())
    every = np.full(len(mix.workers), period)
    return _prediction(mix, state, every, every, work_on(mix, state))


def _prediction(mix: Mix, state: State, latency: np.ndarray, period: np.ndarray, work: np.ndarray) -> Prediction:
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
    )
