"""eclip against the best baseline of each mix, and the issue's goal averaged over the mixes.

The baselines are every other policy. For throughput the best is the one
with the most inferences per second; for energy the one with the fewest
joules per inference (each among the baselines that ran). The goal: averaged
over the mixes, eclip at >= 1.2x the best baseline's throughput and <= 0.75x
its joules per inference, with every model of every mix within its SLO.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from statistics import fmean
from typing import Any

TARGET = "eclip"
GOAL_THROUGHPUT = 1.2
GOAL_ENERGY = 0.75


@dataclass(frozen=True)
class MixComparison:
    mix: str
    eclip: dict[str, Any] | None  # eclip's result when it ran, else None
    why_not: str  # why eclip has no result; empty when it has
    best_rps: tuple[str, float] | None  # (baseline, inferences/s)
    best_jpi: tuple[str, float] | None  # (baseline, joules/inference)
    throughput_ratio: float | None
    energy_ratio: float | None
    baseline_slo: dict[str, bool]  # baseline -> slo_met, for those that ran

    @property
    def slo_met(self) -> bool | None:
        return None if self.eclip is None else bool(self.eclip["slo_met"])

    def meets_goal(self) -> bool:
        return (
            self.throughput_ratio is not None
            and self.energy_ratio is not None
            and self.throughput_ratio >= GOAL_THROUGHPUT
            and self.energy_ratio <= GOAL_ENERGY
            and bool(self.slo_met)
        )


def compare_mix(mix: str, results: Mapping[str, Mapping[str, Any]]) -> MixComparison:
    """eclip against the best baselines among ``results`` (policy -> result) of one mix and scenario."""
    base = {p: r for p, r in results.items() if p != TARGET and r["status"] == "ok"}
    rps = {p: r["throughput_rps"] for p, r in base.items()}
    jpi = {p: r["joules_per_inference"] for p, r in base.items() if r["joules_per_inference"] is not None}
    best_rps = max(rps.items(), key=lambda kv: kv[1]) if rps else None
    best_jpi = min(jpi.items(), key=lambda kv: kv[1]) if jpi else None
    e = results.get(TARGET)
    ok = e is not None and e["status"] == "ok"
    why = "" if ok else ("not in this run" if e is None else f"{e['status']}: {e['reason']}")
    tr = e["throughput_rps"] / best_rps[1] if ok and best_rps else None  # type: ignore[index]
    er = e["joules_per_inference"] / best_jpi[1] if ok and best_jpi and e["joules_per_inference"] else None  # type: ignore[index]
    slo = {p: bool(r["slo_met"]) for p, r in base.items()}
    return MixComparison(mix, dict(e) if ok else None, why, best_rps, best_jpi, tr, er, slo)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Goal:
    mixes: tuple[str, ...]  # mixes where eclip and a baseline both ran
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
    """The issue's goal over ``comparisons`` (arithmetic means of the per-mix ratios)."""
    have = [c for c in comparisons if c.throughput_ratio is not None]
    energy = [c.energy_ratio for c in have if c.energy_ratio is not None]
    return Goal(
        mixes=tuple(c.mix for c in have),
        missing=tuple(c.mix for c in comparisons if c.throughput_ratio is None),
        mean_throughput_ratio=fmean(c.throughput_ratio for c in have) if have else None,  # type: ignore[misc]
        mean_energy_ratio=fmean(energy) if energy and len(energy) == len(have) else None,
        every_slo_met=bool(have) and all(c.slo_met for c in have),
    )
