"""Pool layouts as data: which SM ranges the stream pool holds.

A layout is a list of :class:`PartitionSpec`, each a contiguous range of SM
*slots* in the order the driver hands them out (slot 0 is the first SM a split
returns). ECLIP placed co-located workers' masks so they overlap as little as
possible: worker 0 grows from slot 0 upward, the last worker from the top down,
and middle workers from the start of their own share. The whole GPU is always
available as the shared ``whole`` partition (an ordinary stream).

Slots are the driver's split order, not physical SM ids, and that order depends on
where a split starts (measured on the H100): ranges with the same start are nested,
and a range is disjoint from the prefix below its start, but a range split above a
prefix is not "the next slots" of a larger prefix. Overlaps computed from slots are
exact only in those two cases; the pool records the SM ids each partition really
ran on (``placement.verify_pool``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from eclip_ray.errors import LayoutError

WHOLE = "whole"


@dataclass(frozen=True)
class DeviceGeometry:
    """SM count and split rules of one device (Hopper: at least 8 SMs, in steps of 8)."""

    sm_count: int
    min_sms: int = 8
    granularity: int = 8


@dataclass(frozen=True)
class PartitionSpec:
    """A named range ``[start, start + count)`` of SM slots, owned by ``worker`` (None: shared)."""

    name: str
    start: int
    count: int
    worker: int | None = None

    @property
    def stop(self) -> int:
        return self.start + self.count

    def slots(self) -> range:
        return range(self.start, self.stop)

    def overlap(self, other: PartitionSpec) -> int:
        """Number of SM slots shared with ``other``."""
        return max(0, min(self.stop, other.stop) - max(self.start, other.start))


@dataclass(frozen=True)
class Layout:
    """The partitions of a stream pool, validated against a device geometry."""

    geometry: DeviceGeometry
    partitions: tuple[PartitionSpec, ...]

    def __post_init__(self) -> None:
        validate(self.geometry, self.partitions)

    def __getitem__(self, name: str) -> PartitionSpec:
        for p in self.partitions:
            if p.name == name:
                return p
        raise KeyError(f"no partition named {name!r}; the pool has {[p.name for p in self.partitions]}")

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.partitions]

    def sizes(self) -> dict[str, int]:
        return {p.name: p.count for p in self.partitions}

    def to_dict(self) -> dict:
        return {
            "sm_count": self.geometry.sm_count,
            "partitions": [
                {"name": p.name, "start": p.start, "count": p.count, "worker": p.worker} for p in self.partitions
            ],
        }


def _aligned_start(start: int, g: DeviceGeometry) -> bool:
    return start % g.granularity == 0


def validate(g: DeviceGeometry, parts: Sequence[PartitionSpec], disjoint: bool = False) -> None:
    """Raise :class:`LayoutError` naming the first partition that cannot be made."""
    seen: set[str] = set()
    for p in parts:
        if p.name in seen:
            raise LayoutError(f"partition name {p.name!r} appears twice")
        seen.add(p.name)
        if p.count <= 0 or p.start < 0:
            raise LayoutError(f"partition {p.name!r}: start {p.start} and count {p.count} must be >= 0 and > 0")
        if p.stop > g.sm_count:
            raise LayoutError(
                f"partition {p.name!r} asks for SMs {p.start}..{p.stop - 1} but the device has {g.sm_count} SMs"
            )
        if p.count < g.min_sms:
            raise LayoutError(f"partition {p.name!r} asks for {p.count} SMs; the device's minimum is {g.min_sms}")
        if not _aligned_start(p.start, g):
            raise LayoutError(
                f"partition {p.name!r} starts at SM {p.start}; splits start at multiples of {g.granularity}"
            )
        if p.stop != g.sm_count and p.count % g.granularity:
            raise LayoutError(
                f"partition {p.name!r} has {p.count} SMs; only a range that ends at the top of the device "
                f"may have a count that is not a multiple of {g.granularity}"
            )
    if disjoint:
        for i, a in enumerate(parts):
            for b in parts[i + 1 :]:
                if a.overlap(b):
                    raise LayoutError(
                        f"partitions {a.name!r} and {b.name!r} share {a.overlap(b)} SMs but disjoint ones were asked"
                    )


def _round_to(x: float, step: int) -> int:
    return max(step, round(x / step) * step)


def whole(g: DeviceGeometry) -> PartitionSpec:
    return PartitionSpec(WHOLE, 0, g.sm_count, None)


def ladder(
    g: DeviceGeometry,
    workers: int,
    fractions: Iterable[float] = (0.25, 0.5, 0.75),
    include_whole: bool = True,
) -> Layout:
    """ECLIP's per-worker ladder of partition sizes, placed to overlap as little as possible.

    Worker 0 grows from SM slot 0 upward; the last worker grows from the top down
    (its ranges end at the highest aligned slot, so every worker's ladder has the
    same sizes and the SMs left over by the 8-SM granularity, 4 on an H100, serve
    only the whole GPU); a middle worker ``i`` starts at ``i/workers`` of the
    device. Partition names are ``w{worker}.{count}``.
    """
    if workers < 1:
        raise LayoutError(f"workers must be >= 1, got {workers}")
    fracs = sorted(set(fractions))
    if not fracs or any(not 0 < f < 1 for f in fracs):
        raise LayoutError(f"fractions must lie strictly between 0 and 1, got {fracs}")
    parts: list[PartitionSpec] = []
    for w in range(workers):
        for f in fracs:
            count = _round_to(f * g.sm_count, g.granularity)
            if w == 0 or workers == 1:
                start = 0
            elif w == workers - 1:
                start = (g.sm_count - count) // g.granularity * g.granularity
            else:
                start = min(_round_to(w * g.sm_count / workers, g.granularity), g.sm_count - count)
                start = start // g.granularity * g.granularity
            spec = PartitionSpec(f"w{w}.{count}", start, count, w)
            if all(p.name != spec.name for p in parts):
                parts.append(spec)
    if include_whole:
        parts.append(whole(g))
    return Layout(g, tuple(parts))


def disjoint(g: DeviceGeometry, counts: Sequence[int], names: Sequence[str] | None = None) -> Layout:
    """Side-by-side partitions of the given sizes from slot 0 upward (static per-model slices).

    The last partition may be given as ``-1`` to take every SM that is left.
    """
    names = list(names) if names is not None else [f"p{i}" for i in range(len(counts))]
    if len(names) != len(counts):
        raise LayoutError(f"{len(counts)} sizes but {len(names)} names")
    parts, start = [], 0
    for i, (name, c) in enumerate(zip(names, counts, strict=True)):
        if c == -1:
            if i != len(counts) - 1:
                raise LayoutError("only the last partition may take the rest (-1)")
            c = g.sm_count - start
        parts.append(PartitionSpec(name, start, c, i))
        start += c
    validate(g, parts, disjoint=True)
    return Layout(g, tuple(parts))


def equal_split(g: DeviceGeometry, k: int, names: Sequence[str] | None = None) -> Layout:
    """``k`` disjoint partitions of equal aligned size; the last takes the remainder."""
    if k < 1:
        raise LayoutError(f"k must be >= 1, got {k}")
    per = g.sm_count // k // g.granularity * g.granularity
    if per < g.min_sms:
        raise LayoutError(f"{k} disjoint partitions of {g.sm_count} SMs would have {per} SMs each (< {g.min_sms})")
    return disjoint(g, [per] * (k - 1) + [-1], names)


def from_dict(g: DeviceGeometry, data: dict) -> Layout:
    """Build a layout from ``{"partitions": [{"name", "start", "count", "worker"?}, ...]}``."""
    try:
        parts = tuple(
            PartitionSpec(str(p["name"]), int(p["start"]), int(p["count"]), p.get("worker")) for p in data["partitions"]
        )
    except (KeyError, TypeError, ValueError) as e:
        raise LayoutError(f"malformed layout: {e!r}") from e
    return Layout(g, parts)


def span_name(start: int, count: int) -> str:
    """The name of the partition of SM slots ``[start, start + count)`` in layouts made by :func:`arrange`."""
    return f"s{start}.{count}"


def arrange(g: DeviceGeometry, sizes: Sequence[int | None]) -> tuple[PartitionSpec | None, ...]:
    """Partitions for a list of per-model sizes: the shared plans of fixed and candidate layouts.

    ``None`` is the whole GPU (shared by every model given ``None``); each integer
    is a range of that many SM slots, laid side by side from slot 0 in the order
    given, so the confined models are disjoint from each other, and ``-1`` (last
    only) takes every slot left. A model on the whole GPU beside confined ones is
    a *nested* plan: it shares the confined models' SMs and has the rest to itself.
    Partitions are named ``s{start}.{count}`` (:func:`span_name`).
    """
    out: list[PartitionSpec | None] = []
    start = 0
    ints = [i for i, s in enumerate(sizes) if s is not None]
    for i, s in enumerate(sizes):
        if s is None:
            out.append(None)
            continue
        if s == -1:
            if i != ints[-1]:
                raise LayoutError("only the last confined model may take the rest (-1)")
            s = g.sm_count - start
        out.append(PartitionSpec(span_name(start, s), start, s, None))
        start += s
    validate(g, [p for p in out if p is not None], disjoint=True)
    return tuple(out)


def union(g: DeviceGeometry, *groups: Iterable[PartitionSpec | None]) -> Layout:
    """One layout holding every partition of ``groups`` (the same name twice must be the same range) and ``whole``."""
    parts: dict[str, PartitionSpec] = {}
    for group in groups:
        for p in group:
            if p is None:
                continue
            if p.name in parts and parts[p.name] != p:
                raise LayoutError(f"partition {p.name!r} is given as two different ranges: {parts[p.name]} and {p}")
            parts.setdefault(p.name, p)
    parts.setdefault(WHOLE, whole(g))
    return Layout(g, tuple(parts.values()))
