"""Kernel-group execution: stages cut at module boundaries, plans, and one CUDA graph per request.

``Plan`` is plain data and imports no torch; the runner, the stage tracer and the profiler
need torch and are imported when first used (``eclip_ray.graph.ModelRunner`` still works).
"""

from __future__ import annotations

from eclip_ray.graph.plan import Plan
from eclip_ray.lazy import attributes

_LAZY = {
    "CapturedGraph": "eclip_ray.graph.runner",
    "ModelRunner": "eclip_ray.graph.runner",
    "Pending": "eclip_ray.graph.runner",
    "CutPoint": "eclip_ray.graph.stages",
    "block_cuts": "eclip_ray.graph.stages",
    "leaf_cuts": "eclip_ray.graph.stages",
    "trace_calls": "eclip_ray.graph.stages",
}


__getattr__ = attributes(__name__, _LAZY)


__all__ = ["CapturedGraph", "CutPoint", "ModelRunner", "Pending", "Plan", "block_cuts", "leaf_cuts", "trace_calls"]
