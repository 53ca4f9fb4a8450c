"""Value ranges learnt from a model while it runs: the rows of each embedding that indexes a model input.

A forward pre-hook on every ``nn.Embedding`` and ``nn.EmbeddingBag`` sees the index tensor the
embedding is called with. When that tensor is one of the model's inputs (the same memory and every
element of it: the input itself or a reshaped view, not a slice, a sum or a cast copy), the input's
values must lie in [0, num_embeddings - 1]. An input that indexes several tables takes the smallest.
Nothing else is inferred: an input the model indexes some other way (``table[x]``) gets no range.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")


@dataclass(frozen=True)
class Learnt:
    """Input ``index`` takes values in ``value_range``, as the embedding ``module`` (its qualified name) says."""

    index: int
    value_range: tuple[int, int]
    module: str


def _same_memory(t: torch.Tensor, inp: torch.Tensor) -> bool:
    return t.data_ptr() == inp.data_ptr() and t.numel() == inp.numel() and t.device == inp.device


def embedding_ranges(
    model: nn.Module, inputs: Sequence[torch.Tensor], run: Callable[[], T]
) -> tuple[T, dict[int, Learnt]]:
    """``run()``'s result (a forward pass of ``model`` over ``inputs``), and per input index what the
    embeddings it called learnt about that input's range."""
    candidates = [(i, t) for i, t in enumerate(inputs) if not t.is_floating_point() and t.numel()]
    learnt: dict[int, Learnt] = {}

    def hook_for(name: str, rows: int) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> None:
            index = args[0] if args else None
            if not isinstance(index, torch.Tensor):
                return
            for i, inp in candidates:
                if _same_memory(index, inp) and (i not in learnt or rows - 1 < learnt[i].value_range[1]):
                    learnt[i] = Learnt(i, (0, rows - 1), name)

        return hook

    handles = [
        m.register_forward_pre_hook(hook_for(name, m.num_embeddings))
        for name, m in model.named_modules()
        if isinstance(m, nn.Embedding | nn.EmbeddingBag)
    ]
    try:
        return run(), learnt
    finally:
        for h in handles:
            h.remove()
