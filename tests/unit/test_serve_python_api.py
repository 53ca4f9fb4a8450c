"""Models declared in Python (eclip_ray.serve.model): specs inferred from an example, the source's way to the GPU
actor (built there under the loader's seed, or moved there with its weights), the front's stripped copy, and the
Python callers' ``Ingress.infer`` with the project's exceptions. No Ray: the worker runs in-process (CPU)."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_serve_ingress import Fleet, Gated, Handle, sync
from torch import nn

import eclip_ray.serve as eclip
from eclip_ray.actor import GpuWorker
from eclip_ray.actor.loader import SEED
from eclip_ray.serve import AppConfig, TensorSpec
from eclip_ray.serve._private.ingress import Ingress


class TwoIn(nn.Module):
    """Two inputs (floats and token ids), two outputs (scores and a count), defined in this test file."""

    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(4, width)
        self.table = nn.Embedding(10, width)

    def forward(self, x: torch.Tensor, ids: torch.Tensor):
        return self.fc(x) + self.table(ids).sum(1), (ids > 0).sum(1)


EXAMPLE = {"ids": torch.zeros(2, 5, dtype=torch.int64), "x": torch.zeros(2, 4)}  # not in forward's order


def _served(cfg, name):
    w = GpuWorker([cfg.model(name)], backend="cpu")
    assert w.failed == {}
    return w


def test_specs_are_inferred_from_a_dict_example_in_forwards_order():
    m = eclip.model(TwoIn, EXAMPLE, slo_ms=80, max_batch_size=4, batch_wait_timeout_s=0.01, replicas=1)
    assert (m.name, m.slo_ms, m.max_batch_size, m.batch_wait_timeout_s) == ("TwoIn", 80, 4, 0.01)
    assert m.inputs == (TensorSpec("x", "FP32", (4,)), TensorSpec("ids", "INT64", (5,)))
    assert m.outputs == (TensorSpec("output0", "FP32", (3,)), TensorSpec("output1", "INT64", ()))
    assert m.source.kind == "class" and m.source.label.endswith("TwoIn") and m.loader is None


def test_a_tensor_or_numpy_example_takes_forwards_parameter_name():
    m = eclip.model(nn.Linear(6, 2), np.zeros((3, 6), np.float16).astype("f4"), name="lin")
    assert m.inputs == (TensorSpec("input", "FP32", (6,)),) and m.outputs == (TensorSpec("output0", "FP32", (2,)),)
    assert m.source.kind == "instance"


@sync
async def test_a_class_is_built_in_the_actor_under_the_seed_and_an_instance_keeps_its_weights():
    x, ids = np.ones((1, 4), "f4"), np.arange(5, dtype="i8").reshape(1, 5)
    torch.manual_seed(123)
    instance = TwoIn()
    models = [
        eclip.model(TwoIn, EXAMPLE, name="cls"),
        eclip.model(functools.partial(TwoIn, width=3), EXAMPLE, name="factory"),
        eclip.model(instance, EXAMPLE, name="inst"),
    ]
    w = GpuWorker(AppConfig(models=models, backend="cpu").models, backend="cpu")
    try:
        assert w.failed == {}
        torch.manual_seed(SEED)
        seeded = TwoIn()
        for name, local in (("cls", seeded), ("factory", seeded), ("inst", instance)):
            got = await w.infer(name, [x, ids])
            want = local(torch.from_numpy(x), torch.from_numpy(ids))
            assert np.allclose(got.outputs[0], want[0].detach().numpy(), atol=1e-6), name
            assert got.outputs[1].tolist() == want[1].tolist()
    finally:
        w.close()


def test_the_object_is_pickled_at_declaration():
    instance = nn.Linear(2, 2)
    m = eclip.model(instance, torch.zeros(1, 2), name="snap")
    with torch.no_grad():
        instance.weight.fill_(7.0)
    assert not torch.equal(m.source.build().weight, instance.weight)


def _ins(*specs):
    return {"inputs": [{"name": n, "datatype": d, "shape": [k]} for n, d, k in specs]}


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (_ins(("x", "FP32", 5), ("ids", "INT64", 5)), ["'TwoIn'", "input 'x'", "[5]", "[4]"]),
        (_ins(("x", "FP16", 4), ("ids", "INT64", 5)), ["'TwoIn'", "input 'x'", "FP16", "FP32"]),
        (_ins(("ids", "INT64", 5), ("x", "FP32", 4)), ["'TwoIn'", "input 'ids'", "'x'"]),
        ({"outputs": [{"name": "scores", "datatype": "FP32", "shape": [7]}, {"name": "n", "datatype": "INT64"}]},
         ["'TwoIn'", "output 'scores'", "[7]", "[3]"]),
        ({"outputs": [{"name": "scores", "datatype": "FP32"}]}, ["'TwoIn'", "['scores']", "2 tensors"]),
    ],
)  # fmt: skip
def test_given_specs_that_disagree_with_the_example_name_the_model_and_the_tensor(kwargs, words):
    with pytest.raises(ValueError) as e:
        eclip.model(TwoIn, EXAMPLE, **kwargs)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_given_specs_win_where_they_agree():
    outputs = [TensorSpec("scores", "FP64"), TensorSpec("count", "INT32", ())]
    m = eclip.model(TwoIn, EXAMPLE, outputs=outputs)
    assert m.outputs == (TensorSpec("scores", "FP64", (3,)), TensorSpec("count", "INT32", ()))
    u8 = [{"name": "image", "datatype": "UINT8", "shape": [3, 2, 2], "normalize": {}}]
    m = eclip.model(nn.Conv2d(3, 1, 2), torch.zeros(1, 3, 2, 2), name="conv", inputs=u8)
    assert m.inputs[0].datatype == "UINT8" and m.inputs[0].normalize is not None and m.inputs[0].name == "image"


@pytest.mark.parametrize(
    ("module", "example", "words"),
    [
        (TwoIn, {"x": torch.zeros(2, 4), "ids": torch.zeros(3, 5, dtype=torch.int64)}, "batch"),
        (TwoIn, {"x": torch.zeros(2, 4), "y": torch.zeros(2, 5)}, "['y'] are not parameters"),
        (TwoIn, {"x": torch.zeros(2, 4), "ids": [0, 1]}, "input 'ids' is a list"),
        (TwoIn, {"x": torch.zeros(2, 9), "ids": torch.zeros(2, 5, dtype=torch.int64)}, "TwoIn failed on the example"),
        (lambda: 3, torch.zeros(1), "returned int"),
        (dict, torch.zeros(1), "not an nn.Module subclass"),
        (nn.Flatten(0), torch.zeros(2, 3), "keep the batch"),
    ],
)
def test_bad_models_and_examples_are_refused_at_declaration(module, example, words):
    with pytest.raises((ValueError, TypeError), match=words.replace("[", r"\[").replace("]", r"\]")):
        eclip.model(module, example, name="bad")


def test_options_pass_through_to_the_model_config_and_unknown_ones_are_refused():
    m = eclip.model(TwoIn, EXAMPLE, batch_sizes=(1, 8), max_queue_size=3, max_batch_size=8)
    assert (m.captured_sizes(), m.max_queue_size) == ((1, 8), 3)
    with pytest.raises(TypeError, match="max_batch"):
        eclip.model(TwoIn, EXAMPLE, max_batch=3)


def test_a_source_is_a_python_object_never_a_string_and_bypasses_no_allowlist_for_strings():
    m = eclip.model(TwoIn, EXAMPLE, name="py")
    cfg = AppConfig(models=[m], allowed_modules=[])  # a Python object needs no allowlist
    assert cfg.model_dump()["models"][0]["source"] == f"python:class:{m.source.label}"
    for bad in ("tests.serve_models:EmbedWithMask", {"kind": "class", "payload": "x"}):
        with pytest.raises(ValueError, match="never a"):
            AppConfig.model_validate({"models": [{"name": "m", "source": bad, "inputs": []}]})
    with pytest.raises(ValueError, match="not under allowed_modules"):  # strings still go through the allowlist
        AppConfig.model_validate({"models": [{"name": "m", "loader": "os:system", "inputs": []}]})
    with pytest.raises(ValueError, match="not both"):
        dataclasses.replace(m, loader="tiny-cnn")
    with pytest.raises(ValueError, match="declare its inputs"):
        AppConfig(models=[dataclasses.replace(m, inputs=None)])


FRONT_PROBE = """
import pickle, sys, json
cfg = pickle.loads(open(sys.argv[1], "rb").read())
from eclip_ray.serve._private.ingress import Ingress, make_app
make_app(Ingress(cfg, None, metrics=False))
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "transformers"))
print(json.dumps({"heavy": heavy, "payload": cfg.models[0].source.payload}))
"""


def test_the_front_gets_the_config_without_the_payload_and_loads_it_without_torch(tmp_path):
    cfg = AppConfig(models=[eclip.model(TwoIn(), EXAMPLE, name="inst")], backend="cpu")
    front = cfg.for_front()
    assert cfg.models[0].source.payload and front.models[0].source.payload is None
    assert front.models[0].source == cfg.models[0].source  # the same model, by digest
    with pytest.raises(ValueError, match="no payload"):
        front.models[0].source.build()
    path = tmp_path / "front.pkl"
    path.write_bytes(pickle.dumps(front))
    out = subprocess.run([sys.executable, "-c", FRONT_PROBE, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == '{"heavy": [], "payload": null}'


@pytest.fixture(scope="module")
def python_app():
    cfg = AppConfig(models=[eclip.model(TwoIn, EXAMPLE, name="two", max_batch_size=4)], backend="cpu").resolved()
    w = _served(cfg, "two")
    yield cfg, w
    w.close()


@sync
async def test_python_callers_get_outputs_by_name_through_the_same_checks(python_app):
    cfg, w = python_app
    ingress = Ingress(cfg.for_front(), Handle(Fleet({0: w})), metrics=False)
    x, ids = np.ones((2, 4), "f4"), np.ones((2, 5), "i8")
    out = await ingress.infer("two", {"x": x, "ids": ids})
    want = await w.infer("two", [x, ids])
    assert list(out) == ["output0", "output1"] and np.array_equal(out["output0"], want.outputs[0])
    assert list(await ingress.infer("two", {"x": x, "ids": ids}, outputs="output1")) == ["output1"]
    cases = [
        ({"x": x.astype("f8"), "ids": ids}, eclip.InvalidInput, "input 'x' has datatype FP64"),
        ({"x": x}, eclip.InvalidInput, "is missing ['ids']"),
        ({"x": x[:, :3], "ids": ids}, eclip.InvalidInput, "input 'x' has shape [2, 3]"),
        ({"x": np.ones((5, 4), "f4"), "ids": np.ones((5, 5), "i8")}, eclip.InvalidInput, "exceeds max_batch_size 4"),
        ({"x": x.tolist(), "ids": ids}, eclip.InvalidInput, "input 'x' is a list; send a numpy array"),
        ({"x": x, "ids": np.full((2, 5), 10, "i8")}, eclip.InvalidInput, "'ids'"),  # past the embedding's 10 rows
        (x, eclip.InvalidInput, "pass a dict"),
    ]
    for inputs, error, words in cases:
        with pytest.raises(error) as e:
            await ingress.infer("two", inputs)
        assert words in str(e.value), str(e.value)
    with pytest.raises(eclip.InvalidInput, match=r"no output named \['nope'\]"):
        await ingress.infer("two", {"x": x, "ids": ids}, outputs=["nope"])
    with pytest.raises(eclip.UnknownModel, match="unknown model 'other'"):
        await ingress.infer("other", {"x": x})


@sync
async def test_python_callers_over_the_bound_get_overloaded_and_a_down_model_unavailable(python_app):
    cfg, _ = python_app
    models = [dataclasses.replace(m, max_ongoing_requests=1) for m in cfg.models]
    gated = Gated("two")
    ingress = Ingress(
        cfg.model_copy(update={"models": models, "ingress_replicas": 1}), Handle(Fleet({0: gated})), False
    )
    row = {"x": np.ones((1, 4), "f4"), "ids": np.ones((1, 5), "i8")}
    held = asyncio.create_task(ingress.infer("two", row))
    while gated.calls < 1:
        await asyncio.sleep(0.01)
    with pytest.raises(eclip.Overloaded, match="overloaded"):
        await ingress.infer("two", row)
    gated.open.set()
    assert (await held)["output0"].shape == (1, 10)
    nobody = Ingress(cfg, Handle(Fleet({})), metrics=False)
    with pytest.raises(eclip.ModelUnavailable) as e:
        await nobody.infer("two", row)
    assert not isinstance(e.value, eclip.Overloaded) and "no GPU actor" in str(e.value)


def test_build_app_takes_models_and_run_finds_the_eclip_app_inside_a_composed_one():
    pytest.importorskip("ray.serve")
    from ray import serve

    from eclip_ray.serve.api import configs_in

    m = eclip.model(TwoIn, EXAMPLE, name="two")
    app = eclip.build_app([m], backend="cpu", port=8123, grpc_port=None)
    (found,) = configs_in(app)
    assert found.port == 8123 and found.model("two").source.payload  # the fleet's copy keeps the payload

    @serve.deployment
    class Pre:
        def __init__(self, handles) -> None:
            self.handles = handles

    (inner,) = configs_in(Pre.bind({"eclip": [app]}))
    assert inner is found and configs_in(Pre.bind(None)) == []
    with pytest.raises(TypeError, match="go with models"):
        eclip.build_app(found, port=1)
