"""On the GPU: placement seen with %smid, time scaling with partition size, restriction kept in graphs."""

import pytest
import torch

from eclip_ray.partition.placement import verify_pool

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def seen(pool):
    return verify_pool(pool)


def test_every_partition_runs_on_exactly_its_sm_count(pool, seen):
    for part in pool:
        assert len(seen[part.name]) == part.sm_count, part.name
    assert len(seen["whole"]) == pool.layout.geometry.sm_count


def test_ladder_placement_matches_layout(seen):
    s = {k: set(v) for k, v in seen.items()}
    assert s["w0.32"] < s["w0.64"] < s["w0.96"]  # worker 0 grows upward from the same SMs
    assert s["w1.32"] < s["w1.64"] < s["w1.96"]  # worker 1 grows downward
    assert not s["w0.32"] & s["w1.32"]
    assert not s["w0.64"] & s["w1.64"]
    assert not s["w0.96"] & s["w1.32"]  # prefix 0..95 and range 96..127 are disjoint


def test_middle_range_is_a_split_of_a_split(seen):
    # "mid" (slots 32..63) is split from what is left above the 32-SM prefix, like w1.96 (slots 32..127).
    # The driver picks SMs in its own order, so a 64-SM prefix need not equal w0.32 plus mid: only
    # relations that follow from the construction are asserted.
    s = {k: set(v) for k, v in seen.items()}
    print("mid", sorted(s["mid"]), "w0.32", sorted(s["w0.32"]), "w0.64 - w0.32", sorted(s["w0.64"] - s["w0.32"]))
    assert len(s["mid"]) == 32
    assert not s["mid"] & s["w0.32"]
    assert s["mid"] < s["w1.96"]


def _matmul_ms(stream: torch.cuda.Stream, n: int = 4096, iters: int = 10) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    b = torch.randn(n, n, device="cuda", dtype=torch.float16)
    with torch.cuda.stream(stream):
        for _ in range(3):
            a @ b
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        for _ in range(iters):
            a @ b
        end.record(stream)
    end.synchronize()
    return start.elapsed_time(end) / iters


def test_compute_bound_time_scales_with_partition_size(pool):
    ms = {name: _matmul_ms(pool.stream(name)) for name in ("w0.32", "w0.64", "w0.96", "whole")}
    print("matmul 4096^3 fp16 ms by partition:", {k: round(v, 3) for k, v in ms.items()})
    assert ms["w0.32"] > ms["w0.64"] > ms["w0.96"] > ms["whole"] * 0.98
    assert ms["w0.32"] / ms["w0.96"] > 2.0  # a third of the SMs: close to 3x slower on a compute-bound kernel


def test_graph_captured_on_a_partition_keeps_it(pool):
    n = 4096
    a = torch.randn(n, n, device="cuda", dtype=torch.float16)
    b = torch.randn(n, n, device="cuda", dtype=torch.float16)
    times = {}
    for name in ("w0.32", "whole"):
        st = pool.stream(name)
        with torch.cuda.stream(st):
            a @ b
        st.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=st):
            for _ in range(5):
                a @ b
        replay_on = torch.cuda.Stream()  # replayed elsewhere: the nodes keep their capture partition
        with torch.cuda.stream(replay_on):
            g.replay()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(replay_on)
            g.replay()
            end.record(replay_on)
        end.synchronize()
        times[name] = start.elapsed_time(end) / 5
    print("graph replay ms/matmul:", times)
    assert times["w0.32"] > 2.5 * times["whole"]


def test_work_queues_are_set_before_the_driver_starts():
    import subprocess
    import sys

    code = (
        "import os; os.environ.pop('CUDA_DEVICE_MAX_CONNECTIONS', None)\n"
        "from eclip_ray.partition.cuda import _driver_started, configure_work_queues\n"
        "import torch\n"
        "print(_driver_started(), configure_work_queues(), torch.cuda.is_available(), _driver_started())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "32", "True", "True"]
