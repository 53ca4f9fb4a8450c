"""Calibrated unit times at any SM count, and the SM work each unit does.

Kernel sums miss the launch gaps a CUDA-graph replay pays, so at every measured
size the unit medians are scaled by one factor that makes them add up to the
profile's ``total_ms`` there. Between measured sizes times are interpolated
linearly in the SM count; outside them nothing is extrapolated.

A unit's *work* is its fewest SM-milliseconds over the measured sizes (SM count
x time): what the unit needs when it keeps every SM of a partition busy. Its
busy fraction on ``n`` SMs is ``work / (n * time(n))``; launch-bound units
have a small one, and that is what lets them share SMs cheaply.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from eclip_ray.errors import PlanError
from eclip_ray.planner.profile import ModelProfile


def calibration(profile: ModelProfile) -> np.ndarray:
    """Per measured size (ascending), the factor that scales unit sums to ``total_ms``."""
    sizes = sorted(profile.sizes)
    sums = np.array([sum(profile.unit_ms(s)) for s in sizes])
    totals = []
    for s, unit_sum in zip(sizes, sums, strict=True):
        stat = profile.total_ms.get(s)
        if stat is None:
            # Without a whole-graph time the launch gaps are unknown; say so rather than invent them.
            warnings.warn(f"profile of {profile.key.model}: no total_ms at {s} SMs, unit sums used as is", stacklevel=2)
            totals.append(unit_sum)
        else:
            totals.append(stat.median)
    return np.asarray(totals) / np.maximum(sums, 1e-12)


def measured_ms(profile: ModelProfile) -> np.ndarray:
    """Calibrated median time of every unit at every measured size (ascending), ``[units, sizes]`` in ms."""
    raw = np.array([profile.unit_ms(s) for s in sorted(profile.sizes)]).T
    return raw * calibration(profile)[None, :]


def unit_ms(profile: ModelProfile, counts: Sequence[int]) -> np.ndarray:
    """Calibrated time of every unit on partitions of ``counts`` SMs, ``[units, len(counts)]`` in ms."""
    sizes = np.asarray(sorted(profile.sizes), dtype=float)
    _check_range(profile, counts)
    table = measured_ms(profile)
    return np.stack([np.array([np.interp(c, sizes, row) for row in table]) for c in counts], axis=1)


def unit_work(profile: ModelProfile) -> np.ndarray:
    """Every unit's fewest SM-milliseconds over the measured sizes, ``[units]``."""
    sizes = np.asarray(sorted(profile.sizes), dtype=float)
    return (measured_ms(profile) * sizes[None, :]).min(axis=1)


def launches(profile: ModelProfile) -> np.ndarray:
    """Kernel launches of every unit, ``[units]`` (one where the profile lists no kernels)."""
    return np.array([float(max(1, len(u.kernels))) for u in profile.units])


def kernel_ms(profile: ModelProfile) -> float:
    """The time-weighted mean duration of the model's kernels on the most SMs measured, ms.

    ``sum d^2 / sum d``: how long the kernel lasts that a moment picked at random falls into, the
    wait a co-located kernel meets when it finds these SMs held. Unit times stand in for kernels
    where the profile lists none.
    """
    top = str(max(profile.sizes))
    d = [float(k["ms"][top]) for u in profile.units for k in u.kernels if k.get("ms", {}).get(top) is not None]
    if not d:
        d = profile.unit_ms(max(profile.sizes))
    total = sum(d)
    return sum(x * x for x in d) / total if total > 0 else 0.0


def model_ms(profile: ModelProfile, count: int) -> float:
    """Whole-model latency alone on ``count`` SMs (the calibrated total, interpolated)."""
    _check_range(profile, [count])
    sizes = sorted(profile.sizes)
    totals = [profile.total_ms[s].median if s in profile.total_ms else sum(profile.unit_ms(s)) for s in sizes]
    return float(np.interp(count, sizes, totals))


def _check_range(profile: ModelProfile, counts: Sequence[int]) -> None:
    lo, hi = min(profile.sizes), max(profile.sizes)
    outside = [c for c in counts if not lo <= c <= hi]
    if outside:
        raise PlanError(
            f"profile of {profile.key.model} (batch {profile.key.batch_size}) was measured at {sorted(profile.sizes)} "
            f"SMs; partitions of {outside} SMs lie outside that range and are not extrapolated"
        )
