"""The GPU actors of an application, created and owned by one small deployment.

Ray ties an actor's life to its creator's, so the fleet (one replica) owns the
actors: deleting the application ends them, and if the fleet's replica is
replaced its successor creates fresh ones (deployments then fetch new handles).
Actors start loading at once; the fleet does not wait for them, so one model
that fails to load does not fail the application: readiness says which models
are up (``/v2/health/ready``).
"""

from __future__ import annotations

import logging
from typing import Any

from eclip_ray.serve._private.placement import Placement
from eclip_ray.serve.config import AppConfig

log = logging.getLogger(__name__)

NAMESPACE = "eclip_ray"  # actors are named eclip_ray:{app}:gpu{i} in it, for tools and tests


def resolve_backend(backend: str, gpu_actors: int) -> tuple[str, float]:
    """The actors' backend and GPUs per actor, from the Ray cluster's resources for ``auto``."""
    import ray

    have = ray.cluster_resources().get("GPU", 0)
    if backend == "auto":
        backend = "cuda" if have >= 1 else "cpu"
    if backend == "cpu":
        return "cpu", 0.0
    if have < gpu_actors:
        raise RuntimeError(f"the placement needs {gpu_actors} GPUs but the Ray cluster has {have:g}")
    return "cuda", 1.0


class GpuFleet:
    def __init__(self, config: dict, placement: dict, app_name: str | None = None) -> None:
        from eclip_ray.actor.remote import worker_class

        cfg = AppConfig.model_validate(config)
        self.placement = Placement.from_dict(placement)
        hosting = [i for i, models in enumerate(self.placement.gpus) if models]
        self.backend, num_gpus = resolve_backend(cfg.backend, len(hosting))
        worker = worker_class(num_gpus, cfg.actor_num_cpus, cfg.max_restarts)
        app = app_name or _app_name()
        self.actors: dict[int, Any] = {}
        for gpu in hosting:
            kwargs = {
                "models": [cfg.model(m).served() for m in self.placement.gpus[gpu]],
                "backend": self.backend,
                "gpu": gpu,
                "plan_table": cfg.plan_table,
                "allowed_modules": cfg.allowed_modules,
                "allowed_model_dirs": cfg.allowed_model_dirs,
                "active_window_s": cfg.plan_active_window_s,
                "energy_window_s": cfg.energy_window_s,
                "metrics": True,
                "adaptive": None
                if cfg.adaptive_plans is None
                else cfg.adaptive_plans.for_actor({m: cfg.model(m).slo_ms for m in self.placement.gpus[gpu]}),
            }
            self.actors[gpu] = _start(worker, f"eclip_ray:{app}:gpu{gpu}", kwargs)
        for w in self.placement.warnings:
            log.warning("placement: %s", w)

    async def actors_for(self, model: str) -> list[tuple[int, Any]]:
        """(GPU index, actor handle) of every actor hosting ``model``."""
        return [(g, self.actors[g]) for g in self.placement.gpus_of(model)]

    async def describe(self) -> dict:
        return {"backend": self.backend, "placement": self.placement.to_dict(), "actors": sorted(self.actors)}


def _start(worker: Any, name: str, kwargs: dict) -> Any:
    try:
        return worker.options(name=name, namespace=NAMESPACE).remote(**kwargs)
    except ValueError:  # a predecessor's actor still holds the name while it is torn down
        log.warning("actor name %s is taken; starting the actor unnamed", name)
        return worker.remote(**kwargs)


def _app_name() -> str:
    from ray import serve

    try:
        return serve.get_replica_context().app_name
    except Exception:  # outside a Serve replica (tests, tools)
        return "local"
