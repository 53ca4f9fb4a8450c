"""A plan: which partition of the pool each stage (kernel group) of a model runs on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eclip_ray.errors import PlanError


@dataclass(frozen=True)
class Plan:
    """Stages cut at ``cuts`` (cut-point ids in execution order), stage ``i`` on ``partitions[i]``.

    ``len(partitions) == len(cuts) + 1``: the first stage starts at the model's
    input. Consecutive stages on the same partition cost no switch.
    """

    cuts: tuple[str, ...]
    partitions: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.partitions) != len(self.cuts) + 1:
            raise PlanError(f"{len(self.cuts)} cuts need {len(self.cuts) + 1} partitions, got {len(self.partitions)}")
        if len(set(self.cuts)) != len(self.cuts):
            raise PlanError("a cut point appears twice in the plan")

    @classmethod
    def single(cls, partition: str) -> Plan:
        """The whole model on one partition."""
        return cls((), (partition,))

    @classmethod
    def of(cls, stages: Sequence[tuple[str | None, str]]) -> Plan:
        """From ``[(None, p0), (cut1, p1), ...]``: each stage's first cut point and its partition."""
        if not stages or stages[0][0] is not None:
            raise PlanError("the first stage must start at the input (cut None)")
        return cls(tuple(c for c, _ in stages[1:]), tuple(p for _, p in stages))  # type: ignore[misc]

    @property
    def switches(self) -> int:
        """Partition changes per request."""
        return sum(a != b for a, b in zip(self.partitions, self.partitions[1:], strict=False))

    def compact(self) -> Plan:
        """The same schedule without cuts between stages on the same partition."""
        cuts, parts = [], [self.partitions[0]]
        for cut, p in zip(self.cuts, self.partitions[1:], strict=True):
            if p != parts[-1]:
                cuts.append(cut)
                parts.append(p)
        return Plan(tuple(cuts), tuple(parts))

    def to_dict(self) -> dict:
        return {"cuts": list(self.cuts), "partitions": list(self.partitions)}

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        try:
            return cls(tuple(data["cuts"]), tuple(data["partitions"]))
        except (KeyError, TypeError) as e:
            raise PlanError(f"malformed plan {data!r}: {e!r}") from e
