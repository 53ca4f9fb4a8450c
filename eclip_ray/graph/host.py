"""Host arrays in and out of a runner: requests' numpy arrays as tensor views, results back as numpy arrays.

Requests reach the GPU actor as numpy arrays, one list per request in the model's input order
(``eclip_ray/actor/worker.py``). Each runner holds a :class:`HostIO` (``runner.host``): its
``views`` makes them tensors without copying (the runner joins a batch's parts and copies them
once, into pinned memory: ``eclip_ray/graph/runner.py``, ``_staged``), and its ``arrays`` brings a
batch's outputs back in the datatypes the model declares, on a stream of its own on a GPU: on the
legacy default stream the copy would wait for every model's work on the whole-GPU streams.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch


def _view(a: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns on read-only arrays; only copies read them
        return torch.from_numpy(a)


class HostIO:
    """Host arrays in and out of the runner ``owner`` of ``inputs`` inputs on ``device``."""

    def __init__(self, owner: str, device: torch.device, inputs: int) -> None:
        self.owner, self.inputs = owner, inputs
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def views(self, requests: Sequence[Sequence[np.ndarray]]) -> list[list[torch.Tensor]]:
        """Per input, its part of each request (each a list of arrays in input order): read-only views, not copies."""
        for r in requests:
            if len(r) != self.inputs:
                raise ValueError(f"{self.owner!r} takes {self.inputs} inputs, got {len(r)}")
        return [[_view(r[i]) for r in requests] for i in range(self.inputs)]

    def arrays(self, outputs: Sequence[torch.Tensor], dtypes: Sequence[torch.dtype]) -> tuple[np.ndarray, ...]:
        """A batch's outputs as host arrays of ``dtypes`` (the model's declared output datatypes)."""
        if len(outputs) != len(dtypes):
            raise ValueError(f"{len(outputs)} outputs, but {len(dtypes)} output datatypes")
        if self.stream is None:
            return tuple(o.to(dt).numpy() for o, dt in zip(outputs, dtypes, strict=True))
        with torch.cuda.stream(self.stream):
            return tuple(o.to("cpu", dt).numpy() for o, dt in zip(outputs, dtypes, strict=True))
