"""The per-GPU actor: owns one device's runtime and models, and runs the batches the front sends it.

``GpuWorker`` is a plain class (usable in-process, without Ray);
``worker_class`` applies ``ray.remote`` to it. The names load on first use, so
that the front, which imports ``eclip_ray.actor.spec`` for the specs, never
imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eclip_ray.actor.remote import worker_class
    from eclip_ray.actor.spec import BatchResult, DeviceFault, ModelConfig, ModelUnavailable, TensorSpec
    from eclip_ray.actor.worker import GpuWorker

_HOME = {
    "BatchResult": "eclip_ray.actor.spec",
    "DeviceFault": "eclip_ray.actor.spec",
    "ModelConfig": "eclip_ray.actor.spec",
    "ModelUnavailable": "eclip_ray.actor.spec",
    "TensorSpec": "eclip_ray.actor.spec",
    "GpuWorker": "eclip_ray.actor.worker",
    "worker_class": "eclip_ray.actor.remote",
}

__all__ = ["BatchResult", "DeviceFault", "GpuWorker", "ModelConfig", "ModelUnavailable", "TensorSpec", "worker_class"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'eclip_ray.actor' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
