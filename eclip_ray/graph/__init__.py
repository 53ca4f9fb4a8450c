"""Kernel-group execution: stages cut at module boundaries, plans, and one CUDA graph per request."""

from eclip_ray.graph.plan import Plan
from eclip_ray.graph.runner import CapturedGraph, ModelRunner, Pending
from eclip_ray.graph.stages import CutPoint, block_cuts, leaf_cuts, trace_calls

__all__ = ["CapturedGraph", "CutPoint", "ModelRunner", "Pending", "Plan", "block_cuts", "leaf_cuts", "trace_calls"]
