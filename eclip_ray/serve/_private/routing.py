"""Which GPU actor gets a model's next batch: the one with the fewest of this model's batches in flight.

The handles come from the fleet (``fetch``) on first use and again after an
actor died for good (``forget``), because the fleet replaces what it owns.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)
class Route:
    gpu: int
    actor: Any  # a Ray ActorHandle (or any object with the GpuWorker methods behind .remote)
    inflight: int = 0


class ActorRouter:
    def __init__(self, fetch: Callable[[], Awaitable[Sequence[tuple[int, Any]]]]) -> None:
        self._fetch = fetch
        self._routes: list[Route] | None = None
        self._lock = asyncio.Lock()
        self._turn = itertools.count()

    async def routes(self) -> list[Route]:
        if self._routes is None:
            async with self._lock:
                if self._routes is None:
                    self._routes = [Route(gpu, actor) for gpu, actor in await self._fetch()]
        return self._routes

    async def acquire(self, avoid: frozenset[int] = frozenset()) -> Route:
        """The least busy route, not on a GPU in ``avoid`` (LookupError when none is left)."""
        routes = [r for r in await self.routes() if r.gpu not in avoid]
        if not routes:
            besides = f" besides GPUs {sorted(avoid)}" if avoid else ""
            raise LookupError(f"no GPU actor hosts this model{besides}")
        least = min(r.inflight for r in routes)
        tied = [r for r in routes if r.inflight == least]
        route = tied[next(self._turn) % len(tied)]  # round-robin among the least loaded
        route.inflight += 1
        return route

    @staticmethod
    def release(route: Route) -> None:
        route.inflight -= 1

    def forget(self) -> None:
        self._routes = None
