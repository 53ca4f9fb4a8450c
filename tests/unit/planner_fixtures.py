"""Synthetic profiles, layouts and power models for the planner's unit tests (no GPU, no Ray).

Real H100 profiles do not exist yet; these are made up, either by hand (so a
test can reason about them) or by ``eclip_ray.planner.synthetic`` (shaped like
measured ones, for property tests and brute-force cross-checks).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from eclip_ray.partition.layout import DeviceGeometry, Layout, ladder
from eclip_ray.planner import cost, synthetic
from eclip_ray.planner.cost import Mix, Prediction, State
from eclip_ray.planner.power import PowerModel
from eclip_ray.planner.profile import ModelProfile, ProfileKey, Stat, Unit

H100 = DeviceGeometry(132)
SIZES = (32, 64, 96, 132)
# Per-SM dynamic power grows with the SM count here, so a small partition does
# the same work for less energy: the energy objective has a reason to differ.
POWER = PowerModel(40.0, {32: 150.0, 64: 260.0, 96: 420.0, 132: 700.0})


def layout(workers: int) -> Layout:
    """ECLIP's ladder on an H100 for ``workers`` co-located models."""
    return ladder(H100, workers)


def stat(ms: float) -> Stat:
    return Stat(ms, ms, ms)


def hand_profile(
    model: str, units: Sequence[Mapping[int, float]], *, batch_size: int = 1, gap: float = 0.0, meta: dict | None = None
) -> ModelProfile:
    """A profile whose unit ``i`` takes ``units[i][size]`` ms (after calibration, with ``gap`` launch gaps added)."""
    sizes = sorted(units[0])
    us = [Unit(None if i == 0 else f"u{i}#0", f"u{i}", {s: stat(t[s]) for s in sizes}) for i, t in enumerate(units)]
    totals = {s: stat(sum(t[s] for t in units) * (1 + gap)) for s in sizes}
    key = ProfileKey("synthetic", 132, "none", "none", model, batch_size, "float16")
    return ModelProfile(key, list(sizes), us, totals, meta or {})


def scaling(work_sm_ms: float) -> dict[int, float]:
    """A unit that keeps every SM busy: ``work / n`` ms on ``n`` SMs."""
    return {s: work_sm_ms / s for s in SIZES}


def flat(ms: float) -> dict[int, float]:
    """A launch-bound unit: the same time on any partition."""
    return {s: ms for s in SIZES}


def switchy_pair() -> dict[str, ModelProfile]:
    """Two models where switching pays: ``heavy`` and ``switchy``, whose units alternate flat and scaling.

    ``heavy`` keeps every SM it gets busy but gains nothing beyond 96, so it
    sits on its own 96-SM partition. ``switchy``'s flat units are best isolated
    on its 32-SM partition beside it; its scaling units are worth the whole GPU
    despite ``heavy``. So its best plan switches at every unit boundary.
    """
    heavy = hand_profile("heavy", [{32: 6.0, 64: 3.0, 96: 2.0, 132: 2.0}])
    switchy = hand_profile("switchy", [flat(0.5), scaling(16.0), flat(0.5), scaling(16.0), flat(0.5)])
    return {"heavy": heavy, "switchy": switchy}


def random_mix(seed: int, workers: int, units: int = 8, **kw) -> dict[str, ModelProfile]:
    """``workers`` synthetic models of ``units`` units each, different for every ``seed``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return {
        f"m{i}": synthetic.profile(
            f"m{i}",
            units,
            seed=1000 * seed + i,
            whole_ms=float(rng.uniform(0.5, 4.0)),
            heavy=float(rng.uniform(0.1, 0.7)),
            **kw,
        )
        for i in range(workers)
    }


def all_states(mix: Mix, budget: int) -> list[State]:
    """Every assignment of groups to allowed partitions with at most ``budget`` switches per worker."""
    per_worker = [
        [c for c in itertools.product(w.parts, repeat=len(w.groups)) if cost.switches((c,))[0] <= budget]
        for w in mix.workers
    ]
    return list(itertools.product(*per_worker))


def brute_force(mix: Mix, budget: int) -> list[tuple[State, Prediction]]:
    """The exact cost model's prediction for every plan of ``mix``."""
    return [(s, cost.evaluate(mix, s)) for s in all_states(mix, budget)]


def write_profiles(directory: Path, profiles: Sequence[ModelProfile], power: PowerModel | None = POWER) -> Path:
    """A profile directory as the CLI reads it: ``<model>_bs<B>_<dtype>.json`` and ``power.json``."""
    for p in profiles:
        p.save(directory)
    if power is not None:
        (directory / "power.json").write_text(json.dumps(power.to_dict()))
    return directory
