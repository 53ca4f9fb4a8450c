"""One model in one ingress replica: its admission limit, its batcher, and the GPU actors that host it.

The request's path after the ingress has decoded and checked it: this
process's batcher for the model (``batching.py``), then one Ray call per batch
to the hosting GPU actor with the fewest of its batches in flight
(``routing.py``). Every failure on the way to the actor becomes a
``RequestError``: a dead, restarting or silent actor is a 503 with
Retry-After (retryable), never a hang (every wait has ``request_timeout_s``).

At start (and on every readiness check) the front learns from the actors how
long the model takes alone at its smallest batch size. An SLO under that time
cannot be met on this hardware: the front logs a warning, sets the
``eclip_slo_feasible`` metric to 0, says so in the model's ready state and
metadata, and stops refusing the model's requests for the SLO, in the batcher
and in the front's admission limit (the queue bounds still apply), instead of
refusing all of them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from eclip_ray.actor.spec import BatchResult, InvalidInput, ModelConfig, ModelUnavailable
from eclip_ray.serve._private.admission import FrontLimit
from eclip_ray.serve._private.batching import Batcher, BatchPolicy
from eclip_ray.serve._private.errors import RequestError, unavailable
from eclip_ray.serve._private.learnt import LearntRanges
from eclip_ray.serve._private.metrics import ServeMetrics
from eclip_ray.serve._private.routing import ActorRouter, Route
from eclip_ray.serve._private.stats import ModelStats
from eclip_ray.serve.config import Limits, queue_size

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0
INFLIGHT_PER_ACTOR = 2  # batches of one model that one ingress replica keeps in flight per hosting actor


class _ActorDown(Exception):
    """The actor failed or lacks the model (not the batch itself): another replica may take the batch."""

    def __init__(self, error: RequestError) -> None:
        super().__init__(str(error))
        self.error = error


def _is_actor_down(e: Exception) -> bool:
    # Not a timeout: that batch may still be running, and sending it again would double the load.
    from ray.exceptions import RayActorError, RayTaskError

    return isinstance(e, RayActorError) or (isinstance(e, RayTaskError) and isinstance(e.cause, ModelUnavailable))


def slo_problem(model: ModelConfig, solo_ms: float | None, rows: int = 1) -> str | None:
    """Why ``model``'s SLO cannot be met when a batch of ``rows`` takes ``solo_ms`` alone (None: it can, or
    nothing is known)."""
    if model.slo_ms is None or solo_ms is None or solo_ms <= model.slo_ms:
        return None
    return (
        f"model {model.name!r}: a batch of {rows} takes {solo_ms:.1f} ms alone on its GPU, over its SLO of "
        f"{model.slo_ms:g} ms, so the SLO cannot be met on this hardware; requests are not refused for it (the queue "
        f"bounds still apply). Set slo_ms above {solo_ms:.3g} ms, or serve it on faster hardware"
    )


class ModelFront:
    """``fleet`` is a handle to the GpuFleet deployment (anything with ``actors_for.remote(model)``)."""

    def __init__(
        self, model: ModelConfig, limits: Limits, fleet: Any, ingress_replicas: int, metrics: ServeMetrics
    ) -> None:
        self.cfg = model
        self.limits = limits
        self._fleet = fleet
        self.metrics = metrics
        self.router = ActorRouter(self._fetch_actors)
        policy = BatchPolicy(
            max_batch_size=model.max_batch_size,
            batch_wait_timeout_s=model.batch_wait_timeout_s,
            slo_s=None if model.slo_ms is None else model.slo_ms / 1e3,
            sizes=model.captured_sizes(),
        )
        self.batcher = Batcher(
            policy,
            self._run,
            max_queue=queue_size(model, limits),
            max_inflight=INFLIGHT_PER_ACTOR * model.replicas,
            retry_after_s=limits.retry_after_s,
            reject_over_slo=limits.reject_over_slo,
            name=f"model {model.name!r}",
        )
        # This replica's share of the model's front bound; for a model with an SLO, also no more than the front
        # gets through within its share of the SLO (admission.py).
        self._front_target_s = limits.front_slo_share * model.slo_ms / 1e3 if model.slo_ms else None
        self.limit = FrontLimit(math.ceil(model.front_bound() / ingress_replicas), self._front_target_s)
        self.stats = ModelStats(model.name)
        self.outputs: list[dict] | None = None
        self.solo_ms: float | None = None
        self.solo_p50_ms: float | None = None
        self.slo_note: str | None = None
        self._slo_check: asyncio.Task | None = None
        self._slo_checked = 0.0
        self._learnt = LearntRanges(model)  # value ranges an actor learnt at start, beyond the config's
        self._learning: asyncio.Task | None = None

    async def _fetch_actors(self) -> Sequence[tuple[int, Any]]:
        return await self._fleet.actors_for.remote(self.cfg.name)

    # -- requests ---------------------------------------------------------------------------

    async def infer(self, inputs: Sequence[np.ndarray], rows: int) -> BatchResult:
        """One checked request (arrays in the model's input order): its rows of its batch's result."""
        if self.batcher.slo_feasible is None and self.cfg.slo_ms is not None:
            await self.check_slo()  # once: the first requests wait for it, so none is refused for an SLO in vain
        problem = self._out_of_range(inputs)
        if problem is not None:  # alone, with 400, rather than failing the batch it would join in the actor
            raise RequestError(400, f"model {self.cfg.name!r}: {problem}")
        t0 = time.perf_counter()
        try:
            result = await self.batcher.submit(inputs, rows)
        except RequestError:
            self.stats.failed(time.perf_counter() - t0)
            raise
        self.stats.succeeded(rows, time.perf_counter() - t0, result.queue_s)
        self.metrics.queued(self.cfg.name, result.queue_s)
        return result

    def _out_of_range(self, inputs: Sequence[np.ndarray]) -> str | None:
        """A range an actor learnt that the request breaks; until an actor has answered, it asks in the background
        (meanwhile the actor's own check stands)."""
        if self._learning is None and self._learnt.due():
            self._learning = asyncio.get_running_loop().create_task(self.ready())
            self._learning.add_done_callback(lambda _: setattr(self, "_learning", None))
        return self._learnt.problem(inputs)

    async def _run(self, requests: list[Sequence[np.ndarray]]) -> BatchResult:
        """One batch to the least busy actor hosting the model; if that actor is down, to the next replica."""
        rows = sum(int(r[0].shape[0]) for r in requests)
        self.metrics.batch(self.cfg.name, rows)
        tried: frozenset[int] = frozenset()
        while True:
            try:
                route = await asyncio.wait_for(self.router.acquire(tried), self.limits.request_timeout_s)
            except (TimeoutError, LookupError) as e:
                raise self._unavailable(f"no GPU actor is reachable ({type(e).__name__}: {e})") from None
            tried |= {route.gpu}
            try:
                return await self._run_on(route, requests)
            except _ActorDown as down:
                if len(tried) >= self.cfg.replicas:
                    raise down.error from None

    async def _run_on(self, route: Route, requests: list[Sequence[np.ndarray]]) -> BatchResult:
        try:
            ref = route.actor.infer.remote(self.cfg.name, *requests)
            return await asyncio.wait_for(ref, self.limits.request_timeout_s)
        except Exception as e:
            error = self._map_error(e, route.gpu)
            raise (_ActorDown(error) if _is_actor_down(e) else error) from None
        finally:
            self.router.release(route)

    def _unavailable(self, why: str) -> RequestError:
        return unavailable(f"model {self.cfg.name!r} is unavailable: {why}; retry later", self.limits.retry_after_s)

    def _map_error(self, e: Exception, gpu: int) -> RequestError:
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

        if isinstance(e, TimeoutError):
            return self._unavailable(f"GPU {gpu} did not answer within {self.limits.request_timeout_s} s")
        if isinstance(e, ActorUnavailableError):
            return self._unavailable(f"GPU {gpu}'s actor is restarting")
        if isinstance(e, RayActorError):
            if isinstance(e, ActorDiedError):
                self.router.forget()  # the fleet may have replaced it
            return self._unavailable(f"GPU {gpu}'s actor died with the batch; Ray restarts it (up to max_restarts)")
        cause = e.cause if isinstance(e, RayTaskError) else e
        if isinstance(cause, ModelUnavailable):
            return self._unavailable(str(cause))
        if isinstance(cause, InvalidInput):  # the actor's own check: the request's fault, not the server's
            return RequestError(400, str(cause))
        log.error("batch of %s failed on GPU %d: %r", self.cfg.name, gpu, cause)
        return RequestError(500, f"model {self.cfg.name!r} failed on GPU {gpu}: {type(cause).__name__}: {cause}")

    # -- the SLO against the hardware -------------------------------------------------------

    async def check_slo(self) -> None:
        """Learn whether the SLO can be met (``ready()`` records it): one check shared by concurrent callers, and
        again at most once a second while the hosting actors have not said (they are loading, or failed)."""
        now = time.monotonic()
        stale = self._slo_check is not None and self._slo_check.done() and now - self._slo_checked >= 1.0
        if self._slo_check is None or stale:
            self._slo_checked = now
            self._slo_check = asyncio.get_running_loop().create_task(self.ready())
        await asyncio.shield(self._slo_check)

    def _learn_solo(self, solo_ms: float, rows: int, solo_p50_ms: float | None = None) -> None:
        first = self.solo_ms is None
        self.solo_ms, self.solo_p50_ms = solo_ms, solo_p50_ms
        self.slo_note = slo_problem(self.cfg, solo_ms, rows)
        self.batcher.slo_feasible = self.slo_note is None
        self.limit.target_s = self._front_target_s if self.batcher.slo_feasible else None  # no AIMD for it either
        self.metrics.slo(self.cfg.name, solo_ms, self.batcher.slo_feasible)
        if first and self.slo_note is not None:
            log.warning("%s", self.slo_note)

    def slo_state(self) -> dict[str, Any]:
        """The SLO, the model's run time alone (fastest and median at start) and whether the SLO can be met."""
        return {
            "slo_ms": self.cfg.slo_ms,
            "solo_ms": self.solo_ms,
            "solo_p50_ms": self.solo_p50_ms,
            "feasible": self.batcher.slo_feasible,
        }

    # -- reports ----------------------------------------------------------------------------

    async def ready(self) -> dict:
        """``{"ready", "reason", "outputs", "slo"}``: ready when one hosting actor has it loaded."""
        try:
            routes = await asyncio.wait_for(self.router.routes(), READY_TIMEOUT_S)
            answers = await asyncio.gather(
                *(asyncio.wait_for(r.actor.ready.remote(), READY_TIMEOUT_S) for r in routes), return_exceptions=True
            )
        except Exception as e:
            return self._not_ready(f"the GPU fleet is not reachable ({type(e).__name__})")
        reasons, solo, ready = [], [], False
        for route, answer in zip(routes, answers, strict=True):
            if isinstance(answer, BaseException):
                reasons.append(
                    f"GPU {route.gpu}: actor not answering ({type(answer).__name__}; starting or restarting)"
                )
                continue
            state = answer["models"][self.cfg.name]
            if state["ready"]:
                ready, self.outputs = True, state["outputs"]
                self._learnt.learn(state)
                if state.get("solo_ms") is not None:
                    solo.append((state["solo_ms"], state.get("solo_rows", 1), state.get("solo_p50_ms")))
            else:
                reasons.append(f"GPU {route.gpu}: {state['error']}")
        if not ready:
            return self._not_ready("; ".join(reasons) or "no GPU actor hosts it")
        if solo:
            self._learn_solo(*min(solo, key=lambda s: s[0]))  # the fastest replica: an SLO it meets can be met
        return {"ready": True, "reason": None, "outputs": self.outputs, "slo": self.slo_state(), "note": self.slo_note}

    def _not_ready(self, reason: str) -> dict:
        return {"ready": False, "reason": reason, "outputs": [], "slo": self.slo_state(), "note": self.slo_note}

    async def metadata(self) -> dict:
        """KServe model metadata (outputs are known once an actor has loaded the model), plus the SLO's state."""
        if self.outputs is None:
            state = await self.ready()
            if not state["ready"]:
                raise self._unavailable(f"it is not ready: {state['reason']}")
        return {
            "name": self.cfg.name,
            "versions": ["1"],
            "platform": "pytorch_eclip_ray",
            "inputs": [t.metadata() for t in self.cfg.inputs or ()],
            "outputs": self.outputs,
            "parameters": {"slo": self.slo_state(), **({"slo_note": self.slo_note} if self.slo_note else {})},
        }

    async def gpu_stats(self) -> list[dict]:
        """What each hosting GPU reports for this model: batches run, rows, plan, energy."""
        try:
            routes = await asyncio.wait_for(self.router.routes(), READY_TIMEOUT_S)
        except Exception:
            return []
        answers = await asyncio.gather(
            *(asyncio.wait_for(r.actor.stats.remote(), READY_TIMEOUT_S) for r in routes), return_exceptions=True
        )
        gpus = []
        for route, answer in zip(routes, answers, strict=True):
            if isinstance(answer, BaseException) or self.cfg.name not in answer["models"]:
                gpus.append({"gpu": route.gpu, "available": False})
            else:
                gpus.append({"gpu": route.gpu, "available": True, **answer["models"][self.cfg.name]})
        return gpus
