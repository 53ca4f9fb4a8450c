"""Measure the device's power model: idle power, and power with a compute-bound kernel on N SMs.

The planner predicts energy per inference from it (docs/optimizer.md). Written
as ``power.json`` beside the profiles.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from eclip_ray.energy.meter import EnergyMeter
from eclip_ray.partition.pool import StreamPool


def _busy(stream: torch.cuda.Stream, seconds: float) -> None:
    a = torch.randn(4096, 4096, device="cuda", dtype=torch.float16)
    t0 = time.perf_counter()
    with torch.cuda.stream(stream):
        while time.perf_counter() - t0 < seconds:
            for _ in range(20):
                a @ a
            stream.synchronize()


def power_model(pool: StreamPool, meter: EnergyMeter, partitions: Sequence[str], window_s: float = 3.0) -> dict:
    """``{"idle_w", "active_w": {sm_count: W}}`` measured over windows of ``window_s`` seconds."""
    torch.cuda.synchronize()
    time.sleep(0.5)
    meter.begin_window("idle")
    time.sleep(window_s)
    idle = meter.end_window("idle")
    active = {}
    for name in partitions:
        stream = pool.stream(name, owner="calibrate")
        _busy(stream, 0.5)  # reach steady clocks before the window
        meter.begin_window(name)
        _busy(stream, window_s)
        m = meter.end_window(name)
        active[str(pool.sm_count(name))] = round(m.watts, 2)
    return {"idle_w": round(idle.watts, 2), "active_w": active, "window_s": window_s, "kernel": "fp16 4096^3 matmul"}
