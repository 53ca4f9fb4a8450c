"""Candidate plans of a mix: the few the GPU measures before one is adopted (docs/optimizer.md, section 9).

The cost model proposes, the GPU measures (``selection.py``), the guard keeps choosing
(``guard.py``). A :class:`CandidateSet` is plain data: one pool layout that holds every
partition any candidate names (built once at start, every candidate's graphs captured
then, so trying or switching a candidate costs no reconfiguration) and the candidates in
the order the cost model ranks them. It always holds:

- ``multi-stream``: every instance on the whole GPU;
- ``nested``: the latency-critical instances (``roles.py``) on the whole GPU, every batch
  instance confined to one shared partition ``s0.c`` (each on its own streams there, so
  they still multiplex), at up to three levels ``c = N - f R`` for ``f`` in
  ``CONFINE_STEPS``, ``R`` being the SMs the latency-critical instances need to
  themselves (``roles.right_size``). With no latency-critical instance, every instance is
  protected in turn, the others confined to ``N - r``;
- ``per-batch`` (with latency-critical instances): each nested level again, where a batch
  instance's next batch takes the whole GPU while no latency-critical neighbour has a
  request in flight or queued (``placement.py``);
- ``disjoint``: every instance on its own range: a latency-critical instance its right
  size, a batch instance (every instance, when none is latency-critical) the smallest size
  its profile covers, and the SMs left handed out to the batch instances in proportion to
  the SMs they keep busy, none left idle;
- ``planned``: the ``k`` best other plans the optimizer's search evaluated on that pool
  (every static placement and its MILP steps, kernel groups on different partitions),
  ranked by the cost model (``search.py``; feasible first, then the objective).

Hardware work queues: every stream of the pool takes one of the device's 32 queues, and
streams on one queue run in order (``partition/cuda.py``). The pool has one stream per
partition, and each instance one private stream on every partition its plans use. The
structured partitions share starts (``s0.c``) and sizes, so the pool stays small (one
whole, up to three nested levels, one range per instance for the disjoint split), and
when the streams would exceed ``max_streams`` the lowest-ranked candidates that need
streams no other candidate needs are dropped (multi-stream never is).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eclip_ray.errors import PlanError
from eclip_ray.graph.plan import Plan
from eclip_ray.partition.layout import WHOLE, DeviceGeometry, Layout, PartitionSpec, arrange, union
from eclip_ray.partition.layout import from_dict as layout_from_dict
from eclip_ray.planner import roles
from eclip_ray.planner.cost import Mix, State
from eclip_ray.planner.mixes import build_mix
from eclip_ray.planner.objective import check as objective_check
from eclip_ray.planner.power import PowerModel
from eclip_ray.planner.profile import ModelProfile
from eclip_ray.planner.search import FEASIBLE_TOL, Search
from eclip_ray.planner.search import Candidate as Searched
from eclip_ray.planner.settings import PlannerSettings

DEFAULT_K = 8
MAX_STREAMS = 32  # the driver's most hardware work queues (partition/cuda.py)
MAX_CANDIDATES = 16
CONFINE_STEPS = (0.5, 1.0, 2.0)  # nested levels: batch instances leave f x R SMs to the latency-critical ones
KINDS = ("multi-stream", "nested", "per-batch", "disjoint", "planned")
WHOLE_PLAN = Plan.single(WHOLE)


@dataclass(frozen=True)
class Candidate:
    """One way of running the mix: a plan per instance (per-batch: the confined plans and ``wide`` ones)."""

    name: str
    kind: str
    plans: Mapping[str, Plan]
    predicted: Mapping[str, Any] | None = None  # the cost model's Prediction.to_dict() of ``plans``
    sizes: Mapping[str, int | None] = field(default_factory=dict)  # per instance SMs (None: whole), if one each
    wide: Mapping[str, Plan] = field(default_factory=dict)  # per-batch: a batch instance's plan while LC is idle
    adapts: str | None = None  # per-batch: the static candidate whose confined plans it runs while LC is busy

    @property
    def adaptive(self) -> bool:
        """Whether the plan of a batch changes with what runs (per-batch placement)."""
        return bool(self.wide)

    def all_plans(self) -> dict[str, set[Plan]]:
        """Every plan this candidate may issue, per instance."""
        out = {n: {p} for n, p in self.plans.items()}
        for n, p in self.wide.items():
            out[n].add(p)
        return out

    def partitions(self) -> dict[str, set[str]]:
        """Per instance, the partitions its plans name."""
        return {n: {q for p in ps for q in p.partitions} for n, ps in self.all_plans().items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "plans": {n: p.to_dict() for n, p in self.plans.items()},
            "wide": {n: p.to_dict() for n, p in self.wide.items()},
            "sizes": dict(self.sizes),
            "adapts": self.adapts,
            "predicted": None if self.predicted is None else dict(self.predicted),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidate:
        try:
            return cls(
                name=str(d["name"]),
                kind=str(d["kind"]),
                plans={n: Plan.from_dict(p) for n, p in d["plans"].items()},
                predicted=d.get("predicted"),
                sizes=dict(d.get("sizes") or {}),
                wide={n: Plan.from_dict(p) for n, p in (d.get("wide") or {}).items()},
                adapts=d.get("adapts"),
            )
        except (KeyError, TypeError, AttributeError) as e:
            raise PlanError(f"malformed candidate {d!r}: {e!r}") from e


@dataclass(frozen=True)
class CandidateSet:
    """The candidates of one mix (instance -> batch size) on one pool, best first by the cost model."""

    layout: Layout
    candidates: tuple[Candidate, ...]
    batch: Mapping[str, int]
    latency_critical: frozenset[str] = frozenset()
    notes: tuple[str, ...] = ()  # what was left out and why (stream budget, sizes out of a profile's range)

    def __post_init__(self) -> None:
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise PlanError(f"candidate names repeat: {names}")
        missing = {q for c in self.candidates for ps in c.partitions().values() for q in ps} - set(self.layout.names)
        if missing:
            raise PlanError(f"candidates name partitions {sorted(missing)} the pool {self.layout.names} lacks")

    def __getitem__(self, name: str) -> Candidate:
        for c in self.candidates:
            if c.name == name:
                return c
        raise KeyError(f"no candidate {name!r}; the set has {[c.name for c in self.candidates]}")

    def __contains__(self, name: object) -> bool:
        return any(c.name == name for c in self.candidates)

    def __len__(self) -> int:
        return len(self.candidates)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.candidates]

    @property
    def instances(self) -> list[str]:
        return list(self.batch)

    def plans(self) -> dict[str, set[Plan]]:
        """Every plan some candidate may issue, per instance: capture all of them at start."""
        out: dict[str, set[Plan]] = {n: set() for n in self.batch}
        for c in self.candidates:
            for n, ps in c.all_plans().items():
                out[n] |= ps
        return out

    def streams(self) -> int:
        """Streams the pool and the instances' runners hold: each takes a hardware work queue."""
        return streams_needed(self.layout, self.candidates)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout": self.layout.to_dict(),
            "batch": dict(self.batch),
            "latency_critical": sorted(self.latency_critical),
            "candidates": [c.to_dict() for c in self.candidates],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], geometry: DeviceGeometry | None = None) -> CandidateSet:
        try:
            g = geometry or DeviceGeometry(int(d["layout"]["sm_count"]))
            return cls(
                layout=layout_from_dict(g, d["layout"]),
                candidates=tuple(Candidate.from_dict(c) for c in d["candidates"]),
                batch={str(n): int(b) for n, b in d["batch"].items()},
                latency_critical=frozenset(d.get("latency_critical") or ()),
                notes=tuple(d.get("notes") or ()),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise PlanError(f"malformed candidate set: {e!r}") from e


def exclusive_sms(candidate: Candidate, layout: Layout) -> dict[str, int]:
    """Per instance, the SM slots of its partitions that no other instance's partitions hold (wide plans too).

    How well a candidate protects an instance, from the plans alone: multi-stream gives none,
    a nested plan the slots above the confined partition, a disjoint split the whole range.
    """
    slots = {n: {s for q in parts for s in layout[q].slots()} for n, parts in candidate.partitions().items()}
    return {n: len(mine - set().union(*(o for m, o in slots.items() if m != n))) for n, mine in slots.items()}


def streams_needed(layout: Layout, candidates: Sequence[Candidate]) -> int:
    """One stream per pool partition, plus one per instance on every partition its plans use (and the whole GPU)."""
    used: dict[str, set[str]] = {}
    for c in candidates:
        for n, parts in c.partitions().items():
            used.setdefault(n, {WHOLE}).update(parts)
    return len(layout.partitions) + sum(len(p) for p in used.values())


# -- the structured candidates ------------------------------------------------------------------


@dataclass(frozen=True)
class _Shape:
    """A structured candidate before costing: each instance wholly on one partition (None: the whole GPU)."""

    name: str
    kind: str
    parts: dict[str, PartitionSpec | None]
    sizes: dict[str, int | None]
    wide: frozenset[str] = frozenset()
    adapts: str | None = None


def _label(kind: str, instances: Sequence[str], sizes: Mapping[str, int | None]) -> str:
    return f"{kind} " + ",".join(f"{n}={'whole' if sizes[n] is None else sizes[n]}" for n in instances)


def _floor(x: float, step: int) -> int:
    return int(x // step * step)


def _step_up(sms: int, g: DeviceGeometry) -> int:
    return max(g.min_sms, -(-sms // g.granularity) * g.granularity)


def _nested(
    g: DeviceGeometry, instances: Sequence[str], protected: Collection[str], confine: int, per_batch: bool
) -> list[_Shape]:
    (part,) = arrange(g, [confine])
    sizes = {n: None if n in protected else confine for n in instances}
    parts = {n: None if n in protected else part for n in instances}
    out = [_Shape(_label("nested", instances, sizes), "nested", parts, sizes)]
    if per_batch:
        batch = frozenset(n for n in instances if n not in protected)
        out.append(_Shape(_label("per-batch", instances, sizes), "per-batch", parts, sizes, batch, out[0].name))
    return out


def confine_levels(g: DeviceGeometry, need: int, least: int) -> list[int]:
    """The confined partition's sizes of the nested candidates when the protected instances need ``need`` SMs."""
    top = _floor(g.sm_count - 1, g.granularity)  # the largest aligned size short of the device: some SMs stay free
    least = max(least, g.min_sms)
    levels = []
    for f in CONFINE_STEPS:
        c = min(top, _floor(g.sm_count - f * need, g.granularity))
        if c >= least and c not in levels:
            levels.append(c)
    return levels


def _disjoint(
    g: DeviceGeometry, instances: Sequence[str], base: Mapping[str, int], demand: Mapping[str, float], takers: list[str]
) -> _Shape | None:
    """Each instance its base size, the rest to ``takers`` in proportion to ``demand``; None if they do not fit."""
    left = g.sm_count - sum(base.values())
    if left < 0:
        return None
    total = sum(demand[n] for n in takers) or float(len(takers))
    sizes = dict(base)
    for n in takers[:-1]:
        sizes[n] += _floor(left * (demand[n] or 1.0) / total, g.granularity)
    order = [n for n in instances if n not in takers] + takers  # the last taker gets what rounding leaves
    counts = [sizes[n] for n in order[:-1]] + [-1]
    parts = dict(zip(order, arrange(g, counts), strict=True))
    sizes = {n: parts[n].count for n in instances}  # type: ignore[union-attr]
    return _Shape(_label("disjoint", instances, sizes), "disjoint", dict(parts), sizes)


def structured(
    profiles: Mapping[str, ModelProfile],
    g: DeviceGeometry,
    slo_ms: Mapping[str, float | None],
    latency_critical: frozenset[str],
    demand: Mapping[str, float],
) -> tuple[list[_Shape], list[str]]:
    """Multi-stream, the nested and per-batch levels, and the disjoint split (see the module doc); and notes."""
    names = list(profiles)
    lo = {n: min(p.sizes) for n, p in profiles.items()}
    need = {n: roles.right_size(p, slo_ms.get(n), g.granularity, g.min_sms) for n, p in profiles.items()}
    shapes = [_Shape("multi-stream", "multi-stream", dict.fromkeys(names), dict.fromkeys(names))]
    notes = []
    batch = [n for n in names if n not in latency_critical]
    if latency_critical and batch:
        for c in confine_levels(g, sum(need[n] for n in latency_critical), max(lo[n] for n in batch)):
            shapes += _nested(g, names, latency_critical, c, per_batch=True)
    elif len(names) > 1:  # no roles: protect each instance in turn
        for n in names:
            others = [m for m in names if m != n]
            levels = confine_levels(g, need[n], max(lo[m] for m in others))
            if levels:
                shapes += _nested(g, names, {n}, levels[len(levels) // 2], per_batch=False)
    if len(names) > 1:
        takers = batch or names
        base = {n: _step_up(lo[n], g) if n in takers else need[n] for n in names}
        if latency_critical and sum(base.values()) > g.sm_count:
            base = {n: _step_up(lo[n], g) for n in names}  # the protected instances' right sizes do not fit
        split = _disjoint(g, names, base, demand, takers)
        if split is None:
            notes.append(f"no disjoint split: the smallest sizes {base} exceed the device's {g.sm_count} SMs")
        else:
            shapes.append(split)
    return _unique(shapes), notes


def _unique(shapes: list[_Shape]) -> list[_Shape]:
    seen, out = set(), []
    for s in shapes:
        if s.name not in seen:
            seen.add(s.name)
            out.append(s)
    return out


# -- costing and ranking -------------------------------------------------------------------------


def generate(
    profiles: Mapping[str, ModelProfile],
    geometry: DeviceGeometry,
    slo_ms: Mapping[str, float | None] | None = None,
    objective: str = "throughput",
    *,
    latency_critical: Collection[str] | None = None,
    rates_rps: Mapping[str, float | None] | None = None,
    power: PowerModel | None = None,
    power_note: str = "no power model given",
    settings: PlannerSettings | None = None,
    k: int = DEFAULT_K,
    max_streams: int = MAX_STREAMS,
    max_candidates: int = MAX_CANDIDATES,
) -> CandidateSet:
    """The candidate set of the mix ``profiles`` (instance name -> profile) on a device of ``geometry``.

    ``latency_critical`` names the instances to protect (default: ``roles.latency_critical``);
    ``rates_rps`` gives instances batches/s arriving (None: closed loops), which the cost model
    ranks by (the load a candidate set is made for); ``k`` is how many ``planned`` candidates
    the cost model adds.
    """
    if k < 0 or max_candidates < 1:
        raise PlanError(f"k must be >= 0 and max_candidates >= 1, got {k} and {max_candidates}")
    s = settings or PlannerSettings()
    slo_ms = dict(slo_ms or {})
    lc = roles.latency_critical(profiles, slo_ms, latency_critical)
    demand = _demand(profiles, geometry, s, rates_rps)
    shapes, notes = structured(profiles, geometry, slo_ms, lc, demand)
    layout = union(geometry, *(sh.parts.values() for sh in shapes))
    mix = _costed(profiles, layout, slo_ms, power, power_note, s, rates_rps)
    objective_check(objective, mix)
    search = Search(mix, objective, s.switch_budget, s.time_limit_s)
    search.run()
    made = []
    for sh in shapes:
        try:
            made.append(_from_shape(sh, mix, search))
        except PlanError as e:  # a size outside some instance's profile
            notes.append(f"left out {sh.name}: {e}")
    made += _planned(search, mix, made, k)
    ranked = _rank(made)[:max_candidates]
    kept, dropped = _fit_streams(layout, ranked, max_streams)
    notes += [f"left out {c.name}: the pool would need more than {max_streams} streams" for c in dropped]
    batch = {n: p.key.batch_size for n, p in profiles.items()}
    return CandidateSet(_pool(layout, kept), tuple(kept), batch, lc, tuple(notes))


def _demand(
    profiles: Mapping[str, ModelProfile],
    g: DeviceGeometry,
    s: PlannerSettings,
    rates_rps: Mapping[str, float | None] | None,
) -> dict[str, float]:
    """SMs each instance keeps busy on average (its work per loop, at its arrival rate where given)."""
    whole = Layout(g, (PartitionSpec(WHOLE, 0, g.sm_count),))
    mix = build_mix(profiles, whole, settings=s, rates_rps=rates_rps)
    duty = mix.duty()
    return {w.name: float(w.work.sum()) * duty[i] / mix.solo_ms[i] for i, w in enumerate(mix.workers)}


def _costed(
    profiles: Mapping[str, ModelProfile],
    layout: Layout,
    slo_ms: Mapping[str, float | None],
    power: PowerModel | None,
    power_note: str,
    s: PlannerSettings,
    rates_rps: Mapping[str, float | None] | None,
) -> Mix:
    """The mix on the pool, each instance allowed only the partitions its profile covers."""
    allowed = {
        n: [q.name for q in layout.partitions if min(p.sizes) <= q.count <= max(p.sizes)] for n, p in profiles.items()
    }
    return build_mix(
        profiles,
        layout,
        slo_ms=slo_ms,
        power=power,
        power_note=power_note,
        settings=s,
        rates_rps=rates_rps,
        partitions=allowed,
    )


def _state(mix: Mix, sh: _Shape) -> State:
    idx = {q: i for i, q in enumerate(mix.layout.names)}
    out = []
    for w in mix.workers:
        part = sh.parts[w.name]
        p = idx[WHOLE if part is None else part.name]
        if p not in w.parts:
            raise PlanError(f"{w.name}'s profile does not cover partition {mix.layout.names[p]}")
        out.append((p,) * len(w.groups))
    return tuple(out)


def _plans(mix: Mix, state: State) -> dict[str, Plan]:
    return {w.name: w.plan(c, mix.layout) for w, c in zip(mix.workers, state, strict=True)}


def _from_shape(sh: _Shape, mix: Mix, search: Search) -> tuple[Candidate, Searched]:
    costed = search.consider(_state(mix, sh))
    wide = dict.fromkeys(sorted(sh.wide), WHOLE_PLAN)
    plans = _plans(mix, costed.state)
    return Candidate(sh.name, sh.kind, plans, costed.prediction.to_dict(), sh.sizes, wide, sh.adapts), costed


def _planned(
    search: Search, mix: Mix, made: list[tuple[Candidate, Searched]], k: int
) -> list[tuple[Candidate, Searched]]:
    """The ``k`` best plans the search evaluated that no structured candidate has already."""
    have = {_key(c.plans) for c, _ in made if not c.adaptive}
    out: list[tuple[Candidate, Searched]] = []
    for costed in sorted(search.seen.values(), key=_order):
        if len(out) >= k:
            break
        plans = _plans(mix, costed.state)
        if _key(plans) in have:
            continue
        have.add(_key(plans))
        out.append((Candidate(f"planned-{len(out) + 1}", "planned", plans, costed.prediction.to_dict()), costed))
    return out


def _key(plans: Mapping[str, Plan]) -> tuple:
    return tuple(sorted(plans.items(), key=lambda kv: kv[0]))


def _order(c: Searched) -> tuple:
    """Feasible first, by the objective; then the least SLO excess."""
    feasible = c.violation <= FEASIBLE_TOL
    return (not feasible, c.score if feasible else c.violation, c.violation)


def _rank(made: list[tuple[Candidate, Searched]]) -> list[Candidate]:
    """By the cost model; a per-batch candidate right after the nested one it adapts."""
    static = [(c, s) for c, s in made if not c.adaptive]
    adaptive = {c.adapts: c for c, _ in made if c.adaptive}
    out = []
    for c, _ in sorted(static, key=lambda cs: _order(cs[1])):
        out.append(c)
        if c.name in adaptive:
            out.append(adaptive[c.name])
    return out


def _pool(layout: Layout, candidates: Sequence[Candidate]) -> Layout:
    """``layout`` with only the partitions some candidate names (and the whole GPU)."""
    used = {q for c in candidates for parts in c.partitions().values() for q in parts}
    return union(layout.geometry, [p for p in layout.partitions if p.name in used])


def _fit_streams(layout: Layout, ranked: list[Candidate], limit: int) -> tuple[list[Candidate], list[Candidate]]:
    """Drop the lowest-ranked candidates whose streams no other needs until the pool fits ``limit`` streams."""
    kept, dropped = list(ranked), []

    def need(cs: list[Candidate]) -> int:
        return streams_needed(_pool(layout, cs), cs)

    while need(kept) > limit:
        now = need(kept)
        rest = [c for c in kept if c.kind != "multi-stream"]
        if not rest:
            break
        # the lowest-ranked one whose removal frees streams; else the lowest-ranked (it shares them with others)
        c = next((c for c in reversed(rest) if need([x for x in kept if x is not c]) < now), rest[-1])
        kept, dropped = [x for x in kept if x is not c], [c, *dropped]
    return kept, dropped
