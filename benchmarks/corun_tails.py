"""Co-run tails (issue 15), on the GPU: latency-critical models beside batched neighbours, on several pools and loads.

For each pair (a batch-1 latency-critical model, a neighbour running batches of 8 or 16),
one runtime holds every pool partition, every plan is captured, the latency-critical
model is measured alone (its isolated latency and capacity), then the pair runs on each
plan, under two loads:

- ``closed``: both in a closed loop, one request in flight each (the neighbour flat out);
- ``open``: the latency-critical model gets Poisson arrivals at ``--load-fraction`` of
  its capacity alone, the neighbour still flat out (regime A of the benchmark): its
  arrivals come at four times its capacity alone, one batch on the GPU at a time, so it
  never idles; its latencies then count host queueing and are not recorded. Both
  models are first measured alone on the whole GPU (their capacities).

Plans: ``multi-stream`` (both whole), ``nested`` (the latency-critical model whole, the
neighbour on ``s0.c`` for each ``--nested`` size), ``disjoint`` (``s0.r`` and the rest for
each ``--disjoint`` size) and ``inverted`` (the neighbour whole, the latency-critical
model on ``s0.96``: what the old plan did). Per run: p50 and p99 of every recorded model,
throughput, and the plans and pool as ``eclip-ray fit-corun`` reads them (``"kind":
"corun"``). The file is rewritten after every run; a run that would pass ``--budget-s``
is not started.

    CUDA_DEVICE_MAX_CONNECTIONS=32 PYTHONPATH=. python benchmarks/corun_tails.py --out corun_tails.json
    eclip-ray fit-corun corun_tails.json --profiles h200 --table validation.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from eclip_ray.bench.driver import Lane, drive
from eclip_ray.bench.load import Load
from eclip_ray.bench.stats import percentile
from eclip_ray.graph.plan import Plan
from eclip_ray.models.names import canonical
from eclip_ray.models.zoo import get as zoo_get
from eclip_ray.partition.cuda import configure_work_queues
from eclip_ray.partition.layout import DeviceGeometry, PartitionSpec, span_name, union
from eclip_ray.runtime import Runtime

PAIRS = (
    "resnet50:vgg19:16",
    "mobilenet_v3_large:resnet152:8",
    "bert-base:densenet201:16",
    "shufflenet_v2_x1_0:albert-base:16",
)
WHOLE = Plan.single("whole")
FLAT_OUT = 4.0  # the neighbour's "arrivals" in the open load, x its capacity alone: it always has a batch waiting


def plans(lc: str, nb: str, nested: list[int], disjoint: list[int], g: DeviceGeometry) -> dict[str, dict[str, Plan]]:
    out = {"multi-stream": {lc: WHOLE, nb: WHOLE}}
    for c in nested:
        out[f"nested {nb}={c}"] = {lc: WHOLE, nb: Plan.single(span_name(0, c))}
    for r in disjoint:
        out[f"disjoint {lc}={r}"] = {lc: Plan.single(span_name(0, r)), nb: Plan.single(span_name(r, g.sm_count - r))}
    out[f"inverted {lc}=96"] = {lc: Plan.single(span_name(0, 96)), nb: WHOLE}
    return out


def pool(named: dict[str, dict[str, Plan]], g: DeviceGeometry):
    specs = {}
    for ps in named.values():
        for p in ps.values():
            for q in p.partitions:
                if q != "whole":
                    start, count = (int(x) for x in q.removeprefix("s").split("."))
                    specs[q] = PartitionSpec(q, start, count)
    return union(g, specs.values())


def window(rt: Runtime, plan_of: dict[str, Plan], batch: dict[str, int], load: Load, args) -> dict:
    lanes = [
        Lane(n, rt.runners[n], p, batch[n], rt.runners[n].example_inputs(batch[n]), index=i)
        for i, (n, p) in enumerate(plan_of.items())
    ]
    w = drive(lanes, load, warmup_s=args.warmup_s, window_s=args.window_s, seed=args.seed)
    if w.seconds <= 0:
        raise RuntimeError(f"the {args.window_s:g} s window closed before the loop looked again: a request outlasts it")
    lat = {n: r.latencies_ms for n, r in w.lanes.items()}
    done = {n: len(v) * batch[n] for n, v in lat.items()}
    return {
        "p50_ms": {n: percentile(v, 50) for n, v in lat.items() if v},
        "p99_ms": {n: percentile(v, 99) for n, v in lat.items() if v},
        "throughput_rps": sum(done.values()) / w.seconds,
        "models_rps": {n: d / w.seconds for n, d in done.items()},
        "requests": {n: len(v) for n, v in lat.items()},
        "seconds": w.seconds,
        "avg_power_w": None,  # windows this short do not read NVML's energy counter reliably
    }


def run_pair(spec: str, args, doc: dict, save, t0: float) -> None:
    lc_model, nb_model, nb_batch = spec.split(":")
    lc, nb = canonical(lc_model), canonical(nb_model)
    batch = {lc: 1, nb: int(nb_batch)}
    layout = lambda g: pool(plans(lc, nb, args.nested, args.disjoint, g), g)  # noqa: E731
    with Runtime(backend=args.backend, layout=layout, require_energy=False) as rt:
        named = plans(lc, nb, args.nested, args.disjoint, rt.layout.geometry)
        for n in (lc, nb):
            runner = rt.load(n, zoo_get(n))
            for ps in named.values():
                if runner.on_gpu:
                    runner.capture(ps[n], batch[n])
        capacity = {}
        for n in (lc, nb):
            alone = window(rt, {n: WHOLE}, batch, Load("closed", 1), args)
            capacity[n] = 1e3 / alone["p50_ms"][n]  # batches per second, one in flight, the whole GPU
            iso = {"batch_size": batch[n], "p50_ms": alone["p50_ms"][n], "p99_ms": alone["p99_ms"][n]}
            doc["isolated"][f"{n}_bs{batch[n]}"] = {**iso, "capacity_rps": capacity[n]}
        rate = args.load_fraction * capacity[lc]
        flat_out = Load("poisson", rates_rps=(rate, FLAT_OUT * capacity[nb]), max_inflight=1)
        loads = {"closed": (Load("closed", 1), {lc: None, nb: None}), "open": (flat_out, {lc: rate, nb: None})}
        pool_dict = rt.layout.to_dict()
        for load_name, (load, rates) in loads.items():
            for label, plan_of in named.items():
                if time.perf_counter() - t0 + args.warmup_s + args.window_s > args.budget_s:
                    doc["not_run"].append(f"{spec} {label} {load_name}: the {args.budget_s:g} s budget")
                    continue
                run = {"mix": spec, "label": f"{label} {load_name}", "pool": pool_dict}
                run["instances"] = [
                    {"name": n, "model": n, "batch_size": batch[n], "plan": plan_of[n].to_dict(), "rate_rps": rates[n]}
                    for n in (lc, nb)
                ]
                try:
                    m = window(rt, plan_of, batch, load, args)
                    if load_name == "open":  # the neighbour's latencies count its own host queue: not a latency
                        for key in ("p50_ms", "p99_ms"):
                            m[key].pop(nb, None)
                    run["measured"] = m
                    p99 = ", ".join(f"{n} {v:.2f}" for n, v in m["p99_ms"].items())
                    print(f"{spec} {label} {load_name}: {m['throughput_rps']:.0f} inf/s, p99 ms {p99}", flush=True)
                except Exception as e:  # one run's failure is recorded, the others still run
                    traceback.print_exc()
                    run["error"] = repr(e)
                doc["runs"].append(run)
                save()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), help="latency_model:neighbour:neighbour_batch")
    ap.add_argument("--nested", nargs="+", type=int, default=[112, 96, 64], help="the neighbour's SMs, nested")
    ap.add_argument("--disjoint", nargs="+", type=int, default=[24], help="the latency model's SMs, disjoint")
    ap.add_argument("--load-fraction", type=float, default=0.4, help="open load: share of the model's capacity alone")
    ap.add_argument("--warmup-s", type=float, default=0.2)
    ap.add_argument("--window-s", type=float, default=0.8)
    ap.add_argument("--budget-s", type=float, default=90.0, help="start no run after this many seconds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke test (no partitions)")
    args = ap.parse_args(argv)
    configure_work_queues()
    t0 = time.perf_counter()
    doc = {
        "kind": "corun",
        "command": "python benchmarks/corun_tails.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cuda_device_max_connections": os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS", "unset"),
        "isolated": {},
        "runs": [],
        "not_run": [],
    }
    out = Path(args.out)

    def save() -> None:
        out.write_text(json.dumps(doc, indent=1))

    for spec in args.pairs:
        try:
            run_pair(spec, args, doc, save, t0)
        except Exception as e:  # a pair that cannot load is recorded; the next still runs
            traceback.print_exc()
            doc["runs"].append({"mix": spec, "label": "set-up", "error": repr(e)})
        save()
    ok = [r for r in doc["runs"] if "measured" in r]
    print(f"{len(ok)} runs measured, {len(doc['not_run'])} not run, in {time.perf_counter() - t0:.0f} s -> {out}")
    print(f"{'pair':<40} {'run':<34} {'inf/s':>8}  p99 ms")
    for r in ok:
        p99 = ", ".join(f"{n} {v:.2f}" for n, v in r["measured"]["p99_ms"].items() if not math.isnan(v))
        print(f"{r['mix']:<40} {r['label']:<34} {r['measured']['throughput_rps']:>8.0f}  {p99}")
    return doc


if __name__ == "__main__":
    main()
