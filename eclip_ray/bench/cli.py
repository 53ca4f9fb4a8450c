"""``eclip-ray bench``: run mixes under every policy (a part), measure isolated latencies, merge parts, report.

eclip-ray bench --mixes M1 M2 --out parts/m1_m2.json            # regime C (closed loop), a part
eclip-ray bench --mixes H1 H2 --regimes A B --out parts/h.json  # SLO-goodput searches under open-loop load
eclip-ray bench --models resnet50@1,vgg19@16/batch --regimes A --plan resnet50=whole,vgg19=112 --out p.json
eclip-ray bench isolated --models albert-base,vgg19 --out parts/isolated.json
eclip-ray bench merge parts/*.json --out summary.json           # + README.md tables and plots/
eclip-ray bench report summary.json                             # tables and plots again
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from pathlib import Path

from eclip_ray.bench.load import KINDS, loads_from_args
from eclip_ray.bench.mixes import HETERO, MIXES, resolve
from eclip_ray.bench.policies import FIXED, PAPER_POLICIES, POLICIES
from eclip_ray.partition import BACKENDS
from eclip_ray.planner.objective import OBJECTIVES

_INTERNAL = {"command", "bench_command", "func"}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``bench`` (and its ``isolated``, ``merge`` and ``report`` steps) on ``eclip-ray``."""
    p = subparsers.add_parser(
        "bench",
        help="benchmark co-location policies on mixes of models (issue 4)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--mixes", nargs="+", metavar="M", help=f"named mixes: the paper's {', '.join(MIXES)}; {', '.join(HETERO)}"
    )
    p.add_argument(
        "--models",
        help="or one mix: MODEL[@BATCH][/ROLE][=SHARE],... (ROLE latency or batch; SHARE: base rate / isolated "
        "throughput; a model twice: two instances)",
    )
    p.add_argument("--label", help="the --models mix's name in the results (default: the entries joined by +)")
    p.add_argument(
        "--policies",
        nargs="+",
        default=list(PAPER_POLICIES),
        choices=POLICIES,
        metavar="POLICY",
        help=f"of {', '.join(POLICIES)}, run in this order (default: the paper's {', '.join(PAPER_POLICIES)})",
    )
    p.add_argument(
        "--plan",
        action="append",
        default=[],
        metavar="SPEC",
        help="also measure this fixed plan, e.g. resnet50=whole,vgg19=112 (per instance an SM count, -1 for the "
        "rest, or whole; confined ones side by side from SM 0); MIX:SPEC measures it on that mix only; may be "
        "repeated",
    )
    p.add_argument(
        "--regimes",
        nargs="+",
        default=["C"],
        choices=["A", "B", "C"],
        help="A: batch jobs closed loop, services Poisson; B: all Poisson; both search the SLO-goodput. "
        "C: closed-loop windows (--load) (default)",
    )
    p.add_argument("--load", default="closed", choices=KINDS[:2], help="regime C's load")
    p.add_argument("--inflight", nargs="+", type=int, default=[1], help="closed: requests in flight per instance")
    p.add_argument("--rate", nargs="+", default=[], help="poisson: requests/s per instance ('a,b,c': one each)")
    p.add_argument("--max-inflight", type=int, default=32, help="poisson: requests queued on the GPU per instance")
    p.add_argument("--batch-size", nargs="+", default=["1"], help="one size for all, or 'a,b,c' one per instance")
    p.add_argument("--window-s", type=float, default=10.0, help="measurement window (the energy counter is coarse)")
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--isolated-s", type=float, default=5.0, help="window of each isolated-latency measurement")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--slo-factor", nargs="+", type=float, default=[3.0], help="SLO = this x the isolated p99 (each one a scenario)"
    )
    p.add_argument("--slo-percentile", type=float, default=99.0, help="SLO met when this %% of requests are within")
    p.add_argument("--search-steps", type=int, default=5, help="A/B: windows per load search (the floor's included)")
    p.add_argument("--step-window-s", type=float, default=1.0, help="A/B: each search window")
    p.add_argument("--step-warmup-s", type=float, default=0.3, help="A/B: warm-up before each window, same load")
    p.add_argument("--final-window-s", type=float, default=2.0, help="A/B: the window at the answer, with energy")
    p.add_argument("--search-floor", type=float, default=0.125, help="A/B: first window at this x the bracket's top")
    p.add_argument("--batch-inflight", type=int, default=1, help="A: the batch job's requests in flight")
    p.add_argument(
        "--profiles",
        default="h100",
        help="profile sets under benchmarks/profiles/ or directories, comma-separated: each model's profile comes "
        "from the first that has it (model-wise, mps, kw-prealloc and eclip need one of every instance)",
    )
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--objective", default="throughput", choices=OBJECTIVES, help="eclip's objective")
    p.add_argument(
        "--eclip-selection-s",
        type=float,
        help="eclip's selection budget per load level, in seconds of trials (default: the policy's own)",
    )
    p.add_argument("--fractions", default="0.25,0.5,0.75", help="the ladder pool's partition sizes (of the GPU)")
    p.add_argument("--isolated", help="a part or summary whose isolated latencies to use (measured where missing)")
    p.add_argument("--out", help="the part file (rewritten after every policy)")
    p.add_argument("--resume", action="store_true", help="keep the results --out holds; run only what is missing")
    p.add_argument(
        "--max-s", type=float, help="the run's time budget in seconds: policies and load searches share it, and stop"
    )
    p.add_argument("--deadline", type=float, help="the same as an absolute time.time(), shared by several parts")
    p.set_defaults(func=_run)
    sub = p.add_subparsers(dest="bench_command", metavar="{isolated,merge,report}")
    i = sub.add_parser("isolated", help="measure each model alone on the whole GPU (the SLOs' base)")
    i.add_argument("--models", required=True, help="comma-separated zoo names")
    i.add_argument("--batch-size", nargs="+", type=int, default=[1])
    i.add_argument("--warmup-s", type=float, default=2.0)
    i.add_argument("--isolated-s", type=float, default=5.0)
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--backend", default="auto", choices=BACKENDS)
    i.add_argument("--out", required=True)
    i.set_defaults(func=_isolated)
    m = sub.add_parser("merge", help="merge part files into the summary, its README table and plots")
    m.add_argument("parts", nargs="+", type=Path)
    m.add_argument("--out", required=True, type=Path, help="the summary JSON")
    m.add_argument("--readme", type=Path, help="default: README.md beside --out")
    m.add_argument("--plots", type=Path, help="default: plots/ beside --out")
    m.add_argument("--no-report", action="store_true", help="write the summary only")
    m.set_defaults(func=_merge)
    r = sub.add_parser("report", help="the README table and plots of a summary (or part)")
    r.add_argument("summary", type=Path)
    r.add_argument("--readme", type=Path, help="default: README.md beside the summary")
    r.add_argument("--plots", type=Path, help="default: plots/ beside the summary")
    r.set_defaults(func=_report)
    return p


def command_line(args: argparse.Namespace) -> str:
    """The command with every setting spelled out, for the result files."""
    words = ["eclip-ray", "bench"] + ([args.bench_command] if args.bench_command else [])
    for key, value in vars(args).items():
        if key in _INTERNAL or value is None or value is False or value == []:
            continue
        if key == "parts" or key == "summary":
            words += [str(v) for v in (value if isinstance(value, list) else [value])]
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            words.append(flag)
        elif isinstance(value, list):
            words += [flag, *map(str, value)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def _stop_on_sigterm() -> None:
    # A part killed by its time limit must still stop the MPS daemon and its clients (finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def _deadline(args: argparse.Namespace) -> float | None:
    ends = [t for t in (args.deadline, time.time() + args.max_s if args.max_s else None) if t is not None]
    return min(ends) if ends else None


def _run(args: argparse.Namespace) -> int:
    from eclip_ray.bench.config import BenchConfig
    from eclip_ray.bench.harness import run
    from eclip_ray.bench.search import Settings

    if not args.out:
        raise SystemExit("eclip-ray bench: --out is required (the part file to write)")
    mixes = resolve(args.mixes, args.models, args.label)
    plans, only_in = [], {}
    for text in (t.replace(" ", "") for t in args.plan):  # "H1:resnet50=whole,..." is a plan of mix H1 only
        head, sep, rest = text.partition(":")
        scoped = bool(sep) and "=" not in head
        plans.append(FIXED + (rest if scoped else text))
        if scoped:
            only_in.setdefault(plans[-1], []).append(head.upper() if head.upper() in mixes else head)
    cfg = BenchConfig(
        mixes=mixes,
        policies=tuple(dict.fromkeys([*args.policies, *plans])),
        policy_mixes={p: tuple(m) for p, m in only_in.items()},
        regimes=tuple(dict.fromkeys(args.regimes)),
        loads=tuple(loads_from_args(args.load, args.inflight, args.rate, args.max_inflight)),
        batch_sizes=tuple(tuple(int(b) for b in s.split(",")) for s in args.batch_size),
        window_s=args.window_s,
        warmup_s=args.warmup_s,
        isolated_s=args.isolated_s,
        seed=args.seed,
        slo_factors=tuple(args.slo_factor),
        slo_percentile=args.slo_percentile,
        profiles=args.profiles,
        backend=args.backend,
        objective=args.objective,
        fractions=tuple(float(f) for f in args.fractions.split(",")),
        search=Settings(
            args.search_steps, args.step_window_s, args.step_warmup_s, args.final_window_s, args.search_floor
        ),
        eclip_selection_s=args.eclip_selection_s,
        batch_inflight=args.batch_inflight,
        max_inflight=args.max_inflight,
        isolated_file=args.isolated,
        out=args.out,
        resume=args.resume,
        deadline=_deadline(args),
        command=command_line(args),
    )
    _stop_on_sigterm()
    run(cfg)
    print(f"wrote {args.out}")
    return 0


def _isolated(args: argparse.Namespace) -> int:
    from eclip_ray.bench.harness import run_isolated

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    _stop_on_sigterm()
    doc = run_isolated(
        models,
        args.batch_size,
        backend=args.backend,
        warmup_s=args.warmup_s,
        window_s=args.isolated_s,
        seed=args.seed,
        command=command_line(args),
        out=args.out,
    )
    print(json.dumps(doc["isolated"], indent=1))
    return 0


def _merge(args: argparse.Namespace) -> int:
    from eclip_ray.bench import results
    from eclip_ray.bench.publish import merge_files, publish

    summary = merge_files(args.parts, command_line(args))
    results.write(summary, args.out)
    print(f"merged {len(args.parts)} parts into {args.out}")
    for note in summary["merge_notes"]:
        print(f"  note: {note}")
    if not args.no_report:
        _publish(summary, args.out, args.readme, args.plots, publish)
    return 0


def _report(args: argparse.Namespace) -> int:
    from eclip_ray.bench import results
    from eclip_ray.bench.publish import publish

    _publish(results.read(args.summary), args.summary, args.readme, args.plots, publish)
    return 0


def _publish(summary: dict, at: Path, readme: Path | None, plots: Path | None, publish) -> None:
    written = publish(summary, readme or at.parent / "README.md", plots or at.parent / "plots")
    print(f"report: {written.get('readme')}; plots: {', '.join(written['plots']) or 'none'}")
