"""The one place that makes :class:`GpuWorker` a Ray actor.

A process that holds a handle of an actor loads the actor's class when the
handle arrives, so the class Ray sees, :class:`GpuActor`, lives in this module,
which imports neither torch nor CUDA code: the ingress replicas and the fleet
hold the handles and stay lean (a test checks the ingress). ``GpuActor`` builds
the ``GpuWorker`` inside the actor's own process and passes each call through.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

# The driver's maximum for CUDA_DEVICE_MAX_CONNECTIONS (eclip_ray/partition/cuda.py's WORK_QUEUES, which imports
# torch; a unit test checks that the two agree).
WORK_QUEUES = 32


class GpuActor:
    """A :class:`eclip_ray.actor.worker.GpuWorker` as a Ray actor: its keyword arguments, its methods."""

    def __init__(self, **kwargs: Any) -> None:
        from eclip_ray.actor.worker import GpuWorker

        self._worker = GpuWorker(**kwargs)

    async def infer(self, model: str, *requests: Sequence[Any]):
        return await self._worker.infer(model, *requests)

    def ready(self) -> dict[str, Any]:
        return self._worker.ready()

    def stats(self) -> dict[str, Any]:
        return self._worker.stats()

    def process(self) -> dict[str, Any]:
        return self._worker.process()

    def describe(self) -> dict[str, Any]:
        return self._worker.describe()


def worker_class(num_gpus: float, num_cpus: float = 1.0, max_restarts: int = 3, max_concurrency: int = 256):
    """``GpuActor`` as a Ray actor class.

    Ray restarts a dead actor up to ``max_restarts`` times (its ``__init__``
    rebuilds pool, graphs and plans), also one that ended itself because its
    device context was poisoned (``actor/faults.py``). Tasks are not retried
    (``max_task_retries=0``): a batch in flight when the actor dies fails at
    once with ``RayActorError`` and the caller answers 503, instead of the
    batch silently running twice or waiting out the restart.
    ``max_concurrency`` bounds the batches in flight in its event loop. Its process
    starts with 32 hardware work queues (``partition/cuda.py``) unless the caller's
    environment says otherwise.
    """
    import ray

    queues = os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS", str(WORK_QUEUES))
    return ray.remote(
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        max_restarts=max_restarts,
        max_task_retries=0,
        max_concurrency=max_concurrency,
        runtime_env={"env_vars": {"CUDA_DEVICE_MAX_CONNECTIONS": queues}},
    )(GpuActor)
