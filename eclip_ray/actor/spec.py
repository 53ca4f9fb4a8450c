"""What a GPU actor serves, as plain data: tensor specs, model specs and batch results.

No pydantic and no Ray here, so the actor runs in-process on a machine that has
neither (the GPU machine, hardware-notes.md section 7). Datatypes are the KServe
v2 names; tensors travel as little-endian numpy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eclip_ray.actor.values import ValueRange
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


class DeviceFault(ModelUnavailable):
    """The device failed a batch (a CUDA, driver or HIP error): the batch is lost, not the model's fault.

    Retryable: the request may go to another replica, or to this one once it works again.
    """


class InvalidInput(EclipError, ValueError):
    """A batch the model cannot take (a value out of its input's range, a wrong shape): the request's fault.

    Not retryable: the serving path answers 400. The actor raises it before anything reaches the device.
    """


@dataclass(frozen=True)
class TensorInfo:
    """A named tensor of one request row: ``shape`` excludes the batch dimension.

    ``shape`` None (outputs only) means "as the model returns it", learnt from a
    trial run when the actor starts. ``value_range`` (inputs only) bounds every
    value, inclusive: the rows of the table an integer input indexes, or [0, 1]
    for a mask (``eclip_ray.actor.values``).
    """

    name: str
    datatype: str
    shape: tuple[int, ...] | None
    value_range: ValueRange | None = None

    def metadata(self) -> dict:
        """KServe model-metadata form: the batch dimension shown as -1."""
        return {"name": self.name, "datatype": self.datatype, "shape": [-1, *(self.shape or ())]}


@dataclass(frozen=True)
class ServedModel:
    """A model an actor loads: ``loader`` is a zoo name, a ``module:factory`` import path or ``onnx:<path>``.

    ``batch_sizes`` are the sizes graphs are captured at (a batch is padded to
    the smallest that holds it). ``outputs`` None means: name them
    ``output0..`` and take their shapes from a trial run at start.
    """

    name: str
    loader: str
    batch_sizes: tuple[int, ...]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...] | None = None

    def bucket(self, rows: int) -> int:
        """The captured batch size a batch of ``rows`` rows is padded to."""
        for size in self.batch_sizes:
            if size >= rows:
                return size
        raise ValueError(f"{self.name!r}: a batch of {rows} rows exceeds the largest batch size {self.batch_sizes[-1]}")


@dataclass(frozen=True)
class BatchResult:
    """One batch's outputs (in the model's output order) and how it ran."""

    names: tuple[str, ...]
    outputs: tuple[np.ndarray, ...]
    seconds: float
    gpu: int
    plan: str


def torch_dtype(datatype: str):
    """The torch dtype of a KServe datatype (imports torch)."""
    import torch

    return torch.from_numpy(np.empty(0, np_dtype(datatype))).dtype


def power_of_two_sizes(max_batch_size: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to ``max_batch_size``, which is always included."""
    sizes, s = [], 1
    while s < max_batch_size:
        sizes.append(s)
        s *= 2
    return (*sizes, max_batch_size)
