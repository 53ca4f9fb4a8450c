"""Which model instances of a mix are latency-critical, and how many SMs each needs to itself.

A latency-critical model is one whose requests a batch neighbour must not hold up:
the planner protects it (nested plans give it SMs no batch model touches; per-batch
placement confines a batch model while it has a request). Where the caller knows
the roles (a benchmark mix says which model is the service), it passes them. Else:

1. when the instances run different batch sizes, those at the smallest are
   latency-critical (a batch-1 service beside a model running batches of 16);
2. else, when SLOs are given, those whose SLO is tightest relative to their own
   latency alone (within ``NEAR`` x of it), if that is clearly tighter than the loosest
   (at most ``TIGHTER`` x its ratio);
3. else none: every instance is protected in turn by the candidates instead.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from eclip_ray.errors import PlanError
from eclip_ray.planner import timing
from eclip_ray.planner.profile import ModelProfile

TIGHTER = 0.67  # an SLO/latency ratio this much below the loosest one marks a latency-critical model
NEAR = 1.1  # ratios within this factor of the tightest count as tightest too
SOLO_SLACK = 1.5  # a right size keeps a model within this factor of its latency on the whole GPU


def latency_critical(
    profiles: Mapping[str, ModelProfile],
    slo_ms: Mapping[str, float | None] | None = None,
    explicit: Collection[str] | None = None,
) -> frozenset[str]:
    """The latency-critical instances of the mix ``profiles`` (instance name -> profile); see the module doc."""
    if explicit is not None:
        unknown = sorted(set(explicit) - set(profiles))
        if unknown:
            raise PlanError(f"latency-critical instances {unknown} are not in the mix {sorted(profiles)}")
        return frozenset(explicit)
    batch = {n: p.key.batch_size for n, p in profiles.items()}
    if len(set(batch.values())) > 1:
        least = min(batch.values())
        return frozenset(n for n, b in batch.items() if b == least)
    ratios = {
        n: slo / whole_ms(p) for n, p in profiles.items() if (slo := (slo_ms or {}).get(n)) is not None and slo > 0
    }
    if len(ratios) >= 2 and min(ratios.values()) <= TIGHTER * max(ratios.values()):
        tightest = min(ratios.values())
        return frozenset(n for n, r in ratios.items() if r <= NEAR * tightest)
    return frozenset()


def whole_ms(profile: ModelProfile) -> float:
    """The model's latency alone on the most SMs its profile measured (the whole GPU)."""
    return timing.model_ms(profile, max(profile.sizes))


def right_size(profile: ModelProfile, slo_ms: float | None, step: int, least: int) -> int:
    """The fewest SMs (in steps of ``step``, at least ``least`` and the profile's smallest size) the model needs.

    The smallest size on which it stays within ``SOLO_SLACK`` x its whole-GPU latency and within
    half its SLO (the other half is left for neighbours and queueing); the profile's largest
    size when none is.
    """
    target = SOLO_SLACK * whole_ms(profile)
    if slo_ms is not None:
        target = min(target, slo_ms / 2)
    lo, hi = max(least, min(profile.sizes)), max(profile.sizes)
    c = step * -(-lo // step)
    while c < hi:
        if timing.model_ms(profile, c) <= target:
            return c
        c += step
    return hi
