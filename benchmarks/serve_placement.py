"""Scale-out: the same application on 1 GPU and on N GPUs, driven over HTTP with every model loaded at once.

For each value of ``--gpus`` the application of ``--config`` (default: ``deployments/two-gpus.yaml``)
runs on a local Ray instance with that many GPU actors (a model's ``replicas`` is capped at it), and
the placement planner decides which actor hosts which model. Every model then gets ``--clients``
closed-loop clients at once (KServe v2, binary tensors, ``--rows`` rows per request) for
``--duration-s`` after ``--warmup-s``. Reported per setting:

* the placement (models per GPU, method, predicted loads and warnings) as the fleet applied it;
* per model: requests/s answered 2xx, latency p50/p99 of those, the share within the model's SLO,
  refusals and errors;
* per GPU actor, as the actor counted it between readings just before and after the window:
  inferences per model, batches, busy time and energy (NVML on NVIDIA; absent on the CPU
  backend), hence joules per inference;
* the ratio of total requests/s at each setting to the 1-GPU setting.

    python benchmarks/serve_placement.py --backend cpu --gpus 1 2 --duration-s 5 --out /tmp/placement.json
    python benchmarks/serve_placement.py --gpus 1 2 --out benchmarks/results/h100/serve_placement.json

The client runs on the same machine as the server; with one HTTP proxy and one batching deployment
per model, the HTTP front is shared by all GPUs, and the result shows when it, not the GPUs, is the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import serve_load

from eclip_ray.bench import results
from eclip_ray.serve.config import AppConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "deployments" / "two-gpus.yaml"


def config_for(config: AppConfig, gpus: int, backend: str | None) -> AppConfig:
    """``config`` on ``gpus`` GPU actors: replicas capped at ``gpus``, the backend overridden when given."""
    data = config.model_dump(mode="json")
    data["gpus"] = gpus
    if backend:
        data["backend"] = backend
    for m in data["models"]:
        m["replicas"] = min(m.get("replicas", 1), gpus)
    return AppConfig.model_validate(data).resolved()


def fleet_describe() -> dict[str, Any]:
    from ray import serve

    from eclip_ray.serve.api import FLEET

    return serve.get_deployment_handle(FLEET, app_name=serve_load.APP).describe.remote().result(timeout_s=60)


def actor_stats(gpus: Sequence[int]) -> dict[int, dict[str, Any]]:
    import ray

    return {g: ray.get(serve_load.gpu_actor(g).stats.remote(), timeout=60) for g in gpus}


def window(before: Mapping[int, Mapping[str, Any]], after: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    """What each GPU actor did between two ``stats()`` readings: inferences, batches, busy s, energy."""
    out = {}
    for g, a in after.items():
        b = before[g]
        models = {
            name: {k: s[k] - b["models"].get(name, {}).get(k, 0) for k in ("inferences", "batches", "busy_s")}
            for name, s in a["models"].items()
        }
        inferences = sum(m["inferences"] for m in models.values())
        gpu: dict[str, Any] = {"models": models, "inferences": inferences, "plan_switches": a["plan_switches"]}
        if a["energy"]["available"] and b["energy"]["available"]:
            joules = a["energy"]["joules"] - b["energy"]["joules"]
            gpu["joules"] = joules
            gpu["joules_per_inference"] = joules / inferences if inferences else None
        else:
            gpu["energy"] = a["energy"].get("reason") or "not measured"
        out[str(g)] = gpu
    return out


async def drive(
    targets: Sequence[serve_load.Target], clients: int, duration_s: float, warmup_s: float, timeout_s: float
):
    """Every model's closed loop at once; the window opens after ``warmup_s`` for all of them."""
    loops = [serve_load.closed_loop(t, clients, duration_s, timeout_s, warmup_s) for t in targets]
    return await asyncio.gather(*loops)


def measure(config: AppConfig, args: argparse.Namespace) -> dict[str, Any]:
    with serve_load.local_app(config.model_dump(mode="json"), args.num_cpus, args.ready_timeout_s) as url:
        fleet = fleet_describe()
        gpus = fleet["actors"]
        targets = [serve_load.target_for(url, m, args.rows, args.seed) for m in config.models]
        # Warm every model's graphs and batch sizes first; then the actors' counters bracket the window
        # (the clients start at once, so it includes their ramp-up of a few ms).
        asyncio.run(drive(targets, args.clients, 1.0, args.warmup_s, args.timeout_s))
        before = actor_stats(gpus)
        loops = asyncio.run(drive(targets, args.clients, args.duration_s, 0.0, args.timeout_s))
        after = actor_stats(gpus)
    models = {}
    for m, loop in zip(config.models, loops, strict=True):
        lat = loop["latency_ms"] or {}
        models[m.name] = {
            "slo_ms": m.slo_ms,
            "replicas": m.replicas,
            "rps": loop["capacity_rps"],
            "answers": loop["answers"],
            "latency_ms": lat,
            "p99_within_slo": None if not lat or m.slo_ms is None else lat["p99"] <= m.slo_ms,
        }
    per_gpu = window(before, after)
    joules = [g["joules"] for g in per_gpu.values() if "joules" in g]
    inferences = sum(g["inferences"] for g in per_gpu.values())
    return {
        "gpus": config.gpus,
        "backend": fleet["backend"],
        "placement": fleet["placement"],
        "models": models,
        "per_gpu": per_gpu,
        "total_rps": sum(m["rps"] for m in models.values()),
        "joules_per_inference": sum(joules) / inferences
        if joules and len(joules) == len(per_gpu) and inferences
        else None,
    }


def markdown(doc: Mapping[str, Any]) -> str:
    base = doc["settings"][0]["total_rps"] or None
    lines = [
        f"# Scale-out: {doc['config']} on {', '.join(str(s['gpus']) for s in doc['settings'])} GPU(s)",
        "",
        f"Measured {doc['date']} on {doc['machine']['gpu'] or doc['machine']['cpu']}; command: `{doc['command']}`",
        "",
        f"{doc['clients']} closed-loop clients per model, {doc['rows']} row(s) per request, "
        f"{doc['duration_s']:g} s window.",
        "",
        "| GPUs | placement | model | req/s | p50 ms | p99 ms | SLO ms | p99 within SLO |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in doc["settings"]:
        where = " / ".join(f"gpu{i}: {', '.join(g) or '-'}" for i, g in enumerate(s["placement"]["gpus"]))
        for name, m in s["models"].items():
            lat = m["latency_ms"] or {}
            lines.append(
                f"| {s['gpus']} | {where} | {name} | {m['rps']:.1f} | {lat.get('p50', float('nan')):.1f} | "
                f"{lat.get('p99', float('nan')):.1f} | {m['slo_ms']} | {m['p99_within_slo']} |"
            )
    lines += ["", "| GPUs | total req/s | vs 1 GPU | J/inference | per GPU: inferences, J |", "|---|---|---|---|---|"]
    for s in doc["settings"]:
        ratio = f"{s['total_rps'] / base:.2f}x" if base else "-"
        jpi = f"{s['joules_per_inference']:.3f}" if s["joules_per_inference"] is not None else "-"
        per = "; ".join(
            f"gpu{g}: {v['inferences']}, {v['joules']:.0f} J" if "joules" in v else f"gpu{g}: {v['inferences']}"
            for g, v in s["per_gpu"].items()
        )
        lines.append(f"| {s['gpus']} | {s['total_rps']:.1f} | {ratio} | {jpi} | {per} |")
    warnings = [w for s in doc["settings"] for w in s["placement"]["warnings"]]
    if warnings:
        lines += ["", "Placement warnings: " + "; ".join(sorted(set(warnings)))]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="Serve config YAML or AppConfig")
    p.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="GPU actors of each setting (first: the base)")
    p.add_argument("--backend", choices=["auto", "cuda", "cpu"], help="override the config's backend")
    p.add_argument("--clients", type=int, default=8, help="closed-loop clients per model")
    p.add_argument("--rows", type=int, default=1, help="rows per request")
    p.add_argument("--warmup-s", type=float, default=5.0)
    p.add_argument("--duration-s", type=float, default=15.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout-s", type=float, default=30.0)
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance")
    p.add_argument("--ready-timeout-s", type=float, default=600.0)
    p.add_argument("--out", type=Path, help="result JSON; a .md table is written beside it")
    args = p.parse_args(argv)
    if any(g < 1 for g in args.gpus):
        p.error("--gpus: every value must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    base = serve_load.config_of(args.config, "tiny-cnn")
    argv = sys.argv if argv is None else ["serve_placement.py", *argv]
    doc: dict[str, Any] = {
        "command": serve_load.command_of(argv),
        "date": results.now_iso(),
        "machine": serve_load.machine(),
        "config": str(args.config.name),
        "clients": args.clients,
        "rows": args.rows,
        "duration_s": args.duration_s,
        "settings": [],
    }
    for gpus in args.gpus:
        setting = measure(config_for(base, gpus, args.backend), args)
        doc["settings"].append(setting)
        print(f"{gpus} GPU(s): {setting['total_rps']:.1f} req/s, placement {setting['placement']['gpus']}", flush=True)
    if args.out:
        results.write(doc, args.out)
        args.out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
