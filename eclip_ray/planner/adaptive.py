"""One mix's candidates, the selections measured at each load, and the guard made from them.

The code path the benchmark's ``eclip`` policy (``eclip_ray/bench/eclip_policy.py``) and
the GPU actor (``eclip_ray/actor/selection.py``) share: each supplies a ``trial``
function that runs the mix on a candidate for a window at the load it is choosing for,
and gets back a :class:`~eclip_ray.planner.guard.Guard` to consult for every request.

- ``choose(load, rates, trial)`` measures once per load (``selection.select``) and keeps
  the result; asking again for a load it has, or was given (``known``: from the plan
  table), measures nothing.
- Loads are ordered: a candidate whose measured p99 missed an SLO by more than
  ``MISS_MARGIN`` at a load no higher than this one (every model's rate at most this
  one's, closed loops alike) is not measured again.
- ``guard(load)`` starts at that load's choice; what it knows of each candidate's safety
  is its trial at the highest load it was measured at, and how many SMs each model has
  to itself there; every measured load is a level to move to when the arrivals change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from eclip_ray.errors import PlanError
from eclip_ray.graph.plan import Plan
from eclip_ray.planner.candidates import Candidate, CandidateSet, exclusive_sms
from eclip_ray.planner.guard import Guard, GuardSettings, Level, Switch
from eclip_ray.planner.placement import steering_for
from eclip_ray.planner.selection import Selection, SelectionSettings, Trial, select
from eclip_ray.planner.steering import Steering

log = logging.getLogger(__name__)

MISS_MARGIN = 0.2  # a p99 this far over its SLO is a miss that a higher load will not mend (noise aside)
Rates = Mapping[str, float | None]  # per instance, batches/s arriving; None: a closed loop


class Adaptive:
    """Measured selection and guarding for the mix of ``candidates``."""

    def __init__(
        self,
        candidates: CandidateSet,
        slo_ms: Mapping[str, float | None],
        objective: str = "throughput",
        selection: SelectionSettings | None = None,
        guard: GuardSettings | None = None,
        known: Mapping[str, tuple[Rates, Selection]] | None = None,
    ) -> None:
        unknown = sorted(set(slo_ms) - set(candidates.batch))
        if unknown:
            raise PlanError(f"SLOs given for {unknown}, which the candidate set does not run")
        self.candidates = candidates
        self.slo_ms = {n: slo_ms.get(n) for n in candidates.batch}
        self.objective = objective
        self.selection = selection or SelectionSettings()
        self.guard_settings = guard or GuardSettings()
        self.selections: dict[str, Selection] = {}
        self.rates: dict[str, dict[str, float | None]] = {}
        for load, (rates, sel) in (known or {}).items():
            self._keep(load, rates, sel)

    def plans(self) -> dict[str, set[Plan]]:
        """Every plan any candidate may issue, per instance: capture them all before the first trial."""
        return self.candidates.plans()

    def steering_of(self, name: str) -> Steering:
        """A fresh steering that runs candidate ``name``."""
        return steering_for(self.candidates[name], self.candidates.latency_critical)

    def choose(
        self,
        load: str,
        rates: Rates,
        trial: Callable[[Candidate, float], Trial],
        clock: Callable[[], float] = time.monotonic,
        exclude: Mapping[str, str] | None = None,
    ) -> Selection:
        """The selection at ``load`` (a key; ``rates`` its arrivals): measured now unless it is known.

        ``exclude`` adds candidates not to measure (e.g. whose plans failed to capture), with the reason.
        """
        if load in self.selections:
            return self.selections[load]
        open_rates = [r for r in rates.values() if r is not None and r > 0]
        sel = select(
            self.candidates,
            trial,
            self.slo_ms,
            self.objective,
            self.selection,
            rates_rps=open_rates,
            exclude={**self.excluded(rates), **(exclude or {})},
            load=load,
            clock=clock,
        )
        log.info(
            "selection at %s: %s (%s); %d measured in %.1f s, %d skipped",
            load,
            sel.chosen,
            sel.reason,
            len(sel.trials),
            sel.seconds,
            len(sel.skipped),
        )
        self._keep(load, rates, sel)
        return sel

    def _keep(self, load: str, rates: Rates, sel: Selection) -> None:
        if sel.chosen not in self.candidates:
            raise PlanError(f"the selection at {load} chose {sel.chosen!r}, which is not a candidate of this mix")
        self.selections[load] = sel
        self.rates[load] = dict(rates)

    def excluded(self, rates: Rates) -> dict[str, str]:
        """Candidates that missed an SLO by more than ``MISS_MARGIN`` at a measured load no higher than ``rates``."""
        out: dict[str, str] = {}
        for load, sel in self.selections.items():
            if not _at_most(self.rates[load], rates):
                continue
            for name, t in sel.trials.items():
                if t.violation(self.slo_ms) > MISS_MARGIN and name not in out:
                    out[name] = (
                        f"missed its SLO at the lower load {load} (worst p99 {1 + t.violation(self.slo_ms):.2f}x)"
                    )
        return out

    def guard(
        self,
        load: str,
        on_switch: Callable[[Switch], None] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> Guard:
        """A guard starting at the choice made at ``load``, over every candidate."""
        if load not in self.selections:
            raise PlanError(f"no selection was made at {load}; loads measured: {sorted(self.selections)}")
        sel = self.selections[load]
        cands = self.candidates
        steerings = {c.name: self.steering_of(c.name) for c in cands.candidates}
        levels = [Level(self.rates[k], s.chosen) for k, s in self.selections.items()]
        info = {"selection": sel.to_dict(), **(details or {})}
        return Guard(
            steerings,
            self.slo_ms,
            sel.chosen,
            self.safety(),
            protection={c.name: exclusive_sms(c, cands.layout) for c in cands.candidates},
            levels=levels,
            settings=self.guard_settings,
            on_switch=on_switch,
            details=info,
        )

    def safety(self) -> dict[str, dict[str, float]]:
        """Per candidate, its measured p99/SLO per model at the highest load it was measured at.

        The highest load tells candidates apart best: at a light load every protective plan
        keeps the SLOs with room to spare.
        """
        out: dict[str, dict[str, float]] = {}
        by_load = sorted(self.selections, key=lambda k: sum(r or 0.0 for r in self.rates[k].values()))
        for load in by_load:
            for name, t in self.selections[load].trials.items():
                out[name] = t.ratios(self.slo_ms)
        return out


def _at_most(lower: Rates, upper: Rates) -> bool:
    """Whether load ``lower`` offers no more than ``upper`` to every instance (a closed loop only equals one)."""
    for n, r in upper.items():
        q = lower.get(n)
        if (q is None) != (r is None):
            return False
        if q is not None and r is not None and q > r:
            return False
    return set(lower) == set(upper)
