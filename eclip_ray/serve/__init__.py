"""Serving eclip_ray models over HTTP with Ray Serve (KServe v2 / Open Inference Protocol).

Declare models in an :class:`AppConfig` (zoo names, ``module:factory`` import
paths, ONNX files), or in Python from an ``nn.Module`` with :func:`model`
(``eclip_ray/serve/declare.py``; docs/python-api.md); build the application with
:func:`build_app` and run it with :func:`run` (Serve started with the app's HTTP
and gRPC options) or ``serve.run``; or run
``eclip-ray serve --config deployments/example.yaml``. Other deployments call it
through a DeploymentHandle: ``await handle.infer.remote(name, {input: array})``
(``eclip_ray/serve/_private/ingress.py``), failing with the exceptions exported here.

The names load on first use, so ``eclip-ray`` and ``eclip_ray.serve.cli`` import
on a machine without the serve extra (the GPU machine has no pydantic or Ray).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eclip_ray.actor.source import ModelSource
    from eclip_ray.actor.spec import InvalidInput, ModelUnavailable, Overloaded, UnknownModel
    from eclip_ray.serve.api import app_builder, app_config, build_app, run
    from eclip_ray.serve.config import AppConfig, Limits, ModelConfig, Normalize, TensorSpec, front_env, load_config
    from eclip_ray.serve.declare import model

_HOME = {
    "app_builder": "eclip_ray.serve.api",
    "app_config": "eclip_ray.serve.api",
    "build_app": "eclip_ray.serve.api",
    "run": "eclip_ray.serve.api",
    "model": "eclip_ray.serve.declare",
    "ModelSource": "eclip_ray.actor.source",
    "InvalidInput": "eclip_ray.actor.spec",
    "ModelUnavailable": "eclip_ray.actor.spec",
    "Overloaded": "eclip_ray.actor.spec",
    "UnknownModel": "eclip_ray.actor.spec",
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
    "InvalidInput",
    "Limits",
    "ModelConfig",
    "ModelSource",
    "ModelUnavailable",
    "Normalize",
    "Overloaded",
    "TensorSpec",
    "UnknownModel",
    "app_builder",
    "app_config",
    "build_app",
    "front_env",
    "load_config",
    "model",
    "run",
]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'eclip_ray.serve' has no attribute {name!r}")
    try:
        module = importlib.import_module(_HOME[name])
    except ImportError as e:
        raise ImportError(f"eclip_ray.serve needs the serve extra: pip install 'eclip-ray[serve]' ({e})") from e
    return getattr(module, name)
