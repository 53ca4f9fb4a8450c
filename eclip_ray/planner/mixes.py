"""From profiles and a pool layout to a costed :class:`~eclip_ray.planner.cost.Mix`.

Each model instance of a mix is a *worker* with a *slot*: the worker index of
the layout whose partitions (``w{slot}.*``) it may use, besides the shared
``whole``. Slots stay fixed for a model instance across the sub-mixes of a plan
table, because the pool is built once and its partitions do not move.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from eclip_ray.errors import PlanError
from eclip_ray.partition.layout import WHOLE, Layout
from eclip_ray.planner import timing
from eclip_ray.planner.cost import DEFAULT_SWITCH_MS, Mix, Worker
from eclip_ray.planner.grouping import Group, group_units
from eclip_ray.planner.power import PowerModel
from eclip_ray.planner.profile import ModelProfile
from eclip_ray.planner.settings import PlannerSettings


def allowed(layout: Layout, slot: int, names: Sequence[str] | None = None) -> tuple[int, ...]:
    """Indices of the layout partitions worker ``slot`` may use (only ``names``, if given), by ascending SM count."""
    owners = {p.worker for p in layout.partitions if p.worker is not None}
    if owners and slot not in owners:
        raise PlanError(f"the layout has partitions for workers {sorted(owners)}, none for worker {slot}")
    if WHOLE not in layout.names:
        raise PlanError("the layout has no 'whole' partition; the planner keeps the whole GPU as an option")
    unknown = sorted(set(names or ()) - set(layout.names))
    if unknown:
        raise PlanError(f"partitions {unknown} are not in the layout {layout.names}")
    idx = [
        i
        for i, p in enumerate(layout.partitions)
        if p.worker in (slot, None) and (names is None or p.name in names or p.name == WHOLE)
    ]
    return tuple(sorted(idx, key=lambda i: (layout.partitions[i].count, i)))


def make_worker(
    name: str,
    profile: ModelProfile,
    layout: Layout,
    slot: int,
    *,
    slo_ms: float | None = None,
    settings: PlannerSettings | None = None,
    groups: Sequence[Group] | None = None,
    partitions: Sequence[str] | None = None,
) -> Worker:
    """Group ``profile``'s units (or take ``groups``) and cost every group on each partition ``slot`` may use.

    ``partitions`` narrows those to the named ones (and the whole GPU, always allowed).
    """
    s = settings or PlannerSettings()
    parts = allowed(layout, slot, partitions)
    counts = [layout.partitions[i].count for i in parts]
    unit_ms = timing.unit_ms(profile, counts)
    distinct = sorted(set(counts))
    label_cols = [counts.index(c) for c in distinct]
    cuts = [u.cut for u in profile.units]
    if groups is None:
        groups = group_units(unit_ms[:, label_cols], distinct, cuts, s.max_groups, s.knee_tol)
    unit_work = timing.unit_work(profile)
    unit_launches = timing.launches(profile)
    return Worker(
        name=name,
        profile=profile,
        slot=slot,
        groups=tuple(groups),
        parts=parts,
        ms=np.array([unit_ms[g.first : g.stop].sum(axis=0) for g in groups]),
        work=np.array([unit_work[g.first : g.stop].sum() for g in groups]),
        switch_ms=_switch_ms(profile, s.switch_ms),
        slo_ms=slo_ms,
        kernels=np.array([unit_launches[g.first : g.stop].sum() for g in groups]),
        kernel_ms=timing.kernel_ms(profile),
    )


def _switch_ms(profile: ModelProfile, override: float | None) -> float:
    if override is not None:
        return float(override)
    return float(profile.meta.get("switch_ms", DEFAULT_SWITCH_MS))


def build_mix(
    profiles: Mapping[str, ModelProfile],
    layout: Layout,
    *,
    slots: Mapping[str, int] | None = None,
    slo_ms: Mapping[str, float | None] | None = None,
    power: PowerModel | None = None,
    power_note: str = "no power model given",
    settings: PlannerSettings | None = None,
    rates_rps: Mapping[str, float | None] | None = None,
    partitions: Mapping[str, Sequence[str]] | None = None,
) -> Mix:
    """Cost every model instance of ``profiles`` (instance name -> profile) on ``layout``.

    ``slots`` maps instance names to layout worker indices (default: the order of
    ``profiles``). ``slo_ms`` maps instance names to latency SLOs (missing: none).
    ``rates_rps`` gives instances batches per second arriving (missing or None: a
    closed loop); ``partitions`` narrows the partitions an instance may use.
    """
    if not profiles:
        raise PlanError("a mix needs at least one model")
    slots = dict(slots) if slots is not None else {n: i for i, n in enumerate(profiles)}
    if sorted(slots[n] for n in profiles) != sorted(set(slots[n] for n in profiles)):
        raise PlanError(f"two model instances share a worker slot: {slots}")
    slo_ms = slo_ms or {}
    s = settings or PlannerSettings()
    partitions = partitions or {}
    workers = tuple(
        make_worker(
            name, prof, layout, slots[name], slo_ms=slo_ms.get(name), settings=s, partitions=partitions.get(name)
        )
        for name, prof in profiles.items()
    )
    rates = tuple((rates_rps or {}).get(n) for n in profiles) if rates_rps else ()
    return Mix(
        layout,
        workers,
        s.interference,
        power,
        power_note if power is None else "",
        contention=s.contention,
        blocking=s.blocking,
        tail=s.tail,
        rates_rps=rates,
        queueing=s.queueing,
        coverage=s.coverage,
    )


def instance_names(models: Sequence[str]) -> list[str]:
    """Unique instance names: a model named twice becomes ``name`` and ``name-2``."""
    seen: Counter[str] = Counter()
    out = []
    for m in models:
        seen[m] += 1
        out.append(m if seen[m] == 1 else f"{m}-{seen[m]}")
    return out
