"""On a GPU, through real Ray Serve: bert-base token ids out of range get 400 while resnet50 on the same GPU
serves on, and a forced sticky fault (a device-side assert in a user model that no range check can see)
restarts the GPU actor, with every request answered and both models back within 30 s.

Ray Serve is not on the GPU machine: ``scripts/gpu_serve.sh``'s ``fault`` step carries it there and runs
this file, writing the measurements to ``$ECLIP_FAULT_OUT`` (``benchmarks/serve_fault.py`` is the run).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu
pytest.importorskip("ray.serve", reason="needs Ray Serve, which scripts/gpu_serve.sh carries to the GPU machine")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import serve_fault  # noqa: E402


@pytest.fixture(scope="module")
def run():
    out = os.environ.get("ECLIP_FAULT_OUT")
    doc = serve_fault.run(serve_fault.Settings(backend="cuda", out=Path(out) if out else None))
    print(serve_fault.table(doc))
    return doc


def test_out_of_range_token_ids_get_400_and_the_other_model_is_unaffected(run):
    ranges = run["ranges"]
    assert ranges["problems"] == [], ranges
    assert {c["status"] for c in ranges["bad"]} == {400} and len(ranges["bad"]) == 4
    assert ranges["actor"]["device_faults"] == 0


def test_a_sticky_fault_replaces_the_actor_and_service_is_back_within_30_s(run):
    fault = run["fault"]
    assert fault["problems"] == [], fault["problems"]
    assert "device context is unusable" in fault["poison"]["error"]
    assert "failed with CUDA_ERROR_" in fault["poison"]["error"]  # named by the driver probe, not a probe failure
    assert fault["actor_after"]["pid"] != fault["actor_before"]["pid"]
    for model in fault["models"].values():
        assert model["lost"] == 0 and model["errors"] == 0
        assert model["recovery"]["recovery_s"] <= 30
