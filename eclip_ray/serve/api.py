"""Building the Ray Serve application of an :class:`AppConfig`.

Two deployments: ``ingress`` (KServe v2 over HTTP and gRPC; decoding, checking,
batching per model, and the call to the GPU actor: ``_private/ingress.py``), in
several replicas, and ``gpu-fleet``, which creates and owns the GPU actors (one
per GPU, placed by ``_private/placement.py``). A request crosses one Serve hop
(proxy to ingress; none with HAProxy or direct ingress) before its batcher, and
its batch one Ray call to the GPU actor. This module is where each plain class
gets its ``serve.deployment`` options; the config is resolved here, in the
process that builds the app, so the ingress replicas never import torch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from eclip_ray.serve._private.placement import Placement, demand_of, place
from eclip_ray.serve.config import AppConfig, running_front

log = logging.getLogger(__name__)

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


def build_app(config: AppConfig | Mapping[str, Any]):
    """The Serve application (``serve.Application``) of ``config``: run it with ``serve.run(app)``."""
    from eclip_ray.serve._private.fleet import GpuFleet
    from eclip_ray.serve._private.ingress import Ingress

    serve = _serve()
    cfg = AppConfig.model_validate(config).resolved()
    replicas = cfg.ingress_count()
    cfg = cfg.model_copy(update={"ingress_replicas": replicas})  # as counted here, not in each replica
    if running_front() != cfg.front:
        log.warning(
            "the app asks for front %r but this process's environment selects %r; the front is a setting of the "
            "Ray cluster (eclip_ray.serve.config.front_env), applied before Ray starts",
            cfg.front,
            running_front(),
        )
    light = {"num_cpus": 0}  # routing and batching only; the CPUs belong to the GPU actors
    fleet = serve.deployment(
        GpuFleet, name=FLEET, num_replicas=1, ray_actor_options=light, max_constructor_retry_count=3
    ).bind(cfg, plan_placement(cfg).to_dict())
    # Each ingress replica holds each model's requests to a limit (admission.py: the model's front bound split among
    # the replicas, and no more than it gets through within the SLO) and refuses the excess by name before reading
    # the bodies. Serve's bound on the requests in progress per replica leaves room beside them for those quick
    # refusals. Serve's proxy holds a few requests while it routes them (Limits.proxy_queue_size: on two CPU cores,
    # a bound of one refused 7 of 8 simultaneous requests to an idle app, and one as large as the front bound halved
    # the goodput of a front-bound app at 2x load) and answers the rest 503 with Retry-After at once, so that no
    # queue in the front lets latency grow without bound. The ingress is the costliest process per request (decoding,
    # batching, Serve's own work), so it gets several replicas; the GPU actors join their small batches.
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
    return ingress.bind(cfg, fleet)


def app_builder(args: dict[str, Any]):
    """The ``import_path`` target of a Serve config file: ``args`` is the AppConfig."""
    return build_app(AppConfig.model_validate(args))
