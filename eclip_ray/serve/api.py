"""Building the Ray Serve application of an :class:`AppConfig`.

Two deployments: ``ingress`` (KServe v2 over HTTP and gRPC; decoding, checking,
batching per model, and the call to the GPU actor: ``_private/ingress.py``), in
several replicas, and ``gpu-fleet``, which creates and owns the GPU actors (one
per GPU, placed by ``_private/placement.py``). A request crosses one Serve hop
(proxy to ingress; none with HAProxy or direct ingress) before its batcher, and
its batch one Ray call to the GPU actor. This module is where each plain class
gets its ``serve.deployment`` options; the config is resolved here, in the
process that builds the app, so the ingress replicas never import torch.

Models declared in Python (``eclip_ray.serve.model``, ``eclip_ray/serve/declare.py``) come as ModelConfigs
with a ``source``: the ingress gets the config with each source stripped (``AppConfig.for_front``), the fleet the
whole of it, which it hands to the GPU actors (``_private/fleet.py``), where ``eclip_ray/actor/loader.py`` builds
the module and ``eclip_ray/graph/runner.py`` runs it. :func:`run` starts Serve with the app's HTTP and gRPC
options and runs the app; ``serve.run(app)`` runs it too, on Serve's defaults if nothing started Serve before.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from eclip_ray.actor.spec import ModelConfig
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


# The config of each application build_app made in this process, for run() to start Serve with its options.
_BUILT: weakref.WeakKeyDictionary[Any, AppConfig] = weakref.WeakKeyDictionary()

Target = AppConfig | Mapping[str, Any] | ModelConfig | Sequence[ModelConfig]


def app_config(target: Target, **options: Any) -> AppConfig:
    """The AppConfig of ``target``: a config (or its mapping), or models (``ModelConfig`` s, e.g. from
    ``eclip_ray.serve.model``) with ``options`` the AppConfig's other fields."""
    if isinstance(target, ModelConfig):
        target = [target]
    if isinstance(target, Sequence) and not isinstance(target, (str, bytes)):
        return AppConfig.model_validate({**options, "models": list(target)})
    if options:
        raise TypeError(f"options {sorted(options)} go with models; a config {type(target).__name__} carries its own")
    return AppConfig.model_validate(target)


def build_app(config: Target, **options: Any):
    """The Serve application (``serve.Application``) of ``config`` (or of models and AppConfig ``options``, as
    :func:`app_config` takes them): run it with :func:`run` or ``serve.run(app)``."""
    from eclip_ray.serve._private.fleet import GpuFleet
    from eclip_ray.serve._private.ingress import Ingress

    serve = _serve()
    cfg = app_config(config, **options).resolved()
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
    # refusals. Serve's proxy holds a few requests while it routes them (Limits.proxy_queue_size: too small a bound
    # refuses simultaneous requests to an idle app, one as large as the front bound costs a front-bound app goodput
    # at 2x load; docs/serving.md, "Limits") and answers the rest 503 with Retry-After at once, so that no
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
    app = ingress.bind(cfg.for_front(), fleet)  # the front never holds a Python model's payload
    _BUILT[app] = cfg
    return app


def configs_in(app: Any) -> list[AppConfig]:
    """The configs of the eclip_ray applications in ``app``: itself, or those bound into its deployments'
    arguments (an app composed with the user's own deployments). Walks Serve's bound arguments."""
    found, seen, todo = [], set(), [app]
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, Mapping):
            todo.extend(node.values())
        elif isinstance(node, (list, tuple)):
            todo.extend(node)
        elif hasattr(node, "_bound_deployment"):  # a serve.Application
            with_cfg = _BUILT.get(node)
            if with_cfg is not None:
                found.append(with_cfg)
            bound = node._bound_deployment
            todo.extend([*getattr(bound, "init_args", ()), *getattr(bound, "init_kwargs", {}).values()])
    return found


def run(target: Any, *, name: str = "default", route_prefix: str | None = "/", blocking: bool = False, **options):
    """Start Serve with the app's HTTP and gRPC options (``AppConfig.serve_options``) and run it: ``serve.run``'s
    handle to the app's ingress deployment, or, with ``blocking``, serving until Ctrl-C.

    ``target`` is an application from :func:`build_app` (alone or composed with the user's deployments), or what
    :func:`build_app` takes (a config, or models with AppConfig ``options``). If Serve is already running, its
    options stay as they are (Serve's own rule); Ray starts here if it is not running.
    """
    serve = _serve()
    app = target if hasattr(target, "_bound_deployment") else build_app(target, **options)
    if options and app is target:
        raise TypeError(f"options {sorted(options)} go with models or a config, not with a built application")
    configs = configs_in(app)
    starts = {repr(c.serve_options()) for c in configs}
    if not configs:
        raise ValueError("run() found no eclip_ray application in its target (build it with build_app); use serve.run")
    if len(starts) > 1:
        raise ValueError("the eclip_ray applications in the target ask Serve for different HTTP/gRPC options")
    serve.start(**configs[0].serve_options())
    return serve.run(app, name=name, route_prefix=route_prefix, blocking=blocking)


def app_builder(args: dict[str, Any]):
    """The ``import_path`` target of a Serve config file: ``args`` is the AppConfig."""
    return build_app(AppConfig.model_validate(args))
