"""How each policy shares the GPU, as plans on one stream pool (pure: no CUDA, testable anywhere).

Every in-process policy runs the same CUDA-graph executor; a policy is just
the plan of each model instance, and whether requests are serialised:

- ``time-share``: every instance on the whole GPU, one request at a time in
  arrival order (one stream).
- ``multi-stream``: every instance on the whole GPU on its own stream
  (Triton's concurrent model execution; ECLIP's Baseline).
- ``model-wise``: each instance alone on its own disjoint partition, the
  fewest SMs (in steps of the device granularity) on which its profile meets
  its SLO (ECLIP's Model-Wise).
- ``mps``: one process per instance under MPS, each on the whole GPU with
  ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` set to the SMs Model-Wise would give
  it (``mps_share="model-wise"``) or to an equal share (``"equal"``).
- ``kw-prealloc``: the ladder pool, every kernel group on the partition where
  it stops getting faster (its knee), switching wherever that changes, with
  no switch budget and no regard for the other models (ECLIP's KW_Prealloc).
- ``eclip``: candidate plans on a pool of their own, measured at every load level and
  guarded online (``eclip_policy.py``: the adaptive policy object of ``Setup.adaptive``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from eclip_ray.bench import eclip_policy
from eclip_ray.errors import PlanError
from eclip_ray.graph.plan import Plan
from eclip_ray.partition.layout import WHOLE, DeviceGeometry, Layout, PartitionSpec, disjoint, ladder, whole
from eclip_ray.planner import baselines
from eclip_ray.planner.grouping import knee
from eclip_ray.planner.mixes import build_mix
from eclip_ray.planner.power import PowerModel
from eclip_ray.planner.profile import ModelProfile
from eclip_ray.planner.settings import PlannerSettings

POLICIES = ("time-share", "multi-stream", "model-wise", "mps", "kw-prealloc", "eclip")
PROFILED = ("model-wise", "kw-prealloc", "eclip")  # need a profile of every instance
MPS_SHARES = ("model-wise", "equal")
WHOLE_PLAN = Plan.single(WHOLE)


@dataclass(frozen=True)
class MixInputs:
    """What the policies of one mix are built from."""

    instances: tuple[str, ...]
    slo_ms: Mapping[str, float]
    geometry: DeviceGeometry
    profiles: Mapping[str, ModelProfile] = field(default_factory=dict)  # every instance's, or empty
    profile_note: str = ""  # why ``profiles`` is empty
    power: PowerModel | None = None
    power_note: str = "no power model given"
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    objective: str = "throughput"
    mps_share: str = "model-wise"
    mps_note: str = ""  # why MPS cannot run here; empty when it can
    planner: PlannerSettings = field(default_factory=PlannerSettings)
    latency_critical: tuple[str, ...] | None = None  # the mix's roles; None: eclip's rule (planner/roles.py)

    def ladder(self) -> Layout:
        """The pool of kw-prealloc and eclip: ECLIP's per-worker ladder plus the whole GPU."""
        return ladder(self.geometry, len(self.instances), self.fractions)


@dataclass(frozen=True)
class Setup:
    """One policy for one mix: a plan per instance, or the reason it cannot run."""

    policy: str
    plans: dict[str, Plan] = field(default_factory=dict)
    serial: bool = False
    partitions: tuple[PartitionSpec, ...] = ()  # partitions it needs beyond the ladder
    mps_percent: dict[str, int] | None = None
    skipped: str = ""
    details: dict = field(default_factory=dict)
    layout: Layout | None = None  # the pool the policy runs on, where it brings its own
    adaptive: object | None = None  # plans() -> {instance: {Plan}} and steering(load, trial) -> Steering

    @property
    def in_process(self) -> bool:
        return self.policy != "mps"

    def describe(self) -> dict:
        """The policy's set-up for the result file."""
        out = dict(self.details)
        if self.plans:
            out["plans"] = {n: {**p.to_dict(), "switches": p.switches} for n, p in self.plans.items()}
        if self.mps_percent is not None:
            out["mps_active_thread_percentage"] = dict(self.mps_percent)
        return out


def build(policy: str, mix: MixInputs) -> Setup:
    """The set-up of ``policy`` for ``mix`` (skipped, with the reason, where it cannot run)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose from {POLICIES}")
    if policy in PROFILED and not mix.profiles:
        return Setup(policy, skipped=f"needs a profile of every model: {mix.profile_note}")
    try:
        return _BUILDERS[policy](mix)
    except PlanError as e:  # an infeasible SLO, a profile out of range: the policy has no plan here
        return Setup(policy, skipped=f"{type(e).__name__}: {e}")


def build_all(policies: Sequence[str], mix: MixInputs) -> dict[str, Setup]:
    return {p: build(p, mix) for p in policies}


def policy_layout(mix: MixInputs, setup: Setup) -> Layout:
    """The pool of one policy: its own, the ladder where its plans may switch, else its partitions and the whole GPU."""
    if setup.layout is not None:
        return setup.layout
    if setup.policy in ("kw-prealloc", "eclip"):
        return mix.ladder()
    return Layout(mix.geometry, (*setup.partitions, whole(mix.geometry)))


def right_sizes(mix: MixInputs) -> dict[str, int | None]:
    """Per instance, the fewest SMs (device steps) on which it meets its SLO alone, by its profile; None: none."""
    g = mix.geometry
    workers = build_mix(mix.profiles, mix.ladder(), settings=mix.planner).workers
    return {w.name: baselines.fewest_sms(w, mix.slo_ms[w.name], g.granularity, g.min_sms, g.sm_count) for w in workers}


def _time_share(mix: MixInputs) -> Setup:
    return Setup("time-share", {n: WHOLE_PLAN for n in mix.instances}, serial=True)


def _multi_stream(mix: MixInputs) -> Setup:
    return Setup("multi-stream", {n: WHOLE_PLAN for n in mix.instances})


def _model_wise(mix: MixInputs) -> Setup:
    sizes = right_sizes(mix)
    g = mix.geometry
    top = g.sm_count // g.granularity * g.granularity  # the largest size a step of the device reaches
    missing = [
        f"{n} meets its {mix.slo_ms[n]:.3g} ms SLO on no partition of up to {top} SMs"
        for n, c in sizes.items()
        if c is None
    ]
    if missing:
        return Setup("model-wise", skipped="; ".join(missing), details={"sms": sizes})
    counts = [sizes[n] for n in mix.instances]
    if sum(counts) > mix.geometry.sm_count:  # type: ignore[arg-type]
        reason = f"the right-sized partitions {counts} need more than the device's {mix.geometry.sm_count} SMs"
        return Setup("model-wise", skipped=reason, details={"sms": sizes})
    names = [f"mw{i}" for i in range(len(counts))]
    layout = disjoint(mix.geometry, counts, names)  # type: ignore[arg-type]
    plans = {n: Plan.single(p) for n, p in zip(mix.instances, names, strict=True)}
    return Setup("model-wise", plans, partitions=layout.partitions, details={"sms": sizes})


def _mps(mix: MixInputs) -> Setup:
    if mix.mps_note:
        return Setup("mps", skipped=mix.mps_note)
    if mix.mps_share not in MPS_SHARES:
        raise ValueError(f"mps_share {mix.mps_share!r}; choose one of {MPS_SHARES}")
    if mix.mps_share == "equal":
        share = max(1, 100 // len(mix.instances))
        return Setup("mps", mps_percent={n: share for n in mix.instances}, details={"share": "equal"})
    if not mix.profiles:
        return Setup("mps", skipped=f"sizing MPS shares like Model-Wise needs profiles: {mix.profile_note}")
    sizes = right_sizes(mix)
    sm = mix.geometry.sm_count
    # An instance no size serves within its SLO gets the whole GPU: its best chance.
    percent = {n: 100 if c is None else min(100, math.ceil(100 * c / sm)) for n, c in sizes.items()}
    return Setup("mps", mps_percent=percent, details={"share": "model-wise", "sms": sizes})


def _kw_prealloc(mix: MixInputs) -> Setup:
    layout = mix.ladder()
    settings = PlannerSettings(max_groups=10**9, knee_tol=mix.planner.knee_tol)  # groups are never merged
    plans, groups = {}, {}
    for w in build_mix(mix.profiles, layout, settings=settings).workers:
        counts = [layout.partitions[p].count for p in w.parts]
        choice = [w.parts[counts.index(knee(row, counts, settings.knee_tol))] for row in w.ms]
        plans[w.name] = w.plan(choice, layout)
        groups[w.name] = len(w.groups)
    return Setup("kw-prealloc", plans, details={"groups": groups})


def _eclip(mix: MixInputs) -> Setup:
    policy, details = eclip_policy.build(mix)
    first = policy.adaptive.candidates.candidates[0]
    return Setup("eclip", dict(first.plans), details=details, layout=policy.adaptive.candidates.layout, adaptive=policy)


_BUILDERS = {
    "time-share": _time_share,
    "multi-stream": _multi_stream,
    "model-wise": _model_wise,
    "mps": _mps,
    "kw-prealloc": _kw_prealloc,
    "eclip": _eclip,
}
