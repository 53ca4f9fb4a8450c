"""On a GPU: the CUDA backend's context probe passes a working context, after an out-of-memory too, and names the
sticky error after a device-side assert. The assert poisons its process's context for good, so it runs in a
child process, apart from the other GPU tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import os
import torch
from eclip_ray.partition import StreamPool
from eclip_ray.partition.cuda import CudaGreenBackend
from eclip_ray.partition.layout import ladder

backend = CudaGreenBackend(0)
pool = StreamPool(backend, ladder(backend.geometry(), 2))  # green contexts for the probe to visit
print("healthy:", backend.context_fault(), flush=True)
try:
    torch.empty(1 << 50, device="cuda")
except torch.OutOfMemoryError:
    print("after out-of-memory:", backend.context_fault(), flush=True)
table = torch.zeros(64, device="cuda")
try:
    table[torch.tensor([1 << 20], device="cuda")]
    torch.cuda.synchronize()
    print("assert: none", flush=True)
except Exception as e:
    print("assert:", type(e).__name__, flush=True)
print("after the assert:", backend.context_fault(), flush=True)
os._exit(0)  # no clean-up: every call on this context fails now
"""


def test_the_probe_tells_a_working_context_from_a_poisoned_one():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    lines = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    print(out.stdout, out.stderr[-2000:])
    assert lines.get("healthy") == "None", out
    assert lines.get("after out-of-memory") == "None", out
    assert lines.get("assert") not in (None, "none"), out  # torch raised the device error
    assert "failed with CUDA_ERROR_ASSERT (device 0, primary context)" in lines.get("after the assert", ""), out
