"""The deployment of one model: batches its requests and sends each batch to a GPU actor hosting it.

One replica per model, so that all of a model's requests meet in one queue.
Every failure on the way to the actor becomes a ``Failure`` in the reply: a
dead, restarting or silent actor is a 503 with Retry-After (retryable), never
a hang (every wait has ``request_timeout_s``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from eclip_ray.actor.spec import BatchResult, InvalidInput, ModelUnavailable
from eclip_ray.serve._private.batching import Batched, Batcher, BatchPolicy
from eclip_ray.serve._private.errors import Failure, RequestError, unavailable
from eclip_ray.serve._private.learnt import LearntRanges
from eclip_ray.serve._private.metrics import RayServeMetrics, ServeMetrics
from eclip_ray.serve._private.routing import ActorRouter, Route
from eclip_ray.serve._private.stats import ModelStats
from eclip_ray.serve.config import Limits, ModelConfig, queue_size

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Reply:
    """A request's outcome: outputs by name, or a failure."""

    names: tuple[str, ...] = ()
    outputs: tuple[np.ndarray, ...] = ()
    failure: Failure | None = None
    queue_s: float = 0.0
    batch_rows: int = 0
    gpu: int | None = None


class _ActorDown(Exception):
    """The actor failed or lacks the model (not the batch itself): another replica may take the batch."""

    def __init__(self, error: RequestError) -> None:
        super().__init__(str(error))
        self.error = error


def _is_actor_down(e: Exception) -> bool:
    # Not a timeout: that batch may still be running, and sending it again would double the load.
    from ray.exceptions import RayActorError, RayTaskError

    return isinstance(e, RayActorError) or (isinstance(e, RayTaskError) and isinstance(e.cause, ModelUnavailable))


class ModelDeployment:
    """``fleet`` is a handle to the GpuFleet deployment (anything with ``actors_for.remote(model)``)."""

    def __init__(self, model: dict, limits: dict, fleet: Any, metrics: bool = True) -> None:
        self.cfg = ModelConfig.model_validate(model)
        self.limits = Limits.model_validate(limits)
        self._fleet = fleet
        self.router = ActorRouter(self._fetch_actors)
        policy = BatchPolicy(
            max_batch_size=self.cfg.max_batch_size,
            batch_wait_timeout_s=self.cfg.batch_wait_timeout_s,
            slo_s=None if self.cfg.slo_ms is None else self.cfg.slo_ms / 1e3,
            sizes=self.cfg.captured_sizes(),
        )
        self.batcher = Batcher(
            policy,
            self._run,
            max_queue=queue_size(self.cfg, self.limits),
            max_inflight=2 * self.cfg.replicas,  # two per actor: one running while the next is on its way
            retry_after_s=self.limits.retry_after_s,
            reject_over_slo=self.limits.reject_over_slo,
            name=f"model {self.cfg.name!r}",
        )
        self.stats = ModelStats(self.cfg.name)
        self.metrics: ServeMetrics = RayServeMetrics([self.cfg.name]) if metrics else ServeMetrics()
        self._outputs: list[dict] | None = None
        self._learnt = LearntRanges(self.cfg)
        self._learning: asyncio.Task | None = None

    async def _fetch_actors(self) -> Sequence[tuple[int, Any]]:
        return await self._fleet.actors_for.remote(self.cfg.name)

    # -- requests ---------------------------------------------------------------------------

    async def infer(self, inputs: list[np.ndarray], received_at: float | None = None) -> Reply:
        """One request: arrays in the model's input order, already checked by the ingress;
        ``received_at``: when the ingress received it (``time.time()``), so its SLO counts the wait before."""
        t0 = time.perf_counter()
        rows = int(inputs[0].shape[0])
        waited_s = 0.0 if received_at is None else max(0.0, time.time() - received_at)
        problem = self._out_of_range(inputs)
        if problem is not None:
            self.stats.failed(time.perf_counter() - t0)
            return Reply(failure=Failure(400, f"model {self.cfg.name!r}: {problem}"))
        try:
            done: Batched = await self.batcher.submit(inputs, rows, waited_s)
        except RequestError as e:
            self.stats.failed(time.perf_counter() - t0)
            return Reply(failure=e.failure)
        self.stats.succeeded(rows, time.perf_counter() - t0, done.queue_s)
        self.metrics.queued(self.cfg.name, done.queue_s)
        return Reply(done.names, done.outputs, None, done.queue_s, done.batch_rows, done.result.gpu)

    def _out_of_range(self, inputs: list[np.ndarray]) -> str | None:
        """A range an actor learnt that the request breaks; until an actor has answered, it asks in the background
        (meanwhile the actor's own check stands)."""
        if self._learning is None and self._learnt.due():
            self._learning = asyncio.get_running_loop().create_task(self.ready())
            self._learning.add_done_callback(lambda _: setattr(self, "_learning", None))
        return self._learnt.problem(inputs)

    async def _run(self, inputs: list[np.ndarray]) -> BatchResult:
        """One batch to the least busy actor hosting the model; if that actor is down, to the next replica."""
        rows = int(inputs[0].shape[0])
        self.metrics.batch(self.cfg.name, rows)
        tried: frozenset[int] = frozenset()
        while True:
            try:
                route = await asyncio.wait_for(self.router.acquire(tried), self.limits.request_timeout_s)
            except (TimeoutError, LookupError) as e:
                raise self._unavailable(f"no GPU actor is reachable ({type(e).__name__}: {e})") from None
            tried |= {route.gpu}
            try:
                return await self._run_on(route, inputs, rows)
            except _ActorDown as down:
                if len(tried) >= self.cfg.replicas:
                    raise down.error from None

    async def _run_on(self, route: Route, inputs: list[np.ndarray], rows: int) -> BatchResult:
        t0 = time.perf_counter()
        try:
            ref = route.actor.infer.remote(self.cfg.name, inputs)
            result = await asyncio.wait_for(ref, self.limits.request_timeout_s)
        except Exception as e:
            error = self._map_error(e, route.gpu)
            raise (_ActorDown(error) if _is_actor_down(e) else error) from None
        finally:
            self.router.release(route)
        self.stats.batch(rows, time.perf_counter() - t0)
        return result

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

    # -- reports ----------------------------------------------------------------------------

    async def ready(self) -> dict:
        """``{"ready": bool, "reason": str | None, "outputs": [...]}``: ready when one hosting actor has it loaded."""
        try:
            routes = await asyncio.wait_for(self.router.routes(), READY_TIMEOUT_S)
            answers = await asyncio.gather(
                *(asyncio.wait_for(r.actor.ready.remote(), READY_TIMEOUT_S) for r in routes), return_exceptions=True
            )
        except Exception as e:
            return {"ready": False, "reason": f"the GPU fleet is not reachable ({type(e).__name__})", "outputs": []}
        reasons = []
        for route, answer in zip(routes, answers, strict=True):
            if isinstance(answer, BaseException):
                reasons.append(
                    f"GPU {route.gpu}: actor not answering ({type(answer).__name__}; starting or restarting)"
                )
                continue
            state = answer["models"][self.cfg.name]
            if state["ready"]:
                self._outputs = state["outputs"]
                self._learnt.learn(state)
                return {"ready": True, "reason": None, "outputs": state["outputs"]}
            reasons.append(f"GPU {route.gpu}: {state['error']}")
        return {"ready": False, "reason": "; ".join(reasons) or "no GPU actor hosts it", "outputs": []}

    async def metadata(self) -> dict:
        """KServe model metadata; outputs are known once an actor has loaded the model."""
        if self._outputs is None:
            state = await self.ready()
            if not state["ready"]:
                return {"error": f"model {self.cfg.name!r} is not ready: {state['reason']}"}
        return {
            "name": self.cfg.name,
            "versions": ["1"],
            "platform": "pytorch_eclip_ray",
            "inputs": [
                {"name": t.name, "datatype": t.datatype, "shape": [-1, *t.shape]} for t in self.cfg.inputs or ()
            ],
            "outputs": self._outputs,
        }

    async def statistics(self) -> dict:
        """Triton-style statistics, plus what each hosting GPU reports for this model (plan, energy)."""
        out = self.stats.to_triton()
        out["queued"] = self.batcher.queued
        out["gpus"] = await self._gpu_stats()
        return out

    async def _gpu_stats(self) -> list[dict]:
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
