"""Each model alone on the whole GPU: the latency its SLO is a multiple of.

One request in flight, the model's whole-GPU CUDA graph, a warm-up and a
window like the mix runs. The SLO of a model at a batch size is
``slo_factor`` times its isolated p99 there (3x by the convention of
right-sizing work, `docs/eclip-paper.md`).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterable

import torch

from eclip_ray.bench.driver import Lane, drive
from eclip_ray.bench.load import Load
from eclip_ray.bench.machine import whole_only
from eclip_ray.bench.policies import WHOLE_PLAN
from eclip_ray.bench.session import ModuleCache
from eclip_ray.bench.stats import percentile
from eclip_ray.models.zoo import get as zoo_get
from eclip_ray.partition import DeviceGeometry
from eclip_ray.runtime import Runtime


def key(batch_size: int) -> str:
    return f"bs{batch_size}"


def measure(
    pairs: Iterable[tuple[str, int]],
    *,
    backend: str,
    geometry: DeviceGeometry,
    warmup_s: float,
    window_s: float,
    seed: int = 0,
    cache: ModuleCache | None = None,
) -> dict[str, dict[str, dict]]:
    """Isolated latency of every ``(model, batch size)``: ``{model: {"bs<B>": {...}}}``.

    A pair that fails (a model that does not load, or completes nothing) gets ``{"error": ...}``:
    the mixes with it cannot run, the others can.

    ``cache`` keeps the built modules for the run's sessions (a model is built once per run).
    """
    wanted: dict[str, list[int]] = {}
    for model, batch in pairs:
        wanted.setdefault(model, [])
        if batch not in wanted[model]:
            wanted[model].append(batch)
    out: dict[str, dict[str, dict]] = {}
    with Runtime(backend=backend, layout=whole_only(geometry)) as rt:
        note = "" if rt.meter.available else rt.meter.describe().get("reason", "")
        for model, batches in wanted.items():
            try:
                runner = rt.load(model, cache.zoo(model, model) if cache is not None else zoo_get(model))
            except Exception as e:  # this model's mixes fail with the reason; the others still run
                traceback.print_exc()
                out[model] = {key(b): {"error": f"loading {model}: {e!r}"} for b in batches}
                continue
            for batch in sorted(batches):
                try:
                    out.setdefault(model, {})[key(batch)] = _one(
                        rt, runner, model, batch, warmup_s, window_s, seed, note
                    )
                except Exception as e:
                    traceback.print_exc()
                    out.setdefault(model, {})[key(batch)] = {"error": repr(e)}
                    continue
                print(f"isolated {model} batch {batch}: p99 {out[model][key(batch)]['p99_ms']:.3f} ms", file=sys.stderr)
            rt.runners.pop(model).close()
            if runner.on_gpu:
                torch.cuda.empty_cache()
    return out


def _one(rt: Runtime, runner, model: str, batch: int, warmup_s: float, window_s: float, seed: int, note: str) -> dict:
    if runner.on_gpu:
        runner.capture(WHOLE_PLAN, batch)
    lane = Lane(model, runner, WHOLE_PLAN, batch, runner.example_inputs(batch))
    meter = rt.meter if rt.meter.available else None
    w = drive([lane], Load("closed", 1), warmup_s=warmup_s, window_s=window_s, seed=seed, meter=meter, energy_note=note)
    return _summary(w, model, batch)


def _summary(w, model: str, batch: int) -> dict:
    lat = w.lanes[model].latencies_ms
    if not lat:
        raise RuntimeError(f"{model} batch {batch} completed no request in {w.seconds:.2f} s")
    e = w.energy
    return {
        "p50_ms": percentile(lat, 50),
        "p95_ms": percentile(lat, 95),
        "p99_ms": percentile(lat, 99),
        "requests": len(lat),
        "throughput_rps": len(lat) * batch / w.seconds,
        "window_s": w.seconds,
        "joules_per_inference": e.joules / (len(lat) * batch) if e is not None else None,
        "avg_power_w": e.watts if e is not None else None,
        "energy_note": w.energy_note,
    }
