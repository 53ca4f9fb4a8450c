"""Models served by eclip_ray: the zoo of torchvision and transformers models with random weights.

Names (``names.py``) import no torch; the zoo itself is imported when first used.
"""

from __future__ import annotations

from eclip_ray.lazy import attributes
from eclip_ray.models.names import ECLIP_SET, ZOO_SET, canonical

_LAZY = dict.fromkeys(("ZooModel", "get", "register"), "eclip_ray.models.zoo")


__getattr__ = attributes(__name__, _LAZY)


__all__ = ["ECLIP_SET", "ZOO_SET", "ZooModel", "canonical", "get", "register"]
