"""Running one policy of one mix: a session set up once, its regime-C windows and its regime-A/B searches.

Every result is recorded (and the part file rewritten) as soon as it exists;
a policy that fails records its error and the others still run. Time is
shared fairly: each job (a policy of a mix, or the alone searches of a mix)
gets an equal share of what is left of the run's deadline when it starts, so
time one job does not need goes to the later ones, and a job that cannot
finish in its share stops searching and says so. eclip's jobs weigh three
(``WEIGHTS``): it measures its candidates before every window.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eclip_ray.bench import packing, policies, regimes, results, stats
from eclip_ray.bench.config import BenchConfig
from eclip_ray.bench.driver import Window
from eclip_ray.bench.load import Load
from eclip_ray.bench.session import Session

# Seconds a policy needs to set up beyond its windows (models, capture; MPS: starting its processes).
OVERHEAD_S = {"mps": 30.0, "mps-equal": 30.0}
DEFAULT_OVERHEAD_S = 5.0


@dataclass
class Case:
    """One mix at one batch-size setting and SLO factor, while it runs."""

    label: str
    models: tuple[str, ...]
    instances: list[str]
    batch: dict[str, int]
    slo_factor: float
    inputs: policies.MixInputs
    facts: regimes.MixFacts
    work: dict[str, float] | None  # SM-ms per inference, for packing efficiency
    scenarios: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> scenario of the part file
    loads: dict[str, Load] = field(default_factory=dict)  # regime C: scenario label -> load
    regimes: dict[str, str] = field(default_factory=dict)  # regime A/B -> scenario label

    def alone_needed(self) -> list[str]:
        """Instances whose alone search some regime scenario still lacks."""
        want = {n for r in self.regimes for n in self.facts.open_lanes(r)}
        have = {n for r, lbl in self.regimes.items() for n in self.scenarios[lbl].get("alone", {})}
        return [n for n in self.instances if n in want and n not in have]

    def alone_rps(self, regime: str) -> dict[str, float | None]:
        """Each instance's alone SLO-goodput (None: it met its SLO at no rate); absent where unknown."""
        found = self.scenarios[self.regimes[regime]].get("alone", {})
        return {n: a["rate_rps"] for n, a in found.items() if "rate_rps" in a}


# Shares of the run's time: eclip measures its candidates at every load level (its selection, up to
# ``--eclip-selection-s`` per level) before each window, so its searches take about three times a static one's.
WEIGHTS = {"eclip": 3.0}


class Budget:
    """The run's deadline, shared among the jobs still to run in proportion to their weights."""

    def __init__(self, deadline: float | None, weight: float) -> None:
        self.deadline, self.weight = deadline, max(1.0, weight)

    def job(self, weight: float = 1.0) -> float | None:
        """The deadline of a job of ``weight`` starting now: its share of what is left."""
        if self.deadline is None:
            return None
        share = (self.deadline - time.time()) * min(1.0, weight / self.weight)
        self.weight = max(1.0, self.weight - weight)
        return time.time() + share


def left(until: float | None) -> float:
    return float("inf") if until is None else until - time.time()


def split(until: float | None, parts: int) -> float | None:
    """The end of the first of ``parts`` equal shares of the time until ``until``."""
    return None if until is None else time.time() + left(until) / max(1, parts)


def record(case: Case, label: str, policy: str, result: dict, save: Callable[[], None]) -> None:
    """Keep ``result`` in its scenario, rewrite the part file and print a line of progress."""
    case.scenarios[label]["policies"][policy] = result
    save()
    print(progress(case.label, label, policy, result), file=sys.stderr, flush=True)


def progress(mix: str, label: str, policy: str, r: dict) -> str:
    head = f"{mix} {label} {policy}:"
    if r["status"] != "ok":
        return f"{head} {r['status']} ({r['reason']})"
    energy = f"{r['joules_per_inference']:.4f} J/inf" if r["joules_per_inference"] is not None else "energy n/a"
    p99 = ", ".join(f"{n} {v:.2f}" if v is not None else f"{n} n/a" for n, v in r["p99_ms"].items())
    head += f" {r['throughput_rps']:.1f} inf/s, {energy}, p99 ms {p99}, SLO {'met' if r['slo_met'] else 'MISSED'}"
    if "goodput_scale" in r:
        best = r["goodput_scale"]
        head += f"; SLO-goodput scale {best:.3g}" if best is not None else "; meets the SLO at no scale tried"
    return head


def done(result: Mapping[str, Any] | None) -> bool:
    """Whether a resumed run may keep ``result``: measured or skipped, and any search finished."""
    if result is None or result.get("status") not in results.DONE:
        return False
    return result.get("search", {}).get("complete", True)


def measured(setup: policies.Setup, w: Window, case: Case, percentile_pct: float) -> dict:
    """The result of a regime-C window: metrics, packing efficiency, and the policy's set-up."""
    m = stats.window_metrics(w, case.inputs.slo_ms, percentile_pct, isolated_rps=case.facts.isolated_rps)
    if m["inferences"] == 0:
        raise RuntimeError(f"no request completed in the {w.seconds:.2f} s window")
    out: dict[str, Any] = {"status": "ok", "reason": "", **m, "setup": setup.describe()}
    if case.work is None:
        out.update(packing_efficiency=None, sm_time_bound_rps=None, packing_note=case.inputs.profile_note)
        return out
    rps = {n: v["throughput_rps"] for n, v in m["models"].items()}
    eff, bound = packing.efficiency(case.work, rps, case.inputs.geometry.sm_count)
    out.update(packing_efficiency=eff, sm_time_bound_rps=bound, packing_note="")
    return out


def todo(case: Case, policy: str) -> list[str]:
    """The scenario labels of ``case`` that still lack a result of ``policy``."""
    return [lbl for lbl, sc in case.scenarios.items() if not done(sc["policies"].get(policy))]


def not_run(case: Case, policy: str, labels: Sequence[str], status: str, reason: str, setup=None, save=None) -> None:
    for lbl in labels:
        record(case, lbl, policy, results.not_measured(status, reason, setup.describe() if setup else None), save)


def run_policy(
    cfg: BenchConfig,
    case: Case,
    setup: policies.Setup,
    open_session: Callable[[], Session] | Session,
    until: float | None,
    save: Callable[[], None],
) -> None:
    """Every scenario of ``case`` that ``setup``'s policy still lacks, in one session, by ``until``.

    ``open_session`` makes the session (closed at the end), or is one already open (left open).
    """
    labels = todo(case, setup.policy)
    if not labels:
        return
    opened = not callable(open_session)
    need = (0.0 if opened else OVERHEAD_S.get(setup.policy, DEFAULT_OVERHEAD_S)) + cfg.search.trial_s()
    if left(until) < need:
        reason = f"the run's deadline: {left(until):.0f} s left for this policy, about {need:.0f} s needed"
        return not_run(case, setup.policy, labels, "not-run", reason, setup, save)
    try:
        session = open_session if opened else open_session()  # type: ignore[operator]
    except Exception as e:  # the runtime or a model failed to load: this policy's scenarios fail with it
        traceback.print_exc()
        return not_run(case, setup.policy, labels, "error", repr(e), setup, save)
    try:
        _scenarios(cfg, case, setup, session, labels, until, save)
    finally:
        if not opened:
            session.close()


def _scenarios(cfg, case: Case, setup, session: Session, labels: list[str], until, save) -> None:
    regime_of = {lbl: r for r, lbl in case.regimes.items()}
    for i, lbl in enumerate(labels):
        share = split(until, len(labels) - i)
        try:
            if lbl in regime_of:
                result = _search(cfg, case, setup, session, regime_of[lbl], share)
            elif left(share) < cfg.warmup_s + cfg.window_s:
                result = results.not_measured("not-run", "the run's deadline", setup.describe())
            else:
                result = _closed_window(cfg, case, setup, session, case.loads[lbl])
            if result["status"] == "ok":
                result["setup"].update(session.describe())
        except Exception as e:
            traceback.print_exc()
            result = results.not_measured("error", repr(e), setup.describe())
        record(case, lbl, setup.policy, result, save)


def _closed_window(cfg: BenchConfig, case: Case, setup, session: Session, load: Load) -> dict:
    """Regime C: one window under ``load`` (an adaptive policy steers it after its trials at that load)."""
    steer = regimes.Steerer(setup, session, case.facts, cfg.search, cfg.seed)
    steering = steer(load, case.instances)
    w = session.window(load, warmup_s=cfg.warmup_s, window_s=cfg.window_s, seed=cfg.seed, steering=steering)
    result = measured(setup, w, case, cfg.slo_percentile)
    if steering is not None:
        result["selection_s"] = round(steer.selection_s, 3)
        if hasattr(steering, "describe"):
            result["steering"] = steering.describe()
    return result


def _search(cfg, case: Case, setup, session: Session, regime: str, until) -> dict:
    why = case.facts.why_not(regime)
    if why:
        return results.not_measured("skipped", why, setup.describe())
    hi, why = regimes.scale_bound(regime, case.facts, case.alone_rps(regime))
    if not hi:
        return results.not_measured("skipped", f"no load can meet the SLOs: {why}", setup.describe())
    s = cfg.search
    return regimes.goodput(
        session,
        setup,
        regime,
        case.facts,
        hi,
        s,
        seed=cfg.seed,
        budget=lambda: left(until) >= s.trial_s() + s.warmup_s + s.final_window_s,
        final_budget=lambda: left(until) >= s.warmup_s + s.final_window_s,
    )


def run_alone(cfg: BenchConfig, case: Case, session: Session, until: float | None, save: Callable[[], None]) -> None:
    """Each instance alone under its own arrivals, searched once and kept in every regime scenario of the case."""
    names = case.alone_needed()
    for i, name in enumerate(names):
        share = split(until, len(names) - i)
        try:
            a = regimes.alone(
                session,
                name,
                case.facts,
                cfg.search,
                seed=cfg.seed,
                budget=lambda s=share: left(s) >= cfg.search.trial_s(),
            )
        except Exception as e:  # the regimes' brackets fall back to the isolated capacity
            traceback.print_exc()
            a = {"error": repr(e)}
        for regime, lbl in case.regimes.items():
            if name in case.facts.open_lanes(regime):
                case.scenarios[lbl].setdefault("alone", {})[name] = a
        save()
        rate = a.get("rate_rps", "unknown")
        text = f"{rate:.1f} req/s" if isinstance(rate, float) else "at no rate tried" if rate is None else "unknown"
        print(f"{case.label} alone {name}: SLO-goodput {text}", file=sys.stderr, flush=True)
