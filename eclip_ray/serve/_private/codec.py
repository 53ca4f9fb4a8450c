"""KServe v2 (Open Inference Protocol) HTTP bodies, with the binary tensor data extension.

A body is a JSON document, optionally followed by raw tensor bytes. With the
extension, the ``Inference-Header-Content-Length`` header gives the JSON's
length in bytes, and each tensor sent as bytes carries
``"parameters": {"binary_data_size": n}`` instead of ``"data"``; its bytes
follow the JSON in the order of the tensors, little-endian, row-major. This is
the framing of ``tritonclient.http`` (``_utils._get_inference_request`` and
``InferResult``). Only JSON and raw numbers are read: nothing is unpickled.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eclip_ray.actor.spec import datatype_of, np_dtype
from eclip_ray.serve._private.errors import RequestError

HEADER = "Inference-Header-Content-Length"


@dataclass(frozen=True)
class RequestedOutput:
    name: str
    binary: bool | None = None  # None: as the request's binary_data_output says


@dataclass
class InferRequest:
    """A decoded request: named arrays plus what the client wants back."""

    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None
    binary_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)
    decode_s: float = 0.0  # the time decoding took: the request's own work, not a wait


def _bad(message: str) -> RequestError:
    return RequestError(400, message)


def header_length(value: str | None) -> int | None:
    """The ``Inference-Header-Content-Length`` header as an int (None when absent)."""
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit()):  # int() also takes '²' and '１２'
        raise _bad(f"{HEADER} must be a byte count, got {value!r}")
    return int(value)


def decode_request(body: bytes, json_length: int | None = None) -> InferRequest:
    """Parse a request body; ``json_length`` is the ``Inference-Header-Content-Length`` value."""
    t0 = time.perf_counter()
    view = memoryview(body)
    if not body:
        raise _bad("the request body is empty; it must hold a JSON inference request")
    if json_length is None:
        json_length = len(body)
    if not 0 < json_length <= len(body):
        raise _bad(f"{HEADER} is {json_length} but the body has {len(body)} bytes")
    doc = _parse_json(view[:json_length])
    tail = view[json_length:]
    inputs, datatypes, used = _decode_inputs(doc.get("inputs"), tail)
    if used != len(tail):
        raise _bad(f"the body carries {len(tail)} bytes of binary tensor data but the inputs declare {used}")
    params = _object(doc.get("parameters", {}), "parameters")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("'id' must be a string")
    return InferRequest(
        inputs=inputs,
        datatypes=datatypes,
        id=request_id,
        outputs=_decode_outputs(doc.get("outputs")),
        binary_output=_flag(params.get("binary_data_output", False), "binary_data_output"),
        parameters=params,
        decode_s=time.perf_counter() - t0,
    )


def _parse_json(data: memoryview) -> dict:
    try:
        doc = json.loads(bytes(data))
    except (UnicodeDecodeError, ValueError) as e:
        raise _bad(f"the request's JSON is malformed: {e}") from None
    except RecursionError:
        raise _bad("the request's JSON is nested too deeply") from None
    return _object(doc, "the request")


def _object(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise _bad(f"{what} must be a JSON object")
    return value


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(f"parameter {what} must be true or false")
    return value


def _decode_inputs(items: Any, tail: memoryview) -> tuple[dict[str, np.ndarray], dict[str, str], int]:
    if not isinstance(items, list) or not items:
        raise _bad("the request needs a non-empty 'inputs' list")
    arrays: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    offset = 0
    for item in items:
        item = _object(item, "each input")
        name, datatype, shape = _tensor_header(item)
        if name in arrays:
            raise _bad(f"input {name!r} appears twice")
        size = _object(item.get("parameters", {}), f"parameters of input {name!r}").get("binary_data_size")
        if size is None:
            arrays[name] = _from_json(name, item.get("data"), datatype, shape)
        else:
            arrays[name] = _from_bytes(name, tail, offset, size, datatype, shape)
            offset += size
        datatypes[name] = datatype
    return arrays, datatypes, offset


def _tensor_header(item: dict) -> tuple[str, str, tuple[int, ...]]:
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if not isinstance(name, str) or not name:
        raise _bad("every input needs a 'name' string")
    if not isinstance(datatype, str):
        raise _bad(f"input {name!r} needs a 'datatype' string")
    try:
        np_dtype(datatype)
    except ValueError as e:
        raise _bad(f"input {name!r}: {e}") from None
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise _bad(f"input {name!r} needs a 'shape' list of non-negative integers, got {shape!r}")
    return name, datatype, tuple(shape)


def _from_bytes(name: str, tail: memoryview, offset: int, size: Any, datatype: str, shape: tuple[int, ...]):
    dtype = np_dtype(datatype)
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _bad(f"input {name!r}: binary_data_size must be a non-negative integer")
    expected = math.prod(shape) * dtype.itemsize
    if size != expected:
        raise _bad(
            f"input {name!r}: binary_data_size is {size} bytes but shape {list(shape)} of {datatype} needs {expected}"
        )
    if offset + size > len(tail):
        raise _bad(f"input {name!r}: its {size} bytes run past the end of the body")
    return np.frombuffer(tail[offset : offset + size], dtype=dtype).reshape(shape)


def _from_json(name: str, data: Any, datatype: str, shape: tuple[int, ...]) -> np.ndarray:
    if data is None:
        raise _bad(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    dtype = np_dtype(datatype)
    try:
        raw = np.array(data)
    except (ValueError, OverflowError, TypeError, RecursionError) as e:
        raise _bad(f"input {name!r}: 'data' is not a (nested) list of numbers: {e}") from None
    if raw.size != math.prod(shape):
        raise _bad(f"input {name!r}: 'data' has {raw.size} elements but shape {list(shape)} needs {math.prod(shape)}")
    if dtype.kind in "iu" and raw.dtype.kind in "fO":  # e.g. UINT64 values past INT64: numpy guessed float
        raw = _python_ints(data, dtype)
    if raw is None or (raw.size and not _fits(raw, dtype)):
        kind = "other" if raw is None else raw.dtype.name
        raise _bad(f"input {name!r}: 'data' holds {kind} values that are not valid {datatype}")
    return raw.astype(dtype).reshape(shape)


def _python_ints(data: Any, dtype: np.dtype) -> np.ndarray | None:
    flat = np.array(data, dtype=object).ravel()
    if not all(type(v) is int for v in flat):  # no floats or bools passed off as integers
        return None
    info = np.iinfo(dtype)
    if flat.size and (min(flat) < info.min or max(flat) > info.max):
        return None
    return flat.astype(dtype)


def _fits(raw: np.ndarray, dtype: np.dtype) -> bool:
    if dtype.kind == "b":
        return raw.dtype.kind == "b"
    if dtype.kind == "f":
        return raw.dtype.kind in "iuf"
    if raw.dtype.kind not in "iu":  # no floats, bools or strings silently cast to integers
        return False
    info = np.iinfo(dtype)
    return bool(raw.min() >= info.min and raw.max() <= info.max)


def _decode_outputs(items: Any) -> list[RequestedOutput] | None:
    if items is None:
        return None
    if not isinstance(items, list):
        raise _bad("'outputs' must be a list")
    out = []
    for item in items:
        item = _object(item, "each requested output")
        name = item.get("name")
        if not isinstance(name, str):
            raise _bad("every requested output needs a 'name' string")
        params = _object(item.get("parameters", {}), f"parameters of output {name!r}")
        if params.get("classification"):
            raise _bad(f"output {name!r}: the classification extension is not supported")
        binary = params.get("binary_data")
        out.append(RequestedOutput(name, None if binary is None else _flag(binary, "binary_data")))
    return out


# Significant digits that give back every value of a float type of this many bytes exactly.
_EXACT_DIGITS = {2: 5, 4: 9, 8: 17}


def json_numbers(array: np.ndarray) -> str:
    """The values of ``array`` as a flat JSON list, as ``json.dumps(array.ravel().tolist())`` would read back.

    Finite floats are written with the fewest digits that keep the array's own precision
    (``%.9g`` for FP32), about twice as fast as ``json.dumps`` of Python floats and half the
    bytes: the JSON tensor path spends most of its time here for large outputs.
    """
    flat = array.ravel()
    if flat.dtype.kind != "f" or not flat.size or not _plain(flat):
        return json.dumps(flat.tolist(), separators=(",", ":"))
    digits = _EXACT_DIGITS[flat.dtype.itemsize]
    return "[" + ",".join([f"%.{digits}g"] * flat.size) % tuple(flat.tolist()) + "]"


def _plain(flat: np.ndarray) -> bool:
    # NaN and Infinity are written as json.dumps writes them, and -0.0 keeps its sign ("%g" gives "-0").
    return bool(np.isfinite(flat).all() and not (np.signbit(flat) & (flat == 0)).any())


@dataclass(frozen=True)
class _Tensor:
    """One tensor of a body: its JSON entry without the values, and the values as JSON text or raw bytes."""

    entry: dict[str, Any]
    data: str | None = None
    raw: memoryview | None = None

    def json(self) -> str:
        head = json.dumps(self.entry, separators=(",", ":"))
        return head if self.data is None else f'{head[:-1]},"data":{self.data}}}'


def _tensors(tensors: Sequence[tuple[str, np.ndarray]], binary: Mapping[str, bool]) -> list[_Tensor]:
    out = []
    for name, array in tensors:
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array.dtype), "shape": list(array.shape)}
        if binary.get(name, False):
            entry["parameters"] = {"binary_data_size": array.nbytes}
            out.append(_Tensor(entry, raw=memoryview(array.reshape(-1).view(np.uint8))))  # copied once, by join
        else:
            out.append(_Tensor(entry, data=json_numbers(array)))
    return out


def _frame(doc: dict, key: str, tensors: list[_Tensor]) -> tuple[bytes, int | None]:
    """``doc`` with ``key`` holding ``tensors``, followed by their raw bytes (one copy of each)."""
    listed = "[" + ",".join(t.json() for t in tensors) + "]"
    rest = json.dumps(doc, separators=(",", ":"))
    head = f'{rest[:-1]}{"," if doc else ""}"{key}":{listed}}}'.encode()
    chunks = [t.raw for t in tensors if t.raw is not None]
    if not chunks:
        return head, None
    return b"".join([head, *chunks]), len(head)


def encode_response(
    model: str,
    outputs: Sequence[tuple[str, np.ndarray]],
    binary: Mapping[str, bool],
    request_id: str | None = None,
) -> tuple[bytes, int | None]:
    """The response body for ``outputs`` (in order) and its JSON length (None: all JSON, no header needed).

    ``binary[name]`` says whether that output goes as raw bytes after the JSON.
    """
    doc: dict[str, Any] = {"model_name": model, "model_version": "1"}
    if request_id is not None:
        doc["id"] = request_id
    return _frame(doc, "outputs", _tensors(outputs, binary))


def binary_choice(request: InferRequest, names: Sequence[str]) -> dict[str, bool]:
    """Which outputs (all, or those the request lists) go as bytes, by the request's parameters."""
    if request.outputs is None:
        return {n: request.binary_output for n in names}
    return {o.name: request.binary_output if o.binary is None else o.binary for o in request.outputs}


def encode_request(
    inputs: Sequence[tuple[str, np.ndarray]],
    binary: bool = True,
    outputs: Sequence[RequestedOutput] | None = None,
    binary_output: bool = False,
    request_id: str | None = None,
) -> tuple[bytes, int | None]:
    """A request body (the client side, for tests and tools) and its JSON length (None: all JSON)."""
    doc: dict[str, Any] = {} if request_id is None else {"id": request_id}
    if outputs is not None:
        doc["outputs"] = [
            {"name": o.name, **({} if o.binary is None else {"parameters": {"binary_data": o.binary}})} for o in outputs
        ]
    if binary_output:
        doc["parameters"] = {"binary_data_output": True}
    return _frame(doc, "inputs", _tensors(inputs, {name: binary for name, _ in inputs}))


def decode_response(body: bytes, json_length: int | None = None) -> tuple[dict, dict[str, np.ndarray]]:
    """A response's JSON document and its outputs as arrays (the client side, for tests and tools)."""
    json_length = len(body) if json_length is None else json_length
    doc = json.loads(body[:json_length])
    tail, offset, arrays = memoryview(body)[json_length:], 0, {}
    for out in doc["outputs"]:
        dtype, shape = np_dtype(out["datatype"]), tuple(out["shape"])
        size = (out.get("parameters") or {}).get("binary_data_size")
        if size is None:
            arrays[out["name"]] = np.array(out["data"], dtype=dtype).reshape(shape)
        else:
            arrays[out["name"]] = np.frombuffer(tail[offset : offset + size], dtype=dtype).reshape(shape)
            offset += size
    return doc, arrays
