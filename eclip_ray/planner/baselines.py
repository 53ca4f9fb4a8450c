"""The simple policies a plan is compared with, predicted by the same cost model.

- ``time-share``: one stream; the models take turns, each on the whole GPU.
- ``multi-stream``: every model on the whole GPU at once (Triton's concurrent
  model execution), slowed by the others as the cost model says.
- ``model-wise``: each model alone on its own disjoint partition, the fewest
  SMs (in steps of the device granularity) that meet its SLO alone; without
  an SLO the target is 3x its whole-GPU latency (the convention of
  right-sizing work, see `docs/eclip-paper.md`). Unavailable when the partitions do
  not fit on the device together.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from eclip_ray.partition.layout import disjoint
from eclip_ray.planner import cost, timing
from eclip_ray.planner.cost import Mix, Prediction, Worker
from eclip_ray.planner.grouping import Group
from eclip_ray.planner.search import everyone_whole

NAMES = ("time-share", "multi-stream", "model-wise")
UNTARGETED_SLACK = 3.0


@dataclass(frozen=True)
class Baseline:
    """A baseline's prediction, or None with the reason it does not apply."""

    name: str
    prediction: Prediction | None
    note: str = ""


def predict(mix: Mix) -> dict[str, Baseline]:
    """Every baseline of ``mix``, by name."""
    whole = everyone_whole(mix)
    return {
        "time-share": Baseline("time-share", cost.sequential(mix, whole)),
        "multi-stream": Baseline("multi-stream", cost.evaluate(mix, whole)),
        "model-wise": model_wise(mix),
    }


def model_wise(mix: Mix) -> Baseline:
    """Each model on the fewest SMs of its own that meet its target latency alone."""
    g = mix.layout.geometry
    counts, notes = [], []
    for w in mix.workers:
        target = w.slo_ms if w.slo_ms is not None else UNTARGETED_SLACK * timing.model_ms(w.profile, g.sm_count)
        count = fewest_sms(w, target, g.granularity, g.min_sms, g.sm_count)
        counts.append(count)
        if count is None:
            notes.append(f"{w.name} misses {target:.3g} ms even on the whole GPU")
    if notes:
        return Baseline("model-wise", None, "; ".join(notes))
    if sum(counts) > g.sm_count:  # type: ignore[arg-type]
        return Baseline("model-wise", None, f"the partitions {counts} need more than the device's {g.sm_count} SMs")
    layout = disjoint(g, counts, [f"mw{i}" for i in range(len(counts))])  # type: ignore[arg-type]
    workers = tuple(_one_stage(w, i, c) for i, (w, c) in enumerate(zip(mix.workers, counts, strict=True)))  # type: ignore[arg-type]
    alone = replace(mix, layout=layout, workers=workers)
    return Baseline("model-wise", cost.evaluate(alone, tuple((i,) for i in range(len(workers)))))


def fewest_sms(w: Worker, target_ms: float, step: int, least: int, most: int) -> int | None:
    """The fewest SMs, in steps of ``step``, on which ``w``'s model alone meets ``target_ms``."""
    lo = max(least, min(w.profile.sizes))
    counts = [c for c in range(step * -(-lo // step), most + 1, step) if c <= max(w.profile.sizes)]
    for c in counts:
        if timing.model_ms(w.profile, c) <= target_ms:
            return c
    return None


def _one_stage(w: Worker, i: int, count: int) -> Worker:
    units = len(w.profile.units)
    return Worker(
        name=w.name,
        profile=w.profile,
        slot=i,
        groups=(Group(0, units, None),),
        parts=(i,),
        ms=np.array([[timing.model_ms(w.profile, count)]]),
        work=np.array([w.work.sum()]),
        switch_ms=w.switch_ms,
        slo_ms=w.slo_ms,
        kernels=np.array([w.launches.sum()]),
        kernel_ms=w.kernel_ms,
    )
