"""Value ranges a GPU actor learnt when it loaded a model, checked on each request before it joins a batch.

The ingress checks the ranges the config holds (declared, from the zoo, from ONNX graphs). An actor
also learns ranges from a model's ``nn.Embedding`` modules at start, which no config can know, and
reports them in ``ready()``. The model's deployment takes them from there and checks every request
before batching, so that a bad request fails alone, with 400, instead of failing the batch it would
have joined in the actor, whose own check is the last line.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from eclip_ray.actor.values import ValueRange, range_problem
from eclip_ray.serve.config import ModelConfig

RETRY_S = 1.0  # between two attempts to learn from actors that are not ready yet


class LearntRanges:
    """The ranges of ``model``'s inputs that its config lacks and an actor reported (by input position)."""

    def __init__(self, model: ModelConfig) -> None:
        self._names = [t.name for t in model.inputs or ()]
        self._known = {t.name for t in model.inputs or () if t.value_range is not None}  # the ingress checks these
        self.ranges: dict[int, ValueRange] | None = None  # None: no actor has answered yet
        self._tried_at = -RETRY_S

    def due(self) -> bool:
        """Whether to ask the actors (again): nothing learnt yet, and no attempt in the last RETRY_S."""
        now = time.monotonic()
        if self.ranges is not None or now - self._tried_at < RETRY_S:
            return False
        self._tried_at = now
        return True

    def learn(self, state: Mapping[str, Any]) -> None:
        """Take the ranges from one ready actor's ``ready()["models"][model]``."""
        got = state.get("value_ranges") or {}
        self.ranges = {
            i: (got[n][0], got[n][1]) for i, n in enumerate(self._names) if n in got and n not in self._known
        }

    def problem(self, arrays: Sequence[np.ndarray]) -> str | None:
        """What is out of range in a request's arrays (in input order), or None."""
        for i, value_range in (self.ranges or {}).items():
            problem = range_problem(self._names[i], arrays[i], value_range)
            if problem is not None:
                return problem
        return None
