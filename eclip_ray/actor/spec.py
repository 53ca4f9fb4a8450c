"""What a served model is, as plain data: its tensors, how its requests are batched, and a batch's result.

One family of specs runs along the whole path: a config file's model entry is a
:class:`ModelConfig` of :class:`TensorSpec` s, the HTTP and gRPC front checks
requests against them, and the GPU actor loads and runs the model from the same
objects. They are stdlib dataclasses that check themselves in ``__post_init__``,
so the actor runs where pydantic is absent (the GPU machine's in-process tests);
pydantic validates them as fields of ``AppConfig`` (``eclip_ray/serve/config.py``),
forbids unknown keys and takes each field's docstring as its description.
No torch here: the front imports this module. Datatypes are the KServe v2 names;
tensors travel as little-endian numpy arrays.
"""

from __future__ import annotations

import bisect
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np

from eclip_ray.actor.source import ModelSource
from eclip_ray.actor.values import ValueRange, check_range
from eclip_ray.errors import EclipError

# KServe v2 datatype -> numpy dtype. BYTES and BF16 are left out on purpose: no served model takes them.
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_BY_DTYPE = {dt: name for name, dt in DATATYPES.items()}
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"
]
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
# Read by pydantic where these classes are fields of AppConfig: unknown keys are errors, docstrings describe.
_PYDANTIC = {"extra": "forbid", "use_attribute_docstrings": True}


def np_dtype(datatype: str) -> np.dtype:
    """The little-endian numpy dtype of a KServe datatype."""
    try:
        return DATATYPES[datatype]
    except KeyError:
        raise ValueError(f"unsupported datatype {datatype!r}; supported: {sorted(DATATYPES)}") from None


def datatype_of(dtype: np.dtype) -> str:
    """The KServe datatype of a numpy dtype (byte order ignored)."""
    try:
        return _BY_DTYPE[np.dtype(dtype).newbyteorder("<")]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no KServe datatype here") from None


class ModelUnavailable(EclipError, RuntimeError):
    """The actor does not serve this model now: not placed on its GPU, or it failed to load."""


class Overloaded(ModelUnavailable):
    """The model's queue or admission limit in the front is full, or its SLO would be missed: retry later."""


class DeviceFault(ModelUnavailable):
    """The device failed a batch (a CUDA, driver or HIP error): the batch is lost, not the model's fault.

    Retryable: the request may go to another replica, or to this one once it works again.
    """


class InvalidInput(EclipError, ValueError):
    """A batch the model cannot take (a value out of its input's range, a wrong shape): the request's fault.

    Not retryable: the serving path answers 400. The actor raises it before anything reaches the device.
    """


class UnknownModel(InvalidInput, LookupError):
    """A request names a model (or version) the application does not serve (HTTP 404)."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(frozen=True)
class Normalize:
    """How a UINT8 image input becomes the float tensor the model takes, on the device:
    ``(x * scale - mean[c]) / std[c]``, ``c`` indexing the first axis after the batch (channels of CHW).
    The default ``scale`` of 1/255 with ImageNet's mean and std is torchvision's ``ToTensor`` + ``Normalize``."""

    __pydantic_config__ = _PYDANTIC

    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    """Per-channel mean, subtracted after scaling."""
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    """Per-channel standard deviation, divided by after subtracting the mean."""
    scale: float = 1 / 255
    """Factor applied to the raw 0..255 values first."""

    def __post_init__(self) -> None:
        _check(len(self.mean) == len(self.std) >= 1, f"normalize: mean {self.mean} and std {self.std} differ in length")
        _check(all(s > 0 for s in self.std), f"normalize: every std must be > 0, got {self.std}")
        _check(self.scale > 0, f"normalize: scale must be > 0, got {self.scale}")


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a request row."""

    __pydantic_config__ = _PYDANTIC

    name: str
    """Tensor name in KServe v2 requests and responses."""
    datatype: Datatype
    """KServe v2 datatype on the wire, e.g. FP32, INT64, or UINT8 for an image input with ``normalize``."""
    shape: tuple[int, ...] | None = None
    """Shape without the batch dimension. Required for inputs (graphs are captured at fixed shapes); for outputs,
    None takes the shape the model returns."""
    normalize: Normalize | None = None
    """For a UINT8 input of a model that takes floats: how the bytes become its input, on the device (a quarter of
    FP32's bytes on the wire and across the PCIe bus)."""
    value_range: ValueRange | None = None
    """Inputs only: the least and the greatest value a request may hold (inclusive), e.g. [0, 1] for a mask or
    [0, rows - 1] for indices into a table; a value outside gets 400. Zoo text models and ONNX files fill it in for
    inputs that index an embedding; the GPU actor also learns it from nn.Embedding modules at start. A declared
    range wins."""

    def __post_init__(self) -> None:
        _check(bool(self.name), "a tensor needs a non-empty name")
        np_dtype(self.datatype)
        if self.value_range is not None:  # as (low, high), integers for integer datatypes (actor/values.py)
            object.__setattr__(self, "value_range", check_range(self.value_range, self.datatype))
        _check(
            self.shape is None or all(d >= 0 for d in self.shape),
            f"tensor {self.name!r} needs a fixed shape of sizes >= 0 (graphs are captured at it), got {self.shape}",
        )
        if self.normalize is not None:
            _check(self.datatype == "UINT8", f"tensor {self.name!r}: normalize needs datatype UINT8")
            channels = self.shape[0] if self.shape else None
            _check(
                channels == len(self.normalize.mean),
                f"tensor {self.name!r}: normalize has {len(self.normalize.mean)} channels; its shape {self.shape} "
                f"starts with {channels}",
            )

    @property
    def dtype(self) -> np.dtype:
        return np_dtype(self.datatype)

    def metadata(self) -> dict:
        """KServe model-metadata form: the batch dimension shown as -1."""
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, *(self.shape or ())]}


def power_of_two_sizes(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to ``max_batch_size``, which is always included."""
    sizes, s = [], 1
    while s < max_batch_size:
        sizes.append(s)
        s *= 2
    return (*sizes, max_batch_size)


@dataclass(frozen=True)
class ModelConfig:
    """One served model: where it comes from, its tensors, and how its requests are batched."""

    __pydantic_config__ = _PYDANTIC

    name: str
    """Name in URLs (/v2/models/{name}) and metrics."""
    loader: str | None = None
    """A zoo name (resnet50, bert-base, transformers:RobertaConfig, ...), a 'module:factory' import path of a function
    returning an nn.Module (the module must be under the app's allowed_modules), or 'onnx:<path>' of a .onnx file
    under the app's allowed_model_dirs. Default: the model's name, from the zoo (or ``source``)."""
    inputs: tuple[TensorSpec, ...] | None = None
    """Input tensors. Default for zoo models: the zoo's; for ONNX files: the graph's (declare them to fix symbolic
    dimensions, or to take UINT8 images); required for import-path loaders."""
    outputs: tuple[TensorSpec, ...] | None = None
    """Output tensors in the order the model returns them. Default: output0, output1, ... (FP32)."""
    max_batch_size: int = 8
    """Most rows in one batch (and in one request), 1 to 1024."""
    batch_sizes: tuple[int, ...] | None = None
    """Batch sizes captured as CUDA graphs at start; a batch is padded to the smallest that holds it. Default: powers
    of two up to max_batch_size, and max_batch_size."""
    batch_wait_timeout_s: float = 0.002
    """Longest a request waits for others to join its batch (0 to 10 s)."""
    slo_ms: float | None = None
    """Latency objective, from when a request has been read and checked to its result. Batching never waits past the
    point where the batch's expected run time would overrun it, and a request that the work queued ahead would make
    late is refused (limits.reject_over_slo). An SLO the model misses even alone on its GPU is reported at start and
    not used to refuse requests."""
    max_queue_size: int | None = None
    """Requests of this model waiting for a batch in one ingress replica (503 beyond). Default:
    limits.max_queue_size."""
    max_ongoing_requests: int | None = None
    """Requests of this model the HTTP and gRPC front holds at once (reading, queued for a batch or running), split
    among the ingress replicas; more are refused at once with 503 and Retry-After, before their bodies are read.
    Default: two waves of the batches the model runs at once, 4 x replicas x max_batch_size."""
    replicas: int = 1
    """Number of GPUs that host this model (a hot model gets several)."""
    expected_rps: float | None = None
    """Predicted requests per second, for placing models on GPUs (needs a profile)."""
    profile: str | None = None
    """Path of this model's planner profile (JSON), for placement by predicted load."""
    source: ModelSource | None = None  # last: the fields before it keep their positions
    """A model given in Python code (``eclip_ray.serve.model``, ``eclip_ray/serve/declare.py``): an nn.Module class,
    factory or instance, serialised (``eclip_ray/actor/source.py``) and built in the GPU actor. Never set from a
    file: a string is refused; shown as ``python:<kind>:<label>`` in dumps."""

    def __post_init__(self) -> None:
        _check(bool(MODEL_NAME.match(self.name)), f"model name {self.name!r} must match {MODEL_NAME.pattern}")
        _check(1 <= self.max_batch_size <= 1024, f"model {self.name!r}: max_batch_size must be 1 to 1024")
        _check(0 <= self.batch_wait_timeout_s <= 10, f"model {self.name!r}: batch_wait_timeout_s must be 0 to 10")
        for field in ("slo_ms", "expected_rps"):
            value = getattr(self, field)
            _check(value is None or value > 0, f"model {self.name!r}: {field} must be > 0, got {value}")
        for field in ("max_queue_size", "max_ongoing_requests", "replicas"):
            value = getattr(self, field)
            _check(value is None or value >= 1, f"model {self.name!r}: {field} must be >= 1, got {value}")
        if self.batch_sizes is not None:
            _check(bool(self.batch_sizes) and min(self.batch_sizes) >= 1, "batch_sizes must be sizes >= 1")
        _check(
            max(self.captured_sizes()) >= self.max_batch_size,
            f"batch_sizes {list(self.batch_sizes or ())} cannot hold max_batch_size {self.max_batch_size}",
        )
        for kind, specs in (("input", self.inputs), ("output", self.outputs)):
            names = [t.name for t in specs or ()]
            _check(len(set(names)) == len(names), f"{kind} names of model {self.name!r} repeat: {names}")
        _check(
            all(t.shape is not None for t in self.inputs or ()),
            f"every input of model {self.name!r} needs a fixed shape (graphs are captured at it)",
        )
        _check(
            all(t.value_range is None for t in self.outputs or ()),
            f"model {self.name!r}: value_range bounds inputs; outputs take none",
        )
        if self.source is not None:
            _check(
                isinstance(self.source, ModelSource),
                f"model {self.name!r}: source must be a ModelSource (eclip_ray.serve.model), not "
                f"{type(self.source).__name__}",
            )
            _check(self.loader is None, f"model {self.name!r}: give a loader or a Python source, not both")

    @property
    def loader_name(self) -> str:
        return self.loader or self.name

    def front_bound(self) -> int:
        """``max_ongoing_requests``, or two waves of full batches: two batches run at a time on each replica."""
        return self.max_ongoing_requests or 4 * self.replicas * self.max_batch_size

    def captured_sizes(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.batch_sizes))) if self.batch_sizes else power_of_two_sizes(self.max_batch_size)

    def bucket(self, rows: int) -> int:
        """The captured batch size a batch of ``rows`` rows is padded to."""
        sizes = self.captured_sizes()
        i = bisect.bisect_left(sizes, rows)
        if i == len(sizes):
            raise ValueError(f"{self.name!r}: a batch of {rows} rows exceeds the largest batch size {sizes[-1]}")
        return sizes[i]

    def with_inputs(self, inputs: Sequence[TensorSpec]) -> ModelConfig:
        return replace(self, inputs=tuple(inputs))

    def input_bytes(self, rows: int = 1) -> int:
        """Bytes of ``rows`` rows of every input on the wire."""
        return sum(rows * math.prod(t.shape or ()) * t.dtype.itemsize for t in self.inputs or ())


@dataclass(frozen=True)
class BatchResult:
    """Outputs (in the model's output order) of one batch, or of one request's rows of it, and how it ran.

    The GPU actor returns one for a batch; the front's batcher gives each request its rows with ``part``.
    ``seconds`` is the batch's time on the device, ``rows`` the rows it ran, ``queue_s`` how long the
    request waited in the front for its batch to leave.
    """

    names: tuple[str, ...]
    outputs: tuple[np.ndarray, ...]
    seconds: float
    gpu: int
    plan: str
    rows: int = 0
    queue_s: float = 0.0

    def part(self, start: int, stop: int, queue_s: float = 0.0) -> BatchResult:
        """Rows ``start:stop`` of the outputs (views, not copies)."""
        return replace(self, outputs=tuple(o[start:stop] for o in self.outputs), queue_s=queue_s)


def torch_dtype(datatype: str):
    """The torch dtype of a KServe datatype (imports torch)."""
    import torch

    return torch.from_numpy(np.empty(0, np_dtype(datatype))).dtype
