"""Per-model statistics in the shape of Triton's ``/v2/models/{name}/stats`` (KServe statistics extension).

Only what is measured is reported: successes and failures with their total
time, time queued for a batch, and per batch size the count and time of
executions (the round trip to the GPU actor). Durations are nanoseconds, as
in Triton.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += round(seconds * 1e9)

    def to_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


class ModelStats:
    def __init__(self, name: str) -> None:
        self.name = name
        self.success = _Duration()
        self.fail = _Duration()
        self.queue = _Duration()
        self.inferences = 0
        self.executions = 0
        self.last_inference_ms = 0
        self._batches: dict[int, _Duration] = defaultdict(_Duration)

    def succeeded(self, rows: int, total_s: float, queue_s: float) -> None:
        """A request of ``rows`` rows answered after ``total_s`` seconds, ``queue_s`` of them queued."""
        self.success.add(total_s)
        self.queue.add(queue_s)
        self.inferences += rows
        self.last_inference_ms = int(time.time() * 1e3)

    def failed(self, total_s: float) -> None:
        self.fail.add(total_s)

    def batch(self, rows: int, seconds: float) -> None:
        """One batch of ``rows`` rows ran in ``seconds`` (round trip to the actor)."""
        self.executions += 1
        self._batches[rows].add(seconds)

    def to_triton(self) -> dict:
        return {
            "name": self.name,
            "version": "1",
            "last_inference": self.last_inference_ms,
            "inference_count": self.inferences,
            "execution_count": self.executions,
            "inference_stats": {
                "success": self.success.to_dict(),
                "fail": self.fail.to_dict(),
                "queue": self.queue.to_dict(),
            },
            "batch_stats": [
                {"batch_size": rows, "compute_infer": d.to_dict()} for rows, d in sorted(self._batches.items())
            ],
        }
