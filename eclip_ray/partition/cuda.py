"""The CUDA backend: SM-partitioned streams from green contexts (cuda.bindings.driver).

How a range of SM slots becomes a stream (`docs/hardware.md` section 1): a split of
the device's SM resource returns a prefix and its remainder; two separate splits
of the whole device return the same SMs, so a range that starts above slot 0 is
made by splitting off the prefix, turning the remainder into a green context,
reading its resource back and splitting that again. Every driver call's return
code is checked and a failure names the call and the SMs asked for.

Work queues: every stream is mapped onto one of the context's hardware work queues,
8 by default (CUDA_DEVICE_MAX_CONNECTIONS), and green contexts share the device's
queues. A pool holds more streams than that, and two streams on one queue run in
order: a small model on its own SMs then waits for a large one's kernels on others
(runs with 8 queues: benchmarks/results/h100/corun/queues8/; docs/optimizer.md, "Work queues"). The backend asks for
32 queues before CUDA starts, unless the variable is set already.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import Any

import torch

from eclip_ray.errors import BackendError, BackendUnavailable, LayoutError
from eclip_ray.partition.backend import Partition, PartitionBackend
from eclip_ray.partition.layout import DeviceGeometry, PartitionSpec

# Hopper and Blackwell: green-context SM groups come in steps of 8 with at least 8.
_SPLIT_RULES = {9: (8, 8), 10: (8, 8), 12: (8, 8)}
_DEFAULT_RULE = (2, 2)


WORK_QUEUES = 32  # the driver's maximum for CUDA_DEVICE_MAX_CONNECTIONS
_QUEUES_VAR = "CUDA_DEVICE_MAX_CONNECTIONS"


def configure_work_queues() -> str:
    """Ask for :data:`WORK_QUEUES` hardware work queues if the CUDA driver has not started; return the setting.

    The driver reads the variable when it initialises (``cuInit``, which
    ``torch.cuda.is_available()`` already calls), so entry points call this first;
    on the H100 a value set after that had no effect. Ray actors get it through
    their ``runtime_env`` as well (``actor/remote.py``).
    """
    if _QUEUES_VAR in os.environ:
        return os.environ[_QUEUES_VAR]
    if _driver_started():
        warnings.warn(
            f"the CUDA driver started before the partition pool, with the default 8 work queues: streams of "
            f"different partitions may wait for each other. Set {_QUEUES_VAR}={WORK_QUEUES} before anything "
            f"uses CUDA.",
            stacklevel=2,
        )
        return "8 (driver default)"
    os.environ[_QUEUES_VAR] = str(WORK_QUEUES)
    return str(WORK_QUEUES)


def _driver_started() -> bool:
    """Whether ``cuInit`` has run in this process (``cuDeviceGetCount`` answers NOT_INITIALIZED before it)."""
    if torch.cuda.is_initialized():
        return True
    try:
        from cuda.bindings import driver

        err = driver.cuDeviceGetCount()[0]
    except Exception:  # no bindings or no driver library on this machine: nothing can have started it
        return False
    return err != driver.CUresult.CUDA_ERROR_NOT_INITIALIZED


def _driver():
    try:
        from cuda.bindings import driver
    except ImportError as e:  # pragma: no cover - depends on the machine
        raise BackendUnavailable("the cuda backend needs cuda-bindings: pip install 'eclip-ray[nvidia]'") from e
    return driver


def check(result: tuple, call: str, context: str = "") -> Any:
    """Unwrap a cuda.bindings result tuple, raising BackendError when its code is not CUDA_SUCCESS."""
    err, rest = result[0], result[1:]
    if int(err) != 0:
        raise BackendError(call, getattr(err, "name", str(err)), context)
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


class CudaGreenBackend(PartitionBackend):
    name = "cuda"
    partitions_sms = True

    def __init__(self, device_index: int = 0) -> None:
        self.work_queues = configure_work_queues()
        if not torch.cuda.is_available():
            raise BackendUnavailable("torch sees no CUDA device")
        self._cu = cu = _driver()
        self._index = device_index
        torch.cuda.set_device(device_index)
        torch.zeros(1, device=self.device())  # make the primary context current, as torch uses it
        check(cu.cuInit(0), "cuInit")
        self._dev = check(cu.cuDeviceGet(device_index), "cuDeviceGet", f"device {device_index}")
        self._sm_type = cu.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM
        self._full = check(cu.cuDeviceGetDevResource(self._dev, self._sm_type), "cuDeviceGetDevResource")
        major = torch.cuda.get_device_capability(device_index)[0]
        min_sms, step = _SPLIT_RULES.get(major, _DEFAULT_RULE)
        self._geometry = DeviceGeometry(sm_count=int(self._full.sm.smCount), min_sms=min_sms, granularity=step)
        # Stream priorities: lower is more urgent; the range is the primary context's (made current above).
        self._priorities = tuple(int(v) for v in check(cu.cuCtxGetStreamPriorityRange(), "cuCtxGetStreamPriorityRange"))
        self._bases: dict[int, Any] = {0: self._full}  # first slot -> SM resource starting there
        self._contexts: list[Any] = []
        self._streams: list[Any] = []

    # -- the small driver steps -------------------------------------------------------------

    def _split(self, resource: Any, count: int, what: str) -> tuple[Any, Any]:
        groups, n, remainder = check(
            self._cu.cuDevSmResourceSplitByCount(1, resource, 0, count), "cuDevSmResourceSplitByCount", what
        )
        if n < 1 or int(groups[0].sm.smCount) != count:
            got = int(groups[0].sm.smCount) if n else 0
            raise LayoutError(f"{what}: asked for {count} SMs, the driver split off {got}")
        return groups[0], remainder

    def _green_context(self, resource: Any, what: str) -> Any:
        desc = check(self._cu.cuDevResourceGenerateDesc([resource], 1), "cuDevResourceGenerateDesc", what)
        flags = self._cu.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM
        ctx = check(self._cu.cuGreenCtxCreate(desc, self._dev, flags), "cuGreenCtxCreate", what)
        self._contexts.append(ctx)
        return ctx

    def _base(self, start: int, what: str) -> Any:
        """The SM resource that begins at slot ``start`` (the remainder after a prefix split)."""
        if start not in self._bases:
            _, remainder = self._split(self._full, start, f"{what}: prefix of {start} SMs")
            ctx = self._green_context(remainder, f"{what}: remainder above SM {start}")
            self._bases[start] = check(
                self._cu.cuGreenCtxGetDevResource(ctx, self._sm_type), "cuGreenCtxGetDevResource", what
            )
        return self._bases[start]

    # -- the interface ------------------------------------------------------------------------

    def geometry(self) -> DeviceGeometry:
        return self._geometry

    def device(self) -> torch.device:
        return torch.device("cuda", self._index)

    def create(self, spec: PartitionSpec) -> Partition:
        t0 = time.perf_counter()
        g = self._geometry
        if spec.start == 0 and spec.count == g.sm_count:
            stream = torch.cuda.Stream(device=self.device())
            return Partition(spec, g.sm_count, stream, 1e3 * (time.perf_counter() - t0))
        what = f"partition {spec.name!r}: SMs {spec.start}..{spec.stop - 1} ({spec.count} SMs)"
        base = self._base(spec.start, what)
        group = base if int(base.sm.smCount) == spec.count else self._split(base, spec.count, what)[0]
        ctx = self._green_context(group, what)
        part = Partition(spec, int(group.sm.smCount), None, context=ctx)
        part.stream = self.new_stream(part)
        part.create_ms = 1e3 * (time.perf_counter() - t0)
        return part

    def priority_range(self) -> tuple[int, int]:
        return self._priorities  # type: ignore[return-value]

    def _clamp(self, priority: int) -> int:
        least, greatest = self._priorities
        return max(greatest, min(least, int(priority)))

    def new_stream(self, partition: Partition, priority: int = 0) -> torch.cuda.Stream:
        """A stream on ``partition``'s SMs at ``priority`` (clamped to the device's range).

        A CUDA graph keeps the priority of the streams it was captured on (torch instantiates
        graphs with ``cudaGraphInstantiateFlagUseNodePriority``), so a runner captures on
        streams of its own priority; replaying on a more urgent stream would change nothing.
        """
        priority = self._clamp(priority)
        if partition.context is None:  # the whole GPU: an ordinary stream
            return torch.cuda.Stream(device=self.device(), priority=priority)
        flags = self._cu.CUstream_flags.CU_STREAM_NON_BLOCKING
        what = f"partition {partition.name!r} ({partition.sm_count} SMs), priority {priority}"
        raw = check(self._cu.cuGreenCtxStreamCreate(partition.context, flags, priority), "cuGreenCtxStreamCreate", what)
        self._streams.append(raw)
        return torch.cuda.ExternalStream(int(raw), device=self.device())

    def describe(self) -> dict[str, Any]:
        import cuda.bindings

        props = torch.cuda.get_device_properties(self._index)
        version = check(self._cu.cuDriverGetVersion(), "cuDriverGetVersion")
        return {
            "backend": self.name,
            "device": props.name,
            "sm_count": self._geometry.sm_count,
            "cuda_driver_api": f"{version // 1000}.{version % 1000 // 10}",
            "torch": torch.__version__,
            "torch_cuda": torch.version.cuda,
            "cuda_bindings": cuda.bindings.__version__,
            "work_queues": self.work_queues,
            "stream_priorities": {"least": self._priorities[0], "greatest": self._priorities[1]},
        }

    def free_memory_bytes(self) -> int | None:
        return int(torch.cuda.mem_get_info(self._index)[0])

    def synchronize(self) -> None:
        torch.cuda.synchronize(self._index)

    def context_fault(self) -> str | None:
        """The primary context (synchronized, then a 256-byte allocation written and freed) and every green
        context (synchronized), each made current on the calling thread for the probe: the first call that fails
        names the sticky error, e.g. ``cuCtxSynchronize failed with CUDA_ERROR_ASSERT``."""
        cu, where = self._cu, f"device {self._index}"
        try:
            primary = check(cu.cuDevicePrimaryCtxRetain(self._dev), "cuDevicePrimaryCtxRetain", where)
            try:
                self._probe(primary, f"{where}, primary context", allocate=True)
            finally:
                released = cu.cuDevicePrimaryCtxRelease(self._dev)
            check(released, "cuDevicePrimaryCtxRelease", where)
            for i, green in enumerate(self._contexts):
                what = f"{where}, green context {i}"
                self._probe(check(cu.cuCtxFromGreenCtx(green), "cuCtxFromGreenCtx", what), what, allocate=False)
        except BackendError as e:
            return str(e)
        return None

    def _probe(self, ctx: Any, what: str, allocate: bool) -> None:
        cu = self._cu
        check(cu.cuCtxPushCurrent(ctx), "cuCtxPushCurrent", what)
        try:
            check(cu.cuCtxSynchronize(), "cuCtxSynchronize", what)
            if allocate:
                ptr = check(cu.cuMemAlloc(256), "cuMemAlloc", what)
                try:
                    check(cu.cuMemsetD8(ptr, 0, 256), "cuMemsetD8", what)
                    check(cu.cuCtxSynchronize(), "cuCtxSynchronize", what)
                finally:
                    freed = cu.cuMemFree(ptr)
                check(freed, "cuMemFree", what)
        finally:
            popped = cu.cuCtxPopCurrent()
        check(popped, "cuCtxPopCurrent", what)

    def close(self) -> None:
        if not self._contexts and not self._streams:
            return
        torch.cuda.synchronize(self._index)
        for raw in self._streams:
            check(self._cu.cuStreamDestroy(raw), "cuStreamDestroy")
        for ctx in reversed(self._contexts):
            check(self._cu.cuGreenCtxDestroy(ctx), "cuGreenCtxDestroy")
        self._streams.clear()
        self._contexts.clear()
        self._bases = {0: self._full}
