"""Cost-model validation (issue 3), on the GPU: predicted vs measured latency and mix throughput.

For each mix, the optimizer plans it from the profiles; the runtime captures the
plans and runs the mix closed loop with one request in flight per model instance
(the paper's method) for a window, measuring each instance's latency and the mix
throughput and energy with the benchmark's request loop (``eclip_ray.bench.driver``).
Two more plans run on the same pool: plain multi-stream (every instance on the
whole GPU, own stream), the reference the plan must beat, and ``split`` (each
instance alone on the largest ladder partition of its own that overlaps no other
instance's). The pool's SM ids (``%smid``) and CUDA_DEVICE_MAX_CONNECTIONS are
recorded, so the measurements can be re-predicted offline
(``python -m eclip_ray.planner.calibrate``). Writes JSON.

    python benchmarks/validate_cost_model.py --profiles benchmarks/profiles/h100 --out validation.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from eclip_ray.bench.driver import Lane, drive
from eclip_ray.bench.load import Load
from eclip_ray.bench.mixes import MIXES
from eclip_ray.bench.stats import percentile
from eclip_ray.graph import Plan
from eclip_ray.models.names import canonical
from eclip_ray.models.zoo import get as zoo_get
from eclip_ray.partition.layout import Layout
from eclip_ray.partition.placement import verify_pool
from eclip_ray.planner.catalog import fitted_settings, load_power, load_profile
from eclip_ray.planner.optimizer import optimize
from eclip_ray.runtime import Runtime


def closed_loop(rt: Runtime, plans: dict[str, Plan], batch: int, seconds: float, warmup_s: float = 1.0) -> dict:
    """One request in flight per instance for ``seconds``; latency per instance, throughput, energy."""
    lanes = [
        Lane(n, rt.runners[n], plan, batch, rt.runners[n].example_inputs(batch), index=i)
        for i, (n, plan) in enumerate(plans.items())
    ]
    w = drive(lanes, Load("closed", 1), warmup_s=warmup_s, window_s=seconds, meter=rt.meter)
    lat = {n: r.latencies_ms for n, r in w.lanes.items()}
    done = sum(len(v) for v in lat.values()) * batch
    return {
        "latency_p50_ms": {n: percentile(v, 50) for n, v in lat.items()},
        "latency_p95_ms": {n: percentile(v, 95) for n, v in lat.items()},
        "throughput_rps": done / w.seconds,
        "joules_per_inference": w.energy.joules / done,
        "avg_power_w": w.energy.watts,
        "seconds": w.seconds,
    }


def split_plans(layout: Layout, instances: list[str]) -> dict[str, Plan]:
    """Each instance on its largest ladder partition that shares no SM slot with another instance's."""
    for count in sorted({p.count for p in layout.partitions if p.worker is not None}, reverse=True):
        parts = [
            next((p for p in layout.partitions if p.worker == i and p.count == count), None)
            for i in range(len(instances))
        ]
        if all(parts) and all(a.overlap(b) == 0 for i, a in enumerate(parts) for b in parts[i + 1 :]):
            return {n: Plan.single(p.name) for n, p in zip(instances, parts, strict=True)}
    raise ValueError(f"no disjoint ladder partitions for {len(instances)} instances")


def validate_mix(name: str, models: list[str], directory: Path, batch: int, seconds: float) -> dict:
    inst = [f"{canonical(m)}#{i}" for i, m in enumerate(models)]
    profiles = {n: load_profile(directory, m, batch) for n, m in zip(inst, models, strict=True)}
    power, note = load_power(directory)
    with Runtime(backend="cuda", workers=len(models)) as rt:  # the pool is ECLIP's ladder for the mix
        t0 = time.perf_counter()
        mix_plan = optimize(
            profiles, rt.layout, None, "throughput", power=power, power_note=note, settings=fitted_settings(directory)
        )
        solve_s = time.perf_counter() - t0
        plans = mix_plan.plans()
        split = split_plans(rt.layout, inst)
        sm_ids = verify_pool(rt.pool)
        for n, m in zip(inst, models, strict=True):
            runner = rt.load(n, zoo_get(m))
            for plan in {plans[n], Plan.single("whole"), split[n]}:
                runner.capture(plan, batch)
        eclip = closed_loop(rt, plans, batch, seconds)
        multi = closed_loop(rt, {n: Plan.single("whole") for n in inst}, batch, seconds)
        disjoint = closed_loop(rt, split, batch, seconds)
        layout = rt.layout.to_dict()
    pred = mix_plan.predicted
    err = {n: pred.latency_ms[n] / eclip["latency_p50_ms"][n] - 1 for n in inst}
    return {
        "mix": name,
        "models": models,
        "batch_size": batch,
        "solve_s": round(solve_s, 3),
        "plans": {n: p.to_dict() for n, p in plans.items()},
        "predicted": pred.to_dict(),
        "measured_eclip": eclip,
        "measured_multi_stream": multi,
        "split_plans": {n: p.to_dict() for n, p in split.items()},
        "measured_split": disjoint,
        "layout": layout,
        "sm_ids": sm_ids,
        "latency_rel_error": err,
        "throughput_rel_error": pred.throughput / eclip["throughput_rps"] - 1,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--profiles", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mixes", nargs="+", default=list(MIXES))
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    out = {"command": "python benchmarks/validate_cost_model.py", "args": vars(args),
           "date": datetime.now(UTC).isoformat(timespec="seconds"),
           "cuda_device_max_connections": os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS", "unset"),
           "mixes": []}  # fmt: skip
    for name in args.mixes:
        try:
            r = validate_mix(name, list(MIXES[name]), Path(args.profiles), args.batch_size, args.seconds)
            out["mixes"].append(r)
            eclip, multi = r["measured_eclip"]["throughput_rps"], r["measured_multi_stream"]["throughput_rps"]
            errors = ", ".join(f"{k} {100 * v:+.0f}%" for k, v in r["latency_rel_error"].items())
            print(
                f"{name}: predicted {r['predicted']['throughput']:.0f} inf/s, measured eclip {eclip:.0f} "
                f"(multi-stream {multi:.0f}); latency error {errors}",
                flush=True,
            )
        except Exception as e:  # one mix's failure is reported, the others still run
            traceback.print_exc()
            out["mixes"].append({"mix": name, "error": repr(e)})
        Path(args.out).write_text(json.dumps(out, indent=1))
    errs = [abs(v) for r in out["mixes"] if "latency_rel_error" in r for v in r["latency_rel_error"].values()]
    terrs = [abs(r["throughput_rel_error"]) for r in out["mixes"] if "throughput_rel_error" in r]
    if errs:
        out["median_abs_latency_error"] = statistics.median(errs)
        out["median_abs_throughput_error"] = statistics.median(terrs)
        print(f"median |latency error| {100 * out['median_abs_latency_error']:.1f}%, "
              f"median |throughput error| {100 * out['median_abs_throughput_error']:.1f}%")  # fmt: skip
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
