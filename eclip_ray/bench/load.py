"""Offered load: a closed loop at saturation, or open-loop Poisson arrivals, per model instance.

Closed loop (the paper's method): every instance keeps ``inflight`` requests
outstanding and issues the next as soon as one finishes. Poisson: requests
of an instance arrive at ``rate`` per second with exponential gaps from a
seeded generator; latency counts from the arrival, not from the issue, so a
queue that builds up is charged to the policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KINDS = ("closed", "poisson")


@dataclass(frozen=True)
class Load:
    """One load pattern; ``rates_rps`` holds one rate for every instance or one per instance."""

    kind: str = "closed"
    inflight: int = 1  # closed: requests outstanding per instance
    rates_rps: tuple[float, ...] = ()  # poisson: requests (batches) per second per instance
    max_inflight: int = 32  # poisson: requests queued on the GPU per instance; later arrivals wait on the host

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"load kind {self.kind!r}; choose one of {KINDS}")
        if self.kind == "closed" and self.inflight < 1:
            raise ValueError(f"a closed loop needs at least one request in flight, got {self.inflight}")
        if self.kind == "poisson" and (not self.rates_rps or min(self.rates_rps) <= 0):
            raise ValueError(f"Poisson arrivals need rates > 0, got {self.rates_rps}")
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {self.max_inflight}")

    def label(self) -> str:
        if self.kind == "closed":
            return f"closed{self.inflight}"
        return "poisson" + ",".join(f"{r:g}" for r in self.rates_rps)

    def rate(self, lane: int, lanes: int) -> float:
        """Arrival rate of instance ``lane`` of ``lanes``, in requests per second."""
        if len(self.rates_rps) == 1:
            return self.rates_rps[0]
        if len(self.rates_rps) != lanes:
            raise ValueError(f"{len(self.rates_rps)} Poisson rates for {lanes} instances; give one or one each")
        return self.rates_rps[lane]

    def depth(self) -> int:
        """Most requests of one instance on the GPU at once."""
        return self.inflight if self.kind == "closed" else self.max_inflight

    def to_dict(self) -> dict:
        if self.kind == "closed":
            return {"kind": "closed", "inflight": self.inflight}
        return {"kind": "poisson", "rates_rps": list(self.rates_rps), "max_inflight": self.max_inflight}

    @classmethod
    def from_dict(cls, d: dict) -> Load:
        return cls(d["kind"], d.get("inflight", 1), tuple(d.get("rates_rps", ())), d.get("max_inflight", 32))


def poisson_arrivals(rate_rps: float, duration_s: float, rng: np.random.Generator) -> np.ndarray:
    """Arrival times in ``[0, duration_s)`` of a Poisson process of ``rate_rps`` per second, ascending."""
    if rate_rps <= 0 or duration_s <= 0:
        raise ValueError(f"rate and duration must be > 0, got {rate_rps} and {duration_s}")
    expect = rate_rps * duration_s
    out: list[np.ndarray] = []
    t = 0.0
    while t < duration_s:  # draw in blocks with head room; rarely more than one
        gaps = rng.exponential(1.0 / rate_rps, int(expect + 6 * np.sqrt(expect) + 16))
        times = t + np.cumsum(gaps)
        out.append(times)
        t = float(times[-1])
    times = np.concatenate(out)
    return times[times < duration_s]


def lane_rng(seed: int, lane: int) -> np.random.Generator:
    """The generator of instance ``lane``: fixed by the run's seed and the lane's place in the mix."""
    return np.random.default_rng([seed, lane])


def loads_from_args(kind: str, inflight: Sequence[int], rates: Sequence[str], max_inflight: int) -> list[Load]:
    """One Load per ``--inflight`` value (closed) or per ``--rate`` value (poisson; ``a,b,c``: one per instance)."""
    if kind == "closed":
        return [Load("closed", n) for n in inflight]
    if not rates:
        raise ValueError("--load poisson needs --rate (requests per second per instance)")
    return [Load("poisson", rates_rps=tuple(float(x) for x in r.split(",")), max_inflight=max_inflight) for r in rates]
