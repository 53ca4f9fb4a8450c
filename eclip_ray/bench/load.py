"""Offered load: a closed loop at saturation, open-loop Poisson arrivals, or both in one mix.

Closed loop (the paper's method): every instance keeps ``inflight`` requests
outstanding and issues the next as soon as one finishes. Poisson: requests
of an instance arrive at ``rate`` per second with exponential gaps from a
seeded generator; latency counts from the arrival, not from the issue, so a
queue that builds up is charged to the policy. Mixed: some instances in closed
loop (a batch job running flat out), the others Poisson (services).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

KINDS = ("closed", "poisson", "mixed")


@dataclass(frozen=True)
class Load:
    """One load pattern over the instances of a mix.

    ``closed``: every instance keeps ``inflight`` requests outstanding. ``poisson``:
    ``rates_rps`` holds one rate for every instance or one per instance. ``mixed``
    (a batch job beside a service): the instances in ``closed_lanes`` run in closed
    loop, the others get Poisson arrivals; ``rates_rps`` has one entry per instance,
    0 for the closed ones.
    """

    kind: str = "closed"
    inflight: int = 1  # closed lanes: requests outstanding per instance
    rates_rps: tuple[float, ...] = ()  # open lanes: requests (batches) per second per instance
    max_inflight: int = 32  # open lanes: requests queued on the GPU per instance; later arrivals wait on the host
    closed_lanes: tuple[int, ...] = ()  # mixed: the instances in closed loop

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"load kind {self.kind!r}; choose one of {KINDS}")
        if self.kind != "poisson" and self.inflight < 1:
            raise ValueError(f"a closed loop needs at least one request in flight, got {self.inflight}")
        if self.kind == "poisson" and (not self.rates_rps or min(self.rates_rps) <= 0):
            raise ValueError(f"Poisson arrivals need rates > 0, got {self.rates_rps}")
        if self.kind == "mixed":
            self._check_mixed()
        elif self.closed_lanes:
            raise ValueError(f"closed_lanes are for a mixed load, not a {self.kind} one")
        if self.max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {self.max_inflight}")

    def _check_mixed(self) -> None:
        n = len(self.rates_rps)
        closed = set(self.closed_lanes)
        if not closed or not closed <= set(range(n)) or len(closed) != len(self.closed_lanes):
            raise ValueError(
                f"a mixed load names distinct closed lanes among its {n} instances, got {self.closed_lanes}"
            )
        bad = [i for i, r in enumerate(self.rates_rps) if (r != 0 if i in closed else not r > 0)]
        if bad:
            raise ValueError(f"a mixed load needs rate 0 on its closed lanes and > 0 on the others; lanes {bad} differ")

    @classmethod
    def mixed(cls, rates: Sequence[float | None], inflight: int = 1, max_inflight: int = 32) -> Load:
        """Per instance a Poisson rate, or None for a closed loop of ``inflight`` (all None: closed; none: poisson)."""
        closed = tuple(i for i, r in enumerate(rates) if r is None)
        if len(closed) == len(rates):
            return cls("closed", inflight, max_inflight=max_inflight)
        open_rates = tuple(0.0 if r is None else float(r) for r in rates)
        if not closed:
            return cls("poisson", rates_rps=open_rates, max_inflight=max_inflight)
        return cls("mixed", inflight, open_rates, max_inflight, closed)

    def label(self) -> str:
        if self.kind == "closed":
            return f"closed{self.inflight}"
        if self.kind == "poisson":
            return "poisson" + ",".join(f"{r:g}" for r in self.rates_rps)
        lanes = (f"c{self.inflight}" if i in self.closed_lanes else f"{r:g}" for i, r in enumerate(self.rates_rps))
        return "mixed" + ",".join(lanes)

    def closed(self, lane: int) -> bool:
        """Whether instance ``lane`` runs in closed loop."""
        return self.kind == "closed" or lane in self.closed_lanes

    def rate(self, lane: int, lanes: int) -> float:
        """Arrival rate of open instance ``lane`` of ``lanes``, in requests per second."""
        if self.closed(lane):
            raise ValueError(f"instance {lane} runs in closed loop: it has no arrival rate")
        if len(self.rates_rps) == 1 and self.kind == "poisson":
            return self.rates_rps[0]
        if len(self.rates_rps) != lanes:
            raise ValueError(f"{len(self.rates_rps)} Poisson rates for {lanes} instances; give one or one each")
        return self.rates_rps[lane]

    def depth(self, lane: int = 0) -> int:
        """Most requests of instance ``lane`` on the GPU at once."""
        return self.inflight if self.closed(lane) else self.max_inflight

    def for_lane(self, lane: int, lanes: int) -> Load:
        """The load of instance ``lane`` alone (an MPS client drives one instance): closed, or one rate."""
        if self.closed(lane):
            return Load("closed", self.inflight, max_inflight=self.max_inflight)
        return Load("poisson", rates_rps=(self.rate(lane, lanes),), max_inflight=self.max_inflight)

    def to_dict(self) -> dict:
        if self.kind == "closed":
            return {"kind": "closed", "inflight": self.inflight}
        out = {"kind": self.kind, "rates_rps": list(self.rates_rps), "max_inflight": self.max_inflight}
        if self.kind == "mixed":
            out.update(inflight=self.inflight, closed_lanes=list(self.closed_lanes))
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Load:
        return cls(
            d["kind"],
            d.get("inflight", 1),
            tuple(d.get("rates_rps", ())),
            d.get("max_inflight", 32),
            tuple(d.get("closed_lanes", ())),
        )


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
