"""The HTTP layer and the model deployment in one process: ingress -> deployment -> GpuWorker (CPU), no Ray.

Handles are stood in for by objects whose ``method.remote(...)`` returns an
awaitable, as Ray's do.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json

import httpx
import numpy as np
import pytest

from eclip_ray.actor import GpuWorker
from eclip_ray.serve import AppConfig
from eclip_ray.serve._private import codec
from eclip_ray.serve._private.codec import RequestedOutput
from eclip_ray.serve._private.ingress import Ingress, make_app
from eclip_ray.serve._private.model_deployment import ModelDeployment


def sync(test):
    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


class _Method:
    def __init__(self, fn) -> None:
        self.fn = fn

    def remote(self, *args, **kwargs):
        async def call():
            out = self.fn(*args, **kwargs)
            return await out if inspect.isawaitable(out) else out

        return call()


class Handle:
    """``handle.method.remote(...)`` for any object, like a Ray actor or deployment handle."""

    def __init__(self, target) -> None:
        self._target = target

    def __getattr__(self, name: str) -> _Method:
        return _Method(getattr(self._target, name))


class Fleet:
    def __init__(self, actors) -> None:
        self.actors = actors

    async def actors_for(self, model: str):
        return [(gpu, Handle(a)) for gpu, a in self.actors.items() if model in a.specs]


CONFIG = {
    "backend": "cpu",
    "models": [
        {"name": "tiny-cnn", "max_batch_size": 4, "batch_wait_timeout_s": 0.0},
        {"name": "tiny-bert", "max_batch_size": 2, "slo_ms": 500},
        {"name": "broken", "loader": "tiny-cnn", "max_batch_size": 1},
    ],
    "limits": {"max_request_bytes": 200_000, "request_timeout_s": 5},
}


@pytest.fixture(scope="module")
def app_config():
    return AppConfig.model_validate(CONFIG).resolved()


@pytest.fixture(scope="module")
def worker(app_config):
    w = GpuWorker([app_config.model(n).served() for n in ("tiny-cnn", "tiny-bert")], backend="cpu")
    yield w
    w.close()


def client(app_config, actors, **limits) -> httpx.AsyncClient:
    cfg = app_config.model_copy(update={"limits": app_config.limits.model_copy(update=limits)})
    fleet = Handle(Fleet(actors))
    lim = cfg.limits.model_dump()
    models = {m.name: Handle(ModelDeployment(m.model_dump(), lim, fleet, metrics=False)) for m in cfg.models}
    app = make_app(Ingress(cfg.model_dump(mode="json"), models, metrics=False))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


IMG = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype("<f4")


async def post(c: httpx.AsyncClient, model: str, body: bytes, json_length: int | None) -> httpx.Response:
    headers = {} if json_length is None else {codec.HEADER: str(json_length)}
    return await c.post(f"/v2/models/{model}/infer", content=body, headers=headers)


@sync
async def test_json_and_binary_requests_give_the_same_answer(app_config, worker):
    async with client(app_config, {0: worker}) as c:
        r_json = await post(c, "tiny-cnn", *codec.encode_request([("input", IMG)], binary=False, request_id="a1"))
        assert r_json.status_code == 200 and r_json.headers["content-type"] == "application/json"
        doc = r_json.json()
        assert doc["id"] == "a1" and doc["outputs"][0]["shape"] == [2, 10]
        body, n = codec.encode_request([("input", IMG)], binary=True, binary_output=True)
        r_bin = await post(c, "tiny-cnn", body, n)
        assert r_bin.status_code == 200 and codec.HEADER in r_bin.headers
        _, outs = codec.decode_response(r_bin.content, int(r_bin.headers[codec.HEADER]))
        np.testing.assert_allclose(outs["output0"], np.array(doc["outputs"][0]["data"]).reshape(2, 10), rtol=1e-6)


@sync
async def test_requested_outputs_are_checked_and_chosen(app_config, worker):
    async with client(app_config, {0: worker}) as c:
        ids = np.zeros((1, 16), "<i8")
        r = await post(c, "tiny-bert", *codec.encode_request([("input_ids", ids)], outputs=[RequestedOutput("nope")]))
        assert r.status_code == 400 and "has no output named ['nope']" in r.json()["error"]
        r = await post(
            c, "tiny-bert", *codec.encode_request([("input_ids", ids)], outputs=[RequestedOutput("output0", True)])
        )
        _, outs = codec.decode_response(r.content, int(r.headers[codec.HEADER]))
        assert outs["output0"].shape == (1, 16, 64)


def _json(name="input", datatype="FP32", shape=(1, 3, 32, 32)) -> bytes:
    data = [0.0] * int(np.prod(shape)) if datatype.startswith("FP") else [0] * int(np.prod(shape))
    return json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": list(shape), "data": data}]}).encode()


@pytest.mark.parametrize(
    ("model", "body", "status", "words"),
    [
        ("nope", _json(), 404, "unknown model 'nope'"),
        ("tiny-cnn", _json(name="image"), 400, "has no input named ['image']"),
        ("tiny-cnn", _json(shape=(1, 3, 31, 32)), 400, "has shape [1, 3, 31, 32]; the model takes [-1, 3, 32, 32]"),
        ("tiny-cnn", _json(datatype="FP64"), 400, "has datatype FP64; the model takes FP32"),
        ("tiny-cnn", _json(shape=(5, 3, 32, 32)), 400, "5 rows exceeds max_batch_size 4"),
        ("tiny-cnn", b'{"inputs": [', 400, "malformed"),
        ("tiny-cnn", _json(shape=(64, 3, 32, 32)), 413, "limit is 200000"),
    ],
)
@sync
async def test_bad_requests_get_4xx_naming_the_problem(app_config, worker, model, body, status, words):
    async with client(app_config, {0: worker}) as c:
        r = await post(c, model, body, None)
        assert r.status_code == status and words in r.json()["error"]


class Silent:
    """An actor that never answers (hung or restarting)."""

    specs = ("tiny-cnn",)

    async def infer(self, model, inputs):
        await asyncio.sleep(60)

    def ready(self):
        raise RuntimeError("not up")


@sync
async def test_a_silent_actor_gives_503_with_retry_after_not_a_hang(app_config):
    async with client(app_config, {0: Silent()}, request_timeout_s=0.2, retry_after_s=2) as c:
        r = await post(c, "tiny-cnn", *codec.encode_request([("input", IMG)]))
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert "GPU 0 did not answer within 0.2 s" in r.json()["error"]


@sync
async def test_health_metadata_and_stats(app_config, worker):
    async with client(app_config, {0: worker}) as c:
        assert (await c.get("/v2/health/live")).status_code == 200
        ready = await c.get("/v2/health/ready")
        assert ready.status_code == 400 and "broken: no GPU actor hosts it" in ready.json()["error"]
        assert (await c.get("/v2/models/tiny-cnn/ready")).status_code == 200
        assert (await c.get("/v2/models/broken/ready")).status_code == 400
        meta = (await c.get("/v2/models/tiny-bert")).json()
        assert meta["inputs"] == [{"name": "input_ids", "datatype": "INT64", "shape": [-1, 16]}]
        assert meta["outputs"] == [{"name": "output0", "datatype": "FP32", "shape": [-1, 16, 64]}]
        assert (await c.get("/v2/models/tiny-bert/versions/2")).status_code == 404
        for _ in range(2):
            await post(c, "tiny-cnn", *codec.encode_request([("input", IMG)]))
        stats = (await c.get("/v2/models/tiny-cnn/stats")).json()["model_stats"][0]
        assert stats["name"] == "tiny-cnn" and stats["inference_count"] == 4 and stats["execution_count"] == 2
        assert stats["batch_stats"][0]["batch_size"] == 2
        assert stats["gpus"][0]["plan"] == "whole" and stats["gpus"][0]["inferences"] >= 4
        server = (await c.get("/v2")).json()
        assert "binary_tensor_data" in server["extensions"]


class Restarting:
    """An actor Ray is restarting: every call fails at once with ActorUnavailableError."""

    specs = ("tiny-cnn",)

    def __init__(self) -> None:
        self.calls = 0

    async def infer(self, model, inputs):
        from ray.exceptions import ActorUnavailableError

        self.calls += 1
        raise ActorUnavailableError("The actor is restarting", None)


@sync
async def test_a_batch_moves_to_another_replica_when_its_actor_is_down(app_config, worker):
    models = [m.model_copy(update={"replicas": 2}) if m.name == "tiny-cnn" else m for m in app_config.models]
    two = app_config.model_copy(update={"gpus": 2, "models": models})
    down = Restarting()
    async with client(two, {0: down, 1: worker}) as c:
        for _ in range(3):
            r = await post(c, "tiny-cnn", *codec.encode_request([("input", IMG)]))
            assert r.status_code == 200
        assert down.calls >= 1  # it was tried, and the batch went on to GPU 1
    async with client(app_config, {0: Restarting()}, retry_after_s=4) as c:
        r = await post(c, "tiny-cnn", *codec.encode_request([("input", IMG)]))
        assert r.status_code == 503 and r.headers["retry-after"] == "4" and "restarting" in r.json()["error"]
