"""Fit the cost model's co-run coefficients to measured mixes, and say how well it predicts.

An *observation* is one mix measured under one set of plans: the pool layout, each
model instance's plan, and what was measured (median latency per instance, mix
throughput, average board power). The benchmark harness (``eclip-ray bench``, one
observation per in-process policy) and ``benchmarks/validate_cost_model.py`` (the
optimizer's plan, multi-stream and a disjoint split) both write them.

The fit picks ``interference`` (SMs shared with a busy neighbour), ``contention``
(any busy neighbour, wherever it runs: the memory system) and ``power_scale`` (the
share of the power model's compute-bound dynamic power that inference kernels
draw) on a grid, minimising the median absolute log error of the predicted
latencies (power: of the average power). It is reported honestly by leaving one
mix out at a time: the coefficients fitted on the other mixes predict the one
left out. The coefficients fitted on every mix are written to ``corun.json``
beside the profiles, where the planner picks them up (``catalog.load_corun``).

    eclip-ray fit-corun validation.json parts/m*.json --profiles h100 --out benchmarks/profiles/h100/corun.json
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from eclip_ray.errors import PlanError
from eclip_ray.graph.plan import Plan
from eclip_ray.partition.layout import DeviceGeometry, Layout, from_dict
from eclip_ray.planner import cost
from eclip_ray.planner.catalog import load_power, load_profile
from eclip_ray.planner.cost import Mix, Prediction
from eclip_ray.planner.grouping import Group
from eclip_ray.planner.mixes import make_worker
from eclip_ray.planner.profile import ModelProfile

FILENAME = "corun.json"
GRID = np.round(np.arange(0.0, 2.0001, 0.05), 2)
POWER_GRID = np.round(np.arange(0.05, 1.5001, 0.01), 2)
BENCH_POLICIES = ("time-share", "multi-stream", "model-wise", "kw-prealloc", "eclip")  # in-process plans
VALIDATION_RUNS = {"eclip": ("plans", "measured_eclip"), "split": ("split_plans", "measured_split")}


@dataclass(frozen=True)
class Instance:
    name: str
    model: str
    batch_size: int
    plan: Plan


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


@dataclass(frozen=True)
class Coefficients:
    interference: float
    contention: float
    power_scale: float | None  # None: no power model or no measured power

    def to_dict(self) -> dict:
        return {"interference": self.interference, "contention": self.contention, "power_scale": self.power_scale}


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


def from_bench(data: dict, source: str) -> list[Observation]:
    """Observations of an ``eclip-ray bench`` result: every in-process policy that ran, in every scenario."""
    out = []
    for mix_name, mix in data.get("mixes", {}).items():
        for scenario_name, sc in mix.get("scenarios", {}).items():
            if sc.get("load", {}).get("kind") != "closed":
                continue
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
                    Instance(n, model, int(sc["batch_size"][n]), Plan.from_dict(plans[n]))
                    for n, model in zip(mix["instances"], mix["models"], strict=True)
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
                    )
                )
    return out


def load_observations(paths: Iterable[str | Path]) -> list[Observation]:
    """Observations from result files of either kind."""
    out: list[Observation] = []
    for path in paths:
        path = Path(path)
        data = json.loads(path.read_text())
        if isinstance(data.get("mixes"), list):
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
            w = make_worker(inst.name, profile, obs.layout, slot, groups=stage_groups(profile, inst.plan))
            workers.append(w)
            state.append(tuple(obs.layout.names.index(p) for p in inst.plan.partitions))
        power = self.power if self.power is None or c.power_scale is None else self.power.scaled(c.power_scale)
        mix = Mix(obs.layout, tuple(workers), c.interference, power, self.power_note, contention=c.contention)
        return mix, tuple(state)

    def predict(self, obs: Observation, c: Coefficients) -> Prediction:
        mix, state = self.mix(obs, c)
        return cost.sequential(mix, state) if obs.serial else cost.evaluate(mix, state)


# -- fitting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Terms:
    """An observation's predicted latencies as ``alone + interference * shared + contention * device``."""

    names: tuple[str, ...]
    alone: np.ndarray
    shared: np.ndarray
    device: np.ndarray
    measured: np.ndarray  # median latencies, ms

    @classmethod
    def of(cls, pred: Predictor, obs: Observation) -> Terms:
        unit = Coefficients(1.0, 1.0, None)
        mix, state = pred.mix(obs, unit)
        names = tuple(w.name for w in mix.workers)
        measured = np.array([obs.p50_ms[n] for n in names])
        if obs.serial:
            period = cost.sequential(mix, state).latency_ms
            zero = np.zeros(len(names))
            return cls(names, np.array([period[n] for n in names]), zero, zero, measured)
        alone = cost.alone_ms(mix, state)
        time_on = cost.time_on(mix, state)
        device = (time_on.sum(axis=1)) * mix.device_slowdown()
        both = (time_on * cost.received(mix, cost.work_on(mix, state))).sum(axis=1)
        return cls(names, alone, both - device, device, measured)

    def log_errors(self, interference: float, contention: float) -> np.ndarray:
        return np.log((self.alone + interference * self.shared + contention * self.device) / self.measured)


def fit(pred: Predictor, obs: Sequence[Observation]) -> Coefficients:
    """The grid point of (interference, contention) with the least median |log latency error|; then power."""
    if not obs:
        raise PlanError("no observations to fit")
    terms = [Terms.of(pred, o) for o in obs]
    best, best_score = (0.0, 0.0), math.inf
    for i in GRID:
        for k in GRID:
            score = float(np.median(np.abs(np.concatenate([t.log_errors(i, k) for t in terms]))))
            if score < best_score - 1e-12:
                best, best_score = (float(i), float(k)), score
    c = Coefficients(best[0], best[1], None)
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
        thr = [abs(r["throughput_rel_error"]) for r in self.rows]
        energy = [abs(r["power_rel_error"]) for r in self.rows if r["power_rel_error"] is not None]
        return {
            "median_abs_latency_error": statistics.median(lat) if lat else None,
            "median_abs_throughput_error": statistics.median(thr) if thr else None,
            "median_abs_power_error": statistics.median(energy) if energy else None,
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
        "latency_rel_error": {n: p.latency_ms[n] / o.p50_ms[n] - 1 for n in p.latency_ms},
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
    lines = [
        f"Fitted on every mix: interference {c.interference:g}, contention {c.contention:g}, "
        f"power scale {c.power_scale}. Each row is predicted with the coefficients fitted on the other mixes.",
        "",
        "| mix | measured run | per model: predicted / measured p50 ms (error) | inf/s predicted / measured (error) "
        "| W predicted / measured |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in report.rows:
        lat = "<br>".join(
            f"{n} {r['predicted_latency_ms'][n]:.2f} / {r['measured_p50_ms'][n]:.2f} ({100 * e:+.0f}%)"
            for n, e in r["latency_rel_error"].items()
        )
        watts = (
            "-"
            if r["predicted_power_w"] is None or not r["measured_power_w"]
            else (f"{r['predicted_power_w']:.0f} / {r['measured_power_w']:.0f}")
        )
        lines.append(
            f"| {r['mix']} | {r['source']} | {lat} | {r['predicted_throughput']:.0f} / {r['measured_throughput']:.0f} "
            f"({100 * r['throughput_rel_error']:+.0f}%) | {watts} |"
        )
    fmt = {k: "-" if v is None else f"{100 * v:.1f}%" for k, v in m.items()}
    lines += [
        "",
        f"Median |error|, each mix held out: latency {fmt['median_abs_latency_error']}, throughput "
        f"{fmt['median_abs_throughput_error']}, average power {fmt['median_abs_power_error']}.",
    ]
    return "\n".join(lines) + "\n"
