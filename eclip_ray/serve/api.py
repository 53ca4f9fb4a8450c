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
    cfg = cfg.model_copy(update={"ingress_replicas": cfg.ingress_count()})  # as counted here, not in each replica
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
    # The ingress holds each model's requests to a limit (admission.py: at most the model's front bound, split
    # among its replicas, and no more than it gets through within the SLO) and refuses the excess by name before
    # reading the bodies. Serve's bound on the requests in progress per replica leaves room beside them for those
    # quick refusals. Serve's proxy holds a few requests while it routes them (Limits.proxy_queue_size: on two
    # CPU cores, a bound of one refused 7 of 8 simultaneous requests to an idle app, and one as large as the front
    # bound halved the goodput of a front-bound app at 2x load) and answers the rest 503 with Retry-After at once,
    # so that no queue in the HTTP front lets latency grow without bound. The ingress is stateless and, in Ray
    # Serve, the costliest hop per request (profiled on an H200 host: one replica saturates a core near 150 req/s),
    # so it gets several replicas.
    replicas = cfg.ingress_count()
    front = sum(m.front_bound() for m in cfg.models)
    ingress = serve.deployment(
        serve.ingress()(Ingress),
        name=INGRESS,
        num_replicas=replicas,
        ray_actor_options=light,
        max_ongoing_requests=math.ceil(2 * front / replicas),
        max_queued_requests=cfg.limits.proxy_queue_size,  # per caller (the proxy); counts requests being routed
        backpressure_config={"status_code": 503, "retry_after_s": cfg.limits.retry_after_s},
    )
    return ingress.bind(data, models)


def app_builder(args: dict[str, Any]):
    """The ``import_path`` target of a Serve config file: ``args`` is the AppConfig."""
    return build_app(AppConfig.model_validate(args))
