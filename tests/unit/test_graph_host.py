"""Host arrays in and out of a runner (eclip_ray/graph/host.py): views, not copies; outputs in declared dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from eclip_ray.graph.host import HostIO

CPU = torch.device("cpu")


def test_requests_become_per_input_views_of_their_arrays():
    a, b = np.arange(6, dtype="f4").reshape(2, 3), np.arange(4, dtype="i8").reshape(2, 2)
    c, d = a + 10, b + 10
    c.setflags(write=False)  # a request's body is read-only; no copy, and no warning either
    views = HostIO("m", CPU, inputs=2).views([[a, b], [c, d]])
    assert [[tuple(v.shape) for v in per_input] for per_input in views] == [[(2, 3), (2, 3)], [(2, 2), (2, 2)]]
    a[0, 0] = 99.0
    assert views[0][0][0, 0].item() == 99.0  # a view of the request's memory
    assert views[1][1].dtype == torch.int64


def test_a_request_with_the_wrong_number_of_inputs_is_named():
    with pytest.raises(ValueError, match="'m' takes 2 inputs, got 1"):
        HostIO("m", CPU, inputs=2).views([[np.zeros((1, 3), "f4")]])


def test_outputs_come_back_in_the_declared_dtypes():
    out = HostIO("m", CPU, inputs=1).arrays([torch.ones(2, 3, dtype=torch.float16)], [torch.float32])
    assert out[0].dtype == np.float32 and out[0].shape == (2, 3)
    with pytest.raises(ValueError, match="1 outputs, but 2 output datatypes"):
        HostIO("m", CPU, inputs=1).arrays([torch.ones(1)], [torch.float32, torch.float32])
