"""How each policy shares the GPU, as plans on one stream pool (pure: no CUDA, testable anywhere).

Every in-process policy runs the same CUDA-graph executor; a policy is just
the plan of each model instance, its streams' priorities, and whether
requests are serialised:

- ``time-share``: every instance on the whole GPU, one request at a time in
  arrival order (one stream).
- ``multi-stream``: every instance on the whole GPU on its own stream
  (Triton's concurrent model execution; ECLIP's Baseline).
- ``stream-priority``: multi-stream with the latency-critical instances'
  streams at the device's highest CUDA stream priority and the batch jobs'
  at the default (what a Triton user sets with model priorities). Skipped in
  a mix with no batch job: every stream would have the same priority.
- ``model-wise``: each instance alone on its own disjoint partition, the
  fewest SMs (in steps of the device granularity) on which its profile meets
  its SLO (ECLIP's Model-Wise).
- ``mps``: one process per instance under MPS, each on the whole GPU with
  ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` set to the SMs Model-Wise would give it.
- ``mps-equal``: the same with equal shares (100 / instances).
- ``kw-prealloc``: the ladder pool, every kernel group on the partition where
  it stops getting faster (its knee), switching wherever that changes, with
  no switch budget and no regard for the other models (ECLIP's KW_Prealloc).
- ``eclip``: candidate plans on a pool of their own, measured at every load level and
  guarded online (``eclip_policy.py``: the adaptive policy object of ``Setup.adaptive``).
- ``fixed:<spec>``: a plan the user gives (``--plan resnet50=whole,vgg19=112``):
  per instance an SM count or ``whole`` (``-1``: the SMs left), confined
  instances side by side from slot 0 (``partition.layout.arrange``), an
  instance on ``whole`` beside confined ones nested over them. Not a baseline.

A policy may be *adaptive* (``Setup.adaptive``): it names every plan it may
use and returns a steering for each load level (``AdaptivePolicy``); the
harness captures all its plans first and runs its windows under the steering.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from eclip_ray.bench import eclip_policy
from eclip_ray.errors import PlanError
from eclip_ray.graph.plan import Plan
from eclip_ray.partition.layout import (
    WHOLE,
    DeviceGeometry,
    Layout,
    PartitionSpec,
    arrange,
    disjoint,
    ladder,
    union,
    whole,
)
from eclip_ray.planner import baselines
from eclip_ray.planner.grouping import knee
from eclip_ray.planner.mixes import build_mix
from eclip_ray.planner.power import PowerModel
from eclip_ray.planner.profile import ModelProfile
from eclip_ray.planner.selection import SelectionSettings
from eclip_ray.planner.settings import PlannerSettings
from eclip_ray.planner.steering import Steering

POLICIES = (
    "time-share",
    "multi-stream",
    "stream-priority",
    "model-wise",
    "mps",
    "mps-equal",
    "kw-prealloc",
    "eclip",
)
PAPER_POLICIES = ("time-share", "multi-stream", "model-wise", "mps", "kw-prealloc", "eclip")  # ECLIP's table
PROFILED = ("model-wise", "mps", "kw-prealloc", "eclip")  # need a profile of every instance
MPS_POLICIES = ("mps", "mps-equal")
FIXED = "fixed:"  # prefix of a user's fixed plan: "fixed:resnet50=whole,vgg19=112"
TARGET = "eclip"
WHOLE_PLAN = Plan.single(WHOLE)
HIGHEST_PRIORITY = -(2**20)  # clamped to the device's greatest priority by the backend


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
    mps_note: str = ""  # why MPS cannot run here; empty when it can
    planner: PlannerSettings = field(default_factory=PlannerSettings)
    roles: Mapping[str, str] = field(default_factory=dict)  # instance -> "latency" or "batch"
    models: Mapping[str, str] = field(default_factory=dict)  # instance -> zoo model (for fixed plans)
    selection_budget_s: float | None = None  # eclip's selection time per load level; None: the policy's own
    # The latency-critical instances, for eclip (planner/roles.py): the mix's roles where it has a batch job
    # (``roles_of`` makes both); None: every instance a service of the same rank, eclip's own rule.
    latency_critical: tuple[str, ...] | None = None

    def role(self, name: str) -> str:
        """``latency`` or ``batch``: from ``roles``, else from ``latency_critical``, else a service."""
        if name in self.roles:
            return self.roles[name]
        if self.latency_critical is not None:
            return "latency" if name in self.latency_critical else "batch"
        return "latency"

    def ladder(self) -> Layout:
        """The pool of kw-prealloc and eclip: ECLIP's per-worker ladder plus the whole GPU."""
        return ladder(self.geometry, len(self.instances), self.fractions)


def roles_of(instances: Sequence[str], roles: Mapping[str, str]) -> dict:
    """``MixInputs``' ``roles`` and ``latency_critical`` for instance roles (absent: latency)."""
    full = {n: roles.get(n, "latency") for n in instances}
    critical = tuple(n for n in instances if full[n] == "latency") if "batch" in full.values() else None
    return {"roles": full, "latency_critical": critical}


Trial = Callable[[Any, float], dict]  # (a Mapping[str, Plan] or a Steering, window_s) -> window_metrics' dict


class AdaptivePolicy(Protocol):
    """A policy that chooses its plans while it runs (issue 15's ``eclip``).

    ``plans()`` names every plan it may use, per instance: the harness captures them
    all, at the instance's batch size, before any window. ``steering(load, trial)`` is
    called once per load level, before that level's measured window; ``trial(what,
    window_s)`` runs the mix at that same load for ``window_s`` seconds under ``what``
    (plans per instance, or a steering) and returns that window's metrics
    (``stats.window_metrics``); trial windows are not counted, their time is recorded
    as ``selection_s``. A steering's optional ``describe() -> dict`` (switches, the
    candidate chosen) goes into the result.
    """

    def plans(self) -> Mapping[str, set[Plan]]: ...

    def steering(self, load: Any, trial: Trial) -> Steering: ...


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
    priorities: dict[str, int] = field(default_factory=dict)  # instance -> CUDA stream priority (lower: urgent)
    layout: Layout | None = None  # the pool the policy runs on, where it brings its own; None: policy_layout's rule
    adaptive: AdaptivePolicy | None = None  # plans() -> {instance: {Plan}} and steering(load, trial) -> Steering

    @property
    def in_process(self) -> bool:
        return self.mps_percent is None and self.policy not in MPS_POLICIES

    def all_plans(self) -> dict[str, set[Plan]]:
        """Every plan each instance may run under: its static plan, and all an adaptive policy names."""
        out = {n: {p} for n, p in self.plans.items()}
        if self.adaptive is not None:
            for n, ps in self.adaptive.plans().items():
                out.setdefault(n, set()).update(ps)
        return out

    def describe(self) -> dict:
        """The policy's set-up for the result file."""
        out = dict(self.details)
        if self.plans:
            out["plans"] = {n: {**p.to_dict(), "switches": p.switches} for n, p in self.plans.items()}
        if self.mps_percent is not None:
            out["mps_active_thread_percentage"] = dict(self.mps_percent)
        if self.priorities:
            out["stream_priority_asked"] = dict(self.priorities)
        if self.adaptive is not None:
            out["adaptive"] = type(self.adaptive).__name__
            out["candidate_plans"] = {n: len(ps) for n, ps in self.all_plans().items()}
        return out


def known(policy: str) -> bool:
    return policy in POLICIES or (policy.startswith(FIXED) and len(policy) > len(FIXED))


def check_names(policies: Sequence[str]) -> None:
    """Raise ValueError naming the policies that are neither built in nor a ``fixed:<spec>`` plan."""
    unknown = [p for p in policies if not known(p)]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; choose from {POLICIES} or {FIXED}<spec> (--plan)")


def is_baseline(policy: str) -> bool:
    """What users run today: every built-in policy but eclip; a user's fixed plan is not one."""
    return policy in POLICIES and policy != TARGET


def build(policy: str, mix: MixInputs) -> Setup:
    """The set-up of ``policy`` for ``mix`` (skipped, with the reason, where it cannot run)."""
    check_names([policy])
    if policy in PROFILED and not mix.profiles and not (policy == "mps" and mix.mps_note):
        return Setup(policy, skipped=f"needs a profile of every model: {mix.profile_note}")
    try:
        if policy.startswith(FIXED):
            return fixed(mix, policy[len(FIXED) :], policy)
        return _BUILDERS[policy](mix)
    except PlanError as e:  # an infeasible SLO, a profile out of range: the policy has no plan here
        return Setup(policy, skipped=f"{type(e).__name__}: {e}")


def build_all(policies: Sequence[str], mix: MixInputs) -> dict[str, Setup]:
    return {p: build(p, mix) for p in policies}


def policy_layout(mix: MixInputs, setup: Setup) -> Layout:
    """The pool of one policy: its own (``Setup.layout``); else the ladder where its plans may switch, else its
    own partitions and the whole GPU."""
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


def _stream_priority(mix: MixInputs) -> Setup:
    batch = [n for n in mix.instances if mix.role(n) == "batch"]
    if not batch:
        return Setup("stream-priority", skipped="no batch job in the mix: every stream would get the same priority")
    prio = {n: 0 if n in batch else HIGHEST_PRIORITY for n in mix.instances}
    return Setup("stream-priority", {n: WHOLE_PLAN for n in mix.instances}, priorities=prio)


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


def _mps_equal(mix: MixInputs) -> Setup:
    if mix.mps_note:
        return Setup("mps-equal", skipped=mix.mps_note)
    share = max(1, 100 // len(mix.instances))
    return Setup("mps-equal", mps_percent={n: share for n in mix.instances}, details={"share": "equal"})


def _mps(mix: MixInputs) -> Setup:
    if mix.mps_note:
        return Setup("mps", skipped=mix.mps_note)
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
    given = mix.selection_budget_s
    policy, details = eclip_policy.build(mix, selection=SelectionSettings(budget_s=given) if given else None)
    if given:
        details["selection_budget_s"] = given
    first = policy.adaptive.candidates.candidates[0]
    return Setup("eclip", dict(first.plans), details=details, layout=policy.adaptive.candidates.layout, adaptive=policy)


def parse_plan(text: str, mix: MixInputs) -> list[int | None]:
    """``inst=SMS,...`` (SMS an SM count, ``whole`` or ``-1``; keys instance or model names) as sizes in mix order.

    An instance the text leaves out runs on the whole GPU.
    """
    by_model: dict[str, list[str]] = {}
    for n in mix.instances:
        by_model.setdefault(mix.models.get(n, n), []).append(n)
    sizes: dict[str, int | None] = {}
    for item in (t.strip() for t in text.split(",") if t.strip()):
        key, _, value = item.partition("=")
        key, value = key.strip(), value.strip().lower()
        names = [key] if key in mix.instances else by_model.get(key, [])
        if len(names) != 1:
            what = "names no instance" if not names else f"is the model of {names}: name the instance"
            raise ValueError(f"plan entry {item!r}: {key!r} {what} (instances: {list(mix.instances)})")
        if names[0] in sizes:
            raise ValueError(f"plan entry {item!r}: {names[0]} is given twice")
        try:
            sizes[names[0]] = None if value == WHOLE else int(value)
        except ValueError:
            raise ValueError(f"plan entry {item!r}: give an SM count, -1 (the rest) or 'whole'") from None
    return [sizes.get(n) for n in mix.instances]


def fixed(mix: MixInputs, text: str, policy: str | None = None) -> Setup:
    """The user's plan ``text`` as a policy: each instance alone on its partition (or the whole GPU)."""
    sizes = parse_plan(text, mix)
    parts = arrange(mix.geometry, sizes)
    plans = {n: Plan.single(p.name if p is not None else WHOLE) for n, p in zip(mix.instances, parts, strict=True)}
    sms = {n: (p.count if p is not None else WHOLE) for n, p in zip(mix.instances, parts, strict=True)}
    name = policy or FIXED + text
    confined = tuple(p for p in parts if p is not None)
    return Setup(
        name, plans, partitions=confined, layout=union(mix.geometry, parts), details={"plan": text, "sms": sms}
    )


_BUILDERS = {
    "time-share": _time_share,
    "multi-stream": _multi_stream,
    "stream-priority": _stream_priority,
    "model-wise": _model_wise,
    "mps": _mps,
    "mps-equal": _mps_equal,
    "kw-prealloc": _kw_prealloc,
    "eclip": _eclip,
}
