"""KServe v2 over gRPC: ``GRPCInferenceService`` messages of the protobufs tritonclient ships, to and from arrays.

The service is Triton's (``tritonclient.grpc.service_pb2``; install
``tritonclient[grpc]``), added to Serve's gRPC proxy by
``AppConfig.grpc_options``. Tensors come as ``raw_input_contents`` (what
``tritonclient.grpc`` sends: one little-endian byte string per input, read in
place with ``np.frombuffer``) or as typed ``contents``; outputs go back as
``raw_output_contents``. A failure is a status code on the call's context, with
the message as its details and ``retry-after`` in the trailing metadata for a
retryable one, the codes Triton uses: INVALID_ARGUMENT (HTTP 400), NOT_FOUND
(404), RESOURCE_EXHAUSTED (413), UNAVAILABLE (503), DEADLINE_EXCEEDED (408),
INTERNAL (500). Nothing is unpickled.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import numpy as np

from eclip_ray.actor.spec import datatype_of, np_dtype
from eclip_ray.serve._private.codec import InferRequest, RequestedOutput
from eclip_ray.serve._private.errors import RequestError

log = logging.getLogger(__name__)

_CONTENTS = {  # typed contents field per datatype
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
_STATUS = {400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 408: "DEADLINE_EXCEEDED", 413: "RESOURCE_EXHAUSTED"}
_STATUS |= {500: "INTERNAL", 503: "UNAVAILABLE"}


def pb():
    """tritonclient's ``service_pb2`` (the KServe v2 gRPC messages)."""
    try:
        from eclip_ray.serve._private.grpc_service import service_pb2
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"the gRPC endpoint needs tritonclient's protobufs: pip install 'tritonclient[grpc]' ({e})"
        ) from e
    return service_pb2


def _bad(message: str) -> RequestError:
    return RequestError(400, message)


def decode_request(request: Any, max_bytes: int) -> InferRequest:
    """A ``ModelInferRequest`` as named arrays (views of its raw bytes), checked as the HTTP codec checks."""
    t0 = time.perf_counter()
    raw = list(request.raw_input_contents)
    size = sum(len(r) for r in raw)
    if size > max_bytes:
        raise RequestError(413, f"the request carries {size} bytes of tensors; the limit is {max_bytes}")
    if raw and len(raw) != len(request.inputs):
        raise _bad(f"the request has {len(request.inputs)} inputs but {len(raw)} raw_input_contents")
    if not request.inputs:
        raise _bad("the request needs at least one input")
    arrays: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for i, tensor in enumerate(request.inputs):
        name, datatype, shape = tensor.name, tensor.datatype, tuple(tensor.shape)
        if not name:
            raise _bad("every input needs a name")
        if name in arrays:
            raise _bad(f"input {name!r} appears twice")
        try:
            dtype = np_dtype(datatype)
        except ValueError as e:
            raise _bad(f"input {name!r}: {e}") from None
        if any(d < 0 for d in shape):
            raise _bad(f"input {name!r} needs a shape of non-negative integers, got {list(shape)}")
        arrays[name] = _raw(name, raw[i], dtype, shape) if raw else _typed(name, tensor, datatype, shape)
        datatypes[name] = datatype
    outputs = [RequestedOutput(o.name, True) for o in request.outputs] or None
    decoded = InferRequest(arrays, datatypes, id=request.id or None, outputs=outputs, binary_output=True)
    decoded.decode_s = time.perf_counter() - t0
    return decoded


def _raw(name: str, data: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    expected = math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        raise _bad(f"input {name!r}: {len(data)} raw bytes, but shape {list(shape)} of {dtype.name} needs {expected}")
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _typed(name: str, tensor: Any, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    field = _CONTENTS.get(datatype)
    if field is None:
        raise _bad(f"input {name!r}: {datatype} travels only as raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != math.prod(shape):
        raise _bad(
            f"input {name!r}: {len(values)} values in contents, but shape {list(shape)} needs {math.prod(shape)}"
        )
    dtype = np_dtype(datatype)
    array = np.asarray(values)
    if dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise _bad(f"input {name!r}: values out of the range of {datatype}")
    return array.astype(dtype).reshape(shape)


def encode_response(model: str, names: Sequence[str], outputs: Sequence[np.ndarray], request: InferRequest) -> Any:
    """The ``ModelInferResponse`` with the outputs the request asked for (all by default), as raw bytes."""
    wanted = [o.name for o in request.outputs] if request.outputs else list(names)
    by_name = dict(zip(names, outputs, strict=True))
    response = pb().ModelInferResponse(model_name=model, model_version="1", id=request.id or "")
    for name in wanted:
        array = np.ascontiguousarray(by_name[name], dtype=by_name[name].dtype.newbyteorder("<"))
        out = response.outputs.add()
        out.name, out.datatype = name, datatype_of(array.dtype)
        out.shape.extend(array.shape)
        response.raw_output_contents.append(array.tobytes())
    return response


def metadata(meta: Mapping[str, Any]) -> Any:
    """The ``ModelMetadataResponse`` of the HTTP metadata document ``meta``."""
    response = pb().ModelMetadataResponse(name=meta["name"], versions=meta["versions"], platform=meta["platform"])
    for kind in ("inputs", "outputs"):
        for t in meta[kind] or ():
            getattr(response, kind).add(name=t["name"], datatype=t["datatype"], shape=t["shape"])
    return response


def statistics(doc: Mapping[str, Any]) -> Any:
    """The ``ModelStatisticsResponse`` of the HTTP statistics document ``doc``."""
    response = pb().ModelStatisticsResponse()
    for s in doc["model_stats"]:
        m = response.model_stats.add(name=s["name"], version=s["version"], last_inference=s["last_inference"])
        m.inference_count, m.execution_count = s["inference_count"], s["execution_count"]
        for part in ("success", "fail", "queue"):
            d = getattr(m.inference_stats, part)
            d.count, d.ns = s["inference_stats"][part]["count"], s["inference_stats"][part]["ns"]
        for b in s["batch_stats"]:
            entry = m.batch_stats.add(batch_size=b["batch_size"])
            entry.compute_infer.count, entry.compute_infer.ns = b["compute_infer"]["count"], b["compute_infer"]["ns"]
    return response


def set_failure(grpc_context: Any, error: RequestError) -> None:
    """``error`` as the call's status: code, details, and ``retry-after`` for a retryable one."""
    import grpc

    f = error.failure
    grpc_context.set_code(getattr(grpc.StatusCode, _STATUS.get(f.status, "UNKNOWN")))
    grpc_context.set_details(f.message)
    if f.retry_after_s is not None:
        grpc_context.set_trailing_metadata([("retry-after", str(f.retry_after_s))])


async def answer(
    grpc_context: Any, fn: Callable[[Any], Awaitable[Any]], request: Any, raise_errors: bool = False
) -> Any:
    """``await fn(request)``; a failure goes on ``grpc_context`` (an empty response of the RPC's type is returned,
    or, with ``raise_errors``, the RequestError raised after). Without a context (in-process) it is raised."""
    try:
        return await fn(request)
    except RequestError as e:
        if grpc_context is None:
            raise
        set_failure(grpc_context, e)
        if raise_errors:
            raise
        return _empty_response(request)
    except Exception as e:
        if grpc_context is None:
            raise
        log.exception("gRPC request %s failed", type(request).__name__)
        error = RequestError(500, f"internal error ({type(e).__name__}); see the server's log")
        set_failure(grpc_context, error)
        if raise_errors:
            raise error from e
        return _empty_response(request)


def _empty_response(request: Any) -> Any:
    name = type(request).__name__.removesuffix("Request") + "Response"
    return getattr(pb(), name)()
