"""The per-GPU actor: owns one device's runtime and models, and runs the batches deployments send it.

``GpuWorker`` is a plain class (usable in-process, without Ray);
``worker_class`` applies ``ray.remote`` to it.
"""

from eclip_ray.actor.remote import worker_class
from eclip_ray.actor.spec import BatchResult, DeviceFault, InvalidInput, ModelUnavailable, ServedModel, TensorInfo
from eclip_ray.actor.worker import GpuWorker

__all__ = [
    "BatchResult",
    "DeviceFault",
    "GpuWorker",
    "InvalidInput",
    "ModelUnavailable",
    "ServedModel",
    "TensorInfo",
    "worker_class",
]
