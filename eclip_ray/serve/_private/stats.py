"""Per-model statistics in the shape of Triton's ``/v2/models/{name}/stats`` (KServe statistics extension).

Only what is measured is reported. The front counts requests: successes and
failures with their total time, and time queued for a batch; every ingress
replica counts its own, and the fleet sums the replicas' counts (each replica
reports its own every second, and at once when asked for statistics). The GPU
actors count executions: the batches that ran on the device (after the actor
joined the small ones), their rows, and per batch size the count and the time on
the device. Durations are nanoseconds, as in Triton.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float, count: int = 1) -> None:
        self.count += count
        self.ns += round(seconds * 1e9)

    def to_dict(self) -> dict:
        return {"count": self.count, "ns": self.ns}


@dataclass
class ModelStats:
    """One model's request counts in one ingress replica (or, summed, in all of them)."""

    name: str
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    queue: _Duration = field(default_factory=_Duration)
    last_inference_ms: int = 0
    version: int = 0  # bumped on every change, so that a replica reports only when something changed

    def succeeded(self, rows: int, total_s: float, queue_s: float) -> None:
        """A request of ``rows`` rows answered after ``total_s`` seconds, ``queue_s`` of them queued."""
        self.success.add(total_s)
        self.queue.add(queue_s)
        self.last_inference_ms = int(time.time() * 1e3)
        self.version += 1

    def failed(self, total_s: float) -> None:
        self.fail.add(total_s)
        self.version += 1

    def snapshot(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def summed(cls, name: str, snapshots: Iterable[Mapping[str, Any]]) -> ModelStats:
        out = cls(name)
        for s in snapshots:
            for part in ("success", "fail", "queue"):
                total = getattr(out, part)
                total.count += s[part]["count"]
                total.ns += s[part]["ns"]
            out.last_inference_ms = max(out.last_inference_ms, s["last_inference_ms"])
        return out

    def to_triton(self, gpus: Sequence[Mapping[str, Any]] = ()) -> dict:
        """Triton's statistics of the model: these request counts, and the executions ``gpus`` report (each GPU
        actor's ``stats()["models"][name]``, with ``available``)."""
        by_rows: dict[int, list[float]] = {}
        inferences = executions = 0
        for g in gpus:
            if not g.get("available"):
                continue
            inferences += g["inferences"]
            executions += g["batches"]
            for rows, b in g.get("by_rows", {}).items():
                acc = by_rows.setdefault(int(rows), [0, 0.0])
                acc[0] += b["batches"]
                acc[1] += b["seconds"]
        return {
            "name": self.name,
            "version": "1",
            "last_inference": self.last_inference_ms,
            "inference_count": inferences,
            "execution_count": executions,
            "inference_stats": {
                "success": self.success.to_dict(),
                "fail": self.fail.to_dict(),
                "queue": self.queue.to_dict(),
            },
            "batch_stats": [
                {"batch_size": rows, "compute_infer": {"count": n, "ns": round(s * 1e9)}}
                for rows, (n, s) in sorted(by_rows.items())
            ],
        }


class StatsBoard:
    """Every ingress replica's latest request counts (kept by the fleet), summed per model on request."""

    def __init__(self) -> None:
        self._by_replica: dict[str, dict[str, dict[str, Any]]] = {}

    def exchange(self, replica: str, snapshots: Mapping[str, Mapping[str, Any]], models: Sequence[str]) -> dict:
        """Record ``replica``'s snapshots (``ModelStats.snapshot``); every replica's summed, for ``models``."""
        if snapshots:
            self._by_replica.setdefault(replica, {}).update(snapshots)
        return {m: ModelStats.summed(m, (r[m] for r in self._by_replica.values() if m in r)).snapshot() for m in models}
