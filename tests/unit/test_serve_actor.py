"""The per-GPU actor as a plain class on the CPU backend: no Ray, no GPU."""

from __future__ import annotations

import asyncio
import functools
import time

import numpy as np
import pytest
import torch
from torch import nn

from eclip_ray.actor import GpuWorker, ModelConfig, ModelUnavailable, TensorSpec
from eclip_ray.actor.ledger import EnergyLedger
from eclip_ray.actor.loader import zoo_entry, zoo_inputs
from eclip_ray.actor.plans import WHOLE_PLAN, PlanSelector, label
from eclip_ray.actor.spec import Normalize
from eclip_ray.energy import EnergyMeter, Measurement
from eclip_ray.graph import Plan
from eclip_ray.partition.layout import DeviceGeometry, ladder

CNN_SPLIT = Plan(("block1#0",), ("w0.32", "w0.64"))


def sync(test):
    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


class SlowNet(nn.Module):
    """Holds the CPU for a while, as a big model would (loaded by import path in these tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        time.sleep(0.3)
        return self.fc(x)


def zoo(name: str, sizes=(1, 2, 4)) -> ModelConfig:
    return ModelConfig(name, max_batch_size=max(sizes), batch_sizes=tuple(sizes), inputs=zoo_inputs(name))


SLOW = ModelConfig("slow", "test_serve_actor:SlowNet", max_batch_size=1, inputs=(TensorSpec("x", "FP32", (4,)),))


@pytest.fixture(scope="module")
def worker():
    w = GpuWorker(
        [zoo("tiny-cnn"), zoo("tiny-bert"), ModelConfig("broken", "no-such-model", (), max_batch_size=1)], backend="cpu"
    )
    yield w
    w.close()


def reference(model: ModelConfig, x: np.ndarray) -> np.ndarray:
    module = zoo_entry(model).build().eval()
    with torch.inference_mode():
        return module(torch.from_numpy(np.array(x))).numpy()


@sync
async def test_runs_batches_with_the_seeded_weights(worker):
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype("f4")
    x.setflags(write=False)  # as arrays arrive from Ray's object store
    result = await worker.infer("tiny-cnn", [x])
    assert result.names == ("output0",) and result.plan == "whole" and result.gpu == 0
    np.testing.assert_allclose(result.outputs[0], reference(zoo("tiny-cnn"), x), rtol=1e-5, atol=1e-5)


@sync
async def test_two_models_in_flight_at_once(worker):
    ids = np.zeros((2, 16), dtype="<i8")
    img = np.zeros((1, 3, 32, 32), dtype="<f4")
    text, image = await asyncio.gather(worker.infer("tiny-bert", [ids]), worker.infer("tiny-cnn", [img]))
    assert text.outputs[0].shape == (2, 16, 64) and text.outputs[0].dtype == np.float32
    assert image.outputs[0].shape == (1, 10)


def test_ready_reports_tensors_and_the_model_that_failed(worker):
    state = worker.ready()["models"]
    assert state["tiny-bert"]["outputs"] == [{"name": "output0", "datatype": "FP32", "shape": [-1, 16, 64]}]
    assert state["tiny-cnn"]["ready"] and not state["broken"]["ready"]
    assert "unknown model 'no-such-model'" in state["broken"]["error"]


@sync
async def test_failed_and_unknown_models_are_unavailable(worker):
    with pytest.raises(ModelUnavailable, match="failed to load"):
        await worker.infer("broken", [np.zeros((1, 1), "f4")])
    with pytest.raises(ModelUnavailable, match="not placed on GPU 0"):
        await worker.infer("elsewhere", [np.zeros((1, 1), "f4")])


@sync
async def test_the_event_loop_keeps_running_during_a_cpu_batch():
    w = GpuWorker([SLOW, zoo("tiny-cnn")], backend="cpu", allowed_modules=["test_serve_actor"])
    try:
        done_at = {}

        async def timed(name, arrays):
            await w.infer(name, arrays)
            done_at[name] = time.perf_counter()

        await asyncio.gather(
            timed("slow", [np.zeros((1, 4), "f4")]), timed("tiny-cnn", [np.zeros((1, 3, 32, 32), "f4")])
        )
        assert done_at["tiny-cnn"] < done_at["slow"]  # the quick model did not wait for the slow one
    finally:
        w.close()


def test_import_path_loaders_need_an_allowed_module():
    w = GpuWorker([SLOW], backend="cpu")
    try:
        assert "not under allowed_modules" in w.failed["slow"]
    finally:
        w.close()


def test_declared_inputs_must_match_the_model():
    wrong = ModelConfig("tiny-cnn", inputs=(TensorSpec("input", "FP32", (3, 64, 64)),), max_batch_size=1)
    w = GpuWorker([wrong], backend="cpu")
    try:
        assert "declared with shape [3, 64, 64]" in w.failed["tiny-cnn"]
    finally:
        w.close()


class FakeTable:
    """Splits tiny-cnn over two partitions while tiny-bert is active too; no plan otherwise."""

    def __init__(self, plan: Plan = CNN_SPLIT) -> None:
        self.plan = plan

    def lookup(self, active):
        return {"tiny-cnn": self.plan} if set(active) == {"tiny-cnn", "tiny-bert"} else None


@sync
async def test_switches_plan_when_the_active_set_changes():
    w = GpuWorker([zoo("tiny-cnn", (1,)), zoo("tiny-bert", (1,))], backend="cpu", plan_table=FakeTable(),
                  active_window_s=0.3)  # fmt: skip
    img, ids = [np.zeros((1, 3, 32, 32), "f4")], [np.zeros((1, 16), "i8")]
    try:
        assert (await w.infer("tiny-cnn", img)).plan == "whole"
        await w.infer("tiny-bert", ids)  # now both are active
        split = await w.infer("tiny-cnn", img)
        assert split.plan == label(CNN_SPLIT) == "w0.32 >block1#0> w0.64"
        await asyncio.sleep(0.4)  # tiny-bert goes idle
        assert (await w.infer("tiny-cnn", img)).plan == "whole"
        assert w.stats()["plan_switches"] == 2
    finally:
        w.close()


def test_a_plan_the_pool_cannot_run_falls_back_to_the_whole_gpu():
    bad = Plan(("block1#0",), ("w0.32", "w9.64"))
    w = GpuWorker([zoo("tiny-cnn", (1,)), zoo("tiny-bert", (1,))], backend="cpu", plan_table=FakeTable(bad))
    try:
        assert any("w9.64" in e for e in w.plan_errors)
        assert w.selector.prepared["tiny-cnn"] == {WHOLE_PLAN}
    finally:
        w.close()


@sync
async def test_uses_a_saved_planner_table(tmp_path):
    from eclip_ray.planner import table as table_mod

    layout = ladder(DeviceGeometry(sm_count=132), 2)
    mix = {"tiny-cnn": 1, "tiny-bert": 1}
    table = table_mod.PlanTable(
        layout.to_dict(), "throughput", {"tiny-cnn": 0, "tiny-bert": 1},
        {table_mod.mix_key(mix): table_mod.Entry({"tiny-cnn": CNN_SPLIT, "tiny-bert": WHOLE_PLAN}, {})},
    )  # fmt: skip
    path = table.save(tmp_path / "table.json")
    w = GpuWorker([zoo("tiny-cnn", (1,)), zoo("tiny-bert", (1,))], backend="cpu", plan_table=str(path))
    try:
        assert w.table_error is None and w.runtime.layout == layout
        assert CNN_SPLIT in w.selector.prepared["tiny-cnn"]
        await w.infer("tiny-bert", [np.zeros((1, 16), "i8")])
        assert (await w.infer("tiny-cnn", [np.zeros((1, 3, 32, 32), "f4")])).plan == label(CNN_SPLIT)
    finally:
        w.close()


def test_an_unreadable_table_is_reported_and_every_model_runs_whole(tmp_path):
    w = GpuWorker([zoo("tiny-cnn", (1,))], backend="cpu", plan_table=str(tmp_path / "missing.json"))
    try:
        assert "missing.json" in w.table_error
        assert w.selector.current() == {"tiny-cnn": WHOLE_PLAN}
    finally:
        w.close()


def test_selector_enumerates_mixes_for_a_table_without_captures():
    seen = []

    class Recording:
        def lookup(self, active):
            seen.append(dict(active))

    sel = PlanSelector(Recording(), {"a": (1, 2), "b": (4,)})
    sel.candidates()
    assert sorted(map(sorted, (m.items() for m in seen))) == sorted(
        map(sorted, ({"a": 1}.items(), {"a": 2}.items(), {"b": 4}.items(),
                     {"a": 1, "b": 4}.items(), {"a": 2, "b": 4}.items()))
    )  # fmt: skip
    assert sel.bucket("a", 2) == 2 and sel.bucket("b", 3) == 4


class FakeMeter(EnergyMeter):
    min_window_s = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.joules = 1000.0

    def _counter_j(self) -> float:
        self.joules += 30.0  # each read: 30 J more
        return self.joules

    def power_w(self) -> float:
        return 250.0

    def describe(self) -> dict:
        return {"energy": "fake"}


@sync
async def test_energy_window_gives_joules_per_inference():
    w = GpuWorker([zoo("tiny-cnn", (2,)), zoo("tiny-bert", (2,))], backend="cpu")
    w.runtime.meter = FakeMeter()
    try:
        await w.infer("tiny-cnn", [np.zeros((2, 3, 32, 32), "f4")])  # opens the window
        w.energy.ledger = EnergyLedger()
        w.energy.record("tiny-cnn", 2, 0.010, 132)  # deterministic SM-time: 3:1
        w.energy.record("tiny-bert", 1, 0.010, 44)
        w.energy_tick()
        stats = w.stats()
        assert stats["energy"] == {"available": True, "joules": 30.0, "watts": 250.0}
        assert stats["models"]["tiny-cnn"]["joules_per_inference"] == pytest.approx(22.5 / 2)
        assert stats["models"]["tiny-bert"]["joules_per_inference"] == pytest.approx(7.5)
    finally:
        w.close()


def test_ledger_says_nothing_for_an_unreliable_window():
    ledger = EnergyLedger()
    ledger.record("m", 4, 0.1, 66)
    assert ledger.close(Measurement(0.2, 10.0, reliable=False)) == {}
    ledger.record("m", 4, 0.1, 66)
    assert ledger.close(Measurement(2.0, 10.0, reliable=True)) == {"m": 2.5}


# -- UINT8 images, normalised in the runner's prologue --------------------------------------------------


def _u8(name: str, loader: str, norm: Normalize, shape=(3, 32, 32)) -> ModelConfig:
    return ModelConfig(name, loader, (TensorSpec("input", "UINT8", shape, norm),), max_batch_size=2)


@sync
async def test_uint8_images_answer_as_their_normalised_floats():
    norm = Normalize(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    w = GpuWorker([zoo("tiny-cnn"), _u8("cnn-u8", "tiny-cnn", norm)], backend="cpu")
    try:
        images = np.random.default_rng(4).integers(0, 256, (2, 3, 32, 32)).astype("u1")
        mean, std = (np.array(v, "f4").reshape(1, 3, 1, 1) for v in (norm.mean, norm.std))
        floats = ((images.astype("f4") * norm.scale - mean) / std).astype("f4")
        got = await w.infer("cnn-u8", [images[:1]], [images[1:]])  # two requests' parts, joined once
        want = await w.infer("tiny-cnn", [floats])
        np.testing.assert_allclose(got.outputs[0], want.outputs[0], rtol=1e-4, atol=1e-5)
        assert w.ready()["models"]["cnn-u8"]["inputs"] == [
            {"name": "input", "datatype": "UINT8", "shape": [-1, 3, 32, 32]}
        ]
    finally:
        w.close()


def test_normalize_is_for_float_image_inputs_and_its_channels():
    w = GpuWorker(
        [_u8("bert-u8", "tiny-bert", Normalize(mean=(0.5,) * 16, std=(1.0,) * 16), shape=(16,))], backend="cpu"
    )
    try:
        assert "normalize needs a float input" in w.failed["bert-u8"]
    finally:
        w.close()
    with pytest.raises(ValueError, match="normalize has 3 channels; its shape"):
        TensorSpec("input", "UINT8", (1, 32, 32), Normalize())
    with pytest.raises(ValueError, match="normalize needs datatype UINT8"):
        TensorSpec("input", "FP32", (3, 32, 32), Normalize())
