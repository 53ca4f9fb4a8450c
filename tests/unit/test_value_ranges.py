"""Value ranges: where they come from (declared, the zoo, ONNX Gathers, nn.Embedding at load) and the checks
that keep values out of range off the device (the ingress, the model deployment, the GPU actor), on the CPU."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from test_serve_ingress import Handle, client, post, sync
from torch import nn

from eclip_ray.actor import GpuWorker, ServedModel, TensorInfo
from eclip_ray.actor.inputs import check_batch, resolve_ranges
from eclip_ray.actor.loader import zoo_inputs
from eclip_ray.actor.spec import InvalidInput
from eclip_ray.actor.values import check_range, first_outside, range_problem
from eclip_ray.models.ranges import Learnt, embedding_ranges
from eclip_ray.models.zoo import config_ranges
from eclip_ray.serve import AppConfig
from eclip_ray.serve._private import codec
from eclip_ray.serve._private.codec import InferRequest
from eclip_ray.serve._private.errors import RequestError
from eclip_ray.serve._private.learnt import LearntRanges
from eclip_ray.serve._private.model_deployment import ModelDeployment
from eclip_ray.serve._private.validate import check_inputs


class Shifted(nn.Module):
    """An embedding indexed by ids + 1 (not the input itself) and a reshaped view of a second input."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Embedding(10, 2), nn.Embedding(7, 2), nn.Embedding(30, 2)

    def forward(self, ids: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        flat = types.reshape(-1)
        return self.a(ids + 1).sum((1, 2)) + self.b(flat).sum() + self.c(types).sum((1, 2))


EMBED = ServedModel(
    "embed",
    "serve_models:EmbedWithMask",
    (1, 2),
    (TensorInfo("ids", "INT64", (6,)), TensorInfo("mask", "INT64", (6,), (0, 1))),
)


# -- the check itself --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "value_range", "found"),
    [
        (np.array([[0, 5], [999, 3]], "<i8"), (0, 999), None),
        (np.array([[0, 5], [1000, 3]], "<i8"), (0, 999), "the value 1000 at index [1, 0]"),
        (np.array([[0, -1], [2, 3]], "<i8"), (0, 999), "the value -1 at index [0, 1]"),
        (np.array([10**7], "<i4"), (0, 30521), "the value 10000000 at index [0]"),
        (np.array([2**64 - 1, 0], "<u8"), (0, 2**64 - 2), "the value 18446744073709551615 at index [0]"),
        (np.array([0, 255], "u1"), (-5, 300), None),  # a range wider than the datatype
        (np.array([3, 7], "u1"), (4, 10), "the value 3 at index [0]"),
        (np.array([0, 1, 2], "<i8"), (0, 1), "the value 2 at index [2]"),  # a 0/1 mask
        (np.array([True, False]), (0, 1), None),
        (np.array([0.5, np.nan], "<f4"), (0.0, 1.0), "the value nan at index [1]"),
        (np.array([0.5, 1.5], "<f2"), (0.0, 1.0), "the value 1.5 at index [1]"),
        (np.zeros((0, 4), "<i8"), (0, 0), None),
    ],
)
def test_first_outside_names_the_value_and_where(array, value_range, found):
    assert first_outside(array, value_range) == found


def test_the_problem_names_the_input_the_range_and_the_value():
    assert range_problem("ids", np.array([[1, 2, 12]]), (0, 9)) == (
        "input 'ids' holds the value 12 at index [0, 2], outside its range [0, 9] (inclusive)"
    )
    assert range_problem("ids", np.array([[1, 2, 12]]), None) is None


def test_the_check_is_vectorised():
    import timeit

    ids = np.random.default_rng(0).integers(0, 30522, (64, 512))  # 64 rows of bert-base
    seconds = min(timeit.repeat(lambda: first_outside(ids, (0, 30521)), number=20, repeat=3)) / 20
    assert seconds < 1e-3, seconds  # a Python loop over 32768 values takes milliseconds


@pytest.mark.parametrize(
    ("value_range", "datatype", "words"),
    [
        ((1, 0), "INT64", "low must not exceed high"),
        ((0, 0.5), "INT64", "must hold integers"),
        ((0,), "INT64", "is [low, high]"),
        ((float("nan"), 1.0), "FP32", "low must not exceed high"),
    ],
)
def test_bad_ranges_are_refused(value_range, datatype, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[")):
        check_range(value_range, datatype)
    assert check_range((0.0, 1.0), "INT64") == (0, 1) and check_range((0, 0.5), "FP32") == (0, 0.5)


# -- where ranges come from --------------------------------------------------------------------------


def test_zoo_text_models_take_their_range_from_the_transformers_config():
    assert zoo_inputs("bert-base")[0].value_range == (0, 30521)
    assert zoo_inputs("tiny-bert")[0].value_range == (0, 999)
    assert zoo_inputs("transformers:RobertaConfig")[0].value_range == (0, 50264)
    assert zoo_inputs("tiny-cnn")[0].value_range is None
    from transformers import BertConfig

    names = ("input_ids", "token_type_ids", "attention_mask")
    assert config_ranges(BertConfig(vocab_size=100, type_vocab_size=2), names) == ((0, 99), (0, 1), None)


def test_resolved_configs_carry_the_ranges_and_a_declared_one_wins():
    cfg = AppConfig.model_validate(
        {
            "models": [
                {"name": "bert", "loader": "tiny-bert"},
                {"name": "narrow", "loader": "tiny-bert", "inputs": [_spec("input_ids", (16,), (0, 99))]},
                {"name": "plain", "loader": "tiny-bert", "inputs": [_spec("input_ids", (16,))]},
                {"name": "cnn", "loader": "tiny-cnn"},
            ]
        }
    ).resolved()
    ranges = {m.name: m.inputs[0].value_range for m in cfg.models}
    assert ranges == {"bert": (0, 999), "narrow": (0, 99), "plain": (0, 999), "cnn": None}
    assert cfg.model("bert").served().inputs[0].value_range == (0, 999)
    dumped = AppConfig.model_validate(cfg.model_dump(mode="json"))  # as the ingress receives it
    assert dumped.model("narrow").inputs[0].value_range == (0, 99)


def _spec(name, shape, value_range=None, datatype="INT64"):
    return {"name": name, "datatype": datatype, "shape": list(shape), "value_range": value_range}


def test_a_value_range_is_for_inputs_and_must_fit_the_datatype():
    model = {"name": "m", "loader": "tiny-bert"}
    with pytest.raises(ValidationError, match="outputs take none"):
        AppConfig.model_validate({"models": [{**model, "outputs": [_spec("o", (16,), (0, 1), "FP32")]}]})
    with pytest.raises(ValidationError, match="must hold integers"):
        AppConfig.model_validate({"models": [{**model, "inputs": [_spec("input_ids", (16,), (0, 0.5))]}]})


def test_embeddings_that_index_an_input_give_its_range_and_nothing_else_does():
    ids, types = torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long)
    model = Shifted()
    out, learnt = embedding_ranges(model, (ids, types), lambda: model(ids, types))
    assert out.shape == (2,)
    # ids + 1 is not the input; types indexes b (7 rows, through a view of all of it) and c (30): the smaller wins
    assert learnt == {1: Learnt(1, (0, 6), "b")}
    assert not model.b._forward_pre_hooks  # the hooks are gone after the run


def test_an_embedding_bag_and_a_float_input_are_told_apart():
    class Bag(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bag = nn.EmbeddingBag(20, 3)

        def forward(self, x, ids):
            return self.bag(ids) * x

    x, ids = torch.zeros(2, 3), torch.zeros(2, 4, dtype=torch.long)
    bag = Bag()
    _, learnt = embedding_ranges(bag, (x, ids), lambda: bag(x, ids))
    assert learnt == {1: Learnt(1, (0, 19), "bag")}


def _gather_graph(path, axis: int = 0):
    """ids (INT64) -> Gather(table[50, 4]); small (INT32) -> Cast -> Gather(table); free (INT64) -> Gather of a
    computed tensor; all summed into one output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.zeros((50, 4) if axis == 0 else (4, 50), "f4"), "table")
    small = numpy_helper.from_array(np.zeros((8, 4), "f4"), "small_table")
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["g0"], axis=axis),
        helper.make_node("Cast", ["small"], ["small64"], to=TensorProto.INT64),
        helper.make_node("Gather", ["small_table", "small64"], ["g1"]),
        helper.make_node("Gather", ["table", "small64"], ["g2"], axis=axis),  # the same input, a larger table
        helper.make_node("Relu", ["table"], ["computed"]),
        helper.make_node("Gather", ["computed", "free"], ["g3"], axis=axis),
        helper.make_node("ReduceSum", ["g0"], ["s0"], keepdims=0),
        helper.make_node("ReduceSum", ["g1"], ["s1"], keepdims=0),
        helper.make_node("ReduceSum", ["g2"], ["s2"], keepdims=0),
        helper.make_node("ReduceSum", ["g3"], ["s3"], keepdims=0),
        helper.make_node("Sum", ["s0", "s1", "s2", "s3"], ["out"]),
    ]
    inputs = [
        helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 5]),
        helper.make_tensor_value_info("small", TensorProto.INT32, ["batch", 5]),
        helper.make_tensor_value_info("free", TensorProto.INT64, ["batch", 5]),
    ]
    graph = helper.make_graph(nodes, "gathers", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, [])])
    graph.initializer.extend([table, small])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.mark.parametrize("axis", [0, 1])
def test_onnx_gathers_on_initializers_give_the_range_of_the_inputs_they_index(tmp_path, axis):
    pytest.importorskip("onnx")
    from eclip_ray.models import onnx as onnx_models

    path = _gather_graph(tmp_path / "gathers.onnx", axis)
    entry = onnx_models.zoo_entry(path, [tmp_path], verify=False)
    assert entry.input_names == ("ids", "small", "free")
    assert entry.ranges() == ((0, 49), (0, 7), None)  # small: through its Cast, the smaller of two tables
    cfg = AppConfig.model_validate(
        {
            "models": [{"name": "g", "loader": f"onnx:{path}", "max_batch_size": 2}],
            "allowed_model_dirs": [str(tmp_path)],
        }
    ).resolved()
    assert [t.value_range for t in cfg.model("g").inputs] == [(0, 49), (0, 7), None]


# -- the actor ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embed_worker():
    w = GpuWorker([EMBED], backend="cpu", allowed_modules=["serve_models"], exit_hook=_no_exit)
    yield w
    w.close()


def _no_exit(reason: str) -> None:
    raise AssertionError(f"the worker wanted to exit: {reason}")


def test_the_actor_learns_an_embeddings_range_at_load_and_keeps_the_declared_mask(embed_worker):
    assert embed_worker.models["embed"].ranges == ((0, 49), (0, 1))
    assert embed_worker.ready()["models"]["embed"]["value_ranges"] == {"ids": [0, 49], "mask": [0, 1]}


def test_a_narrower_learnt_range_than_the_declared_one_is_a_warning_and_the_declared_one_wins(caplog):
    wide = ServedModel("m", "x", (1,), (TensorInfo("ids", "INT64", (6,), (0, 99)), TensorInfo("mask", "INT64", (6,))))
    with caplog.at_level(logging.INFO, logger="eclip_ray.actor.inputs"):
        ranges = resolve_ranges(wide, (None, None), {0: Learnt(0, (0, 49), "table")})
    assert ranges == ((0, 99), None)
    assert "narrower than the range [0, 99] it was given, which wins" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="eclip_ray.actor.inputs"):
        assert resolve_ranges(wide, ((0, 9), (0, 1)), {1: Learnt(1, (0, 3), "t")}) == ((0, 99), (0, 1))
    assert "input 'mask' indexes nn.Embedding 't': [0, 3]" in caplog.text


@pytest.mark.parametrize(
    ("arrays", "words"),
    [
        ([np.full((1, 6), 50), np.ones((1, 6), "<i8")], "input 'ids' holds the value 50 at index [0, 0]"),
        ([np.full((1, 6), -3), np.ones((1, 6), "<i8")], "holds the value -3"),
        ([np.zeros((1, 6), "<i8"), np.full((1, 6), 2)], "input 'mask' holds the value 2"),
        ([np.zeros((1, 6), "<i4"), np.ones((1, 6), "<i8")], "input 'ids' is int32, not INT64"),
        ([np.zeros((1, 5), "<i8"), np.ones((1, 5), "<i8")], "has shape [1, 5], not [-1, 6]"),
        ([np.zeros((3, 6), "<i8"), np.ones((3, 6), "<i8")], "1 to 2 rows in every input, got [3]"),
        ([np.zeros((1, 6), "<i8"), np.ones((2, 6), "<i8")], "got [1, 2]"),
        ([np.zeros((1, 6), "<i8")], "a batch needs 2 inputs, got 1"),
    ],
)
def test_the_actor_refuses_a_batch_it_cannot_take_before_running_it(embed_worker, arrays, words):
    import asyncio

    before = embed_worker.models["embed"].batches
    with pytest.raises(InvalidInput) as e:
        asyncio.run(embed_worker.infer("embed", arrays))
    assert words in str(e.value) and str(e.value).startswith("model 'embed': ")
    assert embed_worker.models["embed"].batches == before


def test_check_batch_counts_rows():
    assert check_batch(EMBED, ((0, 49), (0, 1)), [np.zeros((2, 6), "<i8"), np.ones((2, 6), "<i8")]) == 2


# -- the front ---------------------------------------------------------------------------------------


def _request(**arrays) -> InferRequest:
    return InferRequest(inputs=arrays, datatypes={n: "INT64" for n in arrays})


def test_the_ingress_check_answers_400_naming_the_model_input_range_and_value():
    model = AppConfig.model_validate({"models": [{"name": "tiny-bert"}]}).resolved().model("tiny-bert")
    arrays, rows = check_inputs(model, _request(input_ids=np.full((2, 16), 999)))
    assert rows == 2 and arrays[0].shape == (2, 16)
    for value in (1000, -1, 10**7):
        ids = np.zeros((2, 16), "<i8")
        ids[1, 3] = value
        with pytest.raises(RequestError) as e:
            check_inputs(model, _request(input_ids=ids))
        assert e.value.failure.status == 400
        assert e.value.failure.message == (
            f"model 'tiny-bert': input 'input_ids' holds the value {value} at index [1, 3], outside its range "
            "[0, 999] (inclusive)"
        )


def test_learnt_ranges_skip_what_the_config_holds():
    cfg = AppConfig.model_validate(
        {
            "allowed_modules": ["serve_models"],
            "models": [
                {"name": "embed", "loader": EMBED.loader, "inputs": [_spec("ids", (6,)), _spec("mask", (6,), (0, 1))]}
            ],
        }
    ).model("embed")
    learnt = LearntRanges(cfg)
    assert learnt.ranges is None and learnt.due() and not learnt.due()  # at most once a second
    learnt.learn({"value_ranges": {"ids": [0, 49], "mask": [0, 1]}})
    assert learnt.ranges == {0: (0, 49)} and not learnt.due()
    assert learnt.problem([np.full((1, 6), 49), np.full((1, 6), 7)]) is None  # the ingress checks the mask
    assert "input 'ids' holds the value 50" in learnt.problem([np.full((1, 6), 50), np.zeros((1, 6))])


EMBED_APP = {
    "backend": "cpu",
    "allowed_modules": ["serve_models"],
    "models": [
        {
            "name": "embed",
            "loader": EMBED.loader,
            "max_batch_size": 2,
            "batch_wait_timeout_s": 0.0,
            "inputs": [_spec("ids", (6,)), _spec("mask", (6,), (0, 1))],
        },
        {"name": "tiny-bert", "max_batch_size": 2},
    ],
}


@sync
async def test_over_http_every_range_is_a_400_and_both_models_serve_on():
    cfg = AppConfig.model_validate(EMBED_APP).resolved()
    w = GpuWorker([m.served() for m in cfg.models], backend="cpu", allowed_modules=cfg.allowed_modules)
    try:
        async with client(cfg, {0: w}) as c:
            ok = [("ids", np.full((1, 6), 49)), ("mask", np.ones((1, 6), "<i8"))]
            assert (await post(c, "embed", *codec.encode_request(ok))).status_code == 200
            bad = {
                "learnt, too large": [("ids", np.full((1, 6), 50)), ok[1]],
                "learnt, negative": [("ids", np.full((1, 6), -1)), ok[1]],
                "declared mask": [ok[0], ("mask", np.full((1, 6), 2))],
            }
            for case, inputs in bad.items():
                for binary in (True, False):
                    r = await post(c, "embed", *codec.encode_request(inputs, binary=binary))
                    assert r.status_code == 400 and "outside its range" in r.json()["error"], (case, r.text)
            for value in (1000, -1):
                ids = [("input_ids", np.full((1, 16), value))]
                r = await post(c, "tiny-bert", *codec.encode_request(ids, binary=False))
                assert r.status_code == 400, r.text
                assert r.json()["error"].startswith(f"model 'tiny-bert': input 'input_ids' holds the value {value}")
            assert (await post(c, "embed", *codec.encode_request(ok))).status_code == 200
            assert (
                await post(c, "tiny-bert", *codec.encode_request([("input_ids", np.ones((1, 16)))]))
            ).status_code == 400
            r = await post(c, "tiny-bert", *codec.encode_request([("input_ids", np.ones((2, 16), "<i8"))]))
            assert r.status_code == 200
        assert w.models["embed"].batches == 2 and w.device_faults == 0
    finally:
        w.close()


@sync
async def test_the_actors_own_check_is_a_400_through_the_deployment():
    """A request the front did not check (its learnt ranges not known yet) meets the actor's check: 400."""
    cfg = AppConfig.model_validate(EMBED_APP).resolved()
    w = GpuWorker([cfg.model("embed").served()], backend="cpu", allowed_modules=cfg.allowed_modules)
    try:
        from test_serve_ingress import Fleet

        d = ModelDeployment(cfg.model("embed").model_dump(), cfg.limits.model_dump(), Handle(Fleet({0: w})), False)
        d._learnt.due = lambda: False  # as if the actors had not answered yet
        reply = await d.infer([np.full((1, 6), 50), np.ones((1, 6), "<i8")])
        assert reply.failure.status == 400, reply
        assert reply.failure.message.startswith("model 'embed': input 'ids' holds the value 50")
    finally:
        w.close()
