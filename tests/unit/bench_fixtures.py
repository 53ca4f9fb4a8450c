"""Profiles of the tiny CPU models for the benchmark's tests (no GPU).

Profiles are measured on a GPU; on the CPU backend the policies that need
them get synthetic ones. Their units are the tiny models' real cut points
(so plans cut them), their times come from ``eclip_ray.planner.synthetic``
and describe nothing real.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eclip_ray.graph.stages import leaf_cuts, trace_calls
from eclip_ray.models.zoo import get
from eclip_ray.planner import synthetic
from eclip_ray.planner.profile import ModelProfile, ProfileKey, Stat, Unit

SIZES = (32, 64, 96, 132)


def _stat(ms: float) -> Stat:
    return Stat(float(ms), float(ms), float(ms))


def tiny_profile(model: str, batch_size: int = 1, seed: int = 0, times: np.ndarray | None = None) -> ModelProfile:
    """A profile of zoo model ``model`` over its real leaf units; ``times[unit, size]`` in ms, else synthetic."""
    spec = get(model)
    leaves = leaf_cuts(trace_calls(spec.build().eval(), spec.make_inputs(1)))
    if times is None:
        times = synthetic.unit_times(np.random.default_rng(seed), len(leaves), 0.4, SIZES)
    units = [
        Unit(None if i == 0 else leaf.id, leaf.module, {s: _stat(t) for s, t in zip(SIZES, row, strict=True)})
        for i, (leaf, row) in enumerate(zip(leaves, times, strict=True))
    ]
    total = {s: _stat(times[:, j].sum()) for j, s in enumerate(SIZES)}
    key = ProfileKey("synthetic", 132, "none", "none", model, batch_size, "float16")
    return ModelProfile(key, list(SIZES), units, total, {"synthetic": True})


def write_profiles(directory: Path, models: list[str], batch_size: int = 1) -> Path:
    for i, m in enumerate(dict.fromkeys(models)):
        tiny_profile(m, batch_size, seed=i).save(directory)
    return directory
