"""``eclip-ray plan``: plan a co-location mix from shipped profiles, on any machine (no GPU needed)."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from eclip_ray.errors import PlanError
from eclip_ray.models.names import canonical
from eclip_ray.partition.layout import DeviceGeometry, Layout, ladder
from eclip_ray.planner import baselines, catalog
from eclip_ray.planner.baselines import Baseline
from eclip_ray.planner.mixes import instance_names
from eclip_ray.planner.objective import OBJECTIVES
from eclip_ray.planner.optimizer import MixPlan, WorkerPlan, optimize
from eclip_ray.planner.profile import ModelProfile
from eclip_ray.planner.settings import PlannerSettings
from eclip_ray.planner.table import build_plan_table


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``plan`` on the ``eclip-ray`` command's subparsers."""
    p = subparsers.add_parser("plan", help="plan a co-location mix from profiles and print the predicted gains")
    p.add_argument("--models", required=True, help="comma-separated zoo names; repeat a name for two instances")
    p.add_argument("--slo-ms", default=None, help="latency SLO per model in ms, comma-separated (one value: all)")
    p.add_argument("--profiles", default="h100", help="profile set under benchmarks/profiles/, or a directory")
    p.add_argument("--batch-size", default="1", help="batch size, one for all or one per model, comma-separated")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--objective", default="throughput", choices=OBJECTIVES)
    p.add_argument("--switch-budget", type=int, default=PlannerSettings.switch_budget)
    p.add_argument("--max-groups", type=int, default=PlannerSettings.max_groups, help="kernel groups per model")
    p.add_argument(
        "--interference",
        type=float,
        default=None,
        help="slowdown when a co-located model keeps all of a partition's SMs busy (1: twice as long); "
        "default: the profile set's corun.json, else 1",
    )
    p.add_argument(
        "--contention",
        type=float,
        default=None,
        help="slowdown when the other models keep every SM busy, on SMs of their own (memory system); "
        "default: the profile set's corun.json, else 0",
    )
    p.add_argument("--time-limit-s", type=float, default=PlannerSettings.time_limit_s, help="per MILP")
    p.add_argument("--fractions", default="0.25,0.5,0.75", help="the pool's per-worker partition sizes (of the GPU)")
    p.add_argument("--plot", type=Path, default=None, help="draw the plan to this file (PNG, PDF, SVG)")
    p.add_argument("--table", type=Path, default=None, help="also write the plan table of every sub-mix (JSON)")
    p.set_defaults(func=run)
    f = subparsers.add_parser("fit-corun", help="fit the cost model's co-run coefficients to measured mixes (CPU)")
    f.add_argument("results", nargs="+", type=Path, help="validation or bench result JSON files")
    f.add_argument("--profiles", default="h100", help="profile set under benchmarks/profiles/, or a directory")
    f.add_argument("--out", type=Path, default=None, help="default: corun.json in the profile set")
    f.add_argument("--table", type=Path, default=None, help="also write the predictions as a Markdown table")
    f.set_defaults(func=fit_corun)
    return p


def fit_corun(args: argparse.Namespace) -> int:
    """Fit, report the leave-one-mix-out errors, write corun.json; 2 with the reason when it cannot."""
    from eclip_ray.planner import corun

    try:
        directory = catalog.profile_dir(args.profiles)
        pred = corun.Predictor(directory)
        rep = corun.leave_one_mix_out(pred, corun.load_observations(args.results))
    except (PlanError, OSError, ValueError) as e:
        print(f"eclip-ray fit-corun: {e}", file=sys.stderr)
        return 2
    out = args.out or directory / catalog.CORUN_FILE
    command = "eclip-ray fit-corun " + " ".join(str(r) for r in args.results) + f" --profiles {args.profiles}"
    out.write_text(json.dumps(rep.to_dict(command), indent=1))
    if args.table:
        args.table.write_text(corun.markdown(rep))
    c, m = rep.coefficients, rep.medians()
    print(f"{len(rep.rows)} observations of {len(rep.held_out)} mixes")
    print(
        f"fitted on all: interference {c.interference}, contention {c.contention}, blocking {c.blocking}, "
        f"coverage {c.coverage}, power scale {c.power_scale}; "
        f"tail (p99): {'not measured' if c.tail is None else c.tail.to_dict()}"
    )
    print("each mix predicted with coefficients fitted on the others:")
    for key, v in m.items():
        print(f"  {key.replace('_', ' ')}: {'-' if v is None else f'{100 * v:.1f}%'}")
    print(f"wrote {out}")
    return 0


def _split(text: str | None, n: int, what: str, cast) -> list:
    if text is None:
        return [None] * n
    items = [cast(x) for x in text.split(",") if x.strip()]
    if len(items) == 1:
        return items * n
    if len(items) != n:
        raise PlanError(f"{len(items)} values for {what} but {n} models; give one value or one per model")
    return items


def run(args: argparse.Namespace) -> int:
    """Plan the mix of ``args`` and print it; 2 with the reason on stderr when it cannot be planned."""
    try:
        return _plan(args)
    except PlanError as e:
        print(f"eclip-ray plan: {e}", file=sys.stderr)
        return 2


def _plan(args: argparse.Namespace) -> int:
    models = [canonical(m.strip()) for m in args.models.split(",") if m.strip()]
    names = instance_names(models)
    slos = dict(zip(names, _split(args.slo_ms, len(models), "--slo-ms", float), strict=True))
    batches = _split(args.batch_size, len(models), "--batch-size", int)
    directory = catalog.profile_dir(args.profiles)
    profiles = {
        n: catalog.load_profile(directory, m, b, args.dtype) for n, m, b in zip(names, models, batches, strict=True)
    }
    power, note = catalog.load_power(directory)
    layout = _layout(profiles, args.fractions)
    settings = catalog.fitted_settings(
        directory, PlannerSettings(args.switch_budget, args.max_groups, time_limit_s=args.time_limit_s)
    )
    if args.interference is not None:
        settings = replace(settings, interference=args.interference)
    if args.contention is not None:
        settings = replace(settings, contention=args.contention)
    plan = optimize(profiles, layout, slos, args.objective, power=power, power_note=note, settings=settings)
    print(report(plan, layout, baselines.predict(plan.mix), directory))
    if args.plot:
        from eclip_ray.planner.plot import draw

        print(f"\nplot: {draw(plan, args.plot)}")
    if args.table:
        table = build_plan_table(
            profiles,
            layout,
            slos,
            args.objective,
            power=power,
            power_note=note,
            settings=settings,
            skip_infeasible=True,
        )
        print(f"plan table: {len(table)} mixes, {len(table.skipped)} without a plan -> {table.save(args.table)}")
    return 0


def _layout(profiles: dict[str, ModelProfile], fractions: str) -> Layout:
    sm = {p.key.sm_count for p in profiles.values()}
    if len(sm) != 1:
        raise PlanError(f"the profiles were made on devices with different SM counts {sorted(sm)}")
    return ladder(DeviceGeometry(sm.pop()), len(profiles), [float(f) for f in fractions.split(",")])


def report(plan: MixPlan, layout: Layout, base: dict[str, Baseline], directory: Path) -> str:
    """The plan, its prediction and the predicted gains over the baselines, as text."""
    pool = ", ".join(f"{p.name} [{p.start},{p.stop})" for p in layout.partitions)
    fitted = catalog.CORUN_FILE if (directory / catalog.CORUN_FILE).is_file() else "defaults, no corun.json"
    mix = plan.mix
    lines = [
        f"profiles: {directory}",
        f"pool: {pool}",
        f"cost model: interference {mix.interference:g}, contention {mix.contention:g} ({fitted})",
        f"objective: {plan.objective}",
        "",
    ]
    for w in plan.workers.values():
        lines += [*_worker_table(plan, w), ""]
    lines += [*_summary(plan), "", *_gains(plan, base)]
    return "\n".join(lines)


def _worker_table(plan: MixPlan, w: WorkerPlan) -> list[str]:
    slo = next(x.slo_ms for x in plan.mix.workers if x.name == w.name)
    head = (
        f"{w.name} ({w.model}, batch {w.batch_size}, worker {w.slot}): {len(w.stages)} stages, "
        f"{w.plan.switches} switches, predicted {plan.predicted.latency_ms[w.name]:.3f} ms"
    )
    if slo is not None:
        head += f" (SLO {slo:g} ms)"
    columns = f"  {'groups':>9} {'units':>9} {'kernels':>7}  {'partition':<9} {'SMs':>9} {'start ms':>9} {'ms':>8}"
    rows = [head, columns + "  modules"]
    for s in w.stages:
        rows.append(
            f"  {s.groups[0]:>4}-{s.groups[1] - 1:<4} {s.units[0]:>4}-{s.units[1] - 1:<4} {s.kernels:>7}  "
            f"{s.partition:<9} {s.sm_start:>4}-{s.sm_start + s.sm_count - 1:<4} {s.start_ms:>9.3f} {s.ms:>8.3f}  "
            f"{s.modules[0]} .. {s.modules[1]}"
        )
    return rows


def _summary(plan: MixPlan) -> list[str]:
    p = plan.predicted
    energy = f"{p.energy_j:.4f} J/inference" if p.energy_j is not None else f"energy n/a ({p.energy_note})"
    proof = "" if plan.optimal else " (MILP stopped at its time limit: best plan found, not proven optimal)"
    return [f"predicted: {p.throughput:.1f} inferences/s, {energy}{proof}"]


def _gains(plan: MixPlan, base: dict[str, Baseline]) -> list[str]:
    p = plan.predicted
    rows = [f"{'baseline':<13} {'inf/s':>9} {'J/inf':>8}  {'plan vs baseline':<34} latency ms"]
    for b in base.values():
        if b.prediction is None:
            rows.append(f"{b.name:<13} unavailable: {b.note}")
            continue
        q = b.prediction
        gain = f"throughput {p.throughput / q.throughput - 1:+.1%}"
        if p.energy_j is not None and q.energy_j is not None:
            gain += f", energy {p.energy_j / q.energy_j - 1:+.1%}"
        lat = ", ".join(f"{n} {v:.2f}" for n, v in q.latency_ms.items())
        joules = f"{q.energy_j:.4f}" if q.energy_j is not None else "n/a"
        rows.append(f"{b.name:<13} {q.throughput:>9.1f} {joules:>8}  {gain:<34} {lat}")
    return rows
