"""The GPU actor's adaptive plans: its models' candidates, measured at start, guarded batch by batch.

With an :class:`AdaptiveConfig` the actor (``worker.py``) builds its stream pool from
the candidate set of its models (``eclip_ray.planner.candidates``, from the profiles of
the config's profile set at each model's largest batch size), captures every
candidate's graphs at start, and then selects: from the plan table (schema 2) when it
holds a selection for this mix and load, else by measuring, driving its own models
with synthetic inputs through the benchmark's request loop
(``eclip_ray.bench.driver.drive``) for short windows, a closed loop of
``trial_inflight`` batches per model at the largest batch size (the busy case). What it
measured is written back to the table, so a restart measures nothing. Then every batch
asks the guard (``eclip_ray.planner.guard``) for its plan: per-batch placement inside
the adopted candidate, moves to a safer one on a breach and back, each logged with its
reason and counted in the metrics (``metrics.py``). The same code
(``eclip_ray.planner.adaptive``) runs the benchmark's ``eclip`` policy.

The guard sees each model as this actor does: batches received, running and finished,
and each batch's time in the actor (from its arrival here to its outputs on the host),
which is part of a request's latency (the HTTP front and the batch queue come before).
"""

from __future__ import annotations

import inspect
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from eclip_ray.errors import PlanError
from eclip_ray.graph.plan import Plan
from eclip_ray.models.names import canonical
from eclip_ray.partition.layout import DeviceGeometry, Layout
from eclip_ray.planner import catalog
from eclip_ray.planner.adaptive import Adaptive
from eclip_ray.planner.candidates import DEFAULT_K, Candidate, CandidateSet, generate
from eclip_ray.planner.guard import Guard, GuardSettings, Switch
from eclip_ray.planner.profile import ModelProfile
from eclip_ray.planner.selection import Selection, SelectionSettings, Trial
from eclip_ray.planner.steering import LaneView
from eclip_ray.planner.table import PlanTable

log = logging.getLogger(__name__)

HISTORY = 512  # completions per model the guard's window can look at


@dataclass(frozen=True)
class AdaptiveConfig:
    """How the actor chooses plans by measuring (plain data; the serve config's ``adaptive_plans``)."""

    profiles: str  # profile set (benchmarks/profiles/<name>) or directory, of this GPU's card
    slo_ms: Mapping[str, float | None] | None = None  # per model; None: no SLO
    latency_critical: tuple[str, ...] | None = None  # None: planner/roles.py's rule
    objective: str = "throughput"
    k: int = DEFAULT_K
    trial_window_s: float = 0.5
    budget_s: float = 10.0
    trial_inflight: int = 1  # batches in flight per model during trials
    warmup_s: float = 0.2  # per trial, not measured
    table: str | None = None  # plan table to read selections from and write them to (created if missing)
    guard_period_s: float = 0.1
    guard_hold_s: float = 3.0

    @classmethod
    def of(cls, value: Any) -> AdaptiveConfig | None:
        """From a mapping of these fields (the actor's keyword argument), an instance, or None."""
        if value is None or isinstance(value, cls):
            return value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise PlanError(f"adaptive plans: unknown settings {unknown}; known: {sorted(known)}")
        data = dict(value)
        if data.get("latency_critical") is not None:
            data["latency_critical"] = tuple(data["latency_critical"])
        return cls(**data)

    def trial_load(self) -> str:
        return f"closed{self.trial_inflight}"


def profiled_batch(directory: Path, model: str, largest: int) -> ModelProfile:
    """The profile of ``model`` at the largest profiled batch size up to ``largest`` (else the smallest above)."""
    sizes = sorted({int(p.stem.split("_bs")[1].split("_")[0]) for p in directory.glob(f"{model}_bs*_float16.json")})
    if not sizes:
        return catalog.load_profile(directory, model, largest)  # raises, naming what the directory has
    below = [b for b in sizes if b <= largest]
    return catalog.load_profile(directory, model, below[-1] if below else sizes[0])


class AdaptivePlans:
    """The candidates, selection and guard of one actor's models (``models``: name -> zoo loader name)."""

    def __init__(
        self,
        config: AdaptiveConfig,
        models: Mapping[str, str],
        batch_sizes: Mapping[str, Sequence[int]],
        on_switch: Callable[[Switch], None] | None = None,
    ) -> None:
        self.config = config
        self.directory = catalog.profile_dir(config.profiles)
        self.profiles = {n: profiled_batch(self.directory, m, max(batch_sizes[n])) for n, m in models.items()}
        self.batch = {n: p.key.batch_size for n, p in self.profiles.items()}
        self.slo_ms = {n: (config.slo_ms or {}).get(n) for n in models}
        self.table = _open_table(config.table)
        self.on_switch = on_switch
        self.candidates: CandidateSet | None = None
        self.adaptive: Adaptive | None = None
        self.guard: Guard | None = None
        self.selection: Selection | None = None
        self.source = ""  # "measured" or "plan table"
        self._lanes = {n: _LaneState() for n in models}
        self._observed = -math.inf

    # -- start-up ------------------------------------------------------------------------------

    def layout(self, geometry: DeviceGeometry) -> Layout:
        """The pool: the table's candidate set for this mix where it has one for this device, else a new one."""
        cached = self.table.candidate_set(self.batch) if self.table is not None else None
        if cached is not None and int(cached["layout"]["sm_count"]) == geometry.sm_count:
            cands = CandidateSet.from_dict(cached, geometry)
            known = {
                load: (rates, Selection.from_dict(sel))
                for load, (rates, sel) in self.table.selections(self.batch).items()
            }
        else:
            cands = generate(
                self.profiles,
                geometry,
                self.slo_ms,
                self.config.objective,
                latency_critical=self.config.latency_critical,
                settings=catalog.fitted_settings(self.directory),
                power=catalog.load_power(self.directory)[0],
                k=self.config.k,
            )
            known = {}
        self.candidates = cands
        self.adaptive = Adaptive(
            cands,
            self.slo_ms,
            self.config.objective,
            SelectionSettings(window_s=self.config.trial_window_s, budget_s=self.config.budget_s),
            GuardSettings(period_s=self.config.guard_period_s, hold_s=self.config.guard_hold_s),
            known,
        )
        return cands.layout

    def plans(self) -> dict[str, set[Plan]]:
        """Every plan some candidate may issue, per model: capture them all at start."""
        if self.adaptive is None:
            raise PlanError("the pool was not built yet (layout() first)")
        return self.adaptive.plans()

    def start(self, trial: Callable[[Candidate, float], Trial], prepared: Mapping[str, set[Plan]]) -> Selection:
        """Adopt the table's selection for this load, or measure one with ``trial``; then build the guard.

        Candidates with a plan that was not ``prepared`` (captured) are not measured.
        """
        if self.adaptive is None or self.candidates is None:
            raise PlanError("the pool was not built yet (layout() first)")
        load = self.config.trial_load()
        rates = dict.fromkeys(self.batch)
        cached = load in self.adaptive.selections
        broken = {
            c.name: "a plan of it was not captured at start"
            for c in self.candidates.candidates
            if any(not ps <= prepared.get(n, set()) for n, ps in c.all_plans().items())
        }
        sel = self.adaptive.choose(load, rates, trial, exclude=broken)
        self.selection, self.source = sel, "plan table" if cached else "measured"
        self.guard = self.adaptive.guard(load, on_switch=self._switched)
        log.info("adaptive plans (%s): %s; %s", self.source, sel.chosen, sel.reason)
        if not cached:
            self._save(load, rates, sel)
        return sel

    def _save(self, load: str, rates: Mapping[str, float | None], sel: Selection) -> None:
        if self.table is None or self.config.table is None or self.candidates is None:
            return
        self.table.record(self.batch, self.candidates.to_dict(), load, rates, sel.to_dict())
        try:
            self.table.save(self.config.table)
        except OSError as e:  # serving goes on; the next start measures again
            log.error("could not write the measured selection to %s: %s", self.config.table, e)

    def _switched(self, sw: Switch) -> None:
        log.warning("plan switch (%s) %s -> %s: %s", sw.kind, sw.source, sw.target, sw.reason)
        if self.on_switch is not None:
            self.on_switch(sw)

    # -- per batch -----------------------------------------------------------------------------

    def plan(self, model: str, now: float) -> Plan:
        """The plan of ``model``'s next batch (which starts now, ``time.perf_counter`` seconds)."""
        if self.guard is None:
            raise PlanError("no selection was made yet (start() first)")
        lane = self._lanes[model]
        lane.arrivals += 1
        if now - self._observed >= self.guard.period_s:
            self._observed = now
            self.guard.observe(now, self.views())
        plan = self.guard.plan(model, self.views())
        lane.inflight += 1
        return plan

    def finish(self, model: str, started: float, now: float) -> None:
        """A batch of ``model`` that started at ``started`` is done (or failed) at ``now``."""
        lane = self._lanes[model]
        lane.inflight = max(0, lane.inflight - 1)
        lane.completed += 1
        lane.recent.append((now, 1e3 * (now - started)))

    def views(self) -> dict[str, LaneView]:
        return {n: LaneView(n, s.inflight, 0, s.arrivals, s.completed, tuple(s.recent)) for n, s in self._lanes.items()}

    def covers(self, model: str) -> bool:
        return model in self._lanes

    def stats(self) -> dict[str, Any]:
        """Which candidate runs and why: the selection, where it came from, and the guard's switches."""
        if self.guard is None or self.selection is None:
            return {"active": False}
        g = self.guard.describe()
        return {
            "active": True,
            "candidate": g["candidate"],
            "preferred": g["preferred"],
            "selected": self.selection.chosen,
            "reason": self.selection.reason,
            "met": self.selection.met,
            "source": self.source,
            "selection_s": round(self.selection.seconds, 3),
            "measured": sorted(self.selection.trials),
            "skipped": dict(self.selection.skipped),
            "switches": g["switches"],
            "switches_by_kind": g["switches_by_kind"],
            "last_switches": g["log"][-10:],
            "batch_sizes": dict(self.batch),
            "pool_streams": self.candidates.streams() if self.candidates else None,
        }


@dataclass
class _LaneState:
    arrivals: int = 0
    inflight: int = 0
    completed: int = 0

    def __post_init__(self) -> None:
        self.recent: deque[tuple[float, float]] = deque(maxlen=HISTORY)


def _open_table(path: str | None) -> PlanTable | None:
    if path is None:
        return None
    if not Path(path).is_file():
        return PlanTable({}, "throughput", {})  # written after the first selection
    return PlanTable.load(path)


def trial_with(
    runners: Mapping[str, Any],
    batch: Mapping[str, int],
    slo_ms: Mapping[str, float | None],
    latency_critical: frozenset[str],
    inflight: int = 1,
    warmup_s: float = 0.2,
    steering_of: Callable[[str], Any] | None = None,
) -> Callable[[Candidate, float], Trial]:
    """A trial that drives ``runners`` (name -> ModelRunner) with synthetic inputs under a candidate.

    A closed loop of ``inflight`` batches per model at ``batch``; per-batch candidates run
    under their steering where the request loop takes one (``drive(..., steering=)``).
    """
    from eclip_ray.bench.driver import Lane, drive
    from eclip_ray.bench.load import Load
    from eclip_ray.bench.stats import window_metrics
    from eclip_ray.planner.placement import steering_for

    inputs = {n: r.example_inputs(batch[n]) for n, r in runners.items()}
    takes_steering = "steering" in inspect.signature(drive).parameters
    slo = {n: math.inf if v is None else v for n, v in slo_ms.items()}

    def trial(c: Candidate, window_s: float) -> Trial:
        lanes = [Lane(n, runners[n], c.plans[n], batch[n], inputs[n], index=i) for i, n in enumerate(runners)]
        extra: dict[str, Any] = {}
        if c.adaptive:
            if not takes_steering:
                raise PlanError("this request loop takes no steering: per-batch candidates cannot be measured")
            extra["steering"] = steering_of(c.name) if steering_of else steering_for(c, latency_critical)
        w = drive(lanes, Load("closed", inflight), warmup_s=warmup_s, window_s=window_s, **extra)
        if w.seconds <= 0:
            raise PlanError(f"the {window_s:g} s window closed before the loop looked again: a batch outlasts it")
        return Trial.of(c.name, window_metrics(w, slo, 99.0))

    return trial


def open_adaptive(value: Any, models: Sequence[Any], metrics: Any) -> tuple[AdaptivePlans | None, str | None]:
    """The actor's adaptive plans for ``models`` (``ServedModel``s), or None and why not (logged)."""
    try:
        config = AdaptiveConfig.of(value)
        if config is None:
            return None, None
        loaders = {m.name: canonical(m.loader) for m in models}
        sizes = {m.name: m.batch_sizes for m in models}

        def switched(sw: Switch) -> None:
            metrics.candidate(sw.target, sw.source, sw.kind)

        return AdaptivePlans(config, loaders, sizes, on_switch=switched), None
    except (PlanError, OSError, ValueError, KeyError, TypeError) as e:
        reason = f"{type(e).__name__}: {e}"
        log.error("adaptive plans are off: %s", reason)
        return None, reason


def start_adaptive(
    plans: AdaptivePlans, served: Mapping[str, Any], prepared: Mapping[str, set[Plan]], metrics: Any
) -> str | None:
    """Select for the loaded models (``served``: name -> the worker's loaded model); None, or why it could not."""
    missing = sorted(n for n in plans.batch if n not in served)
    if missing:
        reason = f"models {missing} did not load: the candidates need every model of the GPU"
    else:
        c = plans.config
        runners = {n: served[n].runner for n in plans.batch}
        lc = plans.candidates.latency_critical if plans.candidates else frozenset()
        steering_of = plans.adaptive.steering_of if plans.adaptive else None
        trial = trial_with(runners, plans.batch, plans.slo_ms, lc, c.trial_inflight, c.warmup_s, steering_of)
        try:
            sel = plans.start(trial, prepared)
        except (PlanError, RuntimeError, ValueError) as e:
            reason = f"the selection failed: {type(e).__name__}: {e}"
        else:
            metrics.selection(sel.seconds, len(sel.trials), sel.met)
            metrics.candidate(sel.chosen, None, "selected")
            return None
    log.error("adaptive plans are off: %s", reason)
    return reason
