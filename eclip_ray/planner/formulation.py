"""The optimizer's MILP for one mix (docs/optimizer.md has the math).

Per worker ``w``: binaries ``x[g, p]`` (group ``g`` on the ``p``-th partition
``w`` may use), one partition per group; switch indicators ``s[g, p] >=
|x[g, p] - x[g-1, p]|`` (continuous: at integral ``x`` the least ``s`` is the
indicator) with ``sum s <= 2 * budget``; per other worker ``v``, its work on
each of its partitions ``busy_v[q]`` (linear in its ``x``) and the products
``y[g, p, q] = x[g, p] * busy_v[q]``, made exact by the two RLT equalities of
``_products``; ``d_w`` is the plan-independent device-wide slowdown
(``Mix.device_slowdown``). Then

    latency_w = (1 + d_w) sum t x + switch_ms / 2 * sum s
              + sum_v u_v / S_v sum (interference t[g, p] + blocking kappa_v K[g]) share[p, q] y_v[g, p, q]

(``u_v``: the neighbour's duty, 1 in a closed loop; ``kappa_v``: its mean kernel length;
``K[g]``: the group's kernel launches; ``cost.py``)

with ``latency_w <= slo_w`` under the tail's coefficients (in elastic mode ``latency_w - slack_w <=
slo_w``, the slack heavily penalised). The objective is ``sum_w c_w latency_w``
(``objective.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eclip_ray.planner.cost import Mix, Pressure, State
from eclip_ray.planner.milp import Program
from eclip_ray.planner.objective import Weights

# Weight of one SLO's relative violation in elastic mode, against an objective scaled
# to 1 at the plan it starts from: large enough that violations dominate.
ELASTIC_PENALTY = 1e3


@dataclass(frozen=True)
class Formulation:
    program: Program
    x: list[np.ndarray]  # per worker, [group, allowed partition] variable indices

    def decode(self, mix: Mix, values: np.ndarray) -> State:
        return tuple(
            tuple(w.parts[int(c)] for c in values[x].argmax(axis=1)) for w, x in zip(mix.workers, self.x, strict=True)
        )


def build(mix: Mix, w: Weights, budget: int, elastic: bool = False) -> Formulation:
    """The MILP of ``mix`` for objective weights ``w`` and ``budget`` switches per request.

    The objective uses the median coefficients (``Mix.pressure``), the SLO rows the tail's
    (``Mix.tail_pressure``): SLOs are on p99. Both are linear in the same products ``y``.
    """
    prog = Program()
    xs = [prog.var((len(wk.groups), len(wk.parts)), 0.0, 1.0, integer=True) for wk in mix.workers]
    busy = _busy(prog, mix, xs) if len(mix.workers) > 1 and _presses(mix) else None
    for i, wk in enumerate(mix.workers):
        _one_per_group(prog, xs[i])
        s = _switch_vars(prog, xs[i], min(budget, len(wk.groups) - 1))
        ys = _products(prog, mix, i, xs[i], busy) if busy is not None else {}
        cols, vals = _latency(mix, i, xs[i], s, ys, mix.pressure)
        prog.cost(cols, np.asarray(vals) * w.latency[i])
        if wk.slo_ms is not None:
            _slo(prog, *_latency(mix, i, xs[i], s, ys, mix.tail_pressure), wk.slo_ms, elastic)
    return Formulation(prog, xs)


def _presses(mix: Mix) -> bool:
    return any(c.interference > 0 or c.blocking > 0 for c in (mix.pressure, mix.tail_pressure))


def _latency(
    mix: Mix, i: int, x: np.ndarray, s: np.ndarray, ys: dict[int, np.ndarray], c: Pressure
) -> tuple[list[int], list[float]]:
    """``latency_w`` under coefficients ``c`` as (columns, values)."""
    wk = mix.workers[i]
    cols, vals = x.ravel().tolist(), (wk.ms * (1 + mix.device_slowdown(c)[i])).ravel().tolist()
    cols += s.ravel().tolist()
    vals += [wk.switch_ms / 2] * s.size
    duty, kappa = mix.duty(), mix.kernel_ms()
    for v, y in ys.items():
        other = mix.workers[v]
        share = mix.share_at(c.coverage)[np.ix_(list(wk.parts), list(other.parts))]  # [p, q]
        per_group = c.interference * wk.ms + c.blocking * kappa[v] * wk.launches[:, None]  # [g, p]
        coef = duty[v] / mix.solo_ms[v] * per_group[:, :, None] * share[None, :, :]
        keep = coef.ravel() != 0
        cols += y.ravel()[keep].tolist()
        vals += coef.ravel()[keep].tolist()
    return cols, vals


def _one_per_group(prog: Program, x: np.ndarray) -> None:
    for g in range(x.shape[0]):
        prog.row(x[g], 1.0, 1.0, 1.0)


def _switch_vars(prog: Program, x: np.ndarray, budget: int) -> np.ndarray:
    groups, parts = x.shape
    s = prog.var((groups - 1, parts), 0.0, 1.0)
    for g in range(1, groups):
        for p in range(parts):
            prog.row([s[g - 1, p], x[g, p], x[g - 1, p]], [1.0, -1.0, 1.0], 0.0, np.inf)
            prog.row([s[g - 1, p], x[g, p], x[g - 1, p]], [1.0, 1.0, -1.0], 0.0, np.inf)
    if s.size:
        prog.row(s, 1.0, -np.inf, 2.0 * budget)
    return s


def _busy(prog: Program, mix: Mix, xs: list[np.ndarray]) -> np.ndarray:
    """``busy[v, q]``: SM-ms of work worker ``v`` places on layout partition ``q`` (a variable when it may)."""
    busy = np.full((len(mix.workers), len(mix.layout.partitions)), -1)
    for v, (wk, x) in enumerate(zip(mix.workers, xs, strict=True)):
        for j, q in enumerate(wk.parts):
            busy[v, q] = prog.var(1)[0]
            prog.row([busy[v, q], *x[:, j]], [1.0, *(-wk.work)], 0.0, 0.0)
    return busy


def _products(prog: Program, mix: Mix, i: int, x: np.ndarray, busy: np.ndarray) -> dict[int, np.ndarray]:
    """Per other worker ``v``, the products ``y[g, p, q] = x[g, p] * busy_v[q]``, linearised exactly.

    They are bound by the two products of the assignment equalities (RLT): ``sum_q
    y[g, p, q] = W_v x[g, p]`` (v's work is all somewhere) and ``sum_p y[g, p, q] =
    busy_v[q]`` (group g is on one partition). With ``y >= 0`` these imply both
    McCormick bounds and make the relaxation far tighter than a big-M.
    """
    wk = mix.workers[i]
    out = {}
    for v, other in enumerate(mix.workers):
        if v == i:
            continue
        y = prog.var((len(wk.groups), len(wk.parts), len(other.parts)))
        total = float(other.work.sum())
        for g in range(y.shape[0]):
            for j in range(y.shape[1]):
                prog.row([*y[g, j], x[g, j]], [*([1.0] * y.shape[2]), -total], 0.0, 0.0)
            for k, q in enumerate(other.parts):
                prog.row([*y[g, :, k], busy[v, q]], [*([1.0] * y.shape[1]), -1.0], 0.0, 0.0)
        out[v] = y
    return out


def _slo(prog: Program, cols: list[int], vals: list[float], slo_ms: float, elastic: bool) -> None:
    if not elastic:
        prog.row(cols, vals, -np.inf, slo_ms)
        return
    slack = int(prog.var(1)[0])
    prog.row([*cols, slack], [*vals, -1.0], -np.inf, slo_ms)
    prog.cost([slack], ELASTIC_PENALTY / slo_ms)
