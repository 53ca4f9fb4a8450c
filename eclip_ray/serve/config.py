"""Declaring an application: the models, the GPUs, and the limits that protect them.

Pydantic models with ``extra="forbid"``, so that a misspelt key in a YAML file is
an error rather than a silently ignored setting. Units are in the names.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from eclip_ray.actor.spec import DATATYPES, ServedModel, TensorInfo, power_of_two_sizes
from eclip_ray.actor.values import check_range

Datatype = Literal[tuple(DATATYPES)]  # type: ignore[valid-type]
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"


class TensorSpec(BaseModel):
    """One named tensor of a request row."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Tensor name in KServe v2 requests and responses.")
    datatype: Datatype = Field(description="KServe v2 datatype, e.g. FP32 or INT64.")
    shape: tuple[int, ...] | None = Field(
        None,
        description="Shape without the batch dimension. Required for inputs (graphs are captured at fixed "
        "shapes); for outputs, None takes the shape the model returns.",
    )
    value_range: tuple[int, int] | tuple[float, float] | None = Field(
        None,
        description="Inputs only: the least and the greatest value a request may hold (inclusive), e.g. [0, 1] for "
        "a mask or [0, rows - 1] for indices into a table; a value outside gets 400. Zoo text models and ONNX "
        "files fill it in for inputs that index an embedding; the GPU actor also learns it from nn.Embedding "
        "modules at start. A declared range wins.",
    )

    @field_validator("value_range")
    @classmethod
    def _range_fits(cls, v: tuple | None, info: ValidationInfo) -> tuple | None:
        if v is None or "datatype" not in info.data:  # a bad datatype is reported on its own
            return v
        return check_range(v, info.data["datatype"])

    def info(self) -> TensorInfo:
        return TensorInfo(self.name, self.datatype, self.shape, self.value_range)


class ModelConfig(BaseModel):
    """One served model: where it comes from, its tensors, and how its requests are batched."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=MODEL_NAME, description="Name in URLs (/v2/models/{name}) and metrics.")
    loader: str | None = Field(
        None,
        description="A zoo name (resnet50, bert-base, transformers:RobertaConfig, ...), a 'module:factory' import "
        "path of a function returning an nn.Module (the module must be under the app's allowed_modules), or "
        "'onnx:<path>' of a .onnx file under the app's allowed_model_dirs. Default: the model's name, from the zoo.",
    )
    inputs: list[TensorSpec] | None = Field(
        None,
        description="Input tensors. Default for zoo models: the zoo's; for ONNX files: the graph's (declare them to "
        "fix symbolic dimensions); required for import-path loaders.",
    )
    outputs: list[TensorSpec] | None = Field(
        None, description="Output tensors in the order the model returns them. Default: output0, output1, ... (FP32)."
    )
    max_batch_size: int = Field(8, ge=1, le=1024, description="Most rows in one batch (and in one request).")
    batch_sizes: list[int] | None = Field(
        None,
        description="Batch sizes captured as CUDA graphs at start; a batch is padded to the smallest that holds it. "
        "Default: powers of two up to max_batch_size, and max_batch_size.",
    )
    batch_wait_timeout_s: float = Field(
        0.002, ge=0, le=10, description="Longest a request waits for others to join its batch."
    )
    slo_ms: float | None = Field(
        None,
        gt=0,
        description="Latency objective. Batching never waits past the point where the batch's expected run time "
        "would overrun it; requests over it count as SLO violations.",
    )
    max_queue_size: int | None = Field(
        None,
        ge=1,
        description="Requests of this model waiting for a batch (503 beyond). Default: limits.max_queue_size.",
    )
    max_ongoing_requests: int | None = Field(
        None,
        ge=1,
        description="Requests of this model the HTTP front holds at once (reading, queued for a batch or running); "
        "more are refused at once with 503 and Retry-After, before their bodies are read. Default: two waves of "
        "the batches the model runs at once, 4 x replicas x max_batch_size; the SLO check decides among those.",
    )
    replicas: int = Field(1, ge=1, description="Number of GPUs that host this model (a hot model gets several).")
    expected_rps: float | None = Field(
        None, gt=0, description="Predicted requests per second, for placing models on GPUs (needs a profile)."
    )
    profile: str | None = Field(
        None, description="Path of this model's planner profile (JSON), for placement by predicted load."
    )

    @property
    def loader_name(self) -> str:
        return self.loader or self.name

    def front_bound(self) -> int:
        """``max_ongoing_requests``, or two waves of full batches: two batches run at a time on each replica."""
        return self.max_ongoing_requests or 4 * self.replicas * self.max_batch_size

    def captured_sizes(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.batch_sizes))) if self.batch_sizes else power_of_two_sizes(self.max_batch_size)

    @field_validator("batch_sizes")
    @classmethod
    def _sizes_positive(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and (not v or min(v) < 1):
            raise ValueError("batch_sizes must be a non-empty list of sizes >= 1")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        if max(self.captured_sizes()) < self.max_batch_size:
            raise ValueError(f"batch_sizes {self.batch_sizes} cannot hold max_batch_size {self.max_batch_size}")
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            names = [t.name for t in specs or ()]
            if len(set(names)) != len(names):
                raise ValueError(f"{kind} names of model {self.name!r} repeat: {names}")
        if self.inputs is not None and any(t.shape is None or min(t.shape, default=0) < 0 for t in self.inputs):
            raise ValueError(f"every input of model {self.name!r} needs a fixed shape (graphs are captured at it)")
        if any(t.value_range is not None for t in self.outputs or ()):
            raise ValueError(f"model {self.name!r}: value_range bounds inputs; outputs take none")
        return self

    def served(self) -> ServedModel:
        """The actor's view of this model (inputs must be resolved, see ``AppConfig.resolved``)."""
        if self.inputs is None:
            raise ValueError(f"model {self.name!r} has no inputs; call AppConfig.resolved() first")
        return ServedModel(
            name=self.name,
            loader=self.loader_name,
            batch_sizes=self.captured_sizes(),
            inputs=tuple(t.info() for t in self.inputs),
            outputs=tuple(t.info() for t in self.outputs) if self.outputs is not None else None,
        )


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
        "model deployments wait (for a GPU actor, then for its answer).",
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
        from eclip_ray.actor.loader import check_allowed, check_onnx_allowed, is_import_path, is_onnx

        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model names repeat: {names}")
        for m in self.models:
            if m.replicas > self.gpus:
                raise ValueError(f"model {m.name!r} asks for {m.replicas} replicas but the app has {self.gpus} GPUs")
            if is_import_path(m.loader_name):
                check_allowed(m.loader_name, self.allowed_modules)
                if m.inputs is None:
                    raise ValueError(f"model {m.name!r} loads {m.loader_name!r}: declare its inputs")
            elif is_onnx(m.loader_name):
                check_onnx_allowed(m.loader_name, self.allowed_model_dirs)
        return self

    def resolved(self) -> AppConfig:
        """This config with every zoo model's inputs filled in from the zoo, and every ONNX model's from its
        graph, value ranges included (builds no weights)."""
        from eclip_ray.actor.loader import is_import_path, is_onnx, zoo_inputs

        models = []
        for m in self.models:
            if is_onnx(m.loader_name):
                m = _resolved_onnx(m, self.allowed_model_dirs)
            elif m.inputs is None:
                m = _with_inputs(m, zoo_inputs(m.loader_name))
            elif not is_import_path(m.loader_name):
                with contextlib.suppress(KeyError):  # not in the zoo: the GPU actor reports it when it loads
                    m = _with_inputs(m, zoo_inputs(m.loader_name))
            models.append(m)
        return self.model_copy(update={"models": models})

    def ingress_count(self) -> int:
        """``ingress_replicas``, or one per 8 CPUs of this machine (1 to 4) when not set."""
        if self.ingress_replicas is not None:
            return self.ingress_replicas
        return min(4, max(1, (os.cpu_count() or 1) // 8))

    def http_options(self) -> dict[str, Any]:
        """Serve's ``http_options`` for this app: where it listens, and its end-to-end request timeout."""
        timeout = self.http_timeout_s or 2 * self.limits.request_timeout_s + 5.0
        return {"host": self.host, "port": self.port, "request_timeout_s": timeout}

    def model(self, name: str) -> ModelConfig:
        return next(m for m in self.models if m.name == name)


def _resolved_onnx(m: ModelConfig, allowed_model_dirs: Sequence[str]) -> ModelConfig:
    """``m`` with its inputs read from the ONNX graph (declared ones fix symbolic dimensions)."""
    from eclip_ray.actor.loader import entry_inputs, onnx_entry

    declared = [t.info() for t in m.inputs or ()]
    entry = onnx_entry(m.loader_name, allowed_model_dirs, m.name, declared)
    batch = entry.meta["onnx"].batch_size  # None: any batch size
    if batch is not None and (batch, m.captured_sizes()) != (1, (1,)):
        raise ValueError(
            f"model {m.name!r}: {Path(entry.meta['path']).name} was exported for batches of exactly {batch} rows; "
            "export it with a dynamic batch dimension (batches are padded to each of batch_sizes)"
        )
    return _with_inputs(m, entry_inputs(entry))


def _with_inputs(m: ModelConfig, found: Sequence[TensorInfo]) -> ModelConfig:
    """``m`` with the inputs ``found`` (from the zoo or a graph) where it declares none; where it does, each
    declared input without a value range takes the one found for its name."""
    if m.inputs is None:
        specs = [TensorSpec(name=t.name, datatype=t.datatype, shape=t.shape, value_range=t.value_range) for t in found]
        return m.model_copy(update={"inputs": specs})
    ranges = {t.name: t.value_range for t in found}
    specs = [
        t if t.value_range is not None else t.model_copy(update={"value_range": ranges.get(t.name)}) for t in m.inputs
    ]
    return m.model_copy(update={"inputs": specs})


def queue_size(model: ModelConfig, limits: Limits) -> int:
    """The bound of ``model``'s queue: its own, else the app's."""
    return model.max_queue_size or limits.max_queue_size


IMPORT_PATH = "eclip_ray.serve.api:app_builder"


def load_config(path: str | Path) -> tuple[AppConfig, dict[str, Any]]:
    """Read an app from YAML: a Ray Serve config whose application uses ``eclip_ray.serve.api:app_builder``
    (its ``args`` are the AppConfig; ``http_options`` set host, port and request_timeout_s), or a bare AppConfig.

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
    return AppConfig.model_validate(args), dict(apps[0])
