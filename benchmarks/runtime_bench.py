"""Runtime benchmark (issue 2): pool creation, graph capture, and the cost of partition switches.

Per-request latency of ResNet-50 and BERT-base at batch 1 and 8, each request one
CUDA-graph replay, with 0 (one stream), 1, 4 and 14 partition switches. Two kinds
of switch are measured: between two whole-GPU streams (the pure cost of a graph
edge across streams) and between two 96-SM green partitions of different workers
(against the same model on one 96-SM partition). Prints a table; writes JSON.

    python benchmarks/runtime_bench.py --out benchmarks/results/h100/runtime_bench.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import UTC, datetime

import torch

from eclip_ray.energy import open_meter
from eclip_ray.graph import ModelRunner, Plan, leaf_cuts
from eclip_ray.models import get
from eclip_ray.partition import StreamPool
from eclip_ray.partition.cuda import CudaGreenBackend
from eclip_ray.partition.layout import Layout, PartitionSpec, ladder
from eclip_ray.partition.placement import verify_pool


def switch_plan(runner: ModelRunner, k: int, a: str, b: str) -> Plan:
    if k == 0:
        return Plan.single(a)
    leaves = leaf_cuts(runner.calls)
    step = len(leaves) // (k + 1)
    cuts = tuple(leaves[step * (i + 1)].id for i in range(k))
    return Plan(cuts, tuple(a if i % 2 == 0 else b for i in range(k + 1)))


def time_replays(runner: ModelRunner, plan: Plan, batch: int, n: int) -> dict:
    cap = runner.capture(plan, batch)
    s = runner.stream
    lat = []
    with torch.cuda.stream(s):
        for _ in range(10):
            cap.replay()
        for _ in range(n):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record(s)
            cap.replay()
            e1.record(s)
            e1.synchronize()
            lat.append(e0.elapsed_time(e1))
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record(s)
        for _ in range(n):
            cap.replay()
        e1.record(s)
        e1.synchronize()
    return {
        "switches": plan.switches,
        "p50_ms": round(statistics.median(lat), 4),
        "p10_ms": round(sorted(lat)[n // 10], 4),
        "p90_ms": round(sorted(lat)[9 * n // 10], 4),
        "back_to_back_ms": round(e0.elapsed_time(e1) / n, 4),
        "capture_ms": round(cap.capture_ms, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--models", nargs="+", default=["resnet50", "bert-base"])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--switches", nargs="+", type=int, default=[1, 4, 14])
    ap.add_argument("--n", type=int, default=200)
    args = ap.parse_args()

    t0 = time.perf_counter()
    backend = CudaGreenBackend(0)
    backend_ms = 1e3 * (time.perf_counter() - t0)
    g = backend.geometry()
    base = ladder(g, 2)
    layout = Layout(g, (*base.partitions, PartitionSpec("whole-b", 0, g.sm_count)))
    pool = StreamPool(backend, layout)
    placement = verify_pool(pool)
    meter = open_meter("cuda")
    result = {
        "command": "python benchmarks/runtime_bench.py "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": platform.node(),
        "device": backend.describe() | {"nvml": meter.describe()},
        "backend_init_ms": round(backend_ms, 2),
        "pool": pool.report(),
        "placement_sm_counts": {k: len(v) for k, v in placement.items()},
        "models": [],
    }
    print(f"pool: {len(layout.partitions)} partitions in {pool.create_ms:.1f} ms; memory {pool.memory_bytes} B")
    for name in args.models:
        spec = get(name)
        runner = ModelRunner(name, spec.build(), spec.make_inputs, pool)
        for batch in args.batch_sizes:
            rows = []
            for kind, (a, b) in {"whole<->whole": ("whole", "whole-b"), "96SM<->96SM": ("w0.96", "w1.96")}.items():
                for k in [0, *args.switches]:
                    r = time_replays(runner, switch_plan(runner, k, a, b), batch, args.n)
                    r["kind"] = kind
                    rows.append(r)
                    ref = next(x for x in rows if x["kind"] == kind and x["switches"] == 0)
                    r["overhead_p50"] = round(r["p50_ms"] / ref["p50_ms"] - 1, 4)
                    r["overhead_back_to_back"] = round(r["back_to_back_ms"] / ref["back_to_back_ms"] - 1, 4)
                    print(
                        f"{name:10s} bs{batch:<2d} {kind:14s} switches {k:2d}: p50 {r['p50_ms']:7.3f} ms "
                        f"(+{100 * r['overhead_p50']:5.1f}%)  back-to-back {r['back_to_back_ms']:7.3f} ms "
                        f"(+{100 * r['overhead_back_to_back']:5.1f}%)  capture {r['capture_ms']:7.1f} ms"
                    )
            result["models"].append({"model": name, "batch_size": batch, "rows": rows})
        result.setdefault("memory", []).append(runner.memory_report())
        runner.close()
    pool.close()
    meter.close()
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
