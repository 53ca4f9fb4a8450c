"""The ``eclip-ray`` command."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from eclip_ray.planner.profile import DEFAULT_SIZES as PROFILE_SIZES


def _demo(args: argparse.Namespace) -> int:
    import torch

    from eclip_ray.graph import Plan, block_cuts
    from eclip_ray.runtime import Runtime

    with Runtime(backend=args.backend, workers=2) as rt:
        print(f"backend: {rt.backend.name}  device: {rt.describe()['device']}")
        print(f"stream pool: {len(rt.pool.names)} partitions in {rt.pool.create_ms:.1f} ms")
        for p in rt.pool.report()["partitions"]:
            print(f"  {p['name']:8s} SM slots {p['start']:3d}..{p['start'] + p['count'] - 1:3d}  ({p['sm_count']} SMs)")
        small = rt.layout.names[0]
        for i, name in enumerate(args.models):
            runner = rt.load(name)
            blocks = block_cuts(runner.calls, depth=1)
            cut = blocks[len(blocks) // 2].id
            mine = [n for n in rt.layout.names if n.startswith(f"w{i % 2}.")] or [small]
            plans = {"whole GPU": Plan.single("whole"), f"{mine[0]} -> whole": Plan((cut,), (mine[0], "whole"))}
            x = runner.example_inputs(args.batch_size)
            ref = None
            for label, plan in plans.items():
                if runner.on_gpu:
                    runner.capture(plan, args.batch_size)
                runner.run(x, plan)  # warm
                t0 = time.perf_counter()
                for _ in range(args.repeats):
                    out = runner.run(x, plan)
                ms = 1e3 * (time.perf_counter() - t0) / args.repeats
                diff = 0.0 if ref is None else float((out[0].float() - ref[0].float()).abs().max())
                ref = out if ref is None else ref
                print(
                    f"{name:12s} batch {args.batch_size}  plan {label:18s} switches {plan.switches}  "
                    f"{ms:8.2f} ms/request  max |diff| vs first plan {diff:.2e}"
                )
        if rt.meter.available:
            rt.meter.begin_window("demo")
            time.sleep(1.0)
            m = rt.meter.end_window("demo")
            print(f"idle power over {m.seconds:.1f} s: {m.watts:.0f} W")
        else:
            print(f"energy: unavailable ({rt.meter.describe()['reason']})")
        if torch.cuda.is_available():
            print(json.dumps([r.memory_report() for r in rt.runners.values()], indent=1))
    return 0


def _profile(args: argparse.Namespace) -> int:
    from eclip_ray.graph.profiler import run_profiles

    written = run_profiles(
        args.models, args.batch_sizes, args.sizes, args.out, repeats=args.repeats, budget_s=args.budget_s
    )
    print(f"wrote {len(written)} profiles to {args.out}")
    return 0


def _calibrate_power(args: argparse.Namespace) -> int:
    from pathlib import Path

    from eclip_ray.energy.calibrate import power_model
    from eclip_ray.graph.profiler import partition_for, profiling_layout
    from eclip_ray.runtime import Runtime

    with Runtime(backend="cuda", layout=lambda g: profiling_layout(g, args.sizes)) as rt:
        parts = [partition_for(s, rt.layout.geometry) for s in args.sizes]
        model = power_model(rt.pool, rt.meter, parts, window_s=args.window_s)
        model["device"] = rt.describe()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(model, indent=1))
    print(json.dumps(model, indent=1))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eclip-ray", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="build the stream pool and run models on several plans")
    d.add_argument("--backend", default="auto", choices=["auto", "cuda", "cpu"])
    d.add_argument("--models", nargs="+", default=["resnet50", "bert-base"])
    d.add_argument("--batch-size", type=int, default=1)
    d.add_argument("--repeats", type=int, default=5)
    d.set_defaults(func=_demo)
    pr = sub.add_parser("profile", help="profile models' kernel groups on each partition size (GPU)")
    pr.add_argument("models", nargs="+")
    pr.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 4, 8, 16])
    pr.add_argument(
        "--sizes",
        nargs="+",
        type=int,
        default=list(PROFILE_SIZES),
        help="SM counts to measure, down to the device's step (8 on Hopper); a count >= the device's is the whole GPU",
    )
    pr.add_argument("--out", default="benchmarks/profiles/h100")
    pr.add_argument("--repeats", type=int, default=3)
    pr.add_argument("--budget-s", type=float, default=None, help="start no profile after this many seconds")
    pr.set_defaults(func=_profile)
    cp = sub.add_parser("calibrate-power", help="measure idle power and power on N SMs (GPU)")
    cp.add_argument("--sizes", nargs="+", type=int, default=[32, 64, 96, 132])
    cp.add_argument("--window-s", type=float, default=3.0)
    cp.add_argument("--out", default="benchmarks/profiles/h100/power.json")
    cp.set_defaults(func=_calibrate_power)
    __import__("eclip_ray.planner.cli", fromlist=["add_parser"]).add_parser(sub)
    __import__("eclip_ray.serve.cli", fromlist=["add_parser"]).add_parser(sub)
    __import__("eclip_ray.bench.cli", fromlist=["add_parser"]).add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from eclip_ray.partition.cuda import configure_work_queues

    configure_work_queues()  # before anything starts the CUDA driver
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
