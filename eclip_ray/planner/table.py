"""Plan tables: the plans of every co-location mix the runtime may meet, looked up by the active set.

A mix is the set of active model instances with their batch sizes. The table
is built offline for a full mix and all of its sub-mixes (every non-empty
subset of the instances, at every profiled batch size), so that when a model
goes idle or changes batch size the runtime only looks a plan up: every plan
it can need is known at start-up and can be captured then, never on the
request path. Each instance keeps its worker slot of the full mix in every
sub-mix, because the pool's partitions do not move.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eclip_ray.errors import InfeasibleSLO, PlanError
from eclip_ray.graph.plan import Plan
from eclip_ray.partition.layout import Layout
from eclip_ray.planner.optimizer import optimize
from eclip_ray.planner.power import PowerModel
from eclip_ray.planner.profile import ModelProfile
from eclip_ray.planner.settings import PlannerSettings

SCHEMA = 1
MixKey = frozenset[tuple[str, int]]


def mix_key(active: Mapping[str, int]) -> MixKey:
    """The table key of an active set: model instance name -> batch size."""
    return frozenset((str(n), int(b)) for n, b in active.items())


@dataclass(frozen=True)
class Entry:
    """The plans of one mix and what the cost model predicts for them."""

    plans: dict[str, Plan]
    predicted: dict[str, Any]


class PlanTable:
    """Plans per co-location mix, for one pool layout and objective."""

    def __init__(
        self,
        layout: dict[str, Any],
        objective: str,
        slots: Mapping[str, int],
        entries: Mapping[MixKey, Entry] | None = None,
        skipped: Mapping[MixKey, str] | None = None,
    ) -> None:
        self.layout = layout  # Layout.to_dict() of the pool the plans name partitions of
        self.objective = objective
        self.slots = dict(slots)
        self.entries: dict[MixKey, Entry] = dict(entries or {})
        self.skipped: dict[MixKey, str] = dict(skipped or {})  # mixes with no plan, and why

    def lookup(self, active: Mapping[str, int]) -> dict[str, Plan] | None:
        """Model instance name -> Plan for the active set (name -> batch size); None when not in the table."""
        entry = self.entries.get(mix_key(active))
        return None if entry is None else dict(entry.plans)

    def predicted(self, active: Mapping[str, int]) -> dict[str, Any] | None:
        """What the cost model predicts for the active set's plans (throughput, latency, energy)."""
        entry = self.entries.get(mix_key(active))
        return None if entry is None else dict(entry.predicted)

    def captures(self) -> dict[str, set[tuple[Plan, int]]]:
        """Model instance name -> every (plan, batch size) some mix needs: capture these at start-up."""
        out: dict[str, set[tuple[Plan, int]]] = {}
        for key, entry in self.entries.items():
            batch = dict(key)
            for name, plan in entry.plans.items():
                out.setdefault(name, set()).add((plan, batch[name]))
        return out

    def matches(self, layout: Layout) -> bool:
        """Whether the table's plans were made for ``layout`` (the pool the runtime built)."""
        return self.layout == layout.to_dict()

    def __len__(self) -> int:
        return len(self.entries)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "layout": self.layout,
            "objective": self.objective,
            "slots": self.slots,
            "entries": [
                {
                    "mix": sorted([n, b] for n, b in key),
                    "plans": {n: p.to_dict() for n, p in sorted(e.plans.items())},
                    "predicted": e.predicted,
                }
                for key, e in sorted(self.entries.items(), key=lambda kv: sorted(kv[0]))
            ],
            "skipped": [{"mix": sorted([n, b] for n, b in key), "reason": r} for key, r in self.skipped.items()],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanTable:
        if data.get("schema") != SCHEMA:
            raise PlanError(f"plan table schema {data.get('schema')!r}, this version reads schema {SCHEMA}")
        key = lambda m: frozenset((str(n), int(b)) for n, b in m)  # noqa: E731
        entries = {
            key(e["mix"]): Entry({n: Plan.from_dict(p) for n, p in e["plans"].items()}, e["predicted"])
            for e in data["entries"]
        }
        skipped = {key(s["mix"]): s["reason"] for s in data.get("skipped", [])}
        return cls(data["layout"], data["objective"], data["slots"], entries, skipped)

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> PlanTable:
        """Read a table written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


def sub_mixes(batches: Mapping[str, Sequence[int]]) -> Iterable[dict[str, int]]:
    """Every non-empty subset of the instances, at every combination of their batch sizes."""
    names = list(batches)
    for k in range(len(names), 0, -1):
        for subset in itertools.combinations(names, k):
            for combo in itertools.product(*(sorted(batches[n]) for n in subset)):
                yield dict(zip(subset, combo, strict=True))


def full_mixes(batches: Mapping[str, Sequence[int]]) -> Iterable[dict[str, int]]:
    """Every instance active, at every combination of their batch sizes."""
    for combo in itertools.product(*(sorted(b) for b in batches.values())):
        yield dict(zip(batches, combo, strict=True))


def _by_batch(profiles: Mapping[str, ModelProfile | Sequence[ModelProfile]]) -> dict[str, dict[int, ModelProfile]]:
    out: dict[str, dict[int, ModelProfile]] = {}
    for name, ps in profiles.items():
        ps = [ps] if isinstance(ps, ModelProfile) else list(ps)
        out[name] = {p.key.batch_size: p for p in ps}
        if len(out[name]) != len(ps):
            raise PlanError(f"{name}: two profiles at the same batch size")
    return out


def build_plan_table(
    profiles: Mapping[str, ModelProfile | Sequence[ModelProfile]],
    layout: Layout,
    slo_ms: Mapping[str, float | None] | None = None,
    objective: str = "throughput",
    *,
    power: PowerModel | None = None,
    power_note: str = "no power model given",
    settings: PlannerSettings | None = None,
    sub_mixes_too: bool = True,
    skip_infeasible: bool = False,
) -> PlanTable:
    """Plan the full mix of ``profiles`` and (by default) every sub-mix, at every profiled batch size.

    ``profiles`` maps model instance names to their profile(s), one per batch
    size; an instance's worker slot in ``layout`` is its position in
    ``profiles``. An infeasible SLO raises InfeasibleSLO unless
    ``skip_infeasible``, which records the reason in ``table.skipped``.
    """
    by_batch = _by_batch(profiles)
    slots = {n: i for i, n in enumerate(by_batch)}
    table = PlanTable(layout.to_dict(), objective, slots)
    full = {n: sorted(b) for n, b in by_batch.items()}
    for active in sub_mixes(full) if sub_mixes_too else full_mixes(full):
        try:
            plan = optimize(
                {n: by_batch[n][b] for n, b in active.items()},
                layout,
                {n: (slo_ms or {}).get(n) for n in active},
                objective,
                power=power,
                power_note=power_note,
                slots={n: slots[n] for n in active},
                settings=settings,
            )
        except InfeasibleSLO as e:
            if not skip_infeasible:
                raise
            table.skipped[mix_key(active)] = str(e)
            continue
        table.entries[mix_key(active)] = Entry(plan.plans(), {**plan.predicted.to_dict(), "optimal": plan.optimal})
    return table
