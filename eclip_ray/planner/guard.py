"""The online guard: keeps choosing among the measured candidates while the load moves.

A :class:`~eclip_ray.planner.steering.Steering` over the candidates of one mix. It
delegates every request to the current candidate's own steering (fixed plans or
per-batch placement, ``placement.py``) and, about every ``period_s``, looks at each
model over a sliding window of ``window_s``: its p99 (of the requests completed under
the current candidate only), its arrival rate and its queue. Then:

- **Breach.** A model breaches when more of its windowed requests took over ``breach`` x
  its SLO than a p99 within it explains: ``k`` of ``n`` over it, where ``P(X >= k)`` for
  ``X ~ Binomial(n, 1%)`` is below ``alpha`` (with 20 requests that is 3 misses, with
  150 it is 6; one slow request of few is not a breach). It moves the guard to a *safer*
  candidate for every breaching model: one measured clearly better for it (a p99/SLO
  ``NOISE`` lower, in ``safety``: the selections' trials), or, where the measurements do
  not tell them apart, one that gives it more SMs of its own (``protection``:
  ``candidates.exclusive_sms``); of those the one whose measured largest p99/SLO is
  least. With ``period_s`` 0.1 and a 1 s window a breach is acted on within about a second.
- **Recovery.** Once no model has had significantly more than 1% of its requests over
  ``recover`` x its SLO (the same test) for ``hold_s``, it moves back one step towards
  the preferred candidate.
- **Hysteresis.** ``recover`` < ``breach``, nothing moves within ``settle_s`` of the last
  move, and a candidate it went back to that breaches again doubles ``hold_s`` (up to
  ``max_hold_s``; back to the base after a long calm at the preferred candidate), so it
  cannot flap.
- **Load.** When the arrival rates have stayed more than a factor ``level_step`` (and
  more than three standard deviations of a Poisson count in the window) away from those
  of the last level decision for ``hold_s``, and selections were measured at other
  loads (``levels``), the preferred candidate becomes the one chosen at the nearest
  measured load at or above this one (the highest measured, above them all), and it
  moves there.

Every switch is kept (:class:`Switch`: when, from, to, kind and reason), counted, and
handed to ``on_switch`` (the actor logs it and counts it in its metrics).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from eclip_ray.errors import PlanError
from eclip_ray.graph.plan import Plan
from eclip_ray.planner.steering import LaneView, Steering

KINDS = ("breach", "recover", "load")
TAIL = 0.01  # the SLO is on p99: 1% of requests may exceed it
NOISE = 0.05  # measured p99/SLO ratios this close do not order two candidates


@dataclass(frozen=True)
class GuardSettings:
    """How fast the guard reacts and how much it wants before it moves back."""

    period_s: float = 0.1  # how often it looks
    window_s: float = 1.0  # the sliding window of p99s and rates
    breach: float = 1.0  # p99 over this x SLO is a breach
    recover: float = 0.7  # p99 within this x SLO, for hold_s, lets it move back
    hold_s: float = 3.0
    settle_s: float = 0.5  # no move within this long of the last one
    alpha: float = 0.01  # significance of "more requests over the SLO than a p99 within it explains"
    backoff: float = 2.0  # hold_s grows by this when a candidate it went back to breaches again
    max_hold_s: float = 60.0
    level_step: float = 1.25  # arrival-rate levels, a factor apart
    log_size: int = 200  # switches kept in describe()

    def __post_init__(self) -> None:
        if not 0 < self.recover < self.breach:
            raise PlanError(f"the guard needs 0 < recover < breach, got {self.recover} and {self.breach}")
        if self.period_s <= 0 or self.window_s <= 0 or self.hold_s <= 0 or self.level_step <= 1:
            raise PlanError(f"guard settings out of range: {self}")


@dataclass(frozen=True)
class Switch:
    """One move of the guard."""

    at_s: float
    source: str
    target: str
    kind: str  # one of KINDS
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"at_s": self.at_s, "from": self.source, "to": self.target, "kind": self.kind, "reason": self.reason}


@dataclass(frozen=True)
class Level:
    """A load at which a selection was measured: per model, batches/s arriving (None: a closed loop)."""

    rates_rps: Mapping[str, float | None]
    chosen: str


@dataclass
class _Lane:
    latencies_ms: list[float]  # completed in the window under the current candidate, ascending
    rate_rps: float | None
    queued: int

    @property
    def p99_ms(self) -> float | None:
        lat = self.latencies_ms
        return lat[max(0, math.ceil(0.99 * len(lat)) - 1)] if lat else None

    def over(self, ms: float) -> int:
        return len(self.latencies_ms) - bisect.bisect_right(self.latencies_ms, ms)


class Guard:
    """Steers among candidates (``steerings``: name -> steering), starting at ``preferred``.

    ``safety`` maps each measured candidate to its measured p99/SLO per model (the
    selections' trials); ``protection`` maps candidates to the SMs each model has to itself
    there; ``slo_ms`` holds the models' SLOs (None: none); ``details`` (e.g. the selection
    that chose ``preferred``) goes into ``describe()``.
    """

    def __init__(
        self,
        steerings: Mapping[str, Steering],
        slo_ms: Mapping[str, float | None],
        preferred: str,
        safety: Mapping[str, Mapping[str, float]],
        *,
        protection: Mapping[str, Mapping[str, int]] | None = None,
        levels: Sequence[Level] = (),
        settings: GuardSettings | None = None,
        on_switch: Callable[[Switch], None] | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        if preferred not in steerings:
            raise PlanError(f"the preferred candidate {preferred!r} is not among {sorted(steerings)}")
        self.steerings = dict(steerings)
        self.slo_ms = dict(slo_ms)
        self.safety = {c: dict(r) for c, r in safety.items() if c in steerings}
        self.protection = {c: dict(p) for c, p in (protection or {}).items()}
        self.levels = list(levels)
        self.settings = settings or GuardSettings()
        self.period_s = self.settings.period_s
        self.on_switch = on_switch
        self.details = dict(details or {})  # what made it (the selection), for describe()
        self.preferred = self.current = preferred
        self.hold_s = self.settings.hold_s
        self.switches: list[Switch] = []
        self.counts = dict.fromkeys(KINDS, 0)
        self.no_safer = 0  # breaches with nowhere safer to go
        self._trail: list[str] = []  # candidates moved away from, the preferred at the bottom
        self._returned_to: str | None = None  # the candidate the last recovery went back to
        self._moved_at = -math.inf
        self._calm_since: float | None = None
        self._arrivals: dict[str, deque[tuple[float, int]]] = {}
        self._reference: dict[str, float] | None = None  # the arrival rates of the last level decision
        self._pending_since: float | None = None  # since when the rates have been outside its band
        self.last: dict[str, _Lane] = {}

    # -- the Steering protocol ----------------------------------------------------------------

    def plan(self, lane: str, views: Mapping[str, LaneView]) -> Plan:
        return self.steerings[self.current].plan(lane, views)

    def observe(self, now: float, views: Mapping[str, LaneView]) -> None:
        self.steerings[self.current].observe(now, views)
        lanes = {n: self._lane(now, v) for n, v in views.items()}
        self.last = lanes
        if now - self._moved_at < self.settings.settle_s:
            return
        breaching = self._breaching(lanes)
        if breaching:
            self._calm_since = None
            self._on_breach(now, breaching)
            return
        if self._level_changed(now, lanes):
            return
        self._maybe_recover(now, lanes)

    # -- what the window says -----------------------------------------------------------------

    def _lane(self, now: float, v: LaneView) -> _Lane:
        since = max(now - self.settings.window_s, self._moved_at)
        lat = sorted(ms for t, ms in v.recent if t >= since)
        seen = self._arrivals.setdefault(v.name, deque())
        seen.append((now, v.arrivals))
        while len(seen) > 1 and seen[0][0] < now - self.settings.window_s:
            seen.popleft()
        span = now - seen[0][0]
        rate = (v.arrivals - seen[0][1]) / span if span > 0 else None
        return _Lane(lat, rate, v.inflight + v.backlog)

    def _significant(self, lane: _Lane, ms: float) -> bool:
        """More of the lane's requests over ``ms`` than 1% explains (binomial test at ``alpha``)."""
        k, n = lane.over(ms), len(lane.latencies_ms)
        return k > 0 and binomial_tail(k, n, TAIL) < self.settings.alpha

    def _breaching(self, lanes: Mapping[str, _Lane]) -> dict[str, float]:
        """Breaching model -> its windowed p99 / SLO."""
        out = {}
        for n, lane in lanes.items():
            slo = self.slo_ms.get(n)
            if slo is not None and self._significant(lane, self.settings.breach * slo):
                out[n] = lane.p99_ms / slo  # type: ignore[operator]
        return out

    def _calm(self, lanes: Mapping[str, _Lane]) -> bool:
        return not any(
            self._significant(lane, self.settings.recover * s)
            for n, lane in lanes.items()
            if (s := self.slo_ms.get(n)) is not None
        )

    # -- moves ----------------------------------------------------------------------------------

    def safer(self, breaching: Collection[str]) -> str | None:
        """The candidate safer than the current one for every breaching model (see the module doc)."""
        here = self.current

        def better(c: str, m: str) -> bool:
            a, b = self.safety.get(c, {}).get(m), self.safety.get(here, {}).get(m)
            if a is not None and b is not None and a < (1 - NOISE) * b:
                return True
            if a is not None and b is not None and a > (1 + NOISE) * b:
                return False
            mine, theirs = self.protection.get(c, {}).get(m), self.protection.get(here, {}).get(m)
            return mine is not None and theirs is not None and mine > theirs

        options = [c for c in self.steerings if c != here and all(better(c, m) for m in breaching)]
        if not options:
            return None

        def key(c: str) -> tuple:
            measured = self.safety.get(c)
            worst = max(measured.values(), default=0.0) if measured else math.inf
            return (worst > 1.0, worst, -sum(self.protection.get(c, {}).get(m, 0) for m in breaching), c)

        return min(options, key=key)

    def _on_breach(self, now: float, breaching: Mapping[str, float]) -> None:
        target = self.safer(list(breaching))
        what = ", ".join(f"{n} p99 {r:.2f}x its SLO" for n, r in sorted(breaching.items()))
        if target is None:
            self.no_safer += 1
            return
        if self.current == self._returned_to:  # went back here and it breached again: wait longer next time
            self.hold_s = min(self.settings.max_hold_s, self.hold_s * self.settings.backoff)
        self._trail.append(self.current)
        self._move(now, target, "breach", f"{what}; {target} measured safer")

    def _maybe_recover(self, now: float, lanes: Mapping[str, _Lane]) -> None:
        if not self._calm(lanes):
            self._calm_since = None
            return
        if self._calm_since is None:
            self._calm_since = now
        calm_for = now - self._calm_since
        if not self._trail:
            if calm_for >= 4 * self.settings.max_hold_s:
                self.hold_s = self.settings.hold_s  # a long calm at the preferred candidate: forgive
            return
        if calm_for >= self.hold_s:
            target = self._trail.pop()
            self._returned_to = target
            why = f"every p99 within {self.settings.recover:.0%} of its SLO for {calm_for:.1f} s"
            self._move(now, target, "recover", why)

    def _level_changed(self, now: float, lanes: Mapping[str, _Lane]) -> bool:
        """Move to the choice of the nearest measured load once the arrivals have left the band of the
        last level (a factor of ``level_step``) for ``hold_s``.

        Only lanes with arrivals at some measured level count: a closed loop's rate is its
        throughput, which the candidate itself sets.
        """
        if len(self.levels) < 2:  # one measured load: nothing to move to
            return False
        open_lanes = {n for lv in self.levels for n, r in lv.rates_rps.items() if r is not None}
        rates = {n: lane.rate_rps for n, lane in lanes.items() if n in open_lanes and lane.rate_rps}
        if self._reference is None or set(self._reference) != set(rates):
            self._reference, self._pending_since = rates, None  # the first look with every rate known
        moved = any(self._moved(r, self._reference[n]) for n, r in rates.items())
        if not moved:
            self._pending_since = None
            return False
        if self._pending_since is None:
            self._pending_since = now
        if now - self._pending_since < self.settings.hold_s:
            return False
        self._reference, self._pending_since = rates, None
        chosen = nearest(self.levels, rates)
        if chosen is None or chosen == self.preferred or chosen not in self.steerings:
            return False
        self.preferred, self._trail, self._returned_to = chosen, [], None
        self.hold_s = self.settings.hold_s
        shown = ", ".join(f"{n} {r:.0f}/s" for n, r in sorted(rates.items()))
        self._move(now, chosen, "load", f"arrivals now {shown}: {chosen} was chosen at the nearest measured load")
        return True

    def _moved(self, rate: float, reference: float) -> bool:
        """Whether ``rate`` left the band of ``reference``: a factor ``level_step``, and more than Poisson noise."""
        step, window = self.settings.level_step, self.settings.window_s
        outside = not reference / step <= rate <= reference * step
        return outside and abs(rate - reference) * window > 3 * math.sqrt(max(reference * window, 1.0))

    def _move(self, now: float, target: str, kind: str, reason: str) -> None:
        if target == self.current:
            return
        sw = Switch(now, self.current, target, kind, reason)
        self.current, self._moved_at, self._calm_since = target, now, None
        self.switches.append(sw)
        del self.switches[: -self.settings.log_size]
        self.counts[kind] += 1
        if self.on_switch is not None:
            self.on_switch(sw)

    def describe(self) -> dict[str, Any]:
        inner = getattr(self.steerings[self.current], "describe", None)
        return {
            "candidate": self.current,
            "preferred": self.preferred,
            "switches": sum(self.counts.values()),
            "switches_by_kind": dict(self.counts),
            "breaches_with_nowhere_safer": self.no_safer,
            "hold_s": self.hold_s,
            "log": [s.to_dict() for s in self.switches],
            "steering": inner() if callable(inner) else None,
            **self.details,
        }


def binomial_tail(k: int, n: int, p: float) -> float:
    """``P(X >= k)`` for ``X ~ Binomial(n, p)``."""
    if k <= 0:
        return 1.0
    below = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(min(k, n + 1)))
    return max(0.0, 1.0 - below)


def nearest(levels: Sequence[Level], rates: Mapping[str, float | None]) -> str | None:
    """The choice at the lowest measured load at or above ``rates`` for every model (else the highest)."""
    if not levels:
        return None

    def total(lv: Level) -> float:
        return sum(r for r in lv.rates_rps.values() if r is not None)

    above = [
        lv
        for lv in levels
        if all(
            lv.rates_rps.get(n) is None or r is None or lv.rates_rps[n] >= 0.9 * r  # type: ignore[operator]
            for n, r in rates.items()
        )
    ]
    return min(above, key=total).chosen if above else max(levels, key=total).chosen
