"""Kernel groups (stages) of a model, cut at module boundaries.

A cut point is the k-th call of a named submodule during one forward pass
(``"layer3#0"``; ALBERT calls its one shared layer twelve times, so ``#k``
matters). Any module call is a legal place to switch streams: the switch joins
the previous stream into the next, so a request runs as one linear chain of
stages. Cut points are data: a plan lists the ones it cuts at.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from eclip_ray.errors import PlanError


@dataclass(frozen=True)
class CutPoint:
    """The ``call``-th call of submodule ``module`` in a forward pass, ``depth`` dots deep."""

    module: str
    call: int
    depth: int
    leaf: bool

    @property
    def id(self) -> str:
        return f"{self.module}#{self.call}"


def trace_calls(model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[CutPoint]:
    """Every submodule call of one forward pass, in execution order."""
    order: list[CutPoint] = []
    counts: dict[str, int] = defaultdict(int)
    handles = []
    for name, mod in model.named_modules():
        if not name:
            continue
        leaf = next(mod.children(), None) is None

        def hook(_m, _a, name=name, leaf=leaf):
            order.append(CutPoint(name, counts[name], name.count("."), leaf))
            counts[name] += 1

        handles.append(mod.register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return order


def block_cuts(calls: Sequence[CutPoint], depth: int = 1) -> list[CutPoint]:
    """The calls of modules at most ``depth`` dots deep: a coarse, model-agnostic set of stages."""
    return [c for c in calls if c.depth <= depth]


def leaf_cuts(calls: Sequence[CutPoint]) -> list[CutPoint]:
    """The calls of leaf modules: the finest stages module boundaries allow (units for profiling)."""
    return [c for c in calls if c.leaf]


class StageRouter:
    """Switches the current CUDA stream at cut points during a forward pass.

    Hooks stay installed on the model's submodules and do nothing unless a
    schedule is active, so graph replays (which skip Python) pay nothing.
    ``on_cut`` also serves the CPU backend and the profiler, which only need to
    know where stages begin.
    """

    def __init__(self, model: nn.Module, calls: Sequence[CutPoint]) -> None:
        self._valid = {c.id for c in calls}
        self._names = {c.module for c in calls}
        self._counts: dict[str, int] = defaultdict(int)
        self._on_cut: dict[str, Callable[[], None]] | None = None
        self._handles = [
            mod.register_forward_pre_hook(self._hook_for(name))
            for name, mod in model.named_modules()
            if name in self._names
        ]

    def _hook_for(self, name: str):
        def hook(_m, _a):
            if self._on_cut is None:
                return
            k = self._counts[name]
            self._counts[name] = k + 1
            action = self._on_cut.get(f"{name}#{k}")
            if action is not None:
                action()

        return hook

    def check(self, cut_ids: Sequence[str]) -> None:
        unknown = [c for c in cut_ids if c not in self._valid]
        if unknown:
            raise PlanError(f"cut points {unknown[:5]} are not module calls of this model")

    @contextmanager
    def active(self, on_cut: dict[str, Callable[[], None]]) -> Iterator[None]:
        """Run ``on_cut[cut_id]()`` when the forward pass reaches each cut point."""
        if self._on_cut is not None:
            raise RuntimeError("a stage schedule is already active on this model")
        self.check(list(on_cut))
        self._counts.clear()
        self._on_cut = on_cut
        try:
            yield
        finally:
            self._on_cut = None

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
