"""On the GPU: the serving actor class in-process (no Ray): graphs captured at start, plans switched
by the active mix, the event loop free while batches run, energy per inference from NVML."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import torch

from eclip_ray.actor import GpuWorker, ModelConfig
from eclip_ray.actor.loader import zoo_inputs
from eclip_ray.actor.plans import WHOLE_PLAN, label
from eclip_ray.graph import Plan

pytestmark = pytest.mark.gpu
TOL = 2e-2  # fp16: relative L2 error against the same runner's eager run
SPLIT = Plan(("block1#0",), ("w0.32", "w0.64"))


class BothActive:
    def lookup(self, active):
        return {"tiny-cnn": SPLIT} if set(active) == {"tiny-cnn", "tiny-bert"} else None


@pytest.fixture(scope="module")
def worker():
    models = [
        ModelConfig(n, max_batch_size=4, batch_sizes=(1, 4), inputs=zoo_inputs(n)) for n in ("tiny-cnn", "tiny-bert")
    ]
    w = GpuWorker(models, backend="cuda", plan_table=BothActive(), energy_window_s=1.5)
    yield w
    w.close()


def rel_err(out: np.ndarray, ref: torch.Tensor) -> float:
    ref = ref.double().cpu().numpy()
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-12))


def test_every_plan_is_captured_at_start(worker):
    graphs = {m: len(s.runner.memory_report()["graphs"]) for m, s in worker.models.items()}
    assert graphs == {"tiny-cnn": 4, "tiny-bert": 2}  # (whole, split) x (1, 4) and (whole) x (1, 4)
    assert worker.plan_errors == [] and worker.failed == {}


def test_batches_match_eager_and_switch_plans_without_capturing(worker):
    cnn = worker.models["tiny-cnn"].runner
    before = len(cnn.memory_report()["graphs"])
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype("f4")  # 3 rows: padded to 4
    ids = np.zeros((2, 16), "<i8")

    async def run():
        alone = await worker.infer("tiny-cnn", [x])
        await worker.infer("tiny-bert", [ids])
        mixed = await worker.infer("tiny-cnn", [x])
        return alone, mixed

    alone, mixed = asyncio.run(run())
    assert alone.plan == "whole" and mixed.plan == label(SPLIT)
    ref = cnn.eager((torch.from_numpy(x).to(cnn.device, cnn.dtype),), WHOLE_PLAN)[0]
    for result in (alone, mixed):
        assert result.outputs[0].shape == (3, 10) and result.outputs[0].dtype == np.float32
        assert rel_err(result.outputs[0], ref) < TOL
    assert len(cnn.memory_report()["graphs"]) == before


def test_the_event_loop_runs_while_batches_are_in_flight(worker):
    """Batches queued behind ~50 ms of GPU work: while they wait, the loop keeps turning.

    A spin kernel on each model's stream holds its batches back without any host
    work, so an actor that blocked on the GPU (a synchronize, a pageable copy out)
    would stop the ticker for those 50 ms; one that awaits completions lets it run.
    """
    hold_s = 0.05
    cycles = int(hold_s * 2.0e9)  # at least hold_s at any SM clock up to 2 GHz (the H100's top is 1.98)

    async def run():
        ticks, gaps = 0, []
        stop = asyncio.Event()

        async def ticker():
            nonlocal ticks
            last = time.perf_counter()
            while not stop.is_set():
                ticks += 1
                await asyncio.sleep(0)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        img, ids = np.zeros((4, 3, 32, 32), "f4"), np.zeros((4, 16), "<i8")
        for name in ("tiny-cnn", "tiny-bert"):
            with torch.cuda.stream(worker.runtime.runners[name].stream):
                torch.cuda._sleep(cycles)
        t0 = time.perf_counter()
        t = asyncio.ensure_future(ticker())
        calls = [worker.infer("tiny-cnn", [img]) for _ in range(16)]
        calls += [worker.infer("tiny-bert", [ids]) for _ in range(16)]
        results = await asyncio.gather(*calls)
        elapsed = time.perf_counter() - t0
        stop.set()
        await t
        return ticks, max(gaps), elapsed, results

    ticks, worst_gap, elapsed, results = asyncio.run(run())
    assert len(results) == 32
    assert elapsed >= 0.8 * hold_s, f"the spin kernel did not hold the batches back ({elapsed * 1e3:.1f} ms)"
    assert ticks > 50, f"the event loop turned {ticks} times in {elapsed * 1e3:.1f} ms of GPU wait"
    assert worst_gap < 0.5 * hold_s, f"the event loop stalled for {worst_gap * 1e3:.1f} ms"


def test_energy_per_inference_from_nvml(worker):
    if not worker.runtime.meter.available:
        pytest.skip(f"no energy counter: {worker.runtime.meter.describe()}")

    async def run():
        img = np.zeros((4, 3, 32, 32), "f4")
        end = time.monotonic() + 2.0
        while time.monotonic() < end:  # opens the energy window, then keeps the GPU busy past it
            await worker.infer("tiny-cnn", [img])
        worker.energy_tick()

    asyncio.run(run())
    stats = worker.stats()
    assert stats["energy"]["joules"] > 0 and stats["energy"]["watts"] > 0
    assert stats["models"]["tiny-cnn"]["joules_per_inference"] > 0
