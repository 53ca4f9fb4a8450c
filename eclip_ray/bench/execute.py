"""Running the policies of one mix: in process, each on a stream pool of its own, or as MPS client processes.

Every result is recorded (and the part file rewritten) as soon as it exists;
a policy that fails records its error and the others still run.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from eclip_ray.bench import mps, packing, policies, results, stats
from eclip_ray.bench.config import BenchConfig
from eclip_ray.bench.driver import Lane, Window, drive
from eclip_ray.bench.load import Load
from eclip_ray.energy import open_meter
from eclip_ray.models.zoo import get as zoo_get
from eclip_ray.runtime import Runtime

# Seconds a policy needs beyond its warm-up and window (capture; MPS: starting its processes).
OVERHEAD_S = {"mps": 60.0}
DEFAULT_OVERHEAD_S = 15.0


@dataclass
class MixRun:
    """One mix at one batch-size setting, while it runs."""

    label: str
    models: tuple[str, ...]
    instances: list[str]
    batch: dict[str, int]
    inputs: policies.MixInputs
    work: dict[str, float] | None  # SM-ms per inference, for packing efficiency
    scenarios: dict[Load, dict[str, Any]]


def record(mix: MixRun, load: Load, policy: str, result: dict, save: Callable[[], None]) -> None:
    """Keep ``result`` in its scenario, rewrite the part file and print a line of progress."""
    mix.scenarios[load]["policies"][policy] = result
    save()
    print(_progress(mix, load, policy, result), file=sys.stderr, flush=True)


def _progress(mix: MixRun, load: Load, policy: str, r: dict) -> str:
    head = f"{mix.label} {load.label()} {policy}:"
    if r["status"] != "ok":
        return f"{head} {r['status']} ({r['reason']})"
    energy = f"{r['joules_per_inference']:.4f} J/inf" if r["joules_per_inference"] is not None else "energy n/a"
    p99 = ", ".join(f"{n} {v:.2f}" if v is not None else f"{n} n/a" for n, v in r["p99_ms"].items())
    return f"{head} {r['throughput_rps']:.1f} inf/s, {energy}, p99 ms {p99}, SLO {'met' if r['slo_met'] else 'MISSED'}"


def _late(cfg: BenchConfig, policy: str) -> str:
    """Why ``policy`` should not start now (the deadline would pass); empty when it may."""
    if cfg.deadline is None:
        return ""
    need = cfg.warmup_s + cfg.window_s + OVERHEAD_S.get(policy, DEFAULT_OVERHEAD_S)
    left = cfg.deadline - time.time()
    return "" if left >= need else f"the run's deadline: {left:.0f} s left, about {need:.0f} s needed"


def run_in_process(
    cfg: BenchConfig,
    backend: str,
    mix: MixRun,
    setups: Mapping[str, policies.Setup],
    todo: list[tuple[Load, str]],
    save: Callable[[], None],
) -> None:
    """Run the in-process ``todo`` (load, policy) pairs, each policy on a runtime and pool of its own.

    A policy's pool holds only the partitions it uses, as its own deployment would: every
    stream of a pool takes one of the device's hardware work queues, and streams of other
    policies' partitions would crowd the queues of the one measured (``partition/cuda.py``).
    """
    for policy in dict.fromkeys(p for _, p in todo):
        mine = [(load, p) for load, p in todo if p == policy]
        layout = policies.policy_layout(mix.inputs, setups[policy])
        try:
            with Runtime(backend=backend, layout=layout) as rt:
                runners = {n: rt.load(n, zoo_get(m)) for n, m in zip(mix.instances, mix.models, strict=True)}
                inputs = {n: r.example_inputs(mix.batch[n]) for n, r in runners.items()}
                meter = rt.meter if rt.meter.available else None
                note = "" if meter else rt.meter.describe().get("reason", "no energy meter")
                placement = _placement(rt, setups)
                while mine:
                    load, p = mine.pop(0)
                    late = _late(cfg, p)
                    if late:
                        record(mix, load, p, results.not_measured("not-run", late, setups[p].describe()), save)
                        continue
                    result = _measure_in_process(cfg, mix, setups[p], load, runners, inputs, meter, note)
                    if result["status"] == "ok":
                        result["setup"]["pool"] = layout.to_dict()
                        result["setup"]["work_queues"] = rt.describe().get("work_queues")
                        if setups[p].partitions:
                            result["setup"]["placement_overlap"] = placement.get("disjoint_overlap")
                    record(mix, load, p, result, save)
        except Exception as e:  # the runtime or a model failed to load: this policy's loads fail with it
            traceback.print_exc()
            for load, p in mine:
                record(mix, load, p, results.not_measured("error", repr(e), setups[p].describe()), save)
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _placement(rt: Runtime, setups: Mapping[str, policies.Setup]) -> dict[str, Any]:
    """The SMs each partition's kernels really ran on (``%smid`` probe), and the overlap of partitions
    meant to be disjoint (Model-Wise's): placement is verified, not assumed (hardware-notes.md section 1)."""
    if not rt.backend.partitions_sms:
        return {"verified": False, "reason": f"the {rt.backend.name} backend does not partition SMs"}
    try:
        from eclip_ray.partition.placement import verify_pool

        seen = {n: set(ids) for n, ids in verify_pool(rt.pool).items()}
    except Exception as e:  # the benchmark still runs; the file says placement was not checked
        traceback.print_exc()
        return {"verified": False, "reason": repr(e)}
    meant = [p.name for s in setups.values() for p in s.partitions if p.name in seen]
    overlap = {f"{a}&{b}": len(seen[a] & seen[b]) for i, a in enumerate(meant) for b in meant[i + 1 :]}
    return {"verified": True, "sm_ids": {n: sorted(v) for n, v in seen.items()}, "disjoint_overlap": overlap}


def _measure_in_process(
    cfg: BenchConfig,
    mix: MixRun,
    setup: policies.Setup,
    load: Load,
    runners: Mapping,
    inputs: Mapping,
    meter,
    note: str,
) -> dict:
    try:
        lanes = []
        for i, name in enumerate(mix.instances):
            runner, plan = runners[name], setup.plans[name]
            if runner.on_gpu:
                runner.capture(plan, mix.batch[name])
            lanes.append(Lane(name, runner, plan, mix.batch[name], inputs[name], index=i))
        w = drive(
            lanes,
            load,
            warmup_s=cfg.warmup_s,
            window_s=cfg.window_s,
            serial=setup.serial,
            meter=meter,
            energy_note=note,
            seed=cfg.seed,
        )
        return measured(setup, w, mix, cfg.slo_percentile)
    except Exception as e:
        traceback.print_exc()
        return results.not_measured("error", repr(e), setup.describe())


def run_mps(
    cfg: BenchConfig, backend: str, mix: MixRun, setup: policies.Setup, load: Load, save: Callable[[], None]
) -> None:
    """Run the ``mps`` policy under ``load``: the daemon, one client process per instance, one window."""
    late = _late(cfg, "mps")
    if late:
        record(mix, load, "mps", results.not_measured("not-run", late, setup.describe()), save)
        return
    specs = [
        {
            "instance": n,
            "model": m,
            "batch_size": mix.batch[n],
            "index": i,
            "backend": backend,
            "load": load.to_dict(),
            "seed": cfg.seed,
        }
        for i, (n, m) in enumerate(zip(mix.instances, mix.models, strict=True))
    ]
    try:
        meter = open_meter(backend)
        try:
            with mps.MpsDaemon() as daemon:
                w, info = mps.run_clients(
                    specs,
                    env=daemon.env,
                    percent=setup.mps_percent,
                    warmup_s=cfg.warmup_s,
                    window_s=cfg.window_s,
                    meter=meter,
                    servers=daemon.servers,
                )
                log = daemon.log_tail()
        finally:
            meter.close()
        if not info["servers"]:
            raise RuntimeError(f"the clients ran without an MPS server (control.log: {log or 'empty'})")
        result = measured(setup, w, mix, cfg.slo_percentile)
        result["setup"]["mps"] = info
    except Exception as e:
        traceback.print_exc()
        result = results.not_measured("error", repr(e), setup.describe())
    record(mix, load, "mps", result, save)


def measured(setup: policies.Setup, w: Window, mix: MixRun, percentile_pct: float) -> dict:
    """The result of a measured window: metrics, packing efficiency, and the policy's set-up."""
    m = stats.window_metrics(w, mix.inputs.slo_ms, percentile_pct)
    if m["inferences"] == 0:
        raise RuntimeError(f"no request completed in the {w.seconds:.2f} s window")
    out: dict[str, Any] = {"status": "ok", "reason": "", **m, "setup": setup.describe()}
    if mix.work is None:
        out.update(packing_efficiency=None, sm_time_bound_rps=None, packing_note=mix.inputs.profile_note)
        return out
    rps = {n: v["throughput_rps"] for n, v in m["models"].items()}
    eff, bound = packing.efficiency(mix.work, rps, mix.inputs.geometry.sm_count)
    out.update(packing_efficiency=eff, sm_time_bound_rps=bound, packing_note="")
    return out
