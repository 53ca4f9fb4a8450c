"""Which GPUs host which models: one GPU actor per GPU, each model on ``replicas`` distinct GPUs.

The rule, greedy and deterministic:

* With a profile and an expected request rate for every model, each replica's
  predicted load is the fraction of one GPU it keeps busy:
  ``expected_rps / replicas * ms per inference / 1000``, where ms per inference
  is the profiled whole-GPU latency at the profile's batch size divided by that
  batch size. Replicas are placed heaviest first, each on the least loaded GPU
  that does not already host its model (longest-processing-time-first).
* Otherwise every replica weighs the same, which balances the number of models
  per GPU (round-robin in declaration order).

The result also lists warnings: a GPU predicted over full, or a model whose
profiled latency alone exceeds its SLO. Choosing models that co-locate well
(from the optimizer's mixes) is left for when mixed profiles are measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Demand:
    """One model's placement input: ``load`` is its predicted fraction of one GPU in total (None: unknown)."""

    name: str
    replicas: int = 1
    load: float | None = None
    solo_ms: float | None = None  # profiled whole-GPU latency of one batch
    slo_ms: float | None = None


@dataclass(frozen=True)
class Placement:
    gpus: tuple[tuple[str, ...], ...]  # models per GPU, by GPU index
    loads: tuple[float | None, ...]  # predicted load per GPU (None when balancing by count)
    method: str  # "load" or "count"
    warnings: tuple[str, ...] = field(default=())

    def gpus_of(self, model: str) -> list[int]:
        return [i for i, models in enumerate(self.gpus) if model in models]

    def to_dict(self) -> dict:
        return {
            "gpus": [list(g) for g in self.gpus],
            "loads": list(self.loads),
            "method": self.method,
            "warnings": list(self.warnings),
        }

    @classmethod
    def from_dict(cls, d: dict) -> Placement:
        return cls(tuple(tuple(g) for g in d["gpus"]), tuple(d["loads"]), d["method"], tuple(d.get("warnings", ())))


def place(demands: Sequence[Demand], gpus: int) -> Placement:
    """Assign every replica of every model to a GPU (see the module docstring for the rule)."""
    if gpus < 1:
        raise ValueError("gpus must be >= 1")
    for d in demands:
        if not 1 <= d.replicas <= gpus:
            raise ValueError(f"model {d.name!r}: {d.replicas} replicas cannot go on {gpus} GPUs")
    by_load = all(d.load is not None for d in demands)
    replicas = [(d, (d.load / d.replicas) if by_load else 1.0) for d in demands for _ in range(d.replicas)]
    if by_load:
        replicas.sort(key=lambda r: -r[1])  # stable: ties keep declaration order
    hosted: list[list[str]] = [[] for _ in range(gpus)]
    load = [0.0] * gpus
    for demand, weight in replicas:
        free = [g for g in range(gpus) if demand.name not in hosted[g]]
        g = min(free, key=lambda i: (load[i], len(hosted[i]), i))
        hosted[g].append(demand.name)
        load[g] += weight
    return Placement(
        gpus=tuple(tuple(h) for h in hosted),
        loads=tuple(load) if by_load else (None,) * gpus,
        method="load" if by_load else "count",
        warnings=tuple(_warnings(demands, load if by_load else None)),
    )


def _warnings(demands: Sequence[Demand], load: list[float] | None) -> list[str]:
    out = [f"GPU {g} is predicted {100 * x:.0f}% busy (over 100%)" for g, x in enumerate(load or ()) if x > 1.0]
    for d in demands:
        if d.solo_ms is not None and d.slo_ms is not None and d.solo_ms > d.slo_ms:
            out.append(f"model {d.name!r}: profiled latency {d.solo_ms:.1f} ms alone exceeds its SLO {d.slo_ms} ms")
    return out


def demand_of(
    name: str, replicas: int, slo_ms: float | None, expected_rps: float | None, profile: str | None
) -> Demand:
    """A model's demand; reads its planner profile when given."""
    if profile is None:
        return Demand(name, replicas, slo_ms=slo_ms)
    from eclip_ray.planner.profile import load

    prof = load(profile)
    solo_ms = prof.total_ms[max(prof.total_ms)].median  # the largest measured SM count: the whole GPU
    per_inference_ms = solo_ms / prof.key.batch_size
    util = None if expected_rps is None else expected_rps * per_inference_ms / 1e3
    return Demand(name, replicas, util, solo_ms, slo_ms)
