"""Packing efficiency: measured throughput over the SM-time bound of the profiles.

The bound runs every kernel group at its most SM-efficient size and packs the
GPU perfectly: an inference of model ``m`` then costs ``W_m`` SM-milliseconds,
the sum over its profile's units of their fewest SM-ms over the measured
sizes (``eclip_ray.planner.timing.unit_work``, the cost model's own work),
divided by the batch size. With the mix of inferences a policy actually
completed, the GPU's ``S`` SMs could do at most ``1000 S / mean(W)``
inferences per second; the packing efficiency is the measured throughput
over that, i.e. ``sum_m rate_m W_m / (1000 S)``: the share of the GPU's
SM-time that went to useful work at the best sizes.
"""

from __future__ import annotations

from collections.abc import Mapping

from eclip_ray.planner import timing
from eclip_ray.planner.profile import ModelProfile


def sm_ms_per_inference(profile: ModelProfile) -> float:
    """Fewest SM-milliseconds one inference of ``profile``'s model needs (each unit at its best size)."""
    return float(timing.unit_work(profile).sum()) / profile.key.batch_size


def bound_rps(work_sm_ms: Mapping[str, float], share: Mapping[str, float], sm_count: int) -> float:
    """Inferences per second ``sm_count`` SMs could finish, perfectly packed, at inference shares ``share``."""
    total = sum(share.values())
    if total <= 0:
        raise ValueError("the shares of the mix must add up to more than 0")
    mean = sum(work_sm_ms[n] * s for n, s in share.items()) / total
    return 1e3 * sm_count / mean


def efficiency(work_sm_ms: Mapping[str, float], rps: Mapping[str, float], sm_count: int) -> tuple[float, float]:
    """``(packing efficiency, bound in inferences/s)`` of per-model throughputs ``rps``."""
    bound = bound_rps(work_sm_ms, rps, sm_count)
    return sum(rps.values()) / bound, bound
