"""What a GPU actor takes: each input's value range, and every batch checked before it reaches the device.

An input's range comes from, in order: the served spec (declared by the user, or filled in from the zoo
or the ONNX graph by ``AppConfig.resolved``), the zoo entry (transformers configs, ONNX Gathers), and
what the trial run at start learnt from the model's ``nn.Embedding`` modules
(``eclip_ray.models.ranges``). A declared range wins; a narrower learnt one is logged as a warning,
because a value between the two reaches the model and, on a GPU, asserts on the device.

The ingress runs the same range check on each request (``serve/_private/validate.py``); this one is
the defence behind it, for callers that reach the actor directly, and it raises ``InvalidInput``,
which the serving path answers with 400.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from eclip_ray.actor.spec import InvalidInput, ServedModel, np_dtype
from eclip_ray.actor.values import ValueRange, narrower, range_problem, range_text
from eclip_ray.models.ranges import Learnt

log = logging.getLogger(__name__)

Ranges = tuple[ValueRange | None, ...]


def resolve_ranges(
    spec: ServedModel, entry_ranges: Sequence[ValueRange | None], learnt: Mapping[int, Learnt]
) -> Ranges:
    """Each input's range: declared, else the zoo entry's, else learnt at the trial run; logs what was learnt."""
    out = []
    for i, info in enumerate(spec.inputs):
        found = learnt.get(i)
        known = info.value_range or (entry_ranges[i] if i < len(entry_ranges) else None)
        if found is not None:
            _report(spec.name, info.name, known, found)
        out.append(known or (found.value_range if found else None))
    return tuple(out)


def _report(model: str, name: str, known: ValueRange | None, found: Learnt) -> None:
    where = f"model {model!r}: input {name!r} indexes nn.Embedding {found.module!r}: {range_text(found.value_range)}"
    if known is None:
        log.info("%s; requests outside it get 400", where)
    elif narrower(known, found.value_range):
        log.warning(
            "%s, narrower than the range %s it was given, which wins: a value between the two reaches the model, and "
            "on a GPU an index past the table asserts on the device and restarts the actor",
            where,
            range_text(known),
        )
    else:
        log.info("%s, within the range %s it was given", where, range_text(known))


def check_batch(spec: ServedModel, ranges: Ranges, arrays: Sequence[np.ndarray]) -> int:
    """The batch's rows; InvalidInput unless ``arrays`` match the inputs' count, datatypes, shapes and ranges
    and the rows fit the largest captured batch."""
    if len(arrays) != len(spec.inputs):
        raise InvalidInput(f"model {spec.name!r}: a batch needs {len(spec.inputs)} inputs, got {len(arrays)}")
    rows = {int(a.shape[0]) if a.ndim else -1 for a in arrays}
    for info, array, value_range in zip(spec.inputs, arrays, ranges, strict=True):
        if array.dtype.newbyteorder("<") != np_dtype(info.datatype):
            raise InvalidInput(f"model {spec.name!r}: input {info.name!r} is {array.dtype}, not {info.datatype}")
        if array.ndim != len(info.shape) + 1 or tuple(array.shape[1:]) != info.shape:
            raise InvalidInput(
                f"model {spec.name!r}: input {info.name!r} has shape {list(array.shape)}, not {[-1, *info.shape]}"
            )
        problem = range_problem(info.name, array, value_range)
        if problem is not None:
            raise InvalidInput(f"model {spec.name!r}: {problem}")
    if len(rows) != 1 or min(rows) < 1 or max(rows) > spec.batch_sizes[-1]:
        raise InvalidInput(
            f"model {spec.name!r}: a batch has 1 to {spec.batch_sizes[-1]} rows in every input, got {sorted(rows)}"
        )
    return rows.pop()
