"""Sticky and non-sticky device errors, with a fake runner and a fake context probe on the CPU backend: a usable
context loses one batch, a poisoned one fails every batch in flight and ends the actor (an injected exit hook
here), and the CUDA backend's probe against a fake driver."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch
from test_serve_ingress import client, post, sync

from eclip_ray.actor import DeviceFault, GpuWorker, ServedModel
from eclip_ray.actor import faults as faults_module
from eclip_ray.actor.loader import zoo_inputs
from eclip_ray.actor.metrics import GpuMetrics
from eclip_ray.partition import cuda as cuda_backend
from eclip_ray.partition.cpu import CpuBackend
from eclip_ray.serve import AppConfig
from eclip_ray.serve._private import codec

IMG = np.zeros((1, 3, 32, 32), "<f4")
IDS = np.zeros((1, 16), "<i8")
ASSERT = "cuCtxSynchronize failed with CUDA_ERROR_ASSERT (device 0, primary context)"


class Recorder(GpuMetrics):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def device_fault(self, sticky: bool) -> None:
        self.calls.append(("device_fault", sticky))

    def context_poisoned(self) -> None:
        self.calls.append(("context_poisoned",))


class Exits:
    """The exit hook: records each call and how many batches were still in flight then."""

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.inflight: list[int] = []
        self.worker: GpuWorker | None = None

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self.inflight.append(self.worker._inflight)


@pytest.fixture
def verdicts(monkeypatch):
    """What the context probe answers, one verdict per probe (None: usable, a callable: its result)."""
    answers: list = []

    def probe(self):
        verdict = answers.pop(0)
        return verdict() if callable(verdict) else verdict

    monkeypatch.setattr(CpuBackend, "context_fault", probe)
    return answers


@pytest.fixture
def worker(verdicts):
    exits = Exits()
    w = GpuWorker([_zoo("tiny-cnn"), _zoo("tiny-bert")], backend="cpu", exit_hook=exits)
    exits.worker = w
    w.metrics = Recorder()
    w.health.grace_s = 1.0
    yield w, exits
    w.close()


def _zoo(name: str) -> ServedModel:
    return ServedModel(name, name, (1, 2), zoo_inputs(name))


def failing(runner, error: Exception, after_s: float = 0.0, times: int = 1):
    """``runner.submit`` raising ``error`` (after ``after_s``, as a batch still on the device would) ``times``
    times, then running again."""
    submit = runner.submit
    left = [times]

    def fail(*args, **kwargs):
        if left[0] <= 0:
            return submit(*args, **kwargs)
        left[0] -= 1
        time.sleep(after_s)
        raise error

    runner.submit = fail


@sync
async def test_an_error_that_leaves_the_context_usable_fails_only_its_batch(worker, verdicts):
    w, exits = worker
    verdicts.append(None)
    failing(w.models["tiny-cnn"].runner, torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(DeviceFault) as e:
        await w.infer("tiny-cnn", [IMG])
    assert str(e.value) == (
        "GPU 0 failed a batch of model 'tiny-cnn': OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    )
    assert (await w.infer("tiny-cnn", [IMG])).outputs[0].shape == (1, 10)
    assert (await w.infer("tiny-bert", [IDS])).outputs[0].shape == (1, 16, 64)
    await asyncio.sleep(faults_module.REPLY_S + 0.05)
    stats = w.stats()
    assert (stats["device_faults"], stats["context_probes"], stats["context_fault"]) == (1, 1, None)
    assert w.metrics.calls == [("device_fault", False)] and exits.reasons == []
    assert w.ready()["models"]["tiny-cnn"]["ready"]


@sync
async def test_a_poisoned_context_fails_every_batch_in_flight_then_exits_once(worker, verdicts):
    w, exits = worker
    verdicts.append(ASSERT)
    assertion = torch.AcceleratorError("CUDA error: device-side assert triggered")
    failing(w.models["tiny-cnn"].runner, assertion)
    failing(w.models["tiny-bert"].runner, assertion, after_s=0.3)  # in flight when the context is found dead
    bert = asyncio.create_task(w.infer("tiny-bert", [IDS]))
    await asyncio.sleep(0.05)
    with pytest.raises(DeviceFault) as cnn_fault:
        await w.infer("tiny-cnn", [IMG])
    assert "device-side assert triggered; its device context is unusable (cuCtxSynchronize failed with " in str(
        cnn_fault.value
    )
    with pytest.raises(DeviceFault, match="its actor is restarting"):  # refused at once, never run
        await w.infer("tiny-cnn", [IMG])
    with pytest.raises(DeviceFault, match=r"model 'tiny-bert'.*device context is unusable"):
        await bert
    assert exits.reasons == []  # not before the batches in flight have their answers
    await asyncio.sleep(faults_module.REPLY_S + 0.1)
    assert exits.reasons == [f"the device context is unusable: {ASSERT}"] and exits.inflight == [0]
    stats = w.stats()
    assert (stats["device_faults"], stats["context_probes"], stats["context_fault"]) == (2, 1, ASSERT)
    assert w.metrics.calls == [("device_fault", True), ("context_poisoned",), ("device_fault", True)]
    state = w.ready()["models"]["tiny-bert"]
    assert not state["ready"] and "device context is unusable" in state["error"]


@sync
async def test_batches_failing_together_share_one_probe(worker, verdicts):
    w, exits = worker
    release = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow_probe():
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result()
        return None

    verdicts.append(slow_probe)
    error = torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    failing(w.models["tiny-cnn"].runner, error, times=2)
    failing(w.models["tiny-bert"].runner, error)
    tasks = [
        asyncio.create_task(w.infer(m, [x])) for m, x in (("tiny-cnn", IMG), ("tiny-cnn", IMG), ("tiny-bert", IDS))
    ]
    await asyncio.sleep(0.2)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, DeviceFault) for r in results), results
    assert w.stats()["context_probes"] == 1 and exits.reasons == []


@sync
async def test_a_probe_that_hangs_or_fails_counts_as_poisoned_and_the_exit_does_not_wait_forever(worker, verdicts):
    w, exits = worker
    w.health.probe_timeout_s, w.health.grace_s = 0.1, 0.2
    verdicts.append(lambda: time.sleep(0.5))
    failing(w.models["tiny-cnn"].runner, torch.AcceleratorError("CUDA error: unspecified launch failure"))
    failing(w.models["tiny-bert"].runner, torch.AcceleratorError("held"), after_s=1.0)  # longer than the grace
    bert = asyncio.create_task(w.infer("tiny-bert", [IDS]))
    await asyncio.sleep(0.05)
    with pytest.raises(DeviceFault, match=r"did not finish its work within 0\.1 s"):
        await w.infer("tiny-cnn", [IMG])
    await asyncio.sleep(0.2 + faults_module.REPLY_S + 0.1)
    assert len(exits.reasons) == 1 and exits.inflight == [1]  # it left with the held batch still out
    with pytest.raises(DeviceFault):
        await bert


@sync
async def test_a_probe_that_cannot_run_counts_as_poisoned(worker, verdicts):
    w, _ = worker

    def broken():
        raise RuntimeError("no context")

    verdicts.append(broken)
    failing(w.models["tiny-cnn"].runner, torch.AcceleratorError("CUDA error: misaligned address"))
    with pytest.raises(DeviceFault, match=r"the probe of the context failed \(RuntimeError: no context\)"):
        await w.infer("tiny-cnn", [IMG])


@sync
async def test_over_http_a_poisoned_gpu_answers_503_with_retry_after(worker, verdicts):
    w, _ = worker
    verdicts.append(ASSERT)
    failing(w.models["tiny-bert"].runner, torch.AcceleratorError("CUDA error: device-side assert triggered"))
    cfg = AppConfig.model_validate(
        {"backend": "cpu", "models": [{"name": "tiny-cnn", "max_batch_size": 2}, {"name": "tiny-bert"}]}
    ).resolved()
    async with client(cfg, {0: w}, retry_after_s=2) as c:
        r = await post(c, "tiny-bert", *codec.encode_request([("input_ids", IDS)]))
        assert r.status_code == 503 and r.headers["retry-after"] == "2", r.text
        assert "device context is unusable" in r.json()["error"]
        r = await post(c, "tiny-cnn", *codec.encode_request([("input", IMG)]))
        assert r.status_code == 503 and "its actor is restarting" in r.json()["error"]


def test_the_default_exit_ends_the_process_with_a_failure_code(monkeypatch):
    codes = []
    monkeypatch.setattr(faults_module.os, "_exit", codes.append)
    faults_module.exit_process("the device context is unusable: CUDA_ERROR_ASSERT")
    assert codes == [faults_module.EXIT_POISONED] and codes[0] != 0


# -- the CUDA backend's probe, against a fake driver ---------------------------------------------------


class Err(int):
    @property
    def name(self):
        return {0: "CUDA_SUCCESS", 710: "CUDA_ERROR_ASSERT", 700: "CUDA_ERROR_ILLEGAL_ADDRESS"}[int(self)]


class FakeDriver:
    """The driver calls of the probe; ``fail`` maps a call (and the n-th time it is made) to an error code."""

    def __init__(self, fail: dict[tuple[str, int], int] | None = None) -> None:
        self.fail = fail or {}
        self.log: list[str] = []
        self.current: list[str] = []

    def _call(self, name: str, *result):
        self.log.append(name)
        code = self.fail.get((name, self.log.count(name)), 0)
        return (Err(code), *result)

    def cuDevicePrimaryCtxRetain(self, dev):
        return self._call("cuDevicePrimaryCtxRetain", "primary")

    def cuDevicePrimaryCtxRelease(self, dev):
        return self._call("cuDevicePrimaryCtxRelease")

    def cuCtxFromGreenCtx(self, green):
        return self._call("cuCtxFromGreenCtx", f"ctx-of-{green}")

    def cuCtxPushCurrent(self, ctx):
        self.current.append(ctx)
        return self._call("cuCtxPushCurrent")

    def cuCtxPopCurrent(self):
        return self._call("cuCtxPopCurrent", self.current.pop())

    def cuCtxSynchronize(self):
        return self._call("cuCtxSynchronize")

    def cuMemAlloc(self, size):
        return self._call("cuMemAlloc", 0xDEAD)

    def cuMemsetD8(self, ptr, value, size):
        return self._call("cuMemsetD8")

    def cuMemFree(self, ptr):
        return self._call("cuMemFree")


def _backend(driver: FakeDriver, greens=("g0", "g1")):
    be = object.__new__(cuda_backend.CudaGreenBackend)
    be._cu, be._dev, be._index, be._contexts = driver, 0, 0, list(greens)
    return be


def test_the_cuda_probe_passes_a_usable_context_and_leaves_no_context_pushed():
    driver = FakeDriver()
    assert _backend(driver).context_fault() is None
    assert driver.current == [] and driver.log.count("cuCtxSynchronize") == 4  # primary twice, each green once
    assert driver.log.count("cuMemFree") == 1 and driver.log[-1] == "cuCtxPopCurrent"


@pytest.mark.parametrize(
    ("fail", "words"),
    [
        ({("cuCtxSynchronize", 1): 710}, "cuCtxSynchronize failed with CUDA_ERROR_ASSERT (device 0, primary context)"),
        ({("cuMemsetD8", 1): 700}, "cuMemsetD8 failed with CUDA_ERROR_ILLEGAL_ADDRESS (device 0, primary context)"),
        ({("cuCtxSynchronize", 4): 710}, "cuCtxSynchronize failed with CUDA_ERROR_ASSERT (device 0, green context 1)"),
        ({("cuMemFree", 1): 700}, "cuMemFree failed with CUDA_ERROR_ILLEGAL_ADDRESS (device 0, primary context)"),
    ],
)
def test_the_cuda_probe_names_the_first_call_that_fails_and_still_pops_and_frees(fail, words):
    driver = FakeDriver(fail)
    assert _backend(driver).context_fault() == words
    assert driver.current == []  # every push popped, also after a failure
    assert driver.log.count("cuMemAlloc") == driver.log.count("cuMemFree")  # freed, also after a failure
    assert driver.log.count("cuDevicePrimaryCtxRetain") == driver.log.count("cuDevicePrimaryCtxRelease") == 1


def test_the_cpu_backend_has_no_context_to_lose():
    assert CpuBackend().context_fault() is None
