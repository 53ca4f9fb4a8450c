"""Kernel grouping: merge consecutive units into groups (stages) by how they scale with SMs.

Each unit is labelled with its *knee*: the fewest SMs (among the partition
sizes it may run on) at which it is within ``tol`` of its fastest time. Runs of
units with the same knee form the first groups, because a partition switch
inside such a run cannot pay off: every unit of it wants the same size. Then,
while there are more groups than ``max_groups``, the group with the least time
is merged into the neighbour whose scaling is most alike (time at each size
relative to its time on the most SMs). Ties go to the earliest group and the
left neighbour, so the grouping is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from eclip_ray.errors import PlanError


@dataclass(frozen=True)
class Group:
    """Units ``[first, stop)`` of a model; the group begins at cut point ``cut`` (None at the input)."""

    first: int
    stop: int
    cut: str | None

    @property
    def units(self) -> int:
        return self.stop - self.first


def knee(row: np.ndarray, counts: Sequence[int], tol: float) -> int:
    """The fewest SMs of ``counts`` (ascending) at which times ``row`` are within ``tol`` of the best."""
    best = row.min()
    for c, t in zip(counts, row, strict=True):
        if t <= best * (1 + tol):
            return int(c)
    raise AssertionError("unreachable: the best time is within tolerance of itself")


def group_units(
    ms: np.ndarray, counts: Sequence[int], cuts: Sequence[str | None], max_groups: int, tol: float = 0.1
) -> list[Group]:
    """Group units with times ``ms[unit, count]`` into at most ``max_groups`` groups cut at unit ``cuts``.

    ``counts`` are the SM counts of the columns of ``ms`` (ascending); ``cuts[i]``
    is the cut-point id where unit ``i`` begins (None for the first unit).
    """
    if max_groups < 1:
        raise PlanError(f"max_groups must be >= 1, got {max_groups}")
    if len(cuts) != ms.shape[0] or ms.shape[0] == 0:
        raise PlanError(f"{ms.shape[0]} unit time rows but {len(cuts)} cut points (need the same, at least one)")
    spans = _runs([knee(r, counts, tol) for r in ms])
    sums = [ms[a:b].sum(axis=0) for a, b in spans]
    while len(spans) > max_groups:
        _merge_smallest(spans, sums)
    return [Group(a, b, cuts[a]) for a, b in spans]


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    spans, start = [], 0
    for i in range(1, len(labels) + 1):
        if i == len(labels) or labels[i] != labels[start]:
            spans.append((start, i))
            start = i
    return spans


def _merge_smallest(spans: list[tuple[int, int]], sums: list[np.ndarray]) -> None:
    i = int(np.argmin([t[-1] for t in sums]))  # argmin returns the first of equals: deterministic
    j = _closest_neighbour(i, sums)
    lo, hi = min(i, j), max(i, j)
    spans[lo : hi + 1] = [(spans[lo][0], spans[hi][1])]
    sums[lo : hi + 1] = [sums[lo] + sums[hi]]


def _closest_neighbour(i: int, sums: list[np.ndarray]) -> int:
    def shape(k: int) -> np.ndarray:
        return sums[k] / max(sums[k][-1], 1e-12)

    candidates = [j for j in (i - 1, i + 1) if 0 <= j < len(sums)]
    return min(candidates, key=lambda j: float(np.abs(shape(j) - shape(i)).sum()))  # min keeps the left on ties
