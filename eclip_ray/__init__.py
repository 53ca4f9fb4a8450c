"""eclip_ray: co-located ML inference on SM-partitioned GPUs, served with Ray Serve.

Names load on first use, so processes that only route requests (the Ray Serve
ingress) do not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ModelRunner", "Plan", "Runtime"]
__version__ = "0.1.0"

_WHERE = {"ModelRunner": "eclip_ray.graph", "Plan": "eclip_ray.graph", "Runtime": "eclip_ray.runtime"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'eclip_ray' has no attribute {name!r}")
