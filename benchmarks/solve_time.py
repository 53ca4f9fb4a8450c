"""Solve time of the resource-allocation optimizer on this machine (CPU only).

The issue's goal: under 1 s for a 3-model mix with up to 200 kernel units per
model. Mixes here are synthetic (``eclip_ray.planner.synthetic``: shaped like
measured profiles, describing no real model), 3 models x 200 units, several
seeds, every objective, with and without latency SLOs. Each is planned with the
default settings (what ``eclip-ray plan`` does: the MILP steps share a time
budget and a step stopped by it keeps the best plan found) and, to show what
the budget costs, again with a long one so HiGHS proves each step optimal. The
energy objectives use the measured H100 power model when it is present; the
paper's 3-model mixes M3 and M4 at batch 1 are timed the same way when the
H100 profiles are.

    python benchmarks/solve_time.py [--seeds 8] [--out benchmarks/results/cpu/solve_time.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import scipy

from eclip_ray.errors import InfeasibleSLO
from eclip_ray.partition.layout import DeviceGeometry, ladder
from eclip_ray.planner import PlannerSettings, baselines, optimize, synthetic
from eclip_ray.planner.mixes import build_mix
from eclip_ray.planner.objective import OBJECTIVES, criterion
from eclip_ray.planner.power import PowerModel
from eclip_ray.planner.profile import ModelProfile

UNITS = 200
PROOF_LIMIT_S = 60.0
REAL_MIXES = {"M3": ["albert-base", "densenet201", "vgg19"], "M4": ["alexnet", "resnet152", "vgg19"]}


def synthetic_mix(seed: int) -> dict[str, ModelProfile]:
    """Three models of 200 units: whole-GPU latencies and wide-kernel shares drawn per seed."""
    rng = np.random.default_rng(seed)
    return {
        f"m{i}": synthetic.profile(
            f"m{i}",
            UNITS,
            seed=100 * seed + i,
            whole_ms=float(rng.uniform(0.5, 6.0)),
            heavy=float(rng.uniform(0.2, 0.6)),
        )
        for i in range(3)
    }


def slos(profiles: Mapping[str, ModelProfile], factor: float) -> dict[str, float]:
    """``factor`` times each model's latency under plain multi-stream (the cost model's)."""
    mix = build_mix(profiles, ladder(DeviceGeometry(132), len(profiles)))
    ms = baselines.predict(mix)["multi-stream"].prediction
    return {n: factor * ms.latency_ms[n] for n in profiles}  # type: ignore[union-attr]


def timed(profiles, slo, objective, settings, power) -> dict:
    layout = ladder(DeviceGeometry(132), len(profiles))
    t0 = time.perf_counter()
    try:
        plan = optimize(profiles, layout, slo, objective, power=power, settings=settings)
    except InfeasibleSLO as e:
        return {"seconds": time.perf_counter() - t0, "infeasible": str(e)}
    seconds = time.perf_counter() - t0
    ms = baselines.predict(plan.mix)["multi-stream"].prediction
    return {
        "seconds": seconds,
        "optimal": plan.optimal,
        "score": criterion(objective, plan.predicted, ms),  # type: ignore[arg-type]
        "throughput_vs_multi_stream": plan.predicted.throughput / ms.throughput,  # type: ignore[union-attr]
        "groups": [len(w.groups) for w in plan.mix.workers],
        "switches": sum(w.plan.switches for w in plan.workers.values()),
    }


def case(name: str, profiles, slo, objective: str, prove: bool, power) -> dict:
    row = {"mix": name, "objective": objective, "slo": slo is not None}
    row["default"] = timed(profiles, slo, objective, PlannerSettings(), power)
    if prove:
        row["proved"] = timed(profiles, slo, objective, PlannerSettings(time_limit_s=PROOF_LIMIT_S), power)
        d, p = row["default"], row["proved"]
        if "score" in d and p.get("optimal"):
            row["score_excess_vs_proved"] = d["score"] / p["score"] - 1
    return row


def summary(rows: list[dict]) -> dict:
    secs = [r["default"]["seconds"] for r in rows]
    out = {
        "runs": len(rows),
        "default_s": {"median": statistics.median(secs), "p90": float(np.percentile(secs, 90)), "max": max(secs)},
        "under_1s": sum(s < 1.0 for s in secs),
        "proven_optimal_within_default_limit": sum(bool(r["default"].get("optimal")) for r in rows),
        "infeasible": sum("infeasible" in r["default"] for r in rows),
    }
    proved = [r["proved"]["seconds"] for r in rows if "proved" in r and r["proved"].get("optimal")]
    if proved:
        out["time_to_prove_s"] = {"median": statistics.median(proved), "max": max(proved)}
    excess = [r["score_excess_vs_proved"] for r in rows if "score_excess_vs_proved" in r]
    if excess:
        out["objective_excess_at_default_limit"] = {"median": statistics.median(excess), "max": max(excess)}
    return out


def real_cases(directory: Path, prove: bool, power) -> list[dict]:
    from eclip_ray.planner.catalog import load_profile

    rows = []
    for name, models in REAL_MIXES.items():
        if not all((directory / f"{m}_bs1_float16.json").is_file() for m in models):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # made on the H100, planned here: that is the point
            profiles = {f"{m}#{i}": load_profile(directory, m, 1) for i, m in enumerate(models)}
        for objective in objectives(power):
            row = case(name, profiles, None, objective, prove, power)
            row["units"] = [len(p.units) for p in profiles.values()]
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--no-proof", action="store_true", help="skip the long-limit runs")
    ap.add_argument("--profiles", type=Path, default=Path("benchmarks/profiles/h100"))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cpu/solve_time.json"))
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    optimize(synthetic_mix(0), ladder(DeviceGeometry(132), 3))  # first call: imports SciPy's MILP and HiGHS
    cold_s = time.perf_counter() - t0

    power_file = args.profiles / "power.json"
    power = PowerModel.load(power_file) if power_file.is_file() else None  # the measured H100 power model
    rows = []
    for seed in range(args.seeds):
        profiles = synthetic_mix(seed)
        for slo in (None, slos(profiles, 1.0)):
            for objective in objectives(power):
                rows.append(case(f"synthetic-{seed}", profiles, slo, objective, not args.no_proof, power))
                print(_line(rows[-1]), flush=True)
    real = real_cases(args.profiles, not args.no_proof, power) if args.profiles.is_dir() else []
    for r in real:
        print(_line(r), flush=True)

    result = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "versions": {"scipy": scipy.__version__, "numpy": np.__version__},
        "settings": {**PlannerSettings().__dict__, "proof_time_limit_s": PROOF_LIMIT_S},
        "power_model": str(power_file) if power else None,
        "mix": f"3 synthetic models x {UNITS} units, {args.seeds} seeds, SLO none or 1.0x multi-stream latency",
        "cold_first_call_s": cold_s,
        "synthetic": {"summary": summary(rows), "runs": rows},
        "h100_profiles": {"summary": summary(real), "runs": real} if real else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({"cold_first_call_s": cold_s, "synthetic": result["synthetic"]["summary"]}, indent=1))
    if real:
        print(json.dumps({"h100_profiles": result["h100_profiles"]["summary"]}, indent=1))
    print(f"wrote {args.out}")
    return 0


def objectives(power: PowerModel | None) -> tuple[str, ...]:
    return OBJECTIVES if power is not None else ("throughput",)  # the others need a power model


def _line(r: dict) -> str:
    d = r["default"]
    what = "infeasible" if "infeasible" in d else f"optimal={d['optimal']}"
    proof = f"  proved in {r['proved']['seconds']:.2f} s" if "proved" in r else ""
    return f"{r['mix']:13s} {r['objective']:10s} slo={r['slo']!s:5s} {d['seconds']:.3f} s {what}{proof}"


if __name__ == "__main__":
    sys.exit(main())
