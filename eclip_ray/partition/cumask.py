"""AMD CU masks as data: a GPU's topology, the masks of SM/CU slot ranges, and the masked-stream budget.

Pure functions, no HIP: the ROCm backend (``rocm.py``) feeds them what the
driver reports, and CI tests them with made-up topologies.

Two orders matter. The *bit order* is the driver's: amdkfd spreads bit ``i`` of
a stream's CU mask over the shader engines round-robin (bit 0 -> SE0 CU0,
bit 1 -> SE1 CU0, ..., then CU1 of every SE; ``mqd_symmetrically_map_cu_mask``),
skipping shader arrays that have fewer active CUs. The *slot order* is ours:
layouts (``layout.py``) name contiguous ranges of slots, and slots are numbered
shader engine by shader engine, so an aligned range of whole-SE size is a set
of whole shader engines, as in ECLIP, and ``ladder()`` places the workers'
small masks on different shader engines.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from eclip_ray.errors import LayoutError
from eclip_ray.partition.layout import DeviceGeometry, Layout, PartitionSpec

# amdkfd programs 16 CUs per shader array (one half of a 32-bit se_mask word); more cannot be masked.
MAX_CUS_PER_ARRAY = 16

# Masked streams one process can hold before the hardware queues are oversubscribed (then
# the firmware time-slices queues and partitions stop running side by side), per architecture.
MASKED_STREAM_LIMITS = {"gfx906": 7}  # MI50/MI60: measured by ECLIP (ISLPED 2025, "Mechanism")
DEFAULT_MASKED_STREAMS = 7  # elsewhere the MI50 figure is assumed until measured; configure it to override


@dataclass(frozen=True)
class Topology:
    """What the driver says about a GPU's compute units.

    ``cus_per_array`` lists the active CUs of each shader array, shader engine
    by shader engine; None means "spread evenly", which is only possible when
    ``cu_count`` divides by the number of arrays (otherwise the driver's
    harvesting decides, and it must be configured).
    """

    cu_count: int
    shader_engines: int
    arrays_per_engine: int = 1
    cus_per_array: tuple[int, ...] | None = None
    gfx_target_version: int = 0  # KFD's encoding: 90006 is gfx906
    xcc_count: int = 1

    def __post_init__(self) -> None:
        if self.cu_count <= 0 or self.shader_engines <= 0 or self.arrays_per_engine <= 0:
            raise LayoutError(f"impossible topology {self}")

    @property
    def arrays(self) -> int:
        return self.shader_engines * self.arrays_per_engine

    def per_array(self) -> list[list[int]]:
        """Active CUs of array ``sh`` of shader engine ``se`` at ``[se][sh]``."""
        counts = self.cus_per_array
        if counts is None:
            if self.cu_count % self.arrays:
                raise LayoutError(
                    f"{self.cu_count} CUs do not split evenly over {self.arrays} shader arrays, so which arrays "
                    "lost CUs is unknown: configure cus_per_array (active CUs of each array, SE by SE)"
                )
            counts = (self.cu_count // self.arrays,) * self.arrays
        if len(counts) != self.arrays or sum(counts) != self.cu_count:
            raise LayoutError(
                f"cus_per_array {list(counts)} must have {self.arrays} entries summing to {self.cu_count} CUs"
            )
        if max(counts) > MAX_CUS_PER_ARRAY:
            raise LayoutError(f"a shader array with {max(counts)} CUs cannot be masked (at most {MAX_CUS_PER_ARRAY})")
        k = self.arrays_per_engine
        return [list(counts[se * k : (se + 1) * k]) for se in range(self.shader_engines)]

    def cus_per_engine(self) -> list[int]:
        return [sum(arrays) for arrays in self.per_array()]


def arch_name(gfx_target_version: int) -> str:
    """``gfx906`` from KFD's ``gfx_target_version`` 90006 (the last two digits are a hex stepping)."""
    major, minor, step = gfx_target_version // 10000, gfx_target_version // 100 % 100, gfx_target_version % 100
    return f"gfx{major}{minor}{step:x}"


def check_maskable(topo: Topology) -> None:
    """Raise LayoutError for GPUs whose CU-mask bits this module does not lay out."""
    if topo.xcc_count != 1:
        raise LayoutError(
            f"{arch_name(topo.gfx_target_version)} has {topo.xcc_count} XCCs; the driver interleaves mask bits "
            "over XCCs there, which this backend does not lay out yet (single-XCC GPUs such as the MI50 only)"
        )
    if topo.gfx_target_version >= 100000:
        raise LayoutError(
            f"{arch_name(topo.gfx_target_version)} masks whole WGPs (pairs of mask bits); "
            "only gfx9 (GCN/CDNA) masks are laid out"
        )


def bit_order(topo: Topology) -> list[tuple[int, int, int]]:
    """``(se, sh, cu)`` of each CU-mask bit, in the driver's order (index = bit number)."""
    per = topo.per_array()
    order = []
    for cu in range(max(max(a) for a in per)):
        for sh in range(topo.arrays_per_engine):
            for se in range(topo.shader_engines):
                if per[se][sh] > cu:
                    order.append((se, sh, cu))
    return order


def slot_order(topo: Topology) -> list[tuple[int, int, int]]:
    """``(se, sh, cu)`` of each slot: shader engine by shader engine, a partial SE spread over its arrays."""
    return sorted(bit_order(topo), key=lambda c: (c[0], c[2], c[1]))


def mask_words(topo: Topology, start: int, count: int) -> list[int]:
    """The 32-bit words of the CU mask for slots ``[start, start + count)``, lowest CUs first."""
    if count <= 0 or start < 0 or start + count > topo.cu_count:
        raise LayoutError(f"slots {start}..{start + count - 1} are outside the device's {topo.cu_count} CUs")
    bit_of = {cu: i for i, cu in enumerate(bit_order(topo))}
    words = [0] * ((topo.cu_count + 31) // 32)
    for cu in slot_order(topo)[start : start + count]:
        bit = bit_of[cu]
        words[bit // 32] |= 1 << (bit % 32)
    return words


def engines_of(topo: Topology, start: int, count: int) -> dict[int, int]:
    """CUs taken from each shader engine by slots ``[start, start + count)``."""
    taken: dict[int, int] = {}
    for se, _, _ in slot_order(topo)[start : start + count]:
        taken[se] = taken.get(se, 0) + 1
    return taken


def describe_range(topo: Topology, start: int, count: int) -> str:
    """``"15 CUs (slots 0..14): SE0"``; a partial shader engine shows the CUs taken, ``SE1 (8 of 15)``."""
    full = topo.cus_per_engine()
    taken = engines_of(topo, start, count).items()
    parts = [f"SE{se}" if n == full[se] else f"SE{se} ({n} of {full[se]})" for se, n in taken]
    return f"{count} CUs (slots {start}..{start + count - 1}): {', '.join(parts)}"


def geometry(topo: Topology, granularity: int | None = None) -> DeviceGeometry:
    """Layout rules: by default ranges come in whole shader engines (ECLIP's 15-CU steps on the MI50).

    Uneven shader engines have no common step, so they fall back to single CUs;
    ``granularity`` overrides either (e.g. 1 to allow masks inside one SE).
    """
    per_se = set(topo.cus_per_engine())
    step = granularity or (per_se.pop() if len(per_se) == 1 else 1)
    if step <= 0 or step > topo.cu_count:
        raise LayoutError(f"granularity {step} does not fit a device of {topo.cu_count} CUs")
    return DeviceGeometry(sm_count=topo.cu_count, min_sms=step, granularity=step)


def masked_stream_limit(arch: str, configured: int | None = None) -> tuple[int, str]:
    """How many CU-masked streams the GPU takes, and where that number came from."""
    if configured is not None:
        if configured < 1:
            raise LayoutError(f"max_masked_streams must be >= 1, got {configured}")
        return configured, "configured"
    base = arch.split(":")[0]
    if base in MASKED_STREAM_LIMITS:
        return MASKED_STREAM_LIMITS[base], f"measured on {base} (ECLIP)"
    return DEFAULT_MASKED_STREAMS, f"assumed: the MI50's limit, not measured on {base}; configure max_masked_streams"


def is_masked(spec: PartitionSpec, cu_count: int) -> bool:
    """Whether the partition needs a CU-masked stream (the whole GPU is an ordinary stream)."""
    return not (spec.start == 0 and spec.count == cu_count)


def check_budget(layout: Layout, limit: int, source: str = "") -> int:
    """Masked streams the layout needs; LayoutError when they exceed ``limit``."""
    masked = [p.name for p in layout.partitions if is_masked(p, layout.geometry.sm_count)]
    if len(masked) > limit:
        raise LayoutError(
            f"the layout needs {len(masked)} CU-masked streams {masked} but the GPU takes {limit}"
            + (f" ({source})" if source else "")
            + "; use fewer partitions or fewer workers"
        )
    return len(masked)


def parse_kfd_properties(text: str) -> dict[str, int]:
    """A KFD topology ``properties`` file (``name value`` per line) as a dict of integers."""
    props = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("-").isdigit():
            props[fields[0]] = int(fields[1])
    return props


def parse_bdf(bdf: str) -> tuple[int, int, int, int]:
    """``(domain, bus, device, function)`` of a PCI address such as ``0000:03:00.0``."""
    try:
        rest, function = bdf.strip().rsplit(".", 1)
        fields = rest.split(":")
        domain = fields[-3] if len(fields) == 3 else "0"
        return int(domain, 16), int(fields[-2], 16), int(fields[-1], 16), int(function, 16)
    except (ValueError, IndexError):
        raise ValueError(f"not a PCI address: {bdf!r}") from None


def kfd_node_for(nodes: Iterable[Mapping[str, int]], bdf: str) -> Mapping[str, int]:
    """The KFD GPU node at PCI address ``bdf`` (KFD's ``location_id`` is ``bus << 8 | device << 3 | function``)."""
    domain, bus, device, function = parse_bdf(bdf)
    location = bus << 8 | device << 3 | function
    gpus = [n for n in nodes if n.get("simd_count", 0) > 0]
    for node in gpus:
        if node.get("location_id") == location and node.get("domain", 0) == domain:
            return node
    seen = [f"{n.get('domain', 0):04x}:{n.get('location_id', 0) >> 8:02x}" for n in gpus]
    raise LayoutError(f"no KFD GPU node at {bdf}; KFD lists GPUs at {seen}")


def topology_from_kfd(props: Mapping[str, int], cus_per_array: tuple[int, ...] | None = None) -> Topology:
    """The topology of a KFD GPU node: CUs from SIMDs, shader engines from shader arrays."""
    try:
        simds, simd_per_cu = props["simd_count"], props["simd_per_cu"]
        arrays, per_engine = props["array_count"], props["simd_arrays_per_engine"]
    except KeyError as e:
        raise LayoutError(f"KFD node properties lack {e.args[0]!r}") from None
    if not simds or not simd_per_cu or not arrays or not per_engine or arrays % per_engine:
        raise LayoutError(f"KFD node is not a GPU with a usable topology: {dict(props)}")
    return Topology(
        cu_count=simds // simd_per_cu,
        shader_engines=arrays // per_engine,
        arrays_per_engine=per_engine,
        cus_per_array=cus_per_array,
        gfx_target_version=props.get("gfx_target_version", 0),
        xcc_count=props.get("num_xcc", 1) or 1,
    )


def hip_runtimes(maps: str) -> set[str]:
    """Distinct HIP runtime libraries mapped into a process, from its ``/proc/<pid>/maps`` text."""
    paths = set()
    for line in maps.splitlines():
        path = line.split(maxsplit=5)[5] if len(line.split(maxsplit=5)) == 6 else ""
        if "/libamdhip64.so" in path:
            paths.add(path.strip())
    return paths
