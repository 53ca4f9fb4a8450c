"""Value ranges of inputs, and the vectorised check that keeps values out of range off the device.

An integer input that indexes a table (token ids into an embedding, token types, a lookup the model
does itself) must lie inside it. On the CPU an index past the table is an ``IndexError`` in the model;
on a GPU it is a device-side assert, which poisons the CUDA context of every model on that GPU until
the process ends (``docs/serving.md``, "Limits and failure behaviour"). So the ingress checks every
request's values against its inputs' ranges, and the GPU actor checks every batch again before it
copies anything to the device.

A range is inclusive, ``(low, high)``. The check is two numpy reductions (min and max) per input,
microseconds for a request; only a request that fails it pays for finding where.
No torch here: the HTTP front imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ValueRange = tuple[int | float, int | float]


def first_outside(array: np.ndarray, value_range: ValueRange) -> str | None:
    """None when every value of ``array`` lies in ``value_range`` (inclusive); else the first one that does not,
    and its index, as text. NaN lies in no range."""
    if array.size == 0:
        return None
    low, high = value_range
    smallest, largest = array.min().item(), array.max().item()  # a NaN makes both NaN, and both tests fail
    if smallest >= low and largest <= high:
        return None
    outside = (array < low) | (array > high)
    if array.dtype.kind in "fc":
        outside |= np.isnan(array)
    index = np.unravel_index(int(np.argmax(outside)), array.shape)
    return f"the value {array[index].item()!r} at index {[int(i) for i in index]}"


def range_text(value_range: ValueRange) -> str:
    low, high = value_range
    return f"[{low!r}, {high!r}]"


def range_problem(name: str, array: np.ndarray, value_range: ValueRange | None) -> str | None:
    """None when input ``name``'s values lie in its range (or it has none); else what is wrong, naming the input,
    its range and the offending value."""
    if value_range is None:
        return None
    found = first_outside(array, value_range)
    if found is None:
        return None
    return f"input {name!r} holds {found}, outside its range {range_text(value_range)} (inclusive)"


def check_range(value_range: Sequence[int | float], datatype: str) -> ValueRange:
    """``value_range`` as a ``(low, high)`` tuple; ValueError unless it is two numbers, low <= high, integers
    for an integer or BOOL datatype."""
    if len(value_range) != 2:
        raise ValueError(f"a value_range is [low, high], got {list(value_range)}")
    low, high = value_range
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in (low, high)):
        raise ValueError(f"a value_range holds two numbers, got {list(value_range)}")
    if not low <= high:  # also refuses NaN
        raise ValueError(f"value_range {list(value_range)}: low must not exceed high")
    integral = datatype.startswith(("INT", "UINT")) or datatype == "BOOL"
    if integral and not all(float(v).is_integer() for v in (low, high)):
        raise ValueError(f"value_range {list(value_range)} of an input of datatype {datatype} must hold integers")
    return (int(low), int(high)) if integral else (low, high)


def narrower(declared: ValueRange, learnt: ValueRange) -> bool:
    """Whether ``learnt`` excludes values that ``declared`` lets through."""
    return learnt[0] > declared[0] or learnt[1] < declared[1]
