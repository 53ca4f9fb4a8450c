"""The one place that makes :class:`GpuWorker` a Ray actor."""

from __future__ import annotations


def worker_class(num_gpus: float, num_cpus: float = 1.0, max_restarts: int = 3, max_concurrency: int = 256):
    """``GpuWorker`` as a Ray actor class.

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
    import os

    import ray

    from eclip_ray.actor.worker import GpuWorker
    from eclip_ray.partition.cuda import WORK_QUEUES

    queues = os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS", str(WORK_QUEUES))

    return ray.remote(
        num_gpus=num_gpus,
        num_cpus=num_cpus,
        max_restarts=max_restarts,
        max_task_retries=0,
        max_concurrency=max_concurrency,
        runtime_env={"env_vars": {"CUDA_DEVICE_MAX_CONNECTIONS": queues}},
    )(GpuWorker)
