"""The CUDA backend's error handling, with a fake driver module (no GPU needed)."""

from types import SimpleNamespace

import pytest

from eclip_ray.errors import BackendError, LayoutError
from eclip_ray.partition import cuda as cuda_backend
from eclip_ray.partition.layout import PartitionSpec


class Err(int):
    @property
    def name(self):
        return {0: "CUDA_SUCCESS", 2: "CUDA_ERROR_OUT_OF_MEMORY"}.get(int(self), f"CUDA_ERROR_{int(self)}")


def test_check_unwraps_and_raises_with_call_and_context():
    assert cuda_backend.check((Err(0), 5), "cuX") == 5
    assert cuda_backend.check((Err(0), 1, 2), "cuX") == (1, 2)
    assert cuda_backend.check((Err(0),), "cuX") is None
    with pytest.raises(BackendError, match=r"cuGreenCtxCreate failed with CUDA_ERROR_OUT_OF_MEMORY \(SMs 0..31\)"):
        cuda_backend.check((Err(2), None), "cuGreenCtxCreate", "SMs 0..31")


def _res(n):
    return SimpleNamespace(sm=SimpleNamespace(smCount=n))


def test_split_that_returns_fewer_sms_is_a_layout_error():
    be = object.__new__(cuda_backend.CudaGreenBackend)
    be._cu = SimpleNamespace(cuDevSmResourceSplitByCount=lambda n, res, f, c: (Err(0), [_res(c + 8)], 1, _res(0)))
    with pytest.raises(LayoutError, match="asked for 16 SMs, the driver split off 24"):
        be._split(_res(132), 16, "partition 'x'")


def test_failed_split_names_the_partition():
    be = object.__new__(cuda_backend.CudaGreenBackend)
    be._cu = SimpleNamespace(cuDevSmResourceSplitByCount=lambda *a: (Err(1), None, 0, None))
    spec = PartitionSpec("w0.32", 0, 32)
    with pytest.raises(BackendError, match=r"cuDevSmResourceSplitByCount failed .*w0.32"):
        be._split(_res(132), 32, f"partition {spec.name!r}")


def test_work_queues_are_raised_before_cuda_starts(monkeypatch):
    env = {k: v for k, v in cuda_backend.os.environ.items() if k != "CUDA_DEVICE_MAX_CONNECTIONS"}
    monkeypatch.setattr(cuda_backend.os, "environ", env)  # restored after the test
    monkeypatch.setattr(cuda_backend, "_driver_started", lambda: False)
    assert cuda_backend.configure_work_queues() == "32"
    assert env["CUDA_DEVICE_MAX_CONNECTIONS"] == "32"


def test_a_users_work_queue_setting_is_kept(monkeypatch):
    monkeypatch.setenv("CUDA_DEVICE_MAX_CONNECTIONS", "4")
    assert cuda_backend.configure_work_queues() == "4"


def test_too_late_for_work_queues_warns_and_says_so(monkeypatch):
    monkeypatch.delenv("CUDA_DEVICE_MAX_CONNECTIONS", raising=False)
    monkeypatch.setattr(cuda_backend, "_driver_started", lambda: True)
    with pytest.warns(UserWarning, match="Set CUDA_DEVICE_MAX_CONNECTIONS=32 before anything uses CUDA"):
        assert cuda_backend.configure_work_queues() == "8 (driver default)"
    assert "CUDA_DEVICE_MAX_CONNECTIONS" not in cuda_backend.os.environ


def test_a_fresh_process_has_not_started_the_driver():
    # Before any cuInit the driver answers NOT_INITIALIZED; without a driver library nothing started it.
    import subprocess
    import sys

    code = "from eclip_ray.partition.cuda import _driver_started as s; print(s())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_green_streams_get_the_priority_asked_clamped_to_the_devices_range(monkeypatch):
    calls = []
    be = object.__new__(cuda_backend.CudaGreenBackend)
    be._priorities = (0, -5)  # (least, greatest), as cuCtxGetStreamPriorityRange gives them
    be._streams = []
    be._cu = SimpleNamespace(
        CUstream_flags=SimpleNamespace(CU_STREAM_NON_BLOCKING=1),
        cuGreenCtxStreamCreate=lambda ctx, flags, prio: calls.append(prio) or (Err(0), 1234),
    )
    monkeypatch.setattr(cuda_backend.torch.cuda, "ExternalStream", lambda raw, device: ("stream", raw))
    monkeypatch.setattr(be, "device", lambda: "cuda:0")
    part = SimpleNamespace(context="ctx", name="s0.32", sm_count=32)
    for asked in (-1, -1000, 7, 0):
        assert be.new_stream(part, asked) == ("stream", 1234)
    assert calls == [-1, -5, 0, 0] and be.priority_range() == (0, -5)
