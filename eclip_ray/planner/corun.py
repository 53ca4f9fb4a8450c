"""Fit the cost model's co-run coefficients to measured mixes, and say how well it predicts.

An *observation* is one mix measured under one set of plans and one load: the pool
layout, each model instance's plan and arrival rate (None: a closed loop), and what
was measured (median and p99 latency per instance, mix throughput, average board
power). The benchmark harness (``eclip-ray bench``, one observation per in-process
policy and scenario), ``benchmarks/validate_cost_model.py`` (the optimizer's plan,
multi-stream and a disjoint split, medians only) and ``benchmarks/corun_tails.py``
(latency-critical models beside batched neighbours on multi-stream, nested and
disjoint pools, closed and open loop) all write them.

The fit picks, on grids, the median coefficients ``interference`` (SMs shared with
a busy neighbour), ``contention`` (any busy neighbour, wherever it runs: the memory
system) and ``blocking`` (a victim kernel waiting for a neighbour's long kernels,
``cost.py``), minimising the median absolute log error of the predicted median
latencies; then the same three and ``queueing`` again for the p99s, where measured
(the tail model, ``Mix.tail``); then ``power_scale`` (the share of the power model's
compute-bound dynamic power that inference kernels draw) on the average power. It
is reported honestly by leaving one mix out at a time: the coefficients fitted on
the other mixes predict the one left out, medians and tails alike. The coefficients
fitted on every mix are written to ``corun.json`` beside the profiles, where the
planner picks them up (``catalog.fitted_settings``).

    eclip-ray fit-corun validation.json parts/m*.json --profiles h100 --out benchmarks/profiles/h100/corun.json
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from eclip_ray.errors import PlanError
from eclip_ray.graph.plan import Plan
from eclip_ray.partition.layout import DeviceGeometry, Layout, from_dict
from eclip_ray.planner import cost
from eclip_ray.planner.catalog import load_power, load_profile
from eclip_ray.planner.cost import Mix, Prediction, Pressure
from eclip_ray.planner.grouping import Group
from eclip_ray.planner.mixes import make_worker
from eclip_ray.planner.profile import ModelProfile

FILENAME = "corun.json"
GRID = np.round(np.arange(0.0, 2.0001, 0.05), 2)  # interference, contention and blocking, searched coarse to fine
COARSE = 2  # the first pass visits every COARSE-th grid point, the second its neighbours
QUEUEING_GRID = (0.0, 0.5, 1.0, 1.5, 2.0)
COVERAGE_GRID = (1.0, 1.5, 2.0, 3.0, 4.0)
POWER_GRID = np.round(np.arange(0.05, 1.5001, 0.01), 2)
BENCH_POLICIES = ("time-share", "multi-stream", "model-wise", "kw-prealloc", "eclip")  # in-process plans
VALIDATION_RUNS = {"eclip": ("plans", "measured_eclip"), "split": ("split_plans", "measured_split")}


@dataclass(frozen=True)
class Instance:
    name: str
    model: str
    batch_size: int
    plan: Plan
    rate_rps: float | None = None  # batches per second arriving; None: a closed loop


@dataclass(frozen=True)
class Observation:
    """One mix measured under one set of plans."""

    mix: str
    source: str  # e.g. "validation_c32.json: split"
    layout: Layout
    instances: tuple[Instance, ...]
    serial: bool  # the instances took turns on one stream (time-share)
    p50_ms: Mapping[str, float]
    throughput: float
    power_w: float | None
    p99_ms: Mapping[str, float] = field(default_factory=dict)  # empty where tails were not measured


@dataclass(frozen=True)
class Coefficients:
    interference: float
    contention: float
    power_scale: float | None  # None: no power model or no measured power
    blocking: float = 0.0
    tail: Pressure | None = None  # the p99 coefficients; None: no tails measured
    coverage: float = 1.0

    @property
    def median(self) -> Pressure:
        return Pressure(self.interference, self.contention, self.blocking, coverage=self.coverage)

    def to_dict(self) -> dict:
        return {
            "interference": self.interference,
            "contention": self.contention,
            "blocking": self.blocking,
            "coverage": self.coverage,
            "power_scale": self.power_scale,
            "tail": None if self.tail is None else self.tail.to_dict(),
        }


# -- reading measurements ---------------------------------------------------------------------


def _layout(data: dict) -> Layout:
    return from_dict(DeviceGeometry(int(data["sm_count"])), data)


def from_validation(data: dict, source: str) -> list[Observation]:
    """Observations of a ``validate_cost_model.py`` result: per mix, its plan, multi-stream and the split."""
    out = []
    for m in data.get("mixes", []):
        if "error" in m or "layout" not in m:
            continue
        layout, batch = _layout(m["layout"]), int(m["batch_size"])
        names = list(m["plans"])
        runs = {k: (m[plans], m[measured]) for k, (plans, measured) in VALIDATION_RUNS.items() if plans in m}
        runs["multi-stream"] = ({n: {"cuts": [], "partitions": ["whole"]} for n in names}, m["measured_multi_stream"])
        for key, (plans, measured) in runs.items():
            insts = tuple(
                Instance(n, model, batch, Plan.from_dict(plans[n])) for n, model in zip(names, m["models"], strict=True)
            )
            out.append(
                Observation(
                    m["mix"],
                    f"{source}: {key}",
                    layout,
                    insts,
                    False,
                    measured["latency_p50_ms"],
                    float(measured["throughput_rps"]),
                    measured.get("avg_power_w"),
                )
            )
    return out


def lane_rates(load: Mapping, lanes: int) -> list[float | None]:
    """Per lane, the batches per second a bench load offers (None: that lane runs a closed loop).

    ``closed``: every lane closed. Otherwise ``rates_rps`` holds one rate for all or one per
    lane, where a rate of None or <= 0 marks a lane run in a closed loop (a batch job beside
    open-loop services).
    """
    if load.get("kind", "closed") == "closed":
        return [None] * lanes
    rates = list(load.get("rates_rps") or ())
    if len(rates) == 1:
        rates = rates * lanes
    if len(rates) != lanes:
        raise PlanError(f"a load with {len(rates)} rates for {lanes} instances: {dict(load)}")
    return [float(r) if r is not None and r > 0 else None for r in rates]


def from_bench(data: dict, source: str) -> list[Observation]:
    """Observations of an ``eclip-ray bench`` result: every in-process policy that ran, in every scenario."""
    out = []
    for mix_name, mix in data.get("mixes", {}).items():
        for scenario_name, sc in mix.get("scenarios", {}).items():
            try:
                rates = lane_rates(sc.get("load", {}), len(mix["instances"]))
            except PlanError:
                continue  # a load shape this reader does not know: not an observation
            for policy in BENCH_POLICIES:
                r = sc["policies"].get(policy)
                if not r or r.get("status") != "ok" or "plans" not in r.get("setup", {}):
                    continue
                pool = r["setup"].get("pool") or sc.get("pool")  # a pool per policy, or one for all
                if pool is None:
                    continue
                layout = _layout(pool)
                plans = r["setup"]["plans"]
                insts = tuple(
                    Instance(n, model, int(sc["batch_size"][n]), Plan.from_dict(plans[n]), rate)
                    for n, model, rate in zip(mix["instances"], mix["models"], rates, strict=True)
                )
                out.append(
                    Observation(
                        mix_name,
                        f"{source}: {scenario_name} {policy}",
                        layout,
                        insts,
                        policy == "time-share",
                        r["p50_ms"],
                        float(r["throughput_rps"]),
                        r.get("avg_power_w") if r.get("energy_reliable", True) else None,
                        {n: v for n, v in (r.get("p99_ms") or {}).items() if v is not None},
                    )
                )
    return out


def from_corun(data: dict, source: str) -> list[Observation]:
    """Observations of a ``benchmarks/corun_tails.py`` result: one per measured run."""
    out = []
    for run in data.get("runs", []):
        if "error" in run or "measured" not in run:
            continue
        m = run["measured"]
        insts = tuple(
            Instance(i["name"], i["model"], int(i["batch_size"]), Plan.from_dict(i["plan"]), i.get("rate_rps"))
            for i in run["instances"]
        )
        out.append(
            Observation(
                run["mix"],
                f"{source}: {run['label']}",
                _layout(run["pool"]),
                insts,
                False,
                m["p50_ms"],
                float(m["throughput_rps"]),
                m.get("avg_power_w") if m.get("energy_reliable", True) else None,
                {n: v for n, v in m.get("p99_ms", {}).items() if v is not None},
            )
        )
    return out


def load_observations(paths: Iterable[str | Path]) -> list[Observation]:
    """Observations from result files of either kind."""
    out: list[Observation] = []
    for path in paths:
        path = Path(path)
        data = json.loads(path.read_text())
        if data.get("kind") == "corun":
            out += from_corun(data, path.name)
        elif isinstance(data.get("mixes"), list):
            out += from_validation(data, path.name)
        elif isinstance(data.get("mixes"), dict):
            out += from_bench(data, path.name)
        else:
            raise PlanError(f"{path}: neither a validation nor a bench result (no 'mixes')")
    return out


# -- predicting an observation ----------------------------------------------------------------


def stage_groups(profile: ModelProfile, plan: Plan) -> tuple[Group, ...]:
    """The units of each stage of ``plan``, as groups."""
    cuts = [u.cut for u in profile.units]
    starts = [0]
    for c in plan.cuts:
        if c not in cuts:
            raise PlanError(f"plan cut {c!r} is not a cut point of {profile.key.model}'s profile")
        starts.append(cuts.index(c))
    if starts != sorted(starts):
        raise PlanError(f"plan cuts {plan.cuts} are not in execution order")
    stops = [*starts[1:], len(cuts)]
    return tuple(Group(a, b, cuts[a]) for a, b in zip(starts, stops, strict=True))


class Predictor:
    """Predicts observations from one profile directory (profiles cached)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.power, self.power_note = load_power(directory, fitted=False)
        self._profiles: dict[tuple[str, int], ModelProfile] = {}

    def profile(self, model: str, batch: int) -> ModelProfile:
        key = (model, batch)
        if key not in self._profiles:
            self._profiles[key] = load_profile(self.directory, model, batch)
        return self._profiles[key]

    def mix(self, obs: Observation, c: Coefficients) -> tuple[Mix, cost.State]:
        workers, state = [], []
        for inst in obs.instances:
            part = obs.layout[inst.plan.partitions[0]]
            slot = part.worker if part.worker is not None else obs.instances.index(inst)
            profile = self.profile(inst.model, inst.batch_size)
            groups = stage_groups(profile, inst.plan)
            w = make_worker(inst.name, profile, obs.layout, slot, groups=groups, partitions=inst.plan.partitions)
            workers.append(w)
            state.append(tuple(obs.layout.names.index(p) for p in inst.plan.partitions))
        power = self.power if self.power is None or c.power_scale is None else self.power.scaled(c.power_scale)
        rates = tuple(i.rate_rps for i in obs.instances)
        mix = Mix(
            obs.layout,
            tuple(workers),
            c.interference,
            power,
            self.power_note,
            contention=c.contention,
            blocking=c.blocking,
            tail=c.tail,
            rates_rps=rates if any(r is not None for r in rates) else (),
            coverage=c.coverage,
        )
        return mix, tuple(state)

    def predict(self, obs: Observation, c: Coefficients) -> Prediction:
        mix, state = self.mix(obs, c)
        return cost.sequential(mix, state) if obs.serial else cost.evaluate(mix, state)


# -- fitting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Terms:
    """An observation's predicted service times as ``alone + i shared + c device + b waits`` (per instance).

    Under arrivals (``rates``, batches/s; NaN: a closed loop) the prediction adds the queueing
    wait of ``cost.queue_ms``, computed from the service time the coefficients give.
    """

    names: tuple[str, ...]
    alone: np.ndarray
    shared: np.ndarray
    device: np.ndarray
    waits: np.ndarray
    rates: np.ndarray
    p50: np.ndarray  # measured median latencies, ms
    p99: np.ndarray  # measured p99s, ms (NaN where not measured)

    @classmethod
    def of(cls, pred: Predictor, obs: Observation, coverage: float = 1.0) -> Terms:
        unit = Coefficients(1.0, 1.0, None, blocking=1.0, coverage=coverage)
        mix, state = pred.mix(obs, unit)
        names = tuple(w.name for w in mix.workers)
        p50 = np.array([obs.p50_ms.get(n, np.nan) for n in names])
        p99 = np.array([obs.p99_ms.get(n, np.nan) for n in names])
        rates = np.array([np.nan if i.rate_rps is None else i.rate_rps for i in obs.instances])
        zero = np.zeros(len(names))
        if obs.serial:
            period = cost.sequential(mix, state).latency_ms
            return cls(names, np.array([period[n] for n in names]), zero, zero, zero, rates * np.nan, p50, p99)
        work = cost.work_on(mix, state)
        time_on = cost.time_on(mix, state)
        device = time_on.sum(axis=1) * mix.device_slowdown()
        both = (time_on * cost.received(mix, work)).sum(axis=1)
        waits = (cost.kernels_on(mix, state) * cost.blocked(mix, work)).sum(axis=1)
        return cls(names, cost.alone_ms(mix, state), both - device, device, waits, rates, p50, p99)

    def service(self, i, c, b) -> np.ndarray:
        """Service times at coefficients (arrays broadcast against the instances on the last axis)."""
        return self.alone + i * self.shared + c * self.device + b * self.waits

    def base(self, median: Pressure | None) -> np.ndarray | None:
        """The median service times that queueing is computed from (None: the coefficients' own)."""
        return None if median is None else self.service(median.interference, median.contention, median.blocking)


def queue_wait(service: np.ndarray, rates: np.ndarray, queueing: float, tail: bool) -> np.ndarray:
    """``cost.queue_ms`` on arrays: the M/D/1 wait (mean, or p99 with ``tail``) at ``rates`` (NaN: none)."""
    if queueing == 0 or np.all(np.isnan(rates)):
        return np.zeros_like(service)
    rho = np.minimum(np.nan_to_num(rates) * service / 1e3, cost.RHO_CAP)
    spread = np.maximum(0.0, np.log(np.maximum(100 * rho, 1e-300))) if tail else rho
    return np.where(np.isnan(rates), 0.0, queueing * service * spread / (2 * (1 - rho)))


def _scores(
    rows: Sequence[tuple[Terms, np.ndarray]], axes: Sequence[np.ndarray], q: float, tail: bool, median
) -> np.ndarray:
    """Median |log error| at every point of the (interference, contention, blocking) grid ``axes``."""
    i, c, b = (a[..., None] for a in np.meshgrid(*axes, indexing="ij"))
    errors = []
    for t, m in rows:
        ok = np.isfinite(m)
        ms = t.service(i, c, b)
        base = t.base(median)
        err = np.log((ms + queue_wait(ms if base is None else base, t.rates, q, tail)) / np.where(ok, m, 1.0))
        errors.append(err[..., ok])
    return np.median(np.abs(np.concatenate(errors, axis=-1)), axis=-1)


def _grid_fit(
    terms: Mapping[float, Sequence[Terms]], measured: str, tail: bool, median: Pressure | None = None
) -> tuple[Pressure, float]:
    """The grid point (per coverage: its terms) with the least median |log error| of ``measured`` ("p50"/"p99").

    Coarse to fine: every ``COARSE``-th point of ``GRID`` first, then the neighbours of the
    best; ties go to the lowest coefficients.
    """
    best, best_score = Pressure(0.0, 0.0, 0.0), math.inf
    for coverage, ts in terms.items():
        rows = [(t, getattr(t, measured)) for t in ts]
        rows = [(t, m) for t, m in rows if np.isfinite(m).any()]
        if not rows:
            continue
        for q in QUEUEING_GRID if tail else (1.0,):
            idx = np.arange(0, len(GRID), COARSE)
            score = _scores(rows, [GRID[idx]] * 3, q, tail, median)
            at = [int(idx[k]) for k in np.unravel_index(int(np.argmin(score)), score.shape)]
            near = [np.arange(max(0, a - COARSE + 1), min(len(GRID), a + COARSE)) for a in at]
            score = _scores(rows, [GRID[n] for n in near], q, tail, median)
            k = np.unravel_index(int(np.argmin(score)), score.shape)
            if score[k] < best_score - 1e-12:
                point = [float(GRID[near[d][k[d]]]) for d in range(3)]
                best, best_score = Pressure(*point, queueing=float(q), coverage=float(coverage)), float(score[k])
    return best, best_score


def fit(pred: Predictor, obs: Sequence[Observation]) -> Coefficients:
    """Median coefficients on the medians, tail coefficients on the p99s (where measured), then power."""
    if not obs:
        raise PlanError("no observations to fit")
    terms = {cov: [Terms.of(pred, o, cov) for o in obs] for cov in COVERAGE_GRID}
    median, _ = _grid_fit(terms, "p50", tail=False)
    tail = None
    if any(np.isfinite(t.p99).any() for t in terms[1.0]):
        tail, _ = _grid_fit(terms, "p99", tail=True, median=median)
    c = Coefficients(median.interference, median.contention, None, median.blocking, tail, median.coverage)
    return replace(c, power_scale=_fit_power(pred, obs, c))


def _fit_power(pred: Predictor, obs: Sequence[Observation], c: Coefficients) -> float | None:
    power = pred.power
    if power is None:
        return None
    rows = [(pred.predict(o, c).busy_sms, float(o.power_w)) for o in obs if o.power_w]
    if not rows:
        return None

    def score(scale: float) -> float:
        return statistics.median(abs(math.log((power.idle_w + scale * power.dynamic_w(b)) / w)) for b, w in rows)

    return float(min(POWER_GRID, key=score))


@dataclass(frozen=True)
class Report:
    """Errors of the predictions of every observation, each from coefficients fitted without its mix."""

    coefficients: Coefficients  # fitted on every mix
    held_out: dict[str, Coefficients]  # per mix: fitted on the others
    rows: list[dict]  # per observation: predicted and measured

    def medians(self) -> dict[str, float | None]:
        lat = [abs(e) for r in self.rows for e in r["latency_rel_error"].values()]
        tail = [abs(e) for r in self.rows for e in r["p99_rel_error"].values()]
        thr = [abs(r["throughput_rel_error"]) for r in self.rows]
        energy = [abs(r["power_rel_error"]) for r in self.rows if r["power_rel_error"] is not None]
        return {
            "median_abs_latency_error": statistics.median(lat) if lat else None,
            "median_abs_p99_error": statistics.median(tail) if tail else None,
            "median_abs_throughput_error": statistics.median(thr) if thr else None,
            "median_abs_power_error": statistics.median(energy) if energy else None,
            "p99_pairs_ordered": _ordered(self.rows, "predicted_p99_ms", "measured_p99_ms"),
            "throughput_pairs_ordered": _ordered(self.rows, "predicted_throughput", "measured_throughput"),
        }

    def to_dict(self, command: str = "") -> dict:
        return {
            "command": command,
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            **self.coefficients.to_dict(),
            "held_out": {m: c.to_dict() for m, c in self.held_out.items()},
            "leave_one_mix_out": self.medians(),
            "observations": self.rows,
        }


def leave_one_mix_out(pred: Predictor, obs: Sequence[Observation]) -> Report:
    """Fit on every mix but one, predict that one; for every mix. Then fit on all."""
    mixes = sorted({o.mix for o in obs})
    if len(mixes) < 2:
        raise PlanError(f"leaving one mix out needs at least two mixes, got {mixes}")
    held, rows = {}, []
    for m in mixes:
        c = fit(pred, [o for o in obs if o.mix != m])
        held[m] = c
        rows += [_row(pred, o, c) for o in obs if o.mix == m]
    return Report(fit(pred, obs), held, rows)


def _ordered(rows: Sequence[dict], predicted: str, measured: str) -> float | None:
    """Of every two runs of one mix at one load, the share whose order the prediction gets right.

    The planner's use of the model: ranking candidate plans. Per model for latencies (``*_p99_ms``
    maps), per run for throughputs; pairs measured within 2% of each other are not counted.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["mix"], json.dumps(r["rates_rps"], sort_keys=True)), []).append(r)
    right = total = 0
    for runs in groups.values():
        for a, b in itertools.combinations(runs, 2):
            pa, pb, ma, mb = a[predicted], b[predicted], a[measured], b[measured]
            pairs = (
                [(pa, pb, ma, mb)]
                if not isinstance(ma, dict)
                else [(pa[n], pb[n], ma[n], mb[n]) for n in ma if n in mb and n in pa and n in pb]
            )
            for x, y, u, v in pairs:
                if abs(u - v) <= 0.02 * max(u, v):
                    continue
                total += 1
                right += (x < y) == (u < v)
    return right / total if total else None


def _row(pred: Predictor, o: Observation, c: Coefficients) -> dict:
    p = pred.predict(o, c)
    busy_w = None
    if pred.power is not None and c.power_scale is not None:
        busy_w = pred.power.idle_w + c.power_scale * pred.power.dynamic_w(p.busy_sms)
    return {
        "mix": o.mix,
        "source": o.source,
        "plans": {i.name: i.plan.to_dict() for i in o.instances},
        "predicted_latency_ms": p.latency_ms,
        "measured_p50_ms": dict(o.p50_ms),
        "latency_rel_error": {n: p.latency_ms[n] / o.p50_ms[n] - 1 for n in p.latency_ms if n in o.p50_ms},
        "rates_rps": {i.name: i.rate_rps for i in o.instances},
        "predicted_p99_ms": {n: p.tail(n) for n in o.p99_ms},
        "measured_p99_ms": dict(o.p99_ms),
        "p99_rel_error": {n: p.tail(n) / v - 1 for n, v in o.p99_ms.items()},
        "predicted_throughput": p.throughput,
        "measured_throughput": o.throughput,
        "throughput_rel_error": p.throughput / o.throughput - 1,
        "predicted_power_w": busy_w,
        "measured_power_w": o.power_w,
        "power_rel_error": None if busy_w is None or not o.power_w else busy_w / o.power_w - 1,
    }


def markdown(report: Report) -> str:
    """The report as a Markdown table: every observation predicted by coefficients fitted without its mix."""
    m = report.medians()
    c = report.coefficients
    tail = "none (no p99s measured)" if c.tail is None else ", ".join(f"{k} {v:g}" for k, v in c.tail.to_dict().items())
    lines = [
        f"Fitted on every mix: interference {c.interference:g}, contention {c.contention:g}, blocking {c.blocking:g}, "
        f"power scale {c.power_scale}; tail: {tail}. Each row is predicted with the coefficients fitted on the "
        "other mixes.",
        "",
        "| mix | measured run | per model: predicted / measured p50 ms (error) | per model: predicted / measured p99 "
        "ms (error) | inf/s predicted / measured (error) | W predicted / measured |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in report.rows:
        lat = "<br>".join(
            f"{n} {r['predicted_latency_ms'][n]:.2f} / {r['measured_p50_ms'][n]:.2f} ({100 * e:+.0f}%)"
            for n, e in r["latency_rel_error"].items()
        )
        p99 = (
            "<br>".join(
                f"{n} {r['predicted_p99_ms'][n]:.2f} / {r['measured_p99_ms'][n]:.2f} ({100 * e:+.0f}%)"
                for n, e in r["p99_rel_error"].items()
            )
            or "-"
        )
        watts = (
            "-"
            if r["predicted_power_w"] is None or not r["measured_power_w"]
            else (f"{r['predicted_power_w']:.0f} / {r['measured_power_w']:.0f}")
        )
        lines.append(
            f"| {r['mix']} | {r['source']} | {lat} | {p99} | {r['predicted_throughput']:.0f} / "
            f"{r['measured_throughput']:.0f} ({100 * r['throughput_rel_error']:+.0f}%) | {watts} |"
        )
    fmt = {k: "-" if v is None else f"{100 * v:.1f}%" for k, v in m.items()}
    lines += [
        "",
        f"Median |error|, each mix held out: latency {fmt['median_abs_latency_error']}, p99 "
        f"{fmt['median_abs_p99_error']}, throughput {fmt['median_abs_throughput_error']}, average power "
        f"{fmt['median_abs_power_error']}. Pairs of runs of one mix at one load that the held-out prediction "
        f"orders right: p99 {fmt['p99_pairs_ordered']}, throughput {fmt['throughput_pairs_ordered']}.",
    ]
    return "\n".join(lines) + "\n"
