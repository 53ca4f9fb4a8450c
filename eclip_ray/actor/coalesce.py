"""One model's batches in one GPU actor: a few run at a time, and those that wait are merged into the next.

Every ingress replica batches its own share of a model's requests, so with
several replicas the batches that reach the actor are smaller than one queue
would make them. The actor is where all of a model's requests on this GPU meet,
so it batches again, without waiting: a batch that arrives while ``running`` of
the model's batches are already on the device waits, and when one finishes, the
waiting ones are joined, oldest first, up to ``max_rows`` (the largest captured
batch size), into one batch. An idle model runs each batch at once; a busy one
runs fewer, larger batches, so its throughput does not depend on how the
requests were spread over the front.

Each caller gets its own rows back (views into the merged outputs); a failed
run fails every caller that was merged into it, and no one else.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import numpy as np

from eclip_ray.actor.spec import BatchResult

Request = Sequence[np.ndarray]  # one request's arrays, in the model's input order
Run = Callable[[list[Request]], Awaitable[BatchResult]]


@dataclass
class _Entry:
    requests: Sequence[Request]
    rows: int
    future: asyncio.Future


class Coalescer:
    def __init__(self, run: Run, max_rows: int, running: int = 2) -> None:
        if running < 1 or max_rows < 1:
            raise ValueError(f"need running >= 1 and max_rows >= 1, got {running} and {max_rows}")
        self._run = run
        self.max_rows = max_rows
        self.running = running
        self._active = 0
        self._waiting: deque[_Entry] = deque()
        self.merged = 0  # batches that ran joined to others

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def submit(self, requests: Sequence[Request], rows: int) -> BatchResult:
        """Run ``requests`` (``rows`` rows in all), alone or joined to others; their rows of the result."""
        entry = _Entry(requests, rows, asyncio.get_running_loop().create_future())
        self._waiting.append(entry)
        self._start()
        return await entry.future

    def _start(self) -> None:
        while self._waiting and self._active < self.running:
            if self._waiting[0].future.done():  # its caller went away: it takes no place in a batch
                self._waiting.popleft()
                continue
            group = [self._waiting.popleft()]
            total = group[0].rows
            while self._waiting and total + self._waiting[0].rows <= self.max_rows:
                entry = self._waiting.popleft()
                if not entry.future.done():
                    total += entry.rows
                    group.append(entry)
            if len(group) > 1:
                self.merged += len(group)
            self._active += 1
            asyncio.get_running_loop().create_task(self._go(group))

    async def _go(self, group: list[_Entry]) -> None:
        try:
            result = await self._run([r for e in group for r in e.requests])
        except BaseException as e:  # every caller of this run gets the failure; none is left waiting
            for entry in group:
                if not entry.future.done():
                    entry.future.set_exception(e)
            if not isinstance(e, Exception):
                raise
        else:
            start = 0
            for entry in group:
                if not entry.future.done():
                    entry.future.set_result(result.part(start, start + entry.rows))
                start += entry.rows
        finally:
            self._active -= 1
            self._start()
