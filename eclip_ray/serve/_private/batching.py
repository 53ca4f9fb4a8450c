"""Dynamic batching of one model's requests, aware of its latency SLO.

``BatchPolicy.decide`` is the whole policy, a pure function of the queue: send
the requests at the head of the queue now when none of the model's batches is
running (an idle model does not wait for company: the requests that arrive
while a batch runs form the next one), when the batch is full (or the next
request would not fit), when the oldest has waited ``batch_wait_timeout_s``,
or when waiting longer would lose the oldest request's SLO given the expected
run time of the batch; otherwise sleep until the earliest of those moments.
The expected run time is the measured round trip of batches padded to the same
captured size (``ServiceTimes``): a batch of 5 on sizes (4, 8) costs what 8 costs.

``Batcher`` applies the policy to an asyncio queue, with a few batches in
flight at once (the GPU actor overlaps them). It admits a request only while
the queue has room and, for a model with an SLO, while the work ahead of it
(``BatchPolicy.expected_s``) lets it finish in time; otherwise it refuses at
once with 503 and Retry-After, so that latency cannot grow without bound.
A request with nothing queued or running ahead of it is always admitted: an
idle model never refuses, whatever it measured before. The SLO clock starts
when the request joins the queue, after its body was read, decoded and
checked: that work is the request's own, not a wait that refusing others
would shorten. A request that waited past its SLO in the queue all the same
(batches ran slower than measured) is refused with 503 when the next batch
forms, rather than run late: its client has its answer now, and the GPU time
goes to requests that can still make it.

An SLO that the model misses even alone (``slo_feasible`` False: the GPU
actor's measured run of one row is over it) is not used to refuse anything;
the front reports it at start instead (``eclip_ray/serve/_private/model.py``).

A batch leaves as the list of its requests' arrays, not concatenated: the GPU
actor copies them once, straight into its pinned staging buffer.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from eclip_ray.actor.spec import BatchResult
from eclip_ray.serve._private.errors import unavailable


@dataclass(frozen=True)
class Decision:
    take: int  # requests to send now (0: none)
    wait_s: float  # when take == 0: how long to sleep before deciding again


@dataclass(frozen=True)
class BatchPolicy:
    max_batch_size: int
    batch_wait_timeout_s: float
    slo_s: float | None
    sizes: tuple[int, ...]  # captured batch sizes, ascending

    def bucket(self, rows: int) -> int:
        i = bisect.bisect_left(self.sizes, rows)
        return self.sizes[min(i, len(self.sizes) - 1)]

    def decide(
        self,
        now: float,
        rows: Sequence[int],
        oldest: float,
        estimate: Callable[[int], float],
        running: int = 0,
    ) -> Decision:
        """``rows``: rows of each queued request, oldest first; ``oldest``: its arrival time (s);
        ``estimate(bucket)``: expected seconds from sending a batch of that padded size to its result;
        ``running``: the model's batches sent and not yet answered (0: the model is idle, send at once)."""
        take, total = 0, 0
        for r in rows:
            if total + r > self.max_batch_size:
                break
            take, total = take + 1, total + r
        if take < len(rows) or total >= self.max_batch_size or running == 0:
            return Decision(take, 0.0)
        latest = oldest + self.batch_wait_timeout_s
        if self.slo_s is not None:
            latest = min(latest, oldest + self.slo_s - estimate(self.bucket(total)))
        if now >= latest:
            return Decision(take, 0.0)
        return Decision(0, latest - now)

    def expected_s(
        self, rows_ahead: int, rows: int, inflight: int, max_inflight: int, estimate: Callable[[int], float]
    ) -> float:
        """Seconds until a request of ``rows`` rows, queued behind ``rows_ahead`` rows and ``inflight``
        running batches, has its answer, if batches are full and ``max_inflight`` run at a time, each
        taking ``estimate(bucket)``. It assumes full batches and no batching wait (optimistic), but
        counts the running batches as if they had just started (pessimistic)."""
        total = rows_ahead + rows
        batches = math.ceil(total / self.max_batch_size)
        waves = math.ceil((inflight + batches) / max_inflight)
        return waves * estimate(self.bucket(min(total, self.max_batch_size)))


class ServiceTimes:
    """Exponentially weighted mean round trip (s) of batches per captured size, and its mean deviation."""

    def __init__(self, sizes: Sequence[int], weight: float = 0.2, deviations: float = 4.0) -> None:
        self.sizes = tuple(sizes)
        self.weight = weight
        self.deviations = deviations
        self._mean: dict[int, float] = {}
        self._dev: dict[int, float] = {}

    def observe(self, bucket: int, seconds: float) -> None:
        old = self._mean.get(bucket)
        if old is None:
            self._mean[bucket], self._dev[bucket] = seconds, 0.0
            return
        self._dev[bucket] += self.weight * (abs(seconds - old) - self._dev[bucket])
        self._mean[bucket] = old + self.weight * (seconds - old)

    def _known(self, bucket: int) -> int | None:
        if bucket in self._mean:
            return bucket
        smaller = [s for s in self._mean if s < bucket]
        return max(smaller) if smaller else None

    def estimate(self, bucket: int) -> float:
        """The mean at ``bucket``, else at the largest smaller size measured, else 0 (nothing known yet)."""
        known = self._known(bucket)
        return 0.0 if known is None else self._mean[known]

    def bound(self, bucket: int) -> float:
        """A batch's round trip that few exceed: the mean plus ``deviations`` mean deviations (as TCP bounds
        a round trip), so that admission keeps the tail, not the mean, within the SLO."""
        known = self._known(bucket)
        return 0.0 if known is None else self._mean[known] + self.deviations * self._dev[known]


@dataclass
class _Waiting:
    inputs: Sequence[np.ndarray]
    rows: int
    arrival: float
    future: asyncio.Future


# Runs one batch, given its requests' arrays (each request's in the model's input order): the result of all rows.
RunBatch = Callable[[list[Sequence[np.ndarray]]], Awaitable[BatchResult]]


class Batcher:
    """Collects requests of one model into batches and sends them with ``run``."""

    def __init__(
        self,
        policy: BatchPolicy,
        run: RunBatch,
        max_queue: int,
        max_inflight: int,
        retry_after_s: int = 1,
        clock: Callable[[], float] = time.monotonic,
        reject_over_slo: bool = True,
        name: str = "this model",
    ) -> None:
        self.policy = policy
        self.times = ServiceTimes(policy.sizes)
        self._run = run
        self.max_queue = max_queue
        self.max_inflight = max_inflight
        self.retry_after_s = retry_after_s
        self.reject_over_slo = reject_over_slo
        self.name = name
        self._clock = clock
        self.slo_feasible: bool | None = None  # None: not known yet
        self._queue: deque[_Waiting] = deque()
        self._inflight = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def enforces_slo(self) -> bool:
        """Whether the SLO refuses requests: it is set, refusal by it is on, and the model can meet it alone."""
        return self.policy.slo_s is not None and self.reject_over_slo and self.slo_feasible is not False

    async def submit(self, inputs: Sequence[np.ndarray], rows: int) -> BatchResult:
        """Queue one request (arrays in input order) and wait for its rows of the batch's outputs."""
        refusal = self.refusal(rows)
        if refusal is not None:
            raise unavailable(f"{self.name} is overloaded: {refusal}; retry later", self.retry_after_s, overloaded=True)
        waiting = _Waiting(inputs, rows, self._clock(), asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._loop())
        return await waiting.future

    def refusal(self, rows: int) -> str | None:
        """Why a request of ``rows`` rows arriving now is refused (None: it is admitted)."""
        if not (self._queue or self._inflight):
            return None  # with nothing ahead it runs at once: an idle model never refuses
        if len(self._queue) >= self.max_queue:
            return f"its queue is full ({self.max_queue} requests waiting)"
        if not self.enforces_slo:
            return None
        slo_s = self.policy.slo_s
        ahead = sum(w.rows for w in self._queue)
        expected = self.policy.expected_s(ahead, rows, self._inflight, self.max_inflight, self.times.bound)
        if expected <= slo_s:
            return None
        return (
            f"with {len(self._queue)} requests queued and {self._inflight} batches running ahead of it, "
            f"it would take about {1e3 * expected:.0f} ms, over the SLO of {1e3 * slo_s:g} ms"
        )

    async def _loop(self) -> None:
        while True:
            self._drop_cancelled()
            if not self._queue or self._inflight >= self.max_inflight:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = self._clock()
            if self._refuse_stale(now):
                continue
            decision = self.policy.decide(
                now, [w.rows for w in self._queue], self._queue[0].arrival, self.times.estimate, self._inflight
            )
            if decision.take:
                batch = [self._queue.popleft() for _ in range(decision.take)]
                self._inflight += 1
                asyncio.get_running_loop().create_task(self._dispatch(batch, now))
                continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), decision.wait_s)

    def _drop_cancelled(self) -> None:
        # A client that went away must not take a place in a batch.
        if any(w.future.done() for w in self._queue):
            self._queue = deque(w for w in self._queue if not w.future.done())

    def _refuse_stale(self, now: float) -> bool:
        """Refuse the queued requests whose SLO has passed; True when some were."""
        slo_s = self.policy.slo_s
        if not self.enforces_slo or now - self._queue[0].arrival <= slo_s:
            return False  # the head is the oldest: if it is in time, all are
        stale = [w for w in self._queue if now - w.arrival > slo_s]
        self._queue = deque(w for w in self._queue if now - w.arrival <= slo_s)
        for w in stale:
            waited = f"it waited {1e3 * (now - w.arrival):.0f} ms in the queue, past the SLO of {1e3 * slo_s:g} ms"
            w.future.set_exception(
                unavailable(f"{self.name} is overloaded: {waited}; retry later", self.retry_after_s, overloaded=True)
            )
        return True

    async def _dispatch(self, batch: list[_Waiting], sent: float) -> None:
        try:
            rows = sum(w.rows for w in batch)
            result = await self._run([w.inputs for w in batch])
            self.times.observe(self.policy.bucket(rows), self._clock() - sent)
            self._deliver(batch, rows, sent, result)
        except Exception as e:  # every request of the batch gets the failure; none is left waiting
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(e)
        finally:
            self._inflight -= 1
            self._wake.set()

    def _deliver(self, batch: list[_Waiting], rows: int, sent: float, result: BatchResult) -> None:
        start = 0
        for w in batch:
            if not w.future.done():
                w.future.set_result(result.part(start, start + w.rows, sent - w.arrival))
            start += w.rows
