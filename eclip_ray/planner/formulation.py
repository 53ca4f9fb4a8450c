"""The optimizer's MILP for one mix at an assumed round time (docs/optimizer.md has the math).

Per worker ``w``: binaries ``x[g, p]`` (group ``g`` on the ``p``-th partition
``w`` may use) with one partition per group; switch indicators ``s[g, p] >=
|x[g, p] - x[g-1, p]|`` (continuous: at integral ``x`` the least ``s`` is
exactly the indicator) with ``sum s <= 2 * budget``; the other workers'
expected busy SMs on each of its partitions, ``e[p]`` (linear in their ``x``);
and ``y[g, p] = x[g, p] * e[p]``, linearised exactly by
``y >= e - M_p (1 - x)``, ``y >= 0`` (``y`` only ever costs, so it sits on
that bound). Then

    latency_w = sum t x + interference / round_ms * sum t y + switch_ms / 2 * sum s

with ``latency_w <= z`` (``z``: the round time) and ``latency_w <= slo_w``
(in elastic mode ``latency_w - slack_w <= slo_w``, the slack heavily penalised).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eclip_ray.planner.cost import Mix, State
from eclip_ray.planner.milp import Program
from eclip_ray.planner.objective import Weights

# Weight of one SLO's relative violation in elastic mode, against an objective
# normalised to about 1: large enough that violations always dominate.
ELASTIC_PENALTY = 1e3


@dataclass(frozen=True)
class Formulation:
    program: Program
    x: list[np.ndarray]  # per worker, [group, allowed partition] variable indices
    scale: float

    def decode(self, mix: Mix, values: np.ndarray) -> State:
        return tuple(
            tuple(w.parts[int(c)] for c in values[x].argmax(axis=1)) for w, x in zip(mix.workers, self.x, strict=True)
        )


def build(mix: Mix, round_ms: float, w: Weights, budget: int, elastic: bool = False) -> Formulation:
    """The MILP of ``mix`` with the slowdown scaled for a round of ``round_ms``."""
    prog = Program()
    xs = [prog.var((len(wk.groups), len(wk.parts)), 0.0, 1.0, integer=True) for wk in mix.workers]
    z = int(prog.var(1)[0])
    prog.cost([z], w.round)
    busy = _busy(prog, mix, xs) if len(mix.workers) > 1 and mix.interference > 0 else None
    per_sm = mix.watts_per_sm()
    for i, wk in enumerate(mix.workers):
        _one_per_group(prog, xs[i])
        cols, vals = _latency(prog, mix, i, xs, busy, round_ms, budget)
        prog.row([*cols, z], [*vals, -1.0], -np.inf, 0.0)
        prog.cost(cols, np.asarray(vals) * w.latency)
        if wk.slo_ms is not None:
            _slo(prog, cols, vals, wk.slo_ms, w, elastic)
        if per_sm is not None and w.dynamic:
            prog.cost(xs[i], w.dynamic * np.outer(wk.work, per_sm[list(wk.parts)]))
    return Formulation(prog, xs, w.scale)


def _latency(
    prog: Program, mix: Mix, i: int, xs: list[np.ndarray], busy: np.ndarray | None, round_ms: float, budget: int
) -> tuple[list[int], list[float]]:
    wk, x = mix.workers[i], xs[i]
    cols, vals = x.ravel().tolist(), wk.ms.ravel().tolist()
    s = _switch_vars(prog, x, min(budget, len(wk.groups) - 1))
    cols += s.ravel().tolist()
    vals += [wk.switch_ms / 2] * s.size
    if busy is not None:
        y = _slowdown_vars(prog, mix, i, x, busy)
        if y is not None:
            cols += y.ravel().tolist()
            vals += (mix.interference / round_ms * wk.ms).ravel().tolist()
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


def _slowdown_vars(prog: Program, mix: Mix, i: int, x: np.ndarray, busy: np.ndarray) -> np.ndarray | None:
    """``y[g, p] = x[g, p] * e[p]``, ``e[p]`` the others' expected busy SMs on ``p`` per SM of ``p``, times round."""
    wk = mix.workers[i]
    y = prog.var(x.shape)
    any_overlap = False
    for j, p in enumerate(wk.parts):
        cols, coefs = _exposure(mix, i, p, busy)
        if not cols:
            continue  # no other worker can run on p's SMs: y stays 0
        any_overlap = True
        big_m = _big_m(mix, i, p)
        for g in range(x.shape[0]):
            # y >= e - M (1 - x)  <=>  y - e - M x >= -M
            prog.row([y[g, j], *cols, x[g, j]], [1.0, *(-c for c in coefs), -big_m], -big_m, np.inf)
    return y if any_overlap else None


def _exposure(mix: Mix, i: int, p: int, busy: np.ndarray) -> tuple[list[int], list[float]]:
    cols, coefs = [], []
    for v, other in enumerate(mix.workers):
        if v == i:
            continue
        for q in other.parts:
            if mix.share[p, q] > 0:
                cols.append(int(busy[v, q]))
                coefs.append(float(mix.share[p, q]))
    return cols, coefs


def _big_m(mix: Mix, i: int, p: int) -> float:
    return sum(
        float(o.work.sum()) * max(mix.share[p, q] for q in o.parts) for v, o in enumerate(mix.workers) if v != i
    )


def _slo(prog: Program, cols: list[int], vals: list[float], slo_ms: float, w: Weights, elastic: bool) -> None:
    if not elastic:
        prog.row(cols, vals, -np.inf, slo_ms)
        return
    slack = int(prog.var(1)[0])
    prog.row([*cols, slack], [*vals, -1.0], -np.inf, slo_ms)
    prog.cost([slack], ELASTIC_PENALTY * w.scale / slo_ms)
