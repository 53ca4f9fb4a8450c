"""Models served by eclip_ray: the zoo of torchvision and transformers models with random weights.

Names (``names.py``) import no torch; the zoo itself is imported when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from eclip_ray.models.names import ECLIP_SET, ZOO_SET, canonical

_ZOO = ("ZooModel", "get", "register")


def __getattr__(name: str) -> Any:
    if name in _ZOO:
        return getattr(importlib.import_module("eclip_ray.models.zoo"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ECLIP_SET", "ZOO_SET", "ZooModel", "canonical", "get", "register"]
