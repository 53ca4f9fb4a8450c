"""The per-GPU actor: owns one device's runtime and models, and runs the batches the front sends it.

``GpuWorker`` is a plain class (usable in-process, without Ray);
``worker_class`` applies ``ray.remote`` to it. The names load on first use, so
that the front, which imports ``eclip_ray.actor.spec`` for the specs, never
imports torch.
"""

from __future__ import annotations

from eclip_ray.lazy import attributes

_SPEC = ("BatchResult", "DeviceFault", "InvalidInput", "ModelConfig", "ModelUnavailable", "Normalize", "TensorSpec")
_LAZY = {**dict.fromkeys(_SPEC, "eclip_ray.actor.spec"), "GpuWorker": "eclip_ray.actor.worker"}
_LAZY["worker_class"] = "eclip_ray.actor.remote"

__getattr__ = attributes(__name__, _LAZY)

__all__ = [
    "BatchResult",
    "DeviceFault",
    "GpuWorker",
    "InvalidInput",
    "ModelConfig",
    "ModelUnavailable",
    "Normalize",
    "TensorSpec",
    "worker_class",
]
