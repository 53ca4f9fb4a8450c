"""Which plan each model runs under, given the mix of models active now.

The plan table (``eclip_ray.planner.PlanTable``) maps a mix (model -> batch
size) to a plan per model. Every plan the table can return for this actor's
models is found at start (``candidates``) so that graphs are captured before
the first request; at run time a changed mix costs one table lookup and a
dictionary swap. A model the table does not cover, a table that fails, or a
plan that was not prepared runs on the whole GPU.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Protocol

from eclip_ray.graph.plan import Plan
from eclip_ray.partition.layout import WHOLE

log = logging.getLogger(__name__)

WHOLE_PLAN = Plan.single(WHOLE)


class PlanLookup(Protocol):
    def lookup(self, active: Mapping[str, int]) -> Mapping[str, Plan] | None: ...


def open_table(table: str | PathLike | PlanLookup | None) -> PlanLookup | None:
    """The plan table at a path (``PlanTable.load``), or ``table`` itself if it already has ``lookup``."""
    if table is None or hasattr(table, "lookup"):
        return table
    from eclip_ray.planner import PlanTable  # imported only when a table is used

    return PlanTable.load(table)


def label(plan: Plan) -> str:
    """A short text form for metrics and logs: ``w0.32 >block2#0> w0.64``."""
    out = plan.partitions[0]
    for cut, part in zip(plan.cuts, plan.partitions[1:], strict=True):
        out += f" >{cut}> {part}"
    return out


class PlanSelector:
    """Tracks the active mix and answers each batch with its model's plan."""

    def __init__(
        self,
        table: PlanLookup | None,
        batch_sizes: Mapping[str, Sequence[int]],
        active_window_s: float = 1.0,
        max_lookups: int = 4096,
    ) -> None:
        self.table = table
        self.sizes = {m: tuple(sorted(s)) for m, s in batch_sizes.items()}
        self.active_window_s = active_window_s
        self.max_lookups = max_lookups
        self.prepared: dict[str, set[Plan]] = {m: {WHOLE_PLAN} for m in self.sizes}
        self.switches = 0
        self.fallbacks = 0
        self._seen: dict[str, tuple[float, int]] = {}
        self._active: dict[str, int] = {}
        self._plans: dict[str, Plan] = {}

    def bucket(self, model: str, rows: int) -> int:
        return next((s for s in self.sizes[model] if s >= rows), self.sizes[model][-1])

    def mixes(self) -> list[dict[str, int]]:
        """Every mix of this actor's models at their batch sizes, smallest mixes first."""
        out: list[dict[str, int]] = []
        models = sorted(self.sizes)
        for k in range(1, len(models) + 1):
            for subset in itertools.combinations(models, k):
                for sizes in itertools.product(*(self.sizes[m] for m in subset)):
                    out.append(dict(zip(subset, sizes, strict=True)))
        return out

    def candidates(self) -> dict[str, set[Plan]]:
        """Every plan the table returns for some mix, per model (the whole-GPU plan always).

        A table that lists them (``PlanTable.captures``) is asked directly;
        otherwise every mix of this actor's models at their batch sizes is looked up.
        """
        found = {m: {WHOLE_PLAN} for m in self.sizes}
        if self.table is None:
            return found
        listed = getattr(self.table, "captures", None)
        if callable(listed):
            for model, pairs in listed().items():
                if model in found:
                    found[model].update(plan for plan, _ in pairs)
            return found
        mixes = self.mixes()
        if len(mixes) > self.max_lookups:
            log.warning(
                "%d mixes exceed max_lookups=%d; plans of the others fall back to the whole GPU",
                len(mixes),
                self.max_lookups,
            )
        for mix in mixes[: self.max_lookups]:
            for model, plan in self._ask(mix).items():
                found[model].add(plan)
        return found

    def prepare(self, plans: Mapping[str, set[Plan]]) -> None:
        """The plans that were validated (and captured, on a GPU): the only ones ever returned."""
        self.prepared = {m: set(p) | {WHOLE_PLAN} for m, p in plans.items()}

    def observe(self, model: str, rows: int, now: float) -> Plan:
        """Note a batch of ``model`` at time ``now`` (seconds) and return the plan it runs under."""
        self._seen[model] = (now, self.bucket(model, rows))
        active = {m: b for m, (t, b) in self._seen.items() if now - t <= self.active_window_s}
        if active != self._active:
            self._active = active
            self._switch(active)
        return self._plans.get(model, WHOLE_PLAN)

    def current(self) -> dict[str, Plan]:
        return {m: self._plans.get(m, WHOLE_PLAN) for m in self.sizes}

    @property
    def active(self) -> dict[str, int]:
        return dict(self._active)

    def _switch(self, active: Mapping[str, int]) -> None:
        chosen = {}
        for model, plan in self._ask(active).items():
            if plan in self.prepared.get(model, ()):
                chosen[model] = plan
            else:
                self.fallbacks += 1
                log.warning("plan for %s in mix %s was not prepared at start; using the whole GPU", model, active)
        new = {m: chosen.get(m, WHOLE_PLAN) for m in active}
        if any(new[m] != self._plans.get(m, WHOLE_PLAN) for m in new):
            self.switches += 1
        self._plans = new

    def _ask(self, mix: Mapping[str, int]) -> dict[str, Plan]:
        if self.table is None:
            return {}
        try:
            plans = self.table.lookup(dict(mix)) or {}
        except Exception:  # a broken table must not take serving down: fall back to the whole GPU
            log.exception("plan table lookup failed for mix %s", dict(mix))
            return {}
        return {m: p for m, p in plans.items() if m in mix and isinstance(p, Plan)}


def sm_share(plan: Plan, sm_counts: Mapping[str, int]) -> float:
    """Mean SM count over the plan's stages: the SM weight of its GPU time (stage times are not known here)."""
    counts = [sm_counts[p] for p in plan.partitions]
    return math.fsum(counts) / len(counts)
