"""Soak: a steady open-loop load for a long time, with the memory of every serving process sampled.

The application of ``--config`` (default: serve_load's ``--preset`` tiny-cnn, on the CPU backend)
runs on a local Ray instance; Poisson arrivals at ``--rate-rps`` (default: half the
capacity serve_load measures) go on for ``--duration-s`` (600 s). Every
``--sample-s`` seconds the resident set (RSS) of the processes that serve requests
is read with psutil: Serve's proxy, each Serve replica (ingress, model deployments,
the fleet) and each GPU actor (found by its ``process()`` method, which also gives
the memory torch's allocator holds on a GPU; None on the CPU backend). After
``--warmup-s`` the growth of each series is reported as the slope of a least-squares
line (MB per minute) and as last minus first; the run fails when a slope is over
``--max-slope-mb-per-min`` or a request was lost.

    python benchmarks/serve_soak.py --out benchmarks/results/cpu/soak.json
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import serve_load

from eclip_ray.bench import results

ROLES = ("ServeReplica:", "ProxyActor", "GpuActor")  # Ray's process titles: ray::<class>[.<method>]
NATIVE = ("haproxy",)  # the HAProxy front's processes, by name
MB = 1 << 20


def serving_processes() -> dict[str, int]:
    """``{"<role> pid <pid>": pid}`` of the Ray processes that serve requests: those this process started (a local
    Ray), else every one on the machine (an application started elsewhere)."""
    import psutil

    mine = [p for p in psutil.Process().children(recursive=True) if _role(p) is not None]
    found = {}
    for p in mine or psutil.process_iter():
        role = _role(p)
        if role is not None:
            found[f"{role} pid {p.pid}"] = p.pid
    return found


def _role(p) -> str | None:
    import psutil

    try:
        title, name = " ".join(p.cmdline()), p.name()
    except psutil.Error:
        return None
    if title.startswith("ray::") and title[5:].startswith(ROLES):
        return title[5:].split(".", 1)[0].split(" ", 1)[0]
    return name if name in NATIVE else None


def rss_mb(pids: Mapping[str, int]) -> dict[str, float]:
    import psutil

    out = {}
    for key, pid in pids.items():
        try:
            out[key] = psutil.Process(pid).memory_info().rss / MB
        except psutil.Error:  # gone (a replica replaced): its series just ends
            continue
    return out


def gpu_memory_mb(app: str = serve_load.APP) -> dict[str, float]:
    """Bytes torch's allocator reserves on each GPU actor's device, in MB; empty on the CPU backend."""
    import ray

    out = {}
    for gpu in range(64):
        try:
            actor = serve_load.gpu_actor(gpu, app)
        except ValueError:
            break
        info = ray.get(actor.process.remote(), timeout=10)
        if info["gpu_memory"] is not None:
            out[f"GpuActor gpu{gpu} reserved"] = info["gpu_memory"]["reserved_bytes"] / MB
    return out


class Sampler(threading.Thread):
    """Samples RSS and GPU memory every ``every_s`` seconds until stopped."""

    def __init__(self, every_s: float, app: str = serve_load.APP) -> None:
        super().__init__(daemon=True)
        self.every_s, self.app = every_s, app
        self.t0 = time.perf_counter()
        self.rss: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.gpu: dict[str, list[tuple[float, float]]] = defaultdict(list)
        self.errors: list[str] = []
        self._halt = threading.Event()
        self._pids = serving_processes()

    def sample(self) -> None:
        t = time.perf_counter() - self.t0
        self._pids.update(serving_processes())  # a restarted process gets a series of its own
        for key, mb in rss_mb(self._pids).items():
            self.rss[key].append((t, mb))
        try:
            for key, mb in gpu_memory_mb(self.app).items():
                self.gpu[key].append((t, mb))
        except Exception as e:  # a sample missed is reported, not fatal to the soak
            self.errors.append(f"{t:.0f} s: {type(e).__name__}: {e}")

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join()
        self.sample()


def growth(series: Sequence[tuple[float, float]], warmup_s: float) -> dict[str, Any] | None:
    """Slope (MB/min, least squares) and last minus first of the samples after ``warmup_s``."""
    after = [(t, v) for t, v in series if t >= warmup_s]
    if len(after) < 3:
        return None
    t, v = np.array(after).T
    slope = float(np.polyfit(t / 60.0, v, 1)[0])
    return {
        "samples": len(after),
        "first_mb": float(v[0]),
        "last_mb": float(v[-1]),
        "max_mb": float(v.max()),
        "delta_mb": float(v[-1] - v[0]),
        "slope_mb_per_min": slope,
    }


def report(
    series: Mapping[str, Sequence[tuple[float, float]]], warmup_s: float, max_slope: float
) -> tuple[dict[str, Any], list[str]]:
    out, problems = {}, []
    for key, samples in sorted(series.items()):
        g = growth(samples, warmup_s)
        out[key] = {"growth": g, "samples": [[round(t, 1), round(v, 2)] for t, v in samples]}
        if g is not None and g["slope_mb_per_min"] > max_slope:
            problems.append(f"{key} grows {g['slope_mb_per_min']:.2f} MB/min (limit {max_slope:g})")
    return out, problems


def soak(
    target: serve_load.Target,
    rate_rps: float,
    duration_s: float,
    seed: int = 0,
    timeout_s: float = 30.0,
    app: str = serve_load.APP,
    warmup_s: float | None = None,
    sample_s: float = 5.0,
    max_slope: float = 1.0,
    processes: int = 1,
) -> dict[str, Any]:
    """A steady open loop at ``rate_rps`` for ``duration_s`` with the serving processes' memory sampled; growth is
    fitted after ``warmup_s`` (default: a fifth of the run, at most 60 s). ``problems`` lists what fails it."""
    warmup_s = min(60.0, duration_s / 5) if warmup_s is None else warmup_s
    sampler = Sampler(sample_s, app)
    sampler.start()
    answers, _ = asyncio.run(serve_load.open_loop(target, rate_rps, duration_s, seed, timeout_s, processes=processes))
    sampler.stop()
    out: dict[str, Any] = {
        "load": {
            "rate_rps": rate_rps,
            "duration_s": duration_s,
            "seed": seed,
            **serve_load.summarize(answers, duration_s, target.slo_ms),
        },
        "warmup_s": warmup_s,
        "sample_s": sample_s,
    }
    out["rss"], problems = report(sampler.rss, warmup_s, max_slope)
    out["gpu_memory"], gpu_problems = report(sampler.gpu, warmup_s, max_slope)
    out["gpu_memory_note"] = None if sampler.gpu else "no GPU actor reports device memory (CPU backend)"
    out["sample_errors"] = sampler.errors
    problems += gpu_problems
    if out["load"]["lost"]:
        problems.append(f"{out['load']['lost']} of {out['load']['sent']} requests got no answer")
    out["max_slope_mb_per_min"] = max_slope
    out["problems"] = problems
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="AppConfig or Serve config YAML (default: --preset)")
    p.add_argument("--preset", choices=sorted(serve_load.PRESETS), default="tiny-cnn", help="app without --config")
    p.add_argument("--model", help="model to load (default: the config's first)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance")
    p.add_argument("--rate-rps", type=float, help="arrival rate (default: --load-factor x measured capacity)")
    p.add_argument("--load-factor", type=float, default=0.5, help="rate as a multiple of the measured capacity")
    p.add_argument("--duration-s", type=float, default=600.0)
    p.add_argument("--warmup-s", type=float, default=60.0, help="samples before this are not fitted")
    p.add_argument("--sample-s", type=float, default=5.0, help="sampling period")
    p.add_argument("--max-slope-mb-per-min", type=float, default=1.0, help="fail above this growth of any process")
    p.add_argument("--seed", type=int, default=0)
    serve_load.add_timeout_argument(p)
    p.add_argument("--out", type=Path, help="write the result JSON here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = serve_load.config_of(args.config, args.preset)
    model = args.model or config.models[0].name
    args.timeout_s = serve_load.client_timeout_s(config, args.timeout_s)
    doc = serve_load.header(sys.argv if argv is None else ["serve_soak.py", *argv], config, model)
    with serve_load.local_app(config.model_dump(mode="json"), args.num_cpus) as url:
        target = serve_load.target_for(url, config.model(model), seed=args.seed)
        rate = args.rate_rps
        if rate is None:
            doc["capacity"] = asyncio.run(serve_load.closed_loop(target, 8, 4.0, args.timeout_s))
            rate = args.load_factor * doc["capacity"]["capacity_rps"]
        doc.update(
            soak(
                target,
                rate,
                args.duration_s,
                args.seed,
                args.timeout_s,
                warmup_s=args.warmup_s,
                sample_s=args.sample_s,
                max_slope=args.max_slope_mb_per_min,
            )
        )
    problems = doc["problems"]
    doc["passed"] = not problems
    if args.out:
        results.write(doc, args.out)
    for key, entry in doc["rss"].items():
        g = entry["growth"]
        if g is not None:
            print(f"{key}: {g['first_mb']:.0f} -> {g['last_mb']:.0f} MB, {g['slope_mb_per_min']:+.3f} MB/min")
    load = doc["load"]
    print(f"sent {load['sent']}, accepted {load['accepted']}, rejected {load['rejected']}, lost {load['lost']}")
    print("PASS" if doc["passed"] else "FAIL: " + "; ".join(problems), flush=True)
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
