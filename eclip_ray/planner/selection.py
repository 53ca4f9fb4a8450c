"""Measured selection: run the mix on each candidate for a short window and adopt the best that meets every SLO.

The cost model ranks the candidates (``candidates.py``); what the GPU measures decides.
``select`` calls ``trial(candidate, window_s)`` (the caller drives the mix at the load
it is choosing for: the bench harness at each load level, the GPU actor with synthetic
inputs at start) and keeps a :class:`Trial` of each: every model's p99, the throughput
and joules per inference where measured. Then:

- a candidate **meets its SLOs** when every model's measured p99 is within its SLO; it
  does so **with margin** when within ``(1 - margin)`` x its SLO (a short window's p99
  is noisy, and a longer run at the same load must still keep 99% within the SLO);
- among those with margin (else among those that meet them), the best by the objective
  wins (``throughput``: inferences/s; ``energy``: joules per inference; ``balanced``: the
  mean of the two, each relative to the best measured); candidates within ``tie`` of the
  best count as equal, and of those the one with the most SLO slack (the least p99/SLO
  over its models) wins, since under open-loop load every candidate that keeps up serves
  the same throughput (with every model in a closed loop there is no tie: throughput
  tells them apart);
- when none meets every SLO, the one with the least violation (the smallest largest
  p99/SLO) wins, and the selection says so (``met`` False).

Time: no trial starts that would pass ``budget_s`` (10 s by default, on the caller's
clock: windows plus the loop's warm-up). Candidates are measured in three rounds:

1. the core, which the cost model cannot be trusted to rank: its first candidate,
   multi-stream, every nested level (most protective first) and the disjoint split;
2. the per-batch variant of every nested candidate that met its SLOs, least confined
   first (one whose static plan missed them is skipped: going wide only adds pressure);
3. the rest in the cost model's order, until ``patience`` trials in a row did not
   change the best.

Candidates a caller knows cannot win (one that missed its SLO at a lower load misses it
at a higher one) are passed as ``exclude``.

Pure: no torch, CUDA or Ray; the trial function is the only contact with a device.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from eclip_ray.errors import PlanError
from eclip_ray.planner.candidates import Candidate, CandidateSet

log = logging.getLogger(__name__)

OBJECTIVES = ("throughput", "energy", "balanced")


@dataclass(frozen=True)
class SelectionSettings:
    """Knobs of one selection: window per candidate, the time budget and when to stop early."""

    window_s: float = 0.5  # measured window per candidate
    max_window_s: float = 2.0  # a window grows to see ``min_requests`` of the slowest model, up to this
    min_requests: int = 50
    budget_s: float = 10.0  # most wall time one selection spends in trials
    overhead_s: float = 0.3  # what a trial costs beyond its window (the loop's warm-up), for the budget check
    patience: int = 3  # stop after this many trials in a row that did not change the best
    tie: float = 0.02  # objective values within this fraction of the best are equal: the most slack wins
    margin: float = 0.1  # candidates with every p99 within (1 - margin) x its SLO are preferred

    def __post_init__(self) -> None:
        if (
            self.window_s <= 0
            or self.budget_s <= 0
            or self.patience < 1
            or not 0 <= self.tie < 1
            or not 0 <= self.margin < 1
        ):
            raise PlanError(f"selection settings out of range: {self}")

    def window(self, rates_rps: Sequence[float] = ()) -> float:
        """The window for arrival rates ``rates_rps`` (requests/s of the open-loop models)."""
        slowest = min((r for r in rates_rps if r > 0), default=None)
        if slowest is None:
            return self.window_s
        return min(self.max_window_s, max(self.window_s, self.min_requests / slowest))


@dataclass(frozen=True)
class Trial:
    """What one candidate did in one measured window."""

    candidate: str
    p99_ms: Mapping[str, float | None]  # None: the model completed nothing in the window
    throughput_rps: float  # inferences per second, every model
    joules_per_inference: float | None = None
    window_s: float = 0.0
    models_rps: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, candidate: str, metrics: Mapping[str, Any]) -> Trial:
        """From ``eclip_ray.bench.stats.window_metrics``' dict."""
        try:
            models = metrics.get("models") or {}
            return cls(
                candidate,
                dict(metrics["p99_ms"]),
                float(metrics["throughput_rps"]),
                metrics.get("joules_per_inference"),
                float(metrics.get("window_s") or 0.0),
                {n: float(m["throughput_rps"]) for n, m in models.items()},
            )
        except (KeyError, TypeError, ValueError) as e:
            raise PlanError(f"a trial of {candidate!r} returned no usable metrics ({e!r}): {dict(metrics)}") from e

    def ratios(self, slo_ms: Mapping[str, float | None]) -> dict[str, float]:
        """p99 / SLO of every model with an SLO (infinite for one that completed nothing)."""
        out = {}
        for n, slo in slo_ms.items():
            if slo is None:
                continue
            p99 = self.p99_ms.get(n)
            out[n] = math.inf if p99 is None else p99 / slo
        return out

    def violation(self, slo_ms: Mapping[str, float | None]) -> float:
        """The largest p99 / SLO - 1 (<= 0: every SLO met; -1 without SLOs)."""
        return max(self.ratios(slo_ms).values(), default=0.0) - 1

    def met(self, slo_ms: Mapping[str, float | None]) -> bool:
        return self.violation(slo_ms) <= 0 and all(v is not None for v in self.p99_ms.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "p99_ms": dict(self.p99_ms),
            "throughput_rps": self.throughput_rps,
            "joules_per_inference": self.joules_per_inference,
            "window_s": self.window_s,
            "models_rps": dict(self.models_rps),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Trial:
        return cls(
            str(d["candidate"]),
            dict(d["p99_ms"]),
            float(d["throughput_rps"]),
            d.get("joules_per_inference"),
            float(d.get("window_s", 0.0)),
            dict(d.get("models_rps") or {}),
        )


@dataclass(frozen=True)
class Selection:
    """The outcome of one selection: the adopted candidate, why, and every trial."""

    chosen: str
    reason: str
    met: bool  # whether the chosen candidate met every SLO
    trials: Mapping[str, Trial]
    skipped: Mapping[str, str] = field(default_factory=dict)  # candidate -> why it was not measured
    seconds: float = 0.0  # wall time spent in trials
    load: str = ""  # the load it was made for

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "reason": self.reason,
            "met": self.met,
            "trials": [t.to_dict() for t in self.trials.values()],
            "skipped": dict(self.skipped),
            "seconds": self.seconds,
            "load": self.load,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Selection:
        try:
            trials = [Trial.from_dict(t) for t in d["trials"]]
            return cls(
                str(d["chosen"]),
                str(d["reason"]),
                bool(d["met"]),
                {t.candidate: t for t in trials},
                dict(d.get("skipped") or {}),
                float(d.get("seconds", 0.0)),
                str(d.get("load", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise PlanError(f"malformed selection: {e!r}") from e


def scores(trials: Sequence[Trial], objective: str) -> dict[str, float]:
    """Objective value of each trial, lower is better, relative to the best of ``trials`` (1 = the best)."""
    if objective not in OBJECTIVES:
        raise PlanError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    top = max((t.throughput_rps for t in trials), default=0.0) or 1.0
    thr = {t.candidate: top / t.throughput_rps if t.throughput_rps > 0 else math.inf for t in trials}
    if objective == "throughput":
        return thr
    joules = [t.joules_per_inference for t in trials if t.joules_per_inference]
    if not joules:  # energy unmeasured here (the CPU backend): throughput decides
        return thr
    low = min(joules)
    energy = {t.candidate: t.joules_per_inference / low if t.joules_per_inference else math.inf for t in trials}
    if objective == "energy":
        return energy
    return {n: (thr[n] + energy[n]) / 2 for n in thr}


def best(
    trials: Mapping[str, Trial],
    slo_ms: Mapping[str, float | None],
    objective: str = "throughput",
    tie: float = 0.02,
    margin: float = 0.0,
) -> tuple[str, str, bool]:
    """The candidate to adopt among ``trials``: (name, reason, whether it meets every SLO)."""
    if not trials:
        raise PlanError("no candidate was measured")
    met = [t for t in trials.values() if t.met(slo_ms)]
    safe = [t for t in met if t.violation(slo_ms) <= -margin]
    if safe or met:
        met, tier = (safe, f"within {1 - margin:.0%} of them") if safe else (met, "within them")
        score = scores(met, objective)
        close = [t for t in met if score[t.candidate] <= 1 + tie]
        pick = min(close, key=lambda t: (t.violation(slo_ms), score[t.candidate]))
        slack = -pick.violation(slo_ms)
        why = (
            f"meets every SLO by measured p99 ({_worst(pick, slo_ms)}) with {pick.throughput_rps:.1f} inf/s"
            + (f", {pick.joules_per_inference:.4f} J/inf" if pick.joules_per_inference else "")
            + f"; best by {objective} of the {len(met)} of {len(trials)} measured {tier}"
        )
        if len(close) > 1:
            why += f" (the {len(close)} within {tie:.0%} of the best: the most slack, {slack:.0%})"
        return pick.candidate, why, True
    pick = min(trials.values(), key=lambda t: (t.violation(slo_ms), -t.throughput_rps))
    why = f"no measured candidate met every SLO; the least violation: {_worst(pick, slo_ms)}"
    return pick.candidate, why, False


def _worst(t: Trial, slo_ms: Mapping[str, float | None]) -> str:
    ratios = t.ratios(slo_ms)
    if not ratios:
        return "no SLOs"
    n = max(ratios, key=lambda k: ratios[k])
    p99 = t.p99_ms.get(n)
    return f"{n} p99 {'none' if p99 is None else f'{p99:.2f} ms'} of {slo_ms[n]:.2f} ms"


def _confined(c: Candidate) -> int:
    """SMs the confined instances of a structured candidate hold (fewer: more protective)."""
    return sum(v for v in c.sizes.values() if v is not None)


def core(cands: CandidateSet) -> list[Candidate]:
    """Round 1: the cost model's first, multi-stream, the nested levels (most protective first), disjoint."""
    ranked = list(cands.candidates)
    nested = sorted((c for c in ranked if c.kind == "nested"), key=_confined)
    picks = ranked[:1] + [c for c in ranked if c.kind == "multi-stream"] + nested
    picks += [c for c in ranked if c.kind == "disjoint"]
    return list({c.name: c for c in reversed(picks)}.values())[::-1]


def select(
    cands: CandidateSet,
    trial: Callable[[Candidate, float], Trial],
    slo_ms: Mapping[str, float | None],
    objective: str = "throughput",
    settings: SelectionSettings | None = None,
    *,
    rates_rps: Sequence[float] = (),
    exclude: Mapping[str, str] | None = None,
    load: str = "",
    clock: Callable[[], float] = time.monotonic,
) -> Selection:
    """Measure candidates of ``cands`` with ``trial(candidate, window_s)`` and adopt one (see the module doc).

    ``rates_rps`` are the open-loop models' arrival rates (the window grows to see enough of
    the slowest); ``exclude`` maps candidates not to measure to the reason.
    """
    s = settings or SelectionSettings()
    if not rates_rps:  # closed loops: throughput tells candidates apart, slack only breaks exact ties
        s = replace(s, tie=0.0)
    run = _Run(cands, trial, slo_ms, objective, s, dict(exclude or {}), clock)
    window = run.settings.window(rates_rps)
    first = core(cands)
    for c in first:
        run.measure(c, window)
    adaptive = [c for c in cands.candidates if c.adaptive]
    for c in sorted(adaptive, key=lambda c: -_confined(c)):
        static = run.trials.get(c.adapts or "")
        if static is None or not static.met(slo_ms):
            run.skip(c, f"its static plan ({c.adapts}) {'missed an SLO' if static else 'was not measured'}")
        else:
            run.measure(c, window)
    done = {c.name for c in first}
    rest = [c for c in cands.candidates if c.name not in done and not c.adaptive]
    since_change, leader = 0, run.leader()
    for c in rest:
        if since_change >= run.settings.patience:
            run.skip(c, f"{run.settings.patience} trials in a row did not change the best")
            continue
        if run.measure(c, window):
            now = run.leader()
            since_change = 0 if now != leader else since_change + 1
            leader = now
    if not run.trials:
        raise PlanError(f"no candidate could be measured: {run.skipped}")
    chosen, why, met = best(run.trials, slo_ms, objective, run.settings.tie, run.settings.margin)
    return Selection(chosen, why, met, run.trials, run.skipped, clock() - run.t0, load)


class _Run:
    """The trials of one selection so far, within its budget."""

    def __init__(self, cands, trial, slo_ms, objective, settings, exclude, clock) -> None:
        self.cands, self.trial, self.slo_ms, self.objective = cands, trial, slo_ms, objective
        self.settings, self.exclude, self.clock = settings, exclude, clock
        self.trials: dict[str, Trial] = {}
        self.skipped: dict[str, str] = {}
        self.t0 = clock()

    def skip(self, c: Candidate, why: str) -> None:
        self.skipped.setdefault(c.name, why)

    def measure(self, c: Candidate, window: float) -> bool:
        """Measure ``c`` unless excluded or past the budget; whether it was."""
        if c.name in self.trials or c.name in self.skipped:
            return False
        if c.name in self.exclude:
            self.skip(c, self.exclude[c.name])
            return False
        spent = self.clock() - self.t0
        if self.trials and spent + window + self.settings.overhead_s > self.settings.budget_s:
            self.skip(c, f"the selection's {self.settings.budget_s:g} s budget ({spent:.1f} s spent)")
            return False
        try:
            self.trials[c.name] = self.trial(c, window)
        except PlanError as e:  # this candidate cannot run here: say so, go on
            log.warning("the trial of %s could not run: %s", c.name, e)
            self.skip(c, f"the trial failed: {type(e).__name__}: {e}")
            return False
        except Exception as e:  # one candidate that fails (a device error) is not the end of the selection
            log.exception("the trial of %s failed", c.name)
            self.skip(c, f"the trial failed: {type(e).__name__}: {e}")
            return False
        return True

    def leader(self) -> str | None:
        if not self.trials:
            return None
        return best(self.trials, self.slo_ms, self.objective, self.settings.tie, self.settings.margin)[0]
