"""On the GPU: NVML energy windows are plausible and rise under load."""

import itertools
import time

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def meter():
    from eclip_ray.energy.nvml import NvmlMeter

    m = NvmlMeter(0)
    yield m
    m.close()


def _load(seconds: float) -> None:
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.float16)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            a @ a
        torch.cuda.synchronize()


def test_idle_and_loaded_windows_are_plausible(meter):
    limit = meter.power_limit_w()
    torch.cuda.synchronize()
    meter.begin_window("idle")
    time.sleep(2.0)
    idle = meter.end_window("idle")
    meter.begin_window("load")
    _load(3.0)
    load = meter.end_window("load")
    print(f"idle {idle.watts:.0f} W over {idle.seconds:.2f} s; load {load.watts:.0f} W over {load.seconds:.2f} s")
    assert idle.reliable and load.reliable
    assert 20 < idle.watts < limit
    assert idle.watts + 50 < load.watts < 1.1 * limit


def test_counter_update_period(meter):
    seen, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < 1.0:
        seen.append(meter._counter_j())
        time.sleep(0.002)
    changes = sum(a != b for a, b in itertools.pairwise(seen))
    print(f"energy counter changed {changes} times in 1 s of {len(seen)} reads")
    assert changes >= 1


def test_meter_finds_the_cuda_device_by_uuid():
    import pynvml

    from eclip_ray.energy import cuda_uuid
    from eclip_ray.energy.nvml import NvmlMeter

    m = NvmlMeter(0, uuid=cuda_uuid(0))
    assert pynvml.nvmlDeviceGetUUID(m._handle) == cuda_uuid(0)
    assert m.power_w() > 0
    m.close()
