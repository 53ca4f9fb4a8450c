"""eclip against the best baseline of each mix, and the goals over the mixes.

Baselines are what users run today (``policies.is_baseline``: every built-in
policy but eclip; a user's fixed plan is not one). For every metric the best
baseline is the best among the baselines that **meet every SLO** (regime C: in
the window; regimes A and B: at some load of the search); where none does, the
report says so instead of comparing against a policy that breaks its SLOs.

- Regime C (the paper's table), the goal of issue 4: averaged over the mixes,
  eclip at >= 1.2x the best baseline's throughput and <= 0.75x its joules per
  inference, every model of every mix within its SLO.
- Regimes A and B, the goals of issue 15: A, eclip's SLO-goodput (the load
  scale) >= 1.5x the best baseline's, or eclip the only policy meeting the SLOs
  at all, with the batch job at >= 0.85x its multi-stream throughput and J/inf
  <= 0.85x the best baseline's; B, SLO-goodput >= 1.3x the best baseline's on
  every mix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from eclip_ray.bench.policies import TARGET, is_baseline

GOAL_THROUGHPUT = 1.2
GOAL_ENERGY = 0.75
GOAL_GOODPUT = {"A": 1.5, "B": 1.3}
GOAL_BATCH_KEPT = 0.85  # regime A: the batch job's throughput / its multi-stream throughput
GOAL_ENERGY_A = 0.85


@dataclass(frozen=True)
class MixComparison:
    mix: str
    eclip: dict[str, Any] | None  # eclip's result when it ran, else None
    why_not: str  # why eclip has no result; empty when it has
    best_rps: tuple[str, float] | None  # (baseline, inferences/s), among those meeting every SLO
    best_jpi: tuple[str, float] | None  # (baseline, joules/inference), among those meeting every SLO
    throughput_ratio: float | None
    energy_ratio: float | None
    baseline_slo: dict[str, bool]  # baseline -> slo_met, for those that ran
    best_norm: tuple[str, float] | None = None  # (baseline, normalised throughput)
    norm_ratio: float | None = None

    @property
    def slo_met(self) -> bool | None:
        return None if self.eclip is None else bool(self.eclip["slo_met"])

    @property
    def none_meets(self) -> bool:
        """Baselines ran, and not one met every SLO."""
        return bool(self.baseline_slo) and not any(self.baseline_slo.values())

    def meets_goal(self) -> bool:
        return (
            self.throughput_ratio is not None
            and self.energy_ratio is not None
            and self.throughput_ratio >= GOAL_THROUGHPUT
            and self.energy_ratio <= GOAL_ENERGY
            and bool(self.slo_met)
        )


def _best(values: Mapping[str, float | None], higher: bool) -> tuple[str, float] | None:
    have = {p: v for p, v in values.items() if v is not None}
    if not have:
        return None
    return (max if higher else min)(have.items(), key=lambda kv: kv[1])


def _ratio(mine: float | None, best: tuple[str, float] | None) -> float | None:
    return mine / best[1] if mine is not None and best is not None and best[1] else None


def _baselines(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {p: r for p, r in results.items() if is_baseline(p) and r["status"] == "ok"}


def _target(results: Mapping[str, Mapping[str, Any]]) -> tuple[dict | None, str]:
    e = results.get(TARGET)
    if e is not None and e["status"] == "ok":
        return dict(e), ""
    return None, "not in this run" if e is None else f"{e['status']}: {e['reason']}"


def compare_mix(mix: str, results: Mapping[str, Mapping[str, Any]]) -> MixComparison:
    """Regime C: eclip against the best SLO-meeting baselines among ``results`` (policy -> result)."""
    base = _baselines(results)
    meeting = {p: r for p, r in base.items() if r["slo_met"]}
    best_rps = _best({p: r["throughput_rps"] for p, r in meeting.items()}, True)
    best_jpi = _best({p: r["joules_per_inference"] for p, r in meeting.items()}, False)
    best_norm = _best({p: r.get("normalised_throughput") for p, r in meeting.items()}, True)
    e, why = _target(results)
    g = e or {}
    return MixComparison(
        mix,
        e,
        why,
        best_rps,
        best_jpi,
        _ratio(g.get("throughput_rps"), best_rps),
        _ratio(g.get("joules_per_inference"), best_jpi),
        {p: bool(r["slo_met"]) for p, r in base.items()},
        best_norm,
        _ratio(g.get("normalised_throughput"), best_norm),
    )


@dataclass(frozen=True)
class Goal:
    mixes: tuple[str, ...]  # mixes where eclip and an SLO-meeting baseline both ran
    missing: tuple[str, ...]  # mixes without that comparison
    mean_throughput_ratio: float | None
    mean_energy_ratio: float | None
    every_slo_met: bool

    @property
    def met(self) -> bool:
        return (
            not self.missing
            and self.mean_throughput_ratio is not None
            and self.mean_energy_ratio is not None
            and self.mean_throughput_ratio >= GOAL_THROUGHPUT
            and self.mean_energy_ratio <= GOAL_ENERGY
            and self.every_slo_met
        )


def goal(comparisons: list[MixComparison]) -> Goal:
    """Regime C's goal over ``comparisons`` (arithmetic means of the per-mix ratios)."""
    have = [c for c in comparisons if c.throughput_ratio is not None]
    energy = [c.energy_ratio for c in have if c.energy_ratio is not None]
    return Goal(
        mixes=tuple(c.mix for c in have),
        missing=tuple(c.mix for c in comparisons if c.throughput_ratio is None),
        mean_throughput_ratio=fmean(c.throughput_ratio for c in have) if have else None,  # type: ignore[misc]
        mean_energy_ratio=fmean(energy) if energy and len(energy) == len(have) else None,
        every_slo_met=bool(have) and all(c.slo_met for c in have),
    )


# -- regimes A and B ---------------------------------------------------------------------------


def batch_rps(r: Mapping[str, Any], roles: Mapping[str, str]) -> float | None:
    """The batch jobs' inferences per second in a result (None: the mix has none)."""
    jobs = [n for n, role in roles.items() if role == "batch"]
    return sum(r["models"][n]["throughput_rps"] for n in jobs) if jobs else None


@dataclass(frozen=True)
class SearchComparison:
    """One mix in regime A or B: eclip's SLO-goodput against the best baseline's, metric by metric."""

    mix: str
    regime: str
    eclip: dict[str, Any] | None
    why_not: str
    meeting: tuple[str, ...]  # baselines meeting the SLOs at some load
    ran: tuple[str, ...]  # baselines with a result
    best: dict[str, tuple[str, float] | None]  # metric -> (baseline, value)
    ratio: dict[str, float | None]  # metric -> eclip / best
    batch_vs_multi_stream: float | None  # regime A: eclip's batch throughput / multi-stream's

    @property
    def eclip_meets(self) -> bool:
        return self.eclip is not None and self.eclip.get("goodput_scale") is not None

    @property
    def only_eclip(self) -> bool:
        return self.eclip_meets and not self.meeting

    def verdict(self) -> tuple[bool | None, list[str]]:
        """(goal met, what misses it); None where there is nothing to judge."""
        if self.eclip is None:
            return None, [f"no eclip result ({self.why_not})"]
        if not self.eclip_meets:
            return False, ["eclip meets the SLOs at no load tried"]
        misses = []
        target = GOAL_GOODPUT[self.regime]
        r = self.ratio.get("goodput_scale")
        if not self.only_eclip and (r is None or r < target):
            misses.append(f"SLO-goodput {_x(r)} < {target}x")
        if self.regime == "A":
            kept = self.batch_vs_multi_stream
            if kept is not None and kept < GOAL_BATCH_KEPT:
                misses.append(f"batch job at {kept:.2f}x multi-stream's < {GOAL_BATCH_KEPT}x")
            e = self.ratio.get("joules_per_inference")
            if e is not None and e > GOAL_ENERGY_A:
                misses.append(f"J/inf {e:.2f}x > {GOAL_ENERGY_A}x")
        return not misses, misses


def _x(r: float | None) -> str:
    return "n/a" if r is None else f"{r:.2f}x"


SEARCH_METRICS = {  # metric -> higher is better
    "goodput_scale": True,
    "goodput_rps": True,
    "normalised_throughput": True,
    "joules_per_inference": False,
    "batch_rps": True,
}


def _value(r: Mapping[str, Any], metric: str, roles: Mapping[str, str]) -> float | None:
    return batch_rps(r, roles) if metric == "batch_rps" else r.get(metric)


def compare_search(
    mix: str, regime: str, results: Mapping[str, Mapping[str, Any]], roles: Mapping[str, str]
) -> SearchComparison:
    """Regime A or B: eclip against the best baselines that meet the SLOs at some load."""
    base = _baselines(results)
    meeting = {p: r for p, r in base.items() if r.get("goodput_scale") is not None}
    best = {m: _best({p: _value(r, m, roles) for p, r in meeting.items()}, hi) for m, hi in SEARCH_METRICS.items()}
    e, why = _target(results)
    meets = e is not None and e.get("goodput_scale") is not None
    ratio = {m: _ratio(_value(e, m, roles), best[m]) if meets else None for m in SEARCH_METRICS}  # type: ignore[arg-type]
    ms = base.get("multi-stream")
    kept = None
    if meets and ms is not None and regime == "A":
        mine, theirs = batch_rps(e, roles), batch_rps(ms, roles)  # type: ignore[arg-type]
        kept = mine / theirs if mine is not None and theirs else None
    return SearchComparison(mix, regime, e, why, tuple(meeting), tuple(base), best, ratio, kept)


def search_goal(comparisons: Sequence[SearchComparison]) -> tuple[bool, list[str]]:
    """Whether every mix meets its regime's goal; the mixes that do not, and why."""
    out = []
    for c in comparisons:
        ok, misses = c.verdict()
        if not ok:
            out.append(f"{c.mix}: {'; '.join(misses)}")
    return bool(comparisons) and not out, out
