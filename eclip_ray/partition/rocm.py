"""The ROCm backend: CU-masked streams from ``hipExtStreamCreateWithCUMask`` (hip-python).

ECLIP's own mechanism, on AMD: each partition of the pool is a stream whose
kernels run only on the CUs of its mask. The topology (CUs, shader engines,
shader arrays) comes from the driver: the CU count from
``hipDeviceGetAttribute`` and the shader engines from the KFD topology in sysfs,
matched to the HIP device by PCI address (HIP reports no shader-engine count).
Masks are built by ``cumask.py``; every HIP return code is checked and a failure
names the call and the CUs asked for. Each mask is read back with
``hipExtStreamGetCUMask``, so a HIP runtime that narrowed it (``ROC_GLOBAL_CU_MASK``)
is seen; ``HSA_CU_MASK`` acts below HIP, unseen, so it is refused at start.

Hardware queues are scarce (7 masked streams on an MI50 before they are
oversubscribed), so the first owner of a partition gets the partition's own
stream and only further owners cost another masked stream; the limit is
enforced on every stream created.

Nothing here has run on an AMD GPU yet (docs/amd.md).
"""

from __future__ import annotations

import array
import os
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from eclip_ray.errors import BackendError, BackendUnavailable, LayoutError
from eclip_ray.partition import cumask
from eclip_ray.partition.backend import Partition, PartitionBackend
from eclip_ray.partition.layout import DeviceGeometry, PartitionSpec

KFD_NODES = Path("/sys/class/kfd/kfd/topology/nodes")
_INSTALL = "pip install 'eclip-ray[amd]' (hip-python of your ROCm version)"


def _hip():
    try:
        from hip import hip
    except ImportError as e:
        raise BackendUnavailable(f"the rocm backend needs hip-python: {_INSTALL}") from e
    return hip


def check(result: Any, call: str, context: str = "") -> Any:
    """Unwrap a hip-python result tuple, raising BackendError when its code is not hipSuccess."""
    err, rest = result[0], result[1:]
    if int(err) != 0:
        raise BackendError(call, getattr(err, "name", f"hipError {int(err)}"), context)
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


def call(hip: Any, name: str, *args: Any, context: str = "") -> Any:
    """Call ``hip.<name>`` and check it; a HIP runtime that cannot be loaded is BackendUnavailable."""
    try:
        result = getattr(hip, name)(*args)
    except RuntimeError as e:  # hip-python loads libamdhip64.so on the first call
        raise BackendUnavailable(f"hip-python could not load the HIP runtime ({e}); install ROCm") from e
    return check(result, name, context)


def gpu_count() -> int | None:
    """AMD GPUs HIP sees; None when hip-python or the HIP runtime is missing."""
    try:
        hip = _hip()
        return int(call(hip, "hipGetDeviceCount"))
    except BackendUnavailable:
        return None
    except BackendError:  # hipErrorNoDevice
        return 0


def pci_bus_id(device_index: int, hip: Any = None) -> str:
    """The PCI address (``0000:03:00.0``) of HIP device ``device_index``."""
    hip = hip or _hip()
    raw = call(hip, "hipDeviceGetPCIBusId", 64, device_index, context=f"device {device_index}")
    return str(raw).split("\0", 1)[0].strip()  # a CStr; str() decodes it


def read_kfd_nodes(root: Path = KFD_NODES) -> list[dict[str, int]]:
    """Every KFD topology node's properties (CPU nodes included)."""
    if not root.is_dir():
        raise BackendUnavailable(f"no KFD topology at {root}: the amdgpu kernel driver is not loaded")
    nodes = sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    return [cumask.parse_kfd_properties((p / "properties").read_text()) for p in nodes]


def _check_no_hidden_mask(environ: Mapping[str, str]) -> None:
    if environ.get("HSA_CU_MASK"):
        raise BackendUnavailable(
            f"HSA_CU_MASK={environ['HSA_CU_MASK']!r} is set: ROCr would narrow every partition's CUs "
            "below HIP, where the mask read-back cannot see it; unset it to partition with the rocm backend"
        )


def _check_one_runtime() -> None:
    # torch's ROCm wheels carry their own libamdhip64; a second copy loaded by hip-python is a
    # second HIP runtime whose streams torch cannot use.
    maps = Path("/proc/self/maps")
    found = cumask.hip_runtimes(maps.read_text()) if maps.exists() else set()
    if len(found) > 1:
        raise BackendUnavailable(
            f"two HIP runtimes are loaded ({sorted(found)}): torch and hip-python must use the same "
            "libamdhip64 (use a torch built for the system ROCm, or set ROCM_PATH so that "
            "ROCM_PATH/lib/libamdhip64.so is torch's)"
        )


class RocmCuMaskBackend(PartitionBackend):
    """CU-masked streams on one AMD GPU.

    ``topology`` replaces what the driver reports (for GPUs whose shader arrays
    lost uneven numbers of CUs, give ``cus_per_array``); ``max_masked_streams``
    replaces the per-architecture queue limit; ``granularity`` the whole-SE step.
    """

    name = "rocm"
    partitions_sms = True

    def __init__(
        self,
        device_index: int = 0,
        topology: cumask.Topology | None = None,
        max_masked_streams: int | None = None,
        granularity: int | None = None,
        kfd_root: Path = KFD_NODES,
    ) -> None:
        self._index = device_index
        self._hip = hip = self._open_device(device_index)
        self.topology = topology or self._read_topology(kfd_root)
        cumask.check_maskable(self.topology)
        cus = hip.hipDeviceAttribute_t.hipDeviceAttributeMultiprocessorCount
        cu_count = int(call(hip, "hipDeviceGetAttribute", cus, device_index, context=f"device {device_index}"))
        if cu_count != self.topology.cu_count:
            raise LayoutError(f"HIP reports {cu_count} CUs but the topology has {self.topology.cu_count}")
        self._geometry = cumask.geometry(self.topology, granularity)
        self.arch = torch.cuda.get_device_properties(device_index).gcnArchName
        self.max_masked, self.limit_source = cumask.masked_stream_limit(self.arch, max_masked_streams)
        self._streams: list[Any] = []  # hip-python handles, destroyed in close()
        self._first_owner_taken: set[str] = set()

    def _open_device(self, device_index: int) -> Any:
        if torch.version.hip is None or not torch.cuda.is_available():
            raise BackendUnavailable("the rocm backend needs a ROCm build of torch that sees an AMD GPU")
        _check_no_hidden_mask(os.environ)
        hip = _hip()
        call(hip, "hipSetDevice", device_index, context=f"device {device_index}")
        torch.cuda.set_device(device_index)
        torch.zeros(1, device=self.device())  # torch's HIP context first, as the streams join it
        _check_one_runtime()
        return hip

    def _read_topology(self, kfd_root: Path) -> cumask.Topology:
        node = cumask.kfd_node_for(read_kfd_nodes(kfd_root), pci_bus_id(self._index, self._hip))
        return cumask.topology_from_kfd(node)

    # -- the HIP steps --------------------------------------------------------------------------

    def _masked_stream(self, words: list[int], what: str) -> torch.cuda.ExternalStream:
        if len(self._streams) >= self.max_masked:
            raise LayoutError(
                f"{what}: would be CU-masked stream {len(self._streams) + 1} but the GPU takes {self.max_masked} "
                f"({self.limit_source}); use fewer partitions or model instances"
            )
        mask = array.array("I", words)
        call(self._hip, "hipSetDevice", self._index, context=what)
        raw = call(self._hip, "hipExtStreamCreateWithCUMask", len(words), mask, context=what)
        self._streams.append(raw)
        got = array.array("I", [0] * len(words))
        call(self._hip, "hipExtStreamGetCUMask", raw, len(words), got, context=what)
        if list(got) != words:
            raise BackendError(
                "hipExtStreamGetCUMask",
                "mask differs",
                f"{what}: the stream got {_hex(got)} (is ROC_GLOBAL_CU_MASK set?)",
            )
        return torch.cuda.ExternalStream(int(raw), device=self.device())

    def _what(self, spec: PartitionSpec) -> str:
        words = cumask.mask_words(self.topology, spec.start, spec.count)
        rng = cumask.describe_range(self.topology, spec.start, spec.count)
        return f"partition {spec.name!r}: {rng}, mask {_hex(words)}"

    # -- the interface ------------------------------------------------------------------------

    def geometry(self) -> DeviceGeometry:
        return self._geometry

    def device(self) -> torch.device:
        return torch.device("cuda", self._index)  # ROCm builds of torch call HIP devices "cuda"

    def create(self, spec: PartitionSpec) -> Partition:
        t0 = time.perf_counter()
        if not cumask.is_masked(spec, self._geometry.sm_count):
            stream = torch.cuda.Stream(device=self.device())
            return Partition(spec, spec.count, stream, 1e3 * (time.perf_counter() - t0))
        words = cumask.mask_words(self.topology, spec.start, spec.count)
        stream = self._masked_stream(words, self._what(spec))
        return Partition(spec, spec.count, stream, 1e3 * (time.perf_counter() - t0), context=words)

    def new_stream(self, partition: Partition, priority: int = 0) -> torch.cuda.Stream:
        if partition.context is None:
            return torch.cuda.Stream(device=self.device(), priority=priority)
        # hipExtStreamCreateWithCUMask takes no priority: CU-masked streams run at the default one.
        if partition.name not in self._first_owner_taken:
            self._first_owner_taken.add(partition.name)
            return partition.stream
        return self._masked_stream(partition.context, self._what(partition.spec))

    def describe(self) -> dict[str, Any]:
        props = torch.cuda.get_device_properties(self._index)
        t = self.topology
        return {
            "backend": self.name,
            "device": props.name,
            "arch": self.arch,
            "cu_count": t.cu_count,
            "shader_engines": t.shader_engines,
            "cus_per_engine": t.cus_per_engine(),
            "max_masked_streams": self.max_masked,
            "max_masked_streams_source": self.limit_source,
            "hip_runtime": call(self._hip, "hipRuntimeGetVersion"),
            "hip_driver": call(self._hip, "hipDriverGetVersion"),
            "torch": torch.__version__,
            "torch_hip": torch.version.hip,
            "hip_python": metadata.version("hip-python"),
            "stream_priorities": "whole-GPU streams only; CU-masked streams ignore them",
        }

    def free_memory_bytes(self) -> int | None:
        return int(torch.cuda.mem_get_info(self._index)[0])

    def synchronize(self) -> None:
        torch.cuda.synchronize(self._index)

    def close(self) -> None:
        if not self._streams:
            return
        torch.cuda.synchronize(self._index)
        for raw in self._streams:
            call(self._hip, "hipStreamDestroy", raw)
        self._streams.clear()
        self._first_owner_taken.clear()


def _hex(words: Any) -> str:
    return "[" + ", ".join(f"0x{w:08x}" for w in words) + "]"
