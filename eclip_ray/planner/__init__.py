"""The resource-allocation optimizer: kernel groups, a MILP with latency SLOs, and plan tables per mix.

Pure Python (NumPy, SciPy): no CUDA and no Ray, so it runs and is tested anywhere.
"""

from eclip_ray.planner.optimizer import MixPlan, WorkerPlan, optimize
from eclip_ray.planner.power import PowerModel
from eclip_ray.planner.profile import ModelProfile
from eclip_ray.planner.settings import PlannerSettings
from eclip_ray.planner.table import PlanTable, build_plan_table

__all__ = [
    "MixPlan",
    "ModelProfile",
    "PlanTable",
    "PlannerSettings",
    "PowerModel",
    "WorkerPlan",
    "build_plan_table",
    "optimize",
]
