"""Regimes A and B: a policy's SLO-goodput under open-loop load, found by a load search.

- **A, a batch job beside a service.** The batch instances run in closed loop,
  flat out; the latency-critical ones get Poisson arrivals at ``scale`` times
  their base rates. A scale passes when every latency-critical instance keeps
  ``slo_percentile`` % of its requests within its SLO and loses none (no request
  still waiting past its SLO when the window closes); the result is the largest
  such scale, with the batch job's throughput there.
- **B, services only.** Every instance gets Poisson arrivals at ``scale`` times
  its base rate; a scale passes when every instance meets its SLO and loses
  nothing. The largest is the mix's SLO-goodput.

Base rates are shares of each instance's isolated throughput (``mixes.py``).
Each instance alone under the same arrivals (the same seeded Poisson process:
same seed, same place in the mix) gets its own search first, in requests per
second: that is what its SLO allows at all, and it brackets the mix's search
from above. The search (``search.py``) runs short windows without energy; the
answer is then measured again over ``final_window_s`` with energy, and that
window's metrics are the policy's result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eclip_ray.bench import search, stats
from eclip_ray.bench.load import Load
from eclip_ray.bench.policies import Setup
from eclip_ray.bench.session import Session

REGIMES = ("A", "B")
BOUND_MARGIN = 1.1  # the mix's bracket tops each instance's alone SLO-goodput by this much (its search's resolution)
TRIAL_KEYS = ("p99_ms", "slo_attainment", "slo_met", "unserved", "throughput_rps", "goodput_rps")


@dataclass(frozen=True)
class MixFacts:
    """What the regimes need to know of a mix: roles, batch sizes, SLOs, isolated throughput and base rates."""

    instances: tuple[str, ...]
    roles: Mapping[str, str]
    batch: Mapping[str, int]
    slo_ms: Mapping[str, float]
    isolated_rps: Mapping[str, float]  # inferences/s of each instance alone, one request in flight
    base_rps: Mapping[str, float]  # requests/s of each instance at scale 1
    inflight: int = 1  # the batch job's requests in flight (regime A)
    max_inflight: int = 32  # open loop: requests queued on the GPU per instance
    slo_percentile: float = 99.0

    def capacity_rps(self, name: str) -> float:
        """Requests per second the instance completes alone, back to back."""
        return self.isolated_rps[name] / self.batch[name]

    def open_lanes(self, regime: str) -> list[str]:
        """The instances with arrivals (and an SLO to keep) in ``regime``."""
        check(regime)
        if regime == "B":
            return list(self.instances)
        return [n for n in self.instances if self.roles.get(n, "latency") == "latency"]

    def why_not(self, regime: str) -> str:
        """Why ``regime`` cannot run on this mix; empty when it can."""
        if regime == "A":
            if not any(self.roles.get(n) == "batch" for n in self.instances):
                return "regime A needs a batch job in the mix (an instance with role batch)"
            if not self.open_lanes("A"):
                return "regime A needs a latency-critical instance in the mix"
        return ""

    def load_at(self, regime: str, scale: float) -> Load:
        lanes = set(self.open_lanes(regime))
        rates = [scale * self.base_rps[n] if n in lanes else None for n in self.instances]
        return Load.mixed(rates, inflight=self.inflight, max_inflight=self.max_inflight)


def check(regime: str) -> None:
    if regime not in REGIMES:
        raise ValueError(f"regime {regime!r}; choose one of {REGIMES} (regime C is the closed-loop table)")


def _passes(m: Mapping[str, Any], lanes: Sequence[str]) -> bool:
    """Every checked SLO kept, and nothing lost: no request left waiting past its SLO when the window closed."""
    return bool(m["slo_met"]) and all(m["models"][n]["late_unfinished"] == 0 for n in lanes)


def _trial_record(m: Mapping[str, Any]) -> dict[str, Any]:
    """What a search keeps of one trial's window (the final window keeps everything)."""
    per_model = ("throughput_rps", "requests", "arrivals", "unserved", "late_unfinished")
    return {
        **{k: m[k] for k in TRIAL_KEYS},
        "models": {n: {k: v[k] for k in per_model} for n, v in m["models"].items()},
    }


def alone(
    session: Session,
    name: str,
    facts: MixFacts,
    settings: search.Settings,
    *,
    seed: int,
    budget: Callable[[], bool],
) -> dict[str, Any]:
    """The largest Poisson rate at which instance ``name`` alone on the whole GPU meets its SLO."""
    slo = {name: facts.slo_ms[name]}

    def trial(rate: float) -> search.Trial:
        load = Load("poisson", rates_rps=(rate,), max_inflight=facts.max_inflight)
        w = session.window(
            load, warmup_s=settings.warmup_s, window_s=settings.window_s, seed=seed, energy=False, only=[name]
        )
        m = stats.window_metrics(w, slo, facts.slo_percentile)
        return search.Trial(rate, _passes(m, [name]), m)

    cap = facts.capacity_rps(name)
    r = search.bisect(trial, cap, settings, budget)
    best = r.best_trial()
    known = {"rate_rps": r.best} if r.complete else {}  # a search cut short says nothing about the edge
    return {
        **known,
        "best_rps": r.best,
        "capacity_rps": cap,
        "batch_size": facts.batch[name],
        "slo_ms": facts.slo_ms[name],
        "p99_ms": best.metrics["p99_ms"][name] if best else None,
        "attainment": best.metrics["slo_attainment"][name] if best else None,
        "search": _search_record(r),
    }


def scale_bound(regime: str, facts: MixFacts, alone_rps: Mapping[str, float | None]) -> tuple[float, str]:
    """The top of the mix's bracket: the smallest scale at which an instance passes its own alone SLO-goodput
    (or its capacity, where that is unknown); 0 with the reason when one meets its SLO at no rate alone."""
    bounds = {}
    for n in facts.open_lanes(regime):
        if n in alone_rps and alone_rps[n] is None:
            return 0.0, f"{n} alone meets its {facts.slo_ms[n]:.3g} ms SLO at no rate tried"
        rate = alone_rps.get(n)
        top = facts.capacity_rps(n) if rate is None else min(facts.capacity_rps(n), BOUND_MARGIN * rate)
        bounds[n] = top / facts.base_rps[n]
    return min(bounds.values()), ""


class Steerer:
    """An adaptive policy's steering per load level, chosen once per level; the time its trials took."""

    def __init__(self, setup: Setup, session: Session, facts: MixFacts, settings: search.Settings, seed: int):
        self.setup, self.session, self.facts, self.settings, self.seed = setup, session, facts, settings, seed
        self.chosen: dict[Load, Any] = {}
        self.selection_s = 0.0

    def __call__(self, load: Load, checked: Sequence[str]):
        """The steering of ``load``'s level (chosen by the policy's trials the first time); None: static."""
        if self.setup.adaptive is None:
            return None
        if load not in self.chosen:

            def trial(what: Any, window_s: float) -> dict:
                given = {"plans": what} if isinstance(what, Mapping) else {"steering": what}
                w = self.session.window(
                    load, warmup_s=self.settings.warmup_s, window_s=window_s, seed=self.seed, energy=False, **given
                )
                f = self.facts
                return stats.window_metrics(w, f.slo_ms, f.slo_percentile, checked=checked, isolated_rps=f.isolated_rps)

            t0 = time.perf_counter()
            self.chosen[load] = self.setup.adaptive.steering(load, trial)
            self.selection_s += time.perf_counter() - t0
        return self.chosen[load]


def goodput(
    session: Session,
    setup: Setup,
    regime: str,
    facts: MixFacts,
    hi: float,
    settings: search.Settings,
    *,
    seed: int,
    budget: Callable[[], bool],
    final_budget: Callable[[], bool],
) -> dict[str, Any]:
    """Search the policy's SLO-goodput in ``regime`` below scale ``hi``; the result of the final window."""
    lanes = facts.open_lanes(regime)
    steer = Steerer(setup, session, facts, settings, seed)

    def run(scale: float, window_s: float, energy: bool) -> dict:
        load = facts.load_at(regime, scale)
        steering = steer(load, lanes)
        w = session.window(
            load, warmup_s=settings.warmup_s, window_s=window_s, seed=seed, energy=energy, steering=steering
        )
        m = stats.window_metrics(w, facts.slo_ms, facts.slo_percentile, checked=lanes, isolated_rps=facts.isolated_rps)
        if steering is not None and hasattr(steering, "describe"):
            m["steering"] = steering.describe()
        return m

    def trial(scale: float) -> search.Trial:
        m = run(scale, settings.window_s, False)
        return search.Trial(scale, _passes(m, lanes), m)

    r = search.bisect(trial, hi, settings, budget)
    if r.best is not None and final_budget():
        scale, final, where = r.best, run(r.best, settings.final_window_s, True), "final"
    else:  # nothing passed, or no time left for the final window: the trial it has stands in
        t = r.best_trial() or r.lowest_trial()
        if t is None:
            raise RuntimeError(f"no trial ran ({r.note})")
        scale, final, where = t.scale, t.metrics, "trial"
    if final["inferences"] == 0:
        raise RuntimeError(f"no request completed in the {final['window_s']:.2f} s window at scale {scale:.3g}")
    out: dict[str, Any] = {"status": "ok", "reason": "", **final, "regime": regime}
    out.update(
        goodput_scale=r.best,
        measured_scale=scale,
        measured_in=where,
        offered_rps={n: scale * facts.base_rps[n] for n in lanes},
        search=_search_record(r),
        selection_s=round(steer.selection_s, 3) if setup.adaptive is not None else None,
        setup=setup.describe(),
    )
    return out


def _search_record(r: search.Result) -> dict[str, Any]:
    return {
        "bracket": list(r.bracket),
        "best": r.best,
        "complete": r.complete,
        "note": r.note,
        "trials": [
            {"scale": t.scale, "passed": t.passed, **_trial_record(t.metrics), **_steering(t.metrics)} for t in r.trials
        ],
    }


def _steering(m: Mapping[str, Any]) -> dict[str, Any]:
    return {"steering": m["steering"]} if "steering" in m else {}
