"""The benchmark's ``eclip`` policy: candidates measured at every load level, then guarded.

The harness captures every plan of :meth:`EclipPolicy.plans` on the policy's pool
(``Setup.layout``) before any window, then for each load level calls
:meth:`EclipPolicy.steering` with a ``trial(what, window_s)`` that runs the mix at that
load for ``window_s`` under ``what`` (a plan per instance, or a steering) and returns
``eclip_ray.bench.stats.window_metrics``' dict. The policy measures its candidates
through it (``eclip_ray.planner.adaptive``, the same code the GPU actor runs) and returns
the guard that the measured window then runs under: per-batch placement inside the
adopted candidate, and moves to a safer one on a breach. ``describe()`` of the returned
steering holds the selection, every trial, and the switches made.

Pure (no torch): the harness is the only contact with the device.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from eclip_ray.graph.plan import Plan
from eclip_ray.planner.adaptive import Adaptive
from eclip_ray.planner.candidates import DEFAULT_K, Candidate, generate
from eclip_ray.planner.corun import lane_rates
from eclip_ray.planner.selection import SelectionSettings, Trial
from eclip_ray.planner.steering import Steering

Trialer = Callable[[Any, float], Mapping[str, Any]]  # trial(what, window_s) -> window_metrics dict


def load_rates(load: Any, instances: Sequence[str]) -> tuple[str, dict[str, float | None]]:
    """A load level's key and its arrivals per instance (None: a closed loop).

    ``load`` is the harness's load (anything with ``to_dict()``, or a mapping): ``{"kind":
    "closed"}`` or ``{"kind": ..., "rates_rps": [...]}`` with one rate for all instances or one
    each (a rate of None or <= 0: that instance runs closed), as ``eclip_ray.bench.load.Load``.
    """
    data = load.to_dict() if hasattr(load, "to_dict") else dict(load)
    rates = lane_rates(data, len(instances))
    return json.dumps(data, sort_keys=True), dict(zip(instances, rates, strict=True))


class EclipPolicy:
    """The adaptive policy object of the ``eclip`` set-up (``plans()`` and ``steering(load, trial)``)."""

    def __init__(self, adaptive: Adaptive) -> None:
        self.adaptive = adaptive
        self.instances = list(adaptive.candidates.batch)

    def plans(self) -> dict[str, set[Plan]]:
        return self.adaptive.plans()

    def steering(self, load: Any, trial: Trialer) -> Steering:
        """Measure the candidates at ``load`` through ``trial`` (once per load) and return the guard to run."""
        key, rates = load_rates(load, self.instances)

        def run(c: Candidate, window_s: float) -> Trial:
            what: Any = self.adaptive.steering_of(c.name) if c.adaptive else dict(c.plans)
            return Trial.of(c.name, trial(what, window_s))

        self.adaptive.choose(key, rates, run)
        return self.adaptive.guard(key)

    def describe(self) -> dict[str, Any]:
        """The candidate set and every selection made so far."""
        cands = self.adaptive.candidates
        return {
            "candidates": [c.to_dict() for c in cands.candidates],
            "pool": cands.layout.to_dict(),
            "pool_streams": cands.streams(),
            "latency_critical": sorted(cands.latency_critical),
            "notes": list(cands.notes),
            "selections": {k: s.to_dict() for k, s in self.adaptive.selections.items()},
        }


def build(mix: Any, k: int = DEFAULT_K, selection: SelectionSettings | None = None) -> tuple[EclipPolicy, dict]:
    """The policy of ``mix`` (``policies.MixInputs``) and the set-up's details."""
    cands = generate(
        mix.profiles,
        mix.geometry,
        dict(mix.slo_ms),
        mix.objective,
        latency_critical=mix.latency_critical,
        power=mix.power,
        power_note=mix.power_note,
        settings=mix.planner,
        k=k,
    )
    policy = EclipPolicy(Adaptive(cands, dict(mix.slo_ms), mix.objective, selection))
    details = {
        "objective": mix.objective,
        "adaptive": True,
        "candidates": [c.name for c in cands.candidates],
        "latency_critical": sorted(cands.latency_critical),
        "pool_streams": cands.streams(),
        "notes": list(cands.notes),
        "plans_note": "the cost model's first candidate; the policy chooses per load (see its steering's describe)",
    }
    return policy, details
