"""Building the Ray Serve application of an :class:`AppConfig`.

The graph: one ``ingress`` (FastAPI, KServe v2) -> one ``model-{name}``
deployment per model (batching) -> the GPU actors, created and owned by the
``gpu-fleet`` deployment (one actor per GPU, placed by
``_private.placement``). This module is where each plain class gets its
``serve.deployment`` options.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from eclip_ray.serve._private.placement import Placement, demand_of, place
from eclip_ray.serve.config import AppConfig, ModelConfig, queue_size

INGRESS = "ingress"
FLEET = "gpu-fleet"


def _serve():
    try:
        from ray import serve
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("eclip_ray.serve needs Ray Serve: pip install 'eclip-ray[serve]'") from e
    return serve


def plan_placement(config: AppConfig) -> Placement:
    """Which GPU actors host which models (see eclip_ray.serve._private.placement)."""
    demands = [demand_of(m.name, m.replicas, m.slo_ms, m.expected_rps, m.profile) for m in config.models]
    return place(demands, config.gpus)


def deployment_name(model: str) -> str:
    return f"model-{model}"


def _model_held(m: ModelConfig, config: AppConfig) -> int:
    # Everything the model's batcher may hold: its queue plus the batches in flight.
    return queue_size(m, config.limits) + 2 * m.replicas * m.max_batch_size


def _model_ongoing(m: ModelConfig, config: AppConfig) -> int:
    # Twice what the batcher holds, so that the batcher (not Serve's handle queue, which it
    # cannot see) refuses the excess, quickly and by name. Serve's own queue in front of
    # the deployment is bounded too (max_queued_requests): beyond it the ingress answers 503.
    return 2 * _model_held(m, config)


def build_app(config: AppConfig | Mapping[str, Any]):
    """The Serve application (``serve.Application``) of ``config``: run it with ``serve.run(app)``."""
    from eclip_ray.serve._private.fleet import GpuFleet
    from eclip_ray.serve._private.ingress import Ingress
    from eclip_ray.serve._private.model_deployment import ModelDeployment

    serve = _serve()
    cfg = AppConfig.model_validate(config).resolved()
    data = cfg.model_dump(mode="json")
    light = {"num_cpus": 0}  # routing and batching only; the CPUs belong to the GPU actors
    fleet = serve.deployment(
        GpuFleet, name=FLEET, num_replicas=1, ray_actor_options=light, max_constructor_retry_count=3
    ).bind(data, plan_placement(cfg).to_dict())
    models = {}
    for m in cfg.models:
        models[m.name] = serve.deployment(
            ModelDeployment,
            name=deployment_name(m.name),
            num_replicas=1,  # one queue per model: batches form from all of its requests
            ray_actor_options=light,
            max_ongoing_requests=_model_ongoing(m, cfg),
            max_queued_requests=_model_held(m, cfg),
        ).bind(m.model_dump(mode="json"), cfg.limits.model_dump(mode="json"), fleet)
    # Serve's proxy queues requests for the ingress without bound unless told: beyond this bound it answers
    # 503 with Retry-After itself, so that an overloaded HTTP front cannot grow latency without bound either.
    # The ingress is stateless and, in Ray Serve, the costliest hop per request (profiled on an H200 host: one
    # replica saturates a core near 150 req/s), so it gets several replicas, which share the bound on requests
    # in progress.
    replicas = cfg.ingress_count()
    ingress = serve.deployment(
        serve.ingress()(Ingress),
        name=INGRESS,
        num_replicas=replicas,
        ray_actor_options=light,
        max_ongoing_requests=math.ceil(sum(_model_ongoing(m, cfg) for m in cfg.models) / replicas),
        max_queued_requests=sum(_model_held(m, cfg) for m in cfg.models),  # per caller (the proxy), not replica
        backpressure_config={"status_code": 503, "retry_after_s": cfg.limits.retry_after_s},
    )
    return ingress.bind(data, models)


def app_builder(args: dict[str, Any]):
    """The ``import_path`` target of a Serve config file: ``args`` is the AppConfig."""
    return build_app(AppConfig.model_validate(args))
