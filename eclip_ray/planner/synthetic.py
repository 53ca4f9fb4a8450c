"""Synthetic profiles shaped like measured ones, for tests and the solve-time benchmark.

Not measurements: nothing here describes a real model. Each unit takes
``launch + work / min(n, width)`` ms on ``n`` SMs, the shape the H100 probes
show (`docs/hardware.md`, sections 5b and 6): a fixed launch cost, then time
that falls with SMs until the unit's parallel width is reached. About
``heavy`` of the units are wide (convolutions, matmuls); the rest are narrow,
cheap element-wise kernels. ``total_ms`` adds launch gaps the kernel sums
miss, as a CUDA-graph replay does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from eclip_ray.planner.profile import ModelProfile, ProfileKey, Stat, Unit

SIZES = (32, 64, 96, 132)


def _stat(ms: float) -> Stat:
    return Stat(ms, 0.97 * ms, 1.05 * ms)


def unit_times(rng: np.random.Generator, units: int, heavy: float, sizes: Sequence[int]) -> np.ndarray:
    """``[units, sizes]`` times in ms (before scaling to the requested total)."""
    wide = rng.random(units) < heavy
    width = np.where(wide, rng.uniform(48, 264, units), rng.uniform(8, 48, units))
    work = np.where(wide, rng.lognormal(0.0, 0.8, units), rng.lognormal(-2.5, 0.6, units))
    launch = rng.uniform(0.02, 0.06, units)
    n = np.asarray(sizes, dtype=float)[None, :]
    return launch[:, None] + work[:, None] / np.minimum(n, width[:, None])


def profile(
    model: str,
    units: int,
    *,
    batch_size: int = 1,
    seed: int = 0,
    whole_ms: float = 3.0,
    heavy: float = 0.4,
    gap: float = 0.1,
    sizes: Sequence[int] = SIZES,
    kernels_per_unit: int = 3,
) -> ModelProfile:
    """A synthetic profile of ``units`` units whose graph takes ``whole_ms`` on the most SMs of ``sizes``."""
    rng = np.random.default_rng(seed)
    sizes = sorted(sizes)
    t = unit_times(rng, units, heavy, sizes)
    t *= whole_ms / ((1 + gap) * t[:, -1].sum())
    out = []
    for i, row in enumerate(t):
        share = rng.dirichlet(np.ones(kernels_per_unit))
        kernels = [
            {"name": f"k{i}_{j}", "ms": {str(s): float(x * f) for s, x in zip(sizes, row, strict=True)}}
            for j, f in enumerate(share)
        ]
        cut = None if i == 0 else f"layer{i}#0"
        out.append(Unit(cut, f"layer{i}", {s: _stat(float(x)) for s, x in zip(sizes, row, strict=True)}, kernels))
    totals = {s: _stat(float(t[:, j].sum() * (1 + gap))) for j, s in enumerate(sizes)}
    key = ProfileKey("synthetic", max(sizes), "none", "none", model, batch_size, "float16")
    return ModelProfile(key, list(sizes), out, totals, {"synthetic": True, "seed": seed})
