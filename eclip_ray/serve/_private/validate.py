"""A decoded request checked against the model it is for: names, datatypes, shapes, value ranges, batch size.

Runs in the ingress, so a bad request is answered there (400) and never reaches
a batch, the GPU actor, or another model's requests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from eclip_ray.actor.values import range_problem
from eclip_ray.serve._private.codec import InferRequest
from eclip_ray.serve._private.errors import RequestError
from eclip_ray.serve.config import ModelConfig


def check_inputs(model: ModelConfig, request: InferRequest) -> tuple[list[np.ndarray], int]:
    """The request's arrays in the model's input order, and its number of rows."""
    specs = model.inputs or []
    expected = [t.name for t in specs]
    unknown = [n for n in request.inputs if n not in expected]
    missing = [n for n in expected if n not in request.inputs]
    if unknown or missing:
        parts = [f"has no input named {unknown}" if unknown else "", f"is missing {missing}" if missing else ""]
        raise RequestError(
            400,
            f"model {model.name!r}: request {' and '.join(p for p in parts if p)}; the model's inputs are {expected}",
        )
    arrays, rows = [], set()
    for spec in specs:
        array, datatype = request.inputs[spec.name], request.datatypes[spec.name]
        if datatype != spec.datatype:
            raise RequestError(
                400,
                f"model {model.name!r}: input {spec.name!r} has datatype {datatype}; the model takes {spec.datatype}",
            )
        if array.ndim != len(spec.shape) + 1 or tuple(array.shape[1:]) != spec.shape:
            raise RequestError(
                400,
                f"model {model.name!r}: input {spec.name!r} has shape {list(array.shape)}; "
                f"the model takes {[-1, *spec.shape]}",
            )
        problem = range_problem(spec.name, array, spec.value_range)
        if problem is not None:
            raise RequestError(400, f"model {model.name!r}: {problem}")
        rows.add(int(array.shape[0]))
        arrays.append(array)
    return arrays, _rows(model, rows)


def _rows(model: ModelConfig, rows: set[int]) -> int:
    if len(rows) != 1:
        raise RequestError(400, f"model {model.name!r}: the inputs disagree on the batch size: {sorted(rows)}")
    n = rows.pop()
    if n < 1:
        raise RequestError(400, f"model {model.name!r}: the request has no rows")
    if n > model.max_batch_size:
        raise RequestError(
            400, f"model {model.name!r}: a request of {n} rows exceeds max_batch_size {model.max_batch_size}"
        )
    return n


def check_outputs(model: str, request: InferRequest, names: Sequence[str]) -> None:
    """Raise 400 if the request asks for an output the model does not have."""
    unknown = [o.name for o in request.outputs or () if o.name not in names]
    if unknown:
        raise RequestError(400, f"model {model!r} has no output named {unknown}; its outputs are {list(names)}")
