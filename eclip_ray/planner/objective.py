"""Objectives: the exact criteria a plan is judged by, and the linear weights the MILP steers by.

Every model runs a closed loop, so what the mix delivers is the sum of its
models' rates ``R = sum_w b_w / L_w`` and what it costs is the board's power
over that, ``J = (idle + dynamic(N)) / R`` (``cost.py``). The criteria, lower
is better, each relative to plain multi-stream (every model on the whole GPU):

- ``throughput``: ``R_ms / R``.
- ``energy``: ``J / J_ms`` (needs the power model).
- ``balanced``: the mean of the two.

None is linear in the plan, but each falls as any model's latency ``L_w``
falls (energy: unless a model's own dynamic power per inference exceeds the
mix's whole cost per inference, which the weights below ignore: the planner
never slows a model on purpose). So the MILP minimises ``sum_w c_w L_w`` with
``c_w`` the criterion's slope in ``L_w`` at the current plan: per-worker
objectives (each model's latency, ECLIP's one objective per worker) combined
by how much each is worth. For ``throughput`` this is a minorise-maximise step:
``1 / L`` is convex, so the linear model under-estimates the rate everywhere
and every step's plan is at least as good as the last one (``search.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from eclip_ray.errors import PlanError
from eclip_ray.planner.cost import Mix, Prediction

OBJECTIVES = ("throughput", "energy", "balanced")


@dataclass(frozen=True)
class Weights:
    """The MILP's objective: ``sum_w latency_w L_w`` (L in ms)."""

    latency: tuple[float, ...]


def check(objective: str, mix: Mix) -> None:
    """Raise PlanError unless ``objective`` exists and ``mix`` has what it needs."""
    if objective not in OBJECTIVES:
        raise PlanError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    if objective != "throughput" and mix.power is None:
        raise PlanError(
            f"objective {objective!r} needs a power model (power.json beside the profiles): {mix.power_note}"
        )


def criterion(objective: str, p: Prediction, ms: Prediction) -> float:
    """How good prediction ``p`` is under ``objective``, relative to multi-stream's ``ms`` (lower is better)."""
    thr = ms.throughput / p.throughput
    if objective == "throughput":
        return thr
    energy = p.energy_j / ms.energy_j  # type: ignore[operator]
    return energy if objective == "energy" else (thr + energy) / 2


def weights(objective: str, mix: Mix, at: Prediction, ms: Prediction) -> Weights:
    """The slope of ``criterion`` in every worker's latency at ``at``, scaled so ``sum c_w L_w(at) = 1``."""
    lat = [at.latency_ms[w.name] for w in mix.workers]
    if objective == "throughput":
        slope = _throughput_slope(mix, at, ms)
    elif objective == "energy":
        slope = _energy_slope(mix, at, ms)
    else:
        slope = [(a + b) / 2 for a, b in zip(_throughput_slope(mix, at, ms), _energy_slope(mix, at, ms), strict=True)]
    slope = [max(s, 0.0) for s in slope]
    total = sum(s * x for s, x in zip(slope, lat, strict=True)) or 1.0
    return Weights(tuple(s / total for s in slope))


def _throughput_slope(mix: Mix, at: Prediction, ms: Prediction) -> list[float]:
    # d(R_ms / R) / dL_w = R_ms / R^2 * b_w / L_w^2   (rates per ms)
    r, r_ms = at.throughput / 1e3, ms.throughput / 1e3
    return [r_ms / r**2 * w.batch_size / at.latency_ms[w.name] ** 2 for w in mix.workers]


def _energy_slope(mix: Mix, at: Prediction, ms: Prediction) -> list[float]:
    # J = (idle + P(N)) / R with N = sum W_w / L_w and R = sum b_w / L_w; per unit of J_ms:
    # dJ / dL_w = ((idle + P(N)) * b_w / R - P'(N) * W_w) / (R * L_w^2)
    power = mix.power
    r = at.throughput / 1e3
    watts = power.idle_w + power.dynamic_w(at.busy_sms)  # type: ignore[union-attr]
    marginal = power.marginal_w(at.busy_sms)  # type: ignore[union-attr]
    j_ms = ms.energy_j * 1e3  # type: ignore[operator]  # mJ per inference
    return [
        (watts * w.batch_size / r - marginal * float(w.work.sum())) / (r * at.latency_ms[w.name] ** 2) / j_ms
        for w in mix.workers
    ]


def latency_of(mix: Mix, i: int) -> Weights:
    """Weights that minimise worker ``i``'s latency alone."""
    return Weights(tuple(float(j == i) for j in range(len(mix.workers))))
