"""eclip_ray: co-located ML inference on SM-partitioned GPUs, served with Ray Serve."""

from eclip_ray.graph import ModelRunner, Plan
from eclip_ray.runtime import Runtime

__all__ = ["ModelRunner", "Plan", "Runtime"]
__version__ = "0.1.0"
