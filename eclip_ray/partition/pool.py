"""The stream pool: every partition of a layout, created once when the runtime starts.

ECLIP's pre-allocated CU-masked streams, on NVIDIA. Nothing on the request path
creates or reconfigures a partition: plans only name partitions of this pool.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from eclip_ray.partition.backend import Partition, PartitionBackend
from eclip_ray.partition.layout import WHOLE, Layout, whole


class StreamPool:
    """Owns the partitions of one layout on one backend. Close it (or use ``with``) to free them."""

    def __init__(self, backend: PartitionBackend, layout: Layout) -> None:
        if layout.geometry != backend.geometry():
            raise ValueError(
                f"layout made for {layout.geometry} but the {backend.name} backend's device is {backend.geometry()}"
            )
        self.backend = backend
        self.layout = layout
        free_before = backend.free_memory_bytes()
        t0 = time.perf_counter()
        specs = list(layout.partitions)
        if WHOLE not in layout.names:
            specs.append(whole(layout.geometry))
        self._parts: dict[str, Partition] = {}
        self._owned: dict[tuple[str, str, int], torch.cuda.Stream | None] = {}
        try:
            for spec in specs:
                self._parts[spec.name] = backend.create(spec)
        except BaseException:
            backend.close()
            raise
        backend.synchronize()
        self.create_ms = 1e3 * (time.perf_counter() - t0)
        free_after = backend.free_memory_bytes()
        self.memory_bytes = None if free_before is None else max(0, free_before - free_after)

    def __getitem__(self, name: str) -> Partition:
        try:
            return self._parts[name]
        except KeyError:
            raise KeyError(f"no partition named {name!r} in the pool; it has {sorted(self._parts)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._parts

    def __iter__(self):
        return iter(self._parts.values())

    @property
    def names(self) -> list[str]:
        return list(self._parts)

    @property
    def device(self) -> torch.device:
        return self.backend.device()

    def sm_count(self, name: str) -> int:
        return self[name].sm_count

    def stream(self, name: str, owner: str | None = None, priority: int = 0) -> torch.cuda.Stream | None:
        """The stream of partition ``name``; with ``owner``, a stream of that partition private to the owner.

        Each model instance gets its own streams so that two models on the same
        partition (or both on the whole GPU) run concurrently, as in plain
        multi-stream serving. ``priority`` (owners only; lower is more urgent) is
        clamped to the device's range, and ignored by backends without priorities.
        Create them at start-up: this may call the driver.
        """
        part = self[name]
        if owner is None:
            return part.stream
        key = (name, owner, priority)
        if key not in self._owned:
            self._owned[key] = self.backend.new_stream(part, priority)
        return self._owned[key]

    def report(self) -> dict[str, Any]:
        """What the pool holds: per partition the SM range asked, SMs obtained, SM ids seen, creation time."""
        return {
            "backend": self.backend.name,
            "create_ms": round(self.create_ms, 3),
            "memory_bytes": self.memory_bytes,
            "partitions": [
                {
                    "name": p.name,
                    "start": p.spec.start,
                    "count": p.spec.count,
                    "sm_count": p.sm_count,
                    "worker": p.spec.worker,
                    "create_ms": round(p.create_ms, 3),
                    "sm_ids": p.sm_ids,
                }
                for p in self._parts.values()
            ],
        }

    def close(self) -> None:
        self._owned.clear()
        self._parts.clear()
        self.backend.close()

    def __enter__(self) -> StreamPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
