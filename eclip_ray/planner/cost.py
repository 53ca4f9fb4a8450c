"""The cost model: predicted latency, throughput and energy of a mix under a plan.

A *mix* is the set of co-located model instances (workers). They run in rounds:
each worker serves one request (one batch) per round, all start together, and
the round lasts as long as the slowest worker (``round_ms``). Throughput is the
inferences of one round over its length.

A worker's latency is the sum of its groups' times on their partitions, plus
``switch_ms`` per partition switch, plus the slowdown co-located workers cause:
ECLIP's ``beta (1 + alpha)``. Here ``alpha`` of a group on partition ``p`` is
``interference`` times the fraction of ``p``'s SMs the other workers keep busy
on average over the round. Worker ``v`` keeps ``W_v(q) / (n_q * round)`` of
partition ``q``'s SMs busy (``W_v(q)``: SM-ms of work of its groups on ``q``),
spread evenly over ``q``; ``p`` shares ``overlap(p, q)`` SMs with ``q``. So

    alpha_w(p) = interference / round * sum_{v != w} sum_q W_v(q) overlap(p, q) / (n_p n_q)

Two saturating kernels on the same SMs each take twice as long (alpha = 1), as
ECLIP measured; launch-bound groups (little work for their time) slow their
neighbours little. With ``a_w`` the worker's time alone and ``b_w / round``
its slowdown, ``round = max_w (a_w + b_w / round)``, solved in closed form.

Energy per round is ``idle_w * round`` plus every group's work times the
dynamic power per busy SM of its partition's size (see ``power.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from eclip_ray.graph.plan import Plan
from eclip_ray.partition.layout import Layout
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
    counts: np.ndarray = field(init=False)
    share: np.ndarray = field(init=False)  # overlap(p, q) / (n_p n_q)

    def __post_init__(self) -> None:
        parts = self.layout.partitions
        counts = np.array([p.count for p in parts], dtype=float)
        overlap = np.array([[a.overlap(b) for b in parts] for a in parts], dtype=float)
        object.__setattr__(self, "counts", counts)
        object.__setattr__(self, "share", overlap / np.outer(counts, counts))

    def watts_per_sm(self) -> np.ndarray | None:
        """Dynamic W per busy SM on each layout partition, or None without a power model."""
        if self.power is None:
            return None
        return np.array([self.power.watts_per_sm(int(n)) for n in self.counts])

    def by_slot(self) -> list[int]:
        return [w.slot for w in self.workers]


@dataclass(frozen=True)
class Prediction:
    """What the cost model predicts for one round of a mix."""

    round_ms: float
    latency_ms: dict[str, float]
    switches: dict[str, int]
    throughput: float  # inferences per second
    energy_j: float | None  # per inference
    energy_note: str  # why energy_j is None; empty otherwise
    dynamic_mj: float | None  # dynamic energy of one round

    def to_dict(self) -> dict:
        return {
            "round_ms": self.round_ms,
            "latency_ms": self.latency_ms,
            "switches": self.switches,
            "throughput": self.throughput,
            "energy_j": self.energy_j,
            "energy_note": self.energy_note,
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
    return [sum(a != b for a, b in zip(c, c[1:], strict=False)) for c in state]


def received(mix: Mix, work: np.ndarray, round_ms: float) -> np.ndarray:
    """``alpha[worker, partition]``: slowdown each worker would see on each partition."""
    others = work.sum(axis=0)[None, :] - work
    return mix.interference / round_ms * others @ mix.share.T


def alone_ms(mix: Mix, state: State) -> np.ndarray:
    """Each worker's latency with no co-located worker: group times plus switches."""
    sw = np.array([w.switch_ms for w in mix.workers]) * np.array(switches(state))
    return time_on(mix, state).sum(axis=1) + sw


def evaluate(mix: Mix, state: State) -> Prediction:
    """Predict one round of ``mix`` with every worker running concurrently under ``state``."""
    a = alone_ms(mix, state)
    work = work_on(mix, state)
    # b[w] * (1/round) is w's slowdown; it is linear in 1/round, so round = max_w (a + b / round) has a closed form.
    b = (time_on(mix, state) * received(mix, work, 1.0)).sum(axis=1)
    round_ms = float(((a + np.sqrt(a * a + 4 * b)) / 2).max())
    latency = a + b / round_ms
    return _prediction(mix, state, round_ms, latency, work)


def _prediction(mix: Mix, state: State, round_ms: float, latency: np.ndarray, work: np.ndarray) -> Prediction:
    inferences = sum(w.batch_size for w in mix.workers)
    dyn = dynamic_mj(mix, work)
    energy = None if dyn is None else (mix.power.idle_w * round_ms + dyn) / 1e3 / inferences  # type: ignore[union-attr]
    return Prediction(
        round_ms=round_ms,
        latency_ms={w.name: float(x) for w, x in zip(mix.workers, latency, strict=True)},
        switches={w.name: s for w, s in zip(mix.workers, switches(state), strict=True)},
        throughput=1e3 * inferences / round_ms,
        energy_j=energy,
        energy_note="" if dyn is not None else mix.power_note,
        dynamic_mj=dyn,
    )


def dynamic_mj(mix: Mix, work: np.ndarray) -> float | None:
    """Dynamic energy of the work ``work[worker, partition]`` (SM-ms), in mJ; None without a power model."""
    per_sm = mix.watts_per_sm()
    return None if per_sm is None else float((work.sum(axis=0) * per_sm).sum())


def sequential(mix: Mix, state: State) -> Prediction:
    """Predict one round with the workers taking turns on the device (no overlap, no slowdown).

    A worker's latency counts the turns before its own, in mix order: its request
    waits for them.
    """
    a = alone_ms(mix, state)
    return _prediction(mix, state, float(a.sum()), np.cumsum(a), work_on(mix, state))
