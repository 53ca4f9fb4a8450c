"""Device and meter failures on the CPU backend, injected: each is reported by name, and serving goes on."""

from __future__ import annotations

import asyncio
import os

import numpy as np
import pytest
from test_serve_ingress import client, post, sync

from eclip_ray.actor import DeviceFault, GpuWorker, ModelConfig
from eclip_ray.actor.loader import zoo_inputs
from eclip_ray.energy import EnergyMeter, UnavailableMeter
from eclip_ray.errors import BackendError, EnergyUnavailable
from eclip_ray.runtime import Runtime
from eclip_ray.serve import AppConfig
from eclip_ray.serve._private import codec

IMG = np.zeros((1, 3, 32, 32), "<f4")
IDS = np.zeros((1, 16), "<i8")
LAUNCH = BackendError("cuGraphLaunch", "CUDA_ERROR_LAUNCH_FAILED", "model tiny-cnn, stage 0 on partition whole")


def zoo(name: str) -> ModelConfig:
    return ModelConfig(name, max_batch_size=4, inputs=zoo_inputs(name))


@pytest.fixture
def worker():
    w = GpuWorker([zoo("tiny-cnn"), zoo("tiny-bert")], backend="cpu")
    yield w
    w.close()


@pytest.fixture(scope="module")
def app_config():
    return AppConfig.model_validate(
        {"backend": "cpu", "models": [{"name": "tiny-cnn", "max_batch_size": 4}, {"name": "tiny-bert"}]}
    ).resolved()


def failing_once(runner, error: Exception):
    submit = runner.submit

    def fail_then_run(*args, **kwargs):
        runner.submit = submit
        raise error

    return fail_then_run


@sync
async def test_a_device_error_fails_the_batch_by_name_and_the_actor_serves_on(worker):
    runner = worker.models["tiny-cnn"].runner
    runner.submit = failing_once(runner, LAUNCH)
    with pytest.raises(DeviceFault) as e:
        await worker.infer("tiny-cnn", [IMG])
    assert str(e.value) == (
        "GPU 0 failed a batch of model 'tiny-cnn': BackendError: cuGraphLaunch failed with "
        "CUDA_ERROR_LAUNCH_FAILED (model tiny-cnn, stage 0 on partition whole)"
    )
    assert (await worker.infer("tiny-bert", [IDS])).outputs[0].shape == (1, 16, 64)
    assert (await worker.infer("tiny-cnn", [IMG])).outputs[0].shape == (1, 10)
    stats = worker.stats()
    assert stats["device_faults"] == 1 and "CUDA_ERROR_LAUNCH_FAILED" in stats["last_device_fault"]
    assert stats["models"]["tiny-cnn"]["batches"] == 1  # the failed batch is not counted as run


@sync
async def test_a_device_error_is_a_503_naming_the_call_and_other_models_answer(app_config, worker):
    runner = worker.models["tiny-cnn"].runner
    runner.submit = failing_once(runner, LAUNCH)
    async with client(app_config, {0: worker}, retry_after_s=2) as c:
        r = await post(c, "tiny-cnn", *codec.encode_request([("input", IMG)]))
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert r.json()["error"] == (
            "model 'tiny-cnn' is unavailable: GPU 0 failed a batch of model 'tiny-cnn': BackendError: "
            "cuGraphLaunch failed with CUDA_ERROR_LAUNCH_FAILED (model tiny-cnn, stage 0 on partition whole); "
            "retry later"
        )
        assert (await post(c, "tiny-bert", *codec.encode_request([("input_ids", IDS)]))).status_code == 200
        assert (await post(c, "tiny-cnn", *codec.encode_request([("input", IMG)]))).status_code == 200


@sync
async def test_a_model_error_is_a_500_naming_it(app_config, worker):
    runner = worker.models["tiny-cnn"].runner
    runner.submit = failing_once(runner, ValueError("shapes (1,3) and (4,2) not aligned"))
    async with client(app_config, {0: worker}) as c:
        r = await post(c, "tiny-cnn", *codec.encode_request([("input", IMG)]))
        assert r.status_code == 500 and "retry-after" not in r.headers
        assert r.json()["error"] == ("model 'tiny-cnn' failed on GPU 0: ValueError: shapes (1,3) and (4,2) not aligned")
        assert (await post(c, "tiny-cnn", *codec.encode_request([("input", IMG)]))).status_code == 200


class FailingMeter(EnergyMeter):
    """NVML answering at start, then failing: every read raises what nvml_call raises."""

    def _counter_j(self) -> float:
        raise BackendError("nvmlDeviceGetTotalEnergyConsumption", "NVML error 15: GPU is lost")

    def power_w(self) -> float:
        raise BackendError("nvmlDeviceGetPowerUsage", "NVML error 15: GPU is lost")

    def describe(self) -> dict:
        return {"energy": "failing"}


@sync
async def test_a_failing_energy_meter_never_fails_a_request(worker):
    worker.runtime.meter = FailingMeter()
    result = await worker.infer("tiny-cnn", [IMG])  # the first batch opens the energy window
    assert result.outputs[0].shape == (1, 10)
    energy = worker.stats()["energy"]
    assert energy["available"] is False
    assert energy["reason"] == (
        "the energy meter failed on GPU 0 (BackendError: nvmlDeviceGetTotalEnergyConsumption failed with "
        "NVML error 15: GPU is lost); energy metrics stop"
    )
    assert (await worker.infer("tiny-cnn", [IMG])).outputs[0].shape == (1, 10)


@sync
async def test_an_nvml_hiccup_costs_one_window_and_a_lasting_failure_turns_energy_off(worker):
    class Hiccup(FailingMeter):
        reads = 0

        def _counter_j(self) -> float:
            self.reads += 1
            if self.reads in (2, 5, 6):  # the first tick fails, the next works, then reads fail for good
                raise BackendError("nvmlDeviceGetTotalEnergyConsumption", "NVML error 999: Unknown Error")
            return 10.0 * self.reads

        def power_w(self) -> float:
            return 100.0

    worker.runtime.meter = meter = Hiccup()
    worker.energy.window_s = 0.01
    await worker.infer("tiny-cnn", [IMG])
    await asyncio.wait_for(worker.energy.task, 5)
    assert meter.reads == 6  # the first failure cost a window; the loop went on until reads failed twice
    assert "NVML error 999: Unknown Error" in worker.stats()["energy"]["reason"]


@sync
async def test_energy_lost_during_serving_turns_energy_off_with_the_reason(worker):
    class Vanishing(FailingMeter):
        reads = 0

        def _counter_j(self) -> float:
            self.reads += 1
            if self.reads > 1:  # the window opened; the next read fails
                raise EnergyUnavailable("NVML lost the device")
            return 0.0

    worker.runtime.meter = Vanishing()
    worker.energy.window_s = 0.01
    await worker.infer("tiny-cnn", [IMG])
    await asyncio.wait_for(worker.energy.task, 5)
    assert isinstance(worker.runtime.meter, UnavailableMeter)
    assert "NVML lost the device" in worker.stats()["energy"]["reason"]
    assert (await worker.infer("tiny-cnn", [IMG])).outputs[0].shape == (1, 10)


def test_a_meter_that_fails_to_open_stops_a_benchmark_runtime_but_not_the_actor(monkeypatch):
    def broken(*_args):
        raise BackendError("nvmlInit", "NVML error 9: Driver Not Loaded")

    monkeypatch.setattr("eclip_ray.runtime.open_meter", broken)
    with pytest.raises(BackendError, match="nvmlInit"):
        Runtime("cpu")
    w = GpuWorker([zoo("tiny-cnn")], backend="cpu")
    try:
        assert w.models and not w.failed
        assert w.stats()["energy"] == {
            "available": False,
            "reason": "the energy meter failed to open (BackendError: nvmlInit failed with NVML error 9: "
            "Driver Not Loaded)",
        }
    finally:
        w.close()


def test_the_actor_reports_its_process_and_no_gpu_memory_on_the_cpu(worker):
    assert worker.process() == {"pid": os.getpid(), "gpu": 0, "gpu_memory": None}
