"""Serving eclip_ray models over HTTP with Ray Serve (KServe v2 / Open Inference Protocol).

Declare models in an :class:`AppConfig`, build the application with
:func:`build_app`, and run it with ``serve.run``; or run
``eclip-ray serve --config deployments/example.yaml``.

The names load on first use, so ``eclip-ray`` and ``eclip_ray.serve.cli`` import
on a machine without the serve extra (the GPU machine has no pydantic or Ray).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eclip_ray.serve.api import app_builder, build_app
    from eclip_ray.serve.config import AppConfig, Limits, ModelConfig, Normalize, TensorSpec, front_env, load_config

_HOME = {
    "app_builder": "eclip_ray.serve.api",
    "build_app": "eclip_ray.serve.api",
    "AppConfig": "eclip_ray.serve.config",
    "Limits": "eclip_ray.serve.config",
    "ModelConfig": "eclip_ray.serve.config",
    "Normalize": "eclip_ray.serve.config",
    "TensorSpec": "eclip_ray.serve.config",
    "front_env": "eclip_ray.serve.config",
    "load_config": "eclip_ray.serve.config",
}

__all__ = [
    "AppConfig",
    "Limits",
    "ModelConfig",
    "Normalize",
    "TensorSpec",
    "app_builder",
    "build_app",
    "front_env",
    "load_config",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'eclip_ray.serve' has no attribute {name!r}")
    try:
        module = importlib.import_module(_HOME[name])
    except ImportError as e:
        raise ImportError(f"eclip_ray.serve needs the serve extra: pip install 'eclip-ray[serve]' ({e})") from e
    return getattr(module, name)
