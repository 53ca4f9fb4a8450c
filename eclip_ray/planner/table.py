"""Plan tables: the plans of every co-location mix the runtime may meet, looked up by the active set.

A mix is the set of active model instances with their batch sizes. The table
is built offline for a full mix and all of its sub-mixes (every non-empty
subset of the instances, at every profiled batch size), so that when a model
goes idle or changes batch size the runtime only looks a plan up: every plan
it can need is known at start-up and can be captured then, never on the
request path. Each instance keeps its worker slot of the full mix in every
sub-mix, because the pool's partitions do not move.

Schema 2 adds what the GPU measured: per mix, its candidate set (``candidates.py``:
the pool and every candidate's plans) and the measured selection at each load it was
made for (``selection.py``: the trials, the choice and why), so that a restarted actor
or a rerun benchmark adopts them without measuring again. Schema 1 files still load
(with no measurements); tables are written as schema 2.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eclip_ray.errors import InfeasibleSLO, PlanError
from eclip_ray.graph.plan import Plan
from eclip_ray.partition.layout import Layout
from eclip_ray.planner.optimizer import optimize
from eclip_ray.planner.power import PowerModel
from eclip_ray.planner.profile import ModelProfile
from eclip_ray.planner.settings import PlannerSettings

SCHEMA = 2
READS = (1, 2)
MixKey = frozenset[tuple[str, int]]


def mix_key(active: Mapping[str, int]) -> MixKey:
    """The table key of an active set: model instance name -> batch size."""
    return frozenset((str(n), int(b)) for n, b in active.items())


@dataclass
class Measured:
    """What the GPU measured for one mix: its candidate set, and a selection per load (key -> (rates, selection))."""

    candidates: dict[str, Any]  # CandidateSet.to_dict()
    selections: dict[str, tuple[dict[str, float | None], dict[str, Any]]] = field(default_factory=dict)


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
        measured: Mapping[MixKey, Measured] | None = None,
    ) -> None:
        self.layout = layout  # Layout.to_dict() of the pool the plans name partitions of
        self.objective = objective
        self.slots = dict(slots)
        self.entries: dict[MixKey, Entry] = dict(entries or {})
        self.skipped: dict[MixKey, str] = dict(skipped or {})  # mixes with no plan, and why
        self.measured: dict[MixKey, Measured] = dict(measured or {})

    def candidate_set(self, active: Mapping[str, int]) -> dict[str, Any] | None:
        """The candidate set (``CandidateSet.to_dict()``) measured for the mix ``active``, or None."""
        m = self.measured.get(mix_key(active))
        return None if m is None else m.candidates

    def selections(self, active: Mapping[str, int]) -> dict[str, tuple[dict[str, float | None], dict[str, Any]]]:
        """Load key -> (arrival rates, ``Selection.to_dict()``) measured for the mix ``active``."""
        m = self.measured.get(mix_key(active))
        return {} if m is None else dict(m.selections)

    def record(
        self,
        active: Mapping[str, int],
        candidates: dict[str, Any],
        load: str | None = None,
        rates: Mapping[str, float | None] | None = None,
        selection: dict[str, Any] | None = None,
    ) -> None:
        """Keep the candidate set of ``active`` and (with ``load``) the selection measured at that load.

        A different candidate set for the mix replaces the old one and its selections, which
        were measured on other candidates.
        """
        key = mix_key(active)
        if key not in self.measured or self.measured[key].candidates != candidates:
            self.measured[key] = Measured(candidates)
        if load is not None and selection is not None:
            self.measured[key].selections[load] = (dict(rates or {}), selection)

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
            "measured": [
                {
                    "mix": sorted([n, b] for n, b in key),
                    "candidates": m.candidates,
                    "selections": [{"load": k, "rates_rps": r, "selection": v} for k, (r, v) in m.selections.items()],
                }
                for key, m in sorted(self.measured.items(), key=lambda kv: sorted(kv[0]))
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlanTable:
        if data.get("schema") not in READS:
            raise PlanError(f"plan table schema {data.get('schema')!r}, this version reads schemas {READS}")
        key = lambda m: frozenset((str(n), int(b)) for n, b in m)  # noqa: E731
        entries = {
            key(e["mix"]): Entry({n: Plan.from_dict(p) for n, p in e["plans"].items()}, e["predicted"])
            for e in data["entries"]
        }
        skipped = {key(s["mix"]): s["reason"] for s in data.get("skipped", [])}
        measured = {
            key(m["mix"]): Measured(
                m["candidates"], {s["load"]: (dict(s["rates_rps"]), s["selection"]) for s in m.get("selections", [])}
            )
            for m in data.get("measured", [])
        }
        return cls(data["layout"], data["objective"], data["slots"], entries, skipped, measured)

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
