"""The partition backend interface: one per vendor, chosen when the runtime starts.

A backend turns a :class:`PartitionSpec` into a stream whose kernels run only on
that range of SMs. ``cuda`` does it with green contexts, ``cpu`` does not
partition at all but keeps the same API so every layer above runs without a GPU.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch

from eclip_ray.partition.layout import DeviceGeometry, PartitionSpec


@dataclass
class Partition:
    """A created partition: the spec, the SMs obtained and the stream to launch on."""

    spec: PartitionSpec
    sm_count: int
    stream: torch.cuda.Stream | None
    create_ms: float = 0.0
    sm_ids: list[int] | None = field(default=None)
    context: Any = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name


class PartitionBackend(ABC):
    """Creates SM-restricted streams on one device and owns everything it creates."""

    name: str = ""
    partitions_sms: bool = False

    @abstractmethod
    def geometry(self) -> DeviceGeometry:
        """SM count and split rules of the device."""

    @abstractmethod
    def device(self) -> torch.device:
        """The torch device tensors live on."""

    @abstractmethod
    def create(self, spec: PartitionSpec) -> Partition:
        """Create the stream for ``spec``; raises LayoutError or BackendError naming the SMs asked."""

    @abstractmethod
    def new_stream(self, partition: Partition, priority: int = 0) -> torch.cuda.Stream | None:
        """Another stream on the same SMs as ``partition`` (for a second model instance).

        ``priority`` follows CUDA's convention (lower is more urgent, 0 the default) and is
        clamped to the device's range (:meth:`priority_range`); a backend without stream
        priorities accepts and ignores it (its ``describe()["stream_priorities"]`` says so).
        """

    def priority_range(self) -> tuple[int, int] | None:
        """``(least, greatest)`` stream priority of the device (greatest is the most urgent); None: no priorities."""
        return None

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Device name, driver and library versions, for result files."""

    def free_memory_bytes(self) -> int | None:
        """Free device memory in bytes, or None where the backend has no device memory."""
        return None

    def synchronize(self) -> None:
        """Wait for all work on the device."""

    def context_fault(self) -> str | None:
        """None while the device context still runs work; else why not, after a sticky error (a device-side
        assert, an illegal address: every later call in this process fails too). Called after a batch failed,
        from any thread; it waits for the device's work. This default probes through torch: a tiny kernel and a
        synchronize."""
        try:
            probe = torch.ones(1, device=self.device())
            probe.add_(1)
            torch.cuda.synchronize(self.device())
            if probe.item() != 2:
                return "a probe kernel on the device gave a wrong result"
        except Exception as e:  # torch.AcceleratorError and kin: the error the context is stuck with
            return f"{type(e).__name__}: {e}"
        return None

    def close(self) -> None:
        """Destroy every stream and context this backend created."""
