"""Models served by eclip_ray: the zoo of torchvision and transformers models with random weights.

The names load on first use, so that ``eclip_ray.models.sources`` (which the
HTTP front uses to check loaders) imports without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eclip_ray.models.zoo import ECLIP_SET, ZOO_SET, ZooModel, get, register

__all__ = ["ECLIP_SET", "ZOO_SET", "ZooModel", "get", "register"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'eclip_ray.models' has no attribute {name!r}")
    return getattr(importlib.import_module("eclip_ray.models.zoo"), name)
