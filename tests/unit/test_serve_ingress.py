"""The front in one process: ingress (HTTP, batching) -> GpuWorker (CPU), no Ray.

Handles are stood in for by objects whose ``method.remote(...)`` returns an
awaitable, as Ray's do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import json
import string
import time

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eclip_ray.actor import BatchResult, GpuWorker
from eclip_ray.serve import AppConfig
from eclip_ray.serve._private import codec
from eclip_ray.serve._private.codec import RequestedOutput
from eclip_ray.serve._private.ingress import Ingress, make_app
from eclip_ray.serve._private.stats import StatsBoard


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
    """The GpuFleet deployment's surface: the actors hosting a model, and the replicas' request counts."""

    def __init__(self, actors) -> None:
        self.actors = actors
        self.board = StatsBoard()

    async def actors_for(self, model: str):
        return [(gpu, Handle(a)) for gpu, a in self.actors.items() if model in a.specs]

    async def front_stats(self, replica, snapshots, models):
        return self.board.exchange(replica, snapshots, models)


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
    w = GpuWorker([app_config.model(n) for n in ("tiny-cnn", "tiny-bert")], backend="cpu")
    yield w
    w.close()


def ingress_of(app_config, actors, **limits) -> Ingress:
    cfg = app_config.model_copy(update={"limits": app_config.limits.model_copy(update=limits)})
    return Ingress(cfg, Handle(Fleet(actors)), metrics=False)


def client_of(ingress: Ingress) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=make_app(ingress)), base_url="http://test")


def client(app_config, actors, **limits) -> httpx.AsyncClient:
    return client_of(ingress_of(app_config, actors, **limits))


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


def _binary(size: int | None = None, extra: bytes = b"", rows: int = 1) -> tuple[bytes, dict]:
    """A binary-extension request for tiny-cnn whose declared sizes may disagree with what it carries."""
    data = np.zeros((rows, 3, 32, 32), "<f4").tobytes()
    size = len(data) if size is None else size
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [rows, 3, 32, 32],
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    return head + data + extra, {codec.HEADER: str(len(head))}


CNN = "/v2/models/tiny-cnn/infer"
BAD_REQUESTS = {  # id: (path, body, headers, status, words the error must hold)
    "unknown model": ("/v2/models/nope/infer", _json(), {}, 404, "unknown model 'nope'"),
    "unknown version": ("/v2/models/tiny-cnn/versions/2/infer", _json(), {}, 404, "has no version '2'"),
    "unknown path": ("/v2/models/tiny-cnn/predict", _json(), {}, 404, "/v2/models/tiny-cnn/predict: Not Found"),
    "wrong method": ("/v2/health/live", b"", {}, 405, "Method Not Allowed"),
    "wrong input name": (CNN, _json(name="image"), {}, 400, "has no input named ['image']"),
    "missing input": (CNN, _json(name="image"), {}, 400, "is missing ['input']"),
    "wrong shape": (
        CNN,
        _json(shape=(1, 3, 31, 32)),
        {},
        400,
        "has shape [1, 3, 31, 32]; the model takes [-1, 3, 32, 32]",
    ),
    "no batch dimension": (CNN, _json(shape=(3, 32, 32)), {}, 400, "has shape [3, 32, 32]"),
    "wrong datatype": (CNN, _json(datatype="FP64"), {}, 400, "has datatype FP64; the model takes FP32"),
    "unsupported datatype": (CNN, _json(datatype="BYTES"), {}, 400, "unsupported datatype 'BYTES'"),
    "no rows": (CNN, _json(shape=(0, 3, 32, 32)), {}, 400, "has no rows"),
    "batch over the maximum": (CNN, _json(shape=(5, 3, 32, 32)), {}, 400, "5 rows exceeds max_batch_size 4"),
    "truncated JSON": (CNN, b'{"inputs": [', {}, 400, "malformed"),
    "empty body": (CNN, b"", {}, 400, "the request body is empty"),
    "not UTF-8": (CNN, b"\xff\xfe{}", {}, 400, "malformed"),
    "JSON not an object": (CNN, b"[1, 2]", {}, 400, "must be a JSON object"),
    "nested too deeply": (CNN, b"[" * 50_000, {}, 400, "nested too deeply"),
    "header length not a number": (CNN, _binary()[0], {codec.HEADER: "12abc"}, 400, "must be a byte count"),
    "header length past the body": (CNN, _binary()[0], {codec.HEADER: "999999"}, 400, "but the body has"),
    "binary size vs shape": (CNN, *_binary(size=100), 400, "binary_data_size is 100 bytes but shape [1, 3, 32, 32]"),
    "bytes left over": (
        CNN,
        *_binary(extra=b"junk"),
        400,
        "carries 12292 bytes of binary tensor data but the inputs declare 12288",
    ),
    "bytes missing": (CNN, _binary()[0][:-4], _binary()[1], 400, "run past the end of the body"),
    "body over the limit": (CNN, _json(shape=(64, 3, 32, 32)), {}, 413, "limit is 200000"),
}


async def _good_requests_still_work(c: httpx.AsyncClient) -> None:
    ids = np.zeros((1, 16), "<i8")
    for model, name, x in (("tiny-cnn", "input", IMG), ("tiny-bert", "input_ids", ids)):
        r = await post(c, model, *codec.encode_request([(name, x)]))
        assert r.status_code == 200, r.text


@pytest.mark.parametrize(("path", "body", "headers", "status", "words"), BAD_REQUESTS.values(), ids=BAD_REQUESTS)
@sync
async def test_bad_requests_get_4xx_naming_the_problem(app_config, worker, path, body, headers, status, words):
    async with client(app_config, {0: worker}) as c:
        before = (await c.get("/v2/models/tiny-cnn/stats")).json()["model_stats"][0]
        r = await c.post(path, content=body, headers=headers)
        assert r.status_code == status and words in r.json()["error"], r.text
        stats = (await c.get("/v2/models/tiny-cnn/stats")).json()["model_stats"][0]
        assert stats["execution_count"] == before["execution_count"]  # no batch ran
        assert stats["inference_stats"]["fail"]["count"] == 0
        await _good_requests_still_work(c)


@sync
async def test_a_streamed_body_over_the_limit_is_cut_off_with_413(app_config, worker):
    async def chunks():  # no Content-Length: the limit must hold while reading
        for _ in range(40):
            yield b" " * 10_000

    async with client(app_config, {0: worker}) as c:
        r = await c.post(CNN, content=chunks())
        assert "content-length" not in r.request.headers
        assert r.status_code == 413 and "exceeds the limit of 200000 bytes" in r.json()["error"]
        await _good_requests_still_work(c)


class Silent:
    """An actor that never answers (hung or restarting)."""

    specs = ("tiny-cnn",)

    async def infer(self, model, *requests):
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
        before = (await c.get("/v2/models/tiny-cnn/stats")).json()["model_stats"][0]
        for _ in range(2):
            await post(c, "tiny-cnn", *codec.encode_request([("input", IMG)]))
        stats = (await c.get("/v2/models/tiny-cnn/stats")).json()["model_stats"][0]
        assert stats["name"] == "tiny-cnn" and stats["inference_count"] - before["inference_count"] == 4
        assert stats["execution_count"] - before["execution_count"] == 2  # executions: what ran on the device
        assert stats["inference_stats"]["success"]["count"] == 2  # requests: this front's
        assert 2 in [b["batch_size"] for b in stats["batch_stats"]]
        assert stats["gpus"][0]["plan"] == "whole" and stats["gpus"][0]["inferences"] >= 4
        server = (await c.get("/v2")).json()
        assert "binary_tensor_data" in server["extensions"]


class Restarting:
    """An actor Ray is restarting: every call fails at once with ActorUnavailableError."""

    specs = ("tiny-cnn",)

    def __init__(self) -> None:
        self.calls = 0

    async def infer(self, model, *requests):
        from ray.exceptions import ActorUnavailableError

        self.calls += 1
        raise ActorUnavailableError("The actor is restarting", None)


@sync
async def test_a_batch_moves_to_another_replica_when_its_actor_is_down(app_config, worker):
    models = [dataclasses.replace(m, replicas=2) if m.name == "tiny-cnn" else m for m in app_config.models]
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


@sync
async def test_a_model_that_failed_to_load_gets_503_and_the_others_serve():
    cfg = AppConfig.model_validate(
        {
            "backend": "cpu",
            "allowed_modules": ["collections"],
            "models": [
                {"name": "tiny-cnn", "max_batch_size": 4, "batch_wait_timeout_s": 0.0},
                # the factory builds a dict, not an nn.Module: loading fails in the actor
                {
                    "name": "bad",
                    "loader": "collections:OrderedDict",
                    "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}],
                },
            ],
        }
    ).resolved()
    w = GpuWorker(cfg.models, backend="cpu", allowed_modules=cfg.allowed_modules)
    try:
        async with client(cfg, {0: w}, retry_after_s=3) as c:
            r = await post(c, "bad", *codec.encode_request([("x", np.zeros((1, 4), "<f4"))]))
            assert r.status_code == 503 and r.headers["retry-after"] == "3"
            assert "model 'bad' failed to load on GPU 0" in r.json()["error"]
            ready = await c.get("/v2/models/bad/ready")
            assert ready.status_code == 400 and "model 'bad' is not ready: GPU 0: AttributeError" in ready.text
            assert (await c.get("/v2/health/ready")).status_code == 400
            assert (await post(c, "tiny-cnn", *codec.encode_request([("input", IMG)]))).status_code == 200
    finally:
        w.close()


# -- fuzzing every route of the served OpenAPI schema (in place of schemathesis: no extra dependency) -------

ALPHABET = string.ascii_letters + string.digits + "-_.~%"
NAMES = st.sampled_from(["tiny-cnn", "tiny-bert", "broken", "1"]) | st.text(ALPHABET, min_size=1, max_size=12)
BODIES = (
    st.binary(max_size=64)
    | st.sampled_from([_json(), _json(shape=(9, 3, 32, 32)), _binary()[0], b"{}"])
    | st.recursive(st.integers() | st.text(max_size=4), lambda x: st.lists(x, max_size=3), max_leaves=8).map(
        lambda v: json.dumps({"inputs": v}).encode()
    )
)


def _routes() -> list[tuple[str, str]]:
    schema = make_app(Ingress(AppConfig.model_validate(CONFIG).resolved(), None, metrics=False)).openapi()
    return [(method.upper(), path) for path, ops in schema["paths"].items() for method in ops]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    route=st.sampled_from(_routes()),
    name=NAMES,
    version=NAMES,
    body=BODIES,
    header=st.none() | st.text(string.digits + "x -", max_size=6),
)
def test_any_request_to_any_route_gets_one_kserve_answer_never_a_500(
    app_config, worker, route, name, version, body, header
):
    method, path = route
    url = path.replace("{name}", name).replace("{version}", version)
    headers = {} if header is None else {codec.HEADER: header}

    async def send() -> httpx.Response:
        async with client(app_config, {0: worker}, request_timeout_s=1) as c:
            return await c.request(method, url, content=body if method == "POST" else None, headers=headers)

    r = asyncio.run(send())
    assert r.status_code < 500 or r.status_code == 503, r.text
    if r.status_code >= 400:
        assert set(r.json()) == {"error"} and r.json()["error"]
    if r.status_code == 503:
        assert r.headers["retry-after"]


class Gated:
    """A GPU actor that holds every batch until ``open`` is set; counts the requests it got."""

    def __init__(self, model: str) -> None:
        self.specs = (model,)
        self.open = asyncio.Event()
        self.calls = 0

    def ready(self):
        outputs = [{"name": "output0", "datatype": "FP32", "shape": [-1, 10]}]
        return {"gpu": 0, "models": {self.specs[0]: {"ready": True, "error": None, "outputs": outputs}}}

    async def infer(self, model, *requests):
        self.calls += len(requests)
        await self.open.wait()
        rows = sum(len(r[0]) for r in requests)
        return BatchResult(("output0",), (np.zeros((rows, 10), "<f4"),), 0.0, 0, "whole", rows)


@sync
async def test_the_front_holds_each_model_to_its_bound_and_refuses_the_excess_at_once(app_config):
    bound = {"max_ongoing_requests": 2}
    models = [dataclasses.replace(m, **bound) if m.name == "tiny-cnn" else m for m in app_config.models]
    cfg = app_config.model_copy(update={"models": models, "ingress_replicas": 1})
    cnn, bert = Gated("tiny-cnn"), Gated("tiny-bert")
    ingress = ingress_of(cfg, {0: cnn, 1: bert})
    async with client_of(ingress) as c:
        body = codec.encode_request([("input", IMG[:1])])
        held = [asyncio.create_task(post(c, "tiny-cnn", *body)) for _ in range(2)]
        while cnn.calls < 2:
            await asyncio.sleep(0.01)
        r = await asyncio.wait_for(post(c, "tiny-cnn", *body), 5)  # at once, though the model answers nothing
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"] == (
            "model 'tiny-cnn' is overloaded: 2 of its requests are in progress in this ingress replica, "
            "as many as it takes at once now (at most 2); retry later"
        )
        assert cnn.calls == 2  # the refused request never reached the model
        ids = np.zeros((1, 16), "<i8")
        other = asyncio.create_task(post(c, "tiny-bert", *codec.encode_request([("input_ids", ids)])))
        while bert.calls < 1:  # another model's requests still get in
            await asyncio.sleep(0.01)
        cnn.open.set()
        bert.open.set()
        assert [(await t).status_code for t in [*held, other]] == [200, 200, 200]
        assert {n: m.limit.ongoing for n, m in ingress.models.items()} == {"tiny-cnn": 0, "tiny-bert": 0, "broken": 0}
        assert (await post(c, "tiny-cnn", *body)).status_code == 200  # the bound frees as requests finish


def test_each_ingress_replica_takes_its_share_of_the_front_bound(app_config):
    cfg = app_config.model_copy(update={"ingress_replicas": 3})
    limits = {n: m.limit for n, m in Ingress(cfg, None, metrics=False).models.items()}
    # default bound 4 x replicas x max_batch_size, split among 3 ingress replicas, rounded up
    assert {n: limit.ceiling for n, limit in limits.items()} == {"tiny-cnn": 6, "tiny-bert": 3, "broken": 2}
    assert {n: limit.target_s for n, limit in limits.items()} == {"tiny-cnn": None, "tiny-bert": 0.25, "broken": None}


# -- admission is about waiting, not about the request's own work -------------------------------------------


@sync
async def test_an_idle_server_answers_a_request_whose_decoding_alone_outlasts_the_slo(app_config, worker, monkeypatch):
    # As a large JSON body (a ResNet-50 image: 150-200 ms to parse on a CPU) on an idle server: decoding is the
    # request's own work, not a wait that refusing it would shorten.
    decode = codec.decode_request

    def slow_decode(*args, **kwargs):
        out = decode(*args, **kwargs)
        time.sleep(0.08)
        out.decode_s += 0.08
        return out

    monkeypatch.setattr(codec, "decode_request", slow_decode)
    models = [dataclasses.replace(m, slo_ms=20.0) if m.name == "tiny-cnn" else m for m in app_config.models]
    ingress = ingress_of(app_config.model_copy(update={"models": models}), {0: worker})
    async with client_of(ingress) as c:
        for _ in range(3):
            r = await post(c, "tiny-cnn", *codec.encode_request([("input", IMG)], binary=False))
            assert r.status_code == 200, r.text
    assert ingress.models["tiny-cnn"].batcher.slo_feasible is True  # 20 ms is feasible for tiny-cnn alone
    # and the front's admission limit was told the time without the decoding, as it would be without it:
    gate = Gated("tiny-cnn")
    gate.open.set()
    fast = ingress_of(app_config.model_copy(update={"models": models}), {0: gate})
    seen = []
    monkeypatch.setattr(fast.models["tiny-cnn"].limit, "done", seen.append)
    async with client_of(fast) as c:
        t0 = time.perf_counter()
        assert (await post(c, "tiny-cnn", *codec.encode_request([("input", IMG)]))).status_code == 200
        took = time.perf_counter() - t0
    assert took >= 0.08 and seen[0] < took - 0.07


@sync
async def test_an_slo_the_model_misses_alone_is_reported_and_refuses_nothing(app_config, worker):
    models = [dataclasses.replace(m, slo_ms=1e-4) if m.name == "tiny-cnn" else m for m in app_config.models]
    ingress = ingress_of(app_config.model_copy(update={"models": models}), {0: worker})
    async with client_of(ingress) as c:
        state = (await c.get("/v2/models/tiny-cnn/ready")).json()
        assert state["slo"]["feasible"] is False and "cannot be met on this hardware" in state["warning"]
        assert state["slo"]["solo_ms"] == worker.ready()["models"]["tiny-cnn"]["solo_ms"]
        meta = (await c.get("/v2/models/tiny-cnn")).json()
        assert meta["parameters"]["slo"]["feasible"] is False and "slo_note" in meta["parameters"]
        body = codec.encode_request([("input", IMG[:1])])
        answers = await asyncio.gather(*(post(c, "tiny-cnn", *body) for _ in range(12)))
        assert [r.status_code for r in answers] == [200] * 12  # queued behind each other, none refused
        assert ingress.models["tiny-cnn"].limit.target_s is None  # nor does the front shrink for it


# -- gRPC, in process ------------------------------------------------------------------------------------


class Context:
    """What Serve's RayServegRPCContext offers the ingress: a status code, details and trailing metadata."""

    def __init__(self) -> None:
        self.code = self.details = None
        self.trailing: list = []

    def set_code(self, code) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, metadata) -> None:
        self.trailing = list(metadata)


def _grpc_request(model: str, name: str, array: np.ndarray, raw: bytes | None = None, datatype: str = "FP32"):
    from eclip_ray.serve._private.grpc_codec import pb

    req = pb().ModelInferRequest(model_name=model, id="g1")
    tensor = req.inputs.add(name=name, datatype=datatype)
    tensor.shape.extend(array.shape)
    req.raw_input_contents.append(array.tobytes() if raw is None else raw)
    return req


@sync
async def test_grpc_model_infer_answers_as_http_does_and_maps_errors_to_status_codes(app_config, worker):
    import grpc

    ingress = ingress_of(app_config, {0: worker}, retry_after_s=2)
    response = await ingress.ModelInfer(_grpc_request("tiny-cnn", "input", IMG), Context())
    assert response.id == "g1" and response.outputs[0].name == "output0" and list(response.outputs[0].shape) == [2, 10]
    got = np.frombuffer(response.raw_output_contents[0], "<f4").reshape(2, 10)
    async with client_of(ingress) as c:
        r = await post(c, "tiny-cnn", *codec.encode_request([("input", IMG)], binary_output=True))
        np.testing.assert_array_equal(got, codec.decode_response(r.content, int(r.headers[codec.HEADER]))[1]["output0"])
    cases = [
        (_grpc_request("nope", "input", IMG), grpc.StatusCode.NOT_FOUND, "unknown model 'nope'"),
        (_grpc_request("tiny-cnn", "input", IMG, raw=b"123"), grpc.StatusCode.INVALID_ARGUMENT, "3 raw bytes"),
        (_grpc_request("tiny-cnn", "image", IMG), grpc.StatusCode.INVALID_ARGUMENT, "has no input named ['image']"),
        (_grpc_request("tiny-cnn", "input", IMG, datatype="BYTES"), grpc.StatusCode.INVALID_ARGUMENT, "BYTES"),
    ]
    for req, code, words in cases:
        ctx = Context()
        await ingress.ModelInfer(req, ctx)
        assert ctx.code == code and words in ctx.details, (ctx.code, ctx.details)
    silent = ingress_of(app_config, {0: Silent()}, request_timeout_s=0.2, retry_after_s=2)
    ctx = Context()
    await silent.ModelInfer(_grpc_request("tiny-cnn", "input", IMG), ctx)
    assert ctx.code == grpc.StatusCode.UNAVAILABLE and ctx.trailing == [("retry-after", "2")]


@sync
async def test_grpc_health_metadata_and_statistics(app_config, worker):
    from eclip_ray.serve._private.grpc_codec import pb

    ingress = ingress_of(app_config, {0: worker})
    assert (await ingress.ServerLive(pb().ServerLiveRequest())).live
    assert not (await ingress.ServerReady(pb().ServerReadyRequest())).ready  # "broken" has no actor
    assert (await ingress.ModelReady(pb().ModelReadyRequest(name="tiny-cnn"), Context())).ready
    meta = await ingress.ModelMetadata(pb().ModelMetadataRequest(name="tiny-bert"), Context())
    assert meta.inputs[0].name == "input_ids" and list(meta.inputs[0].shape) == [-1, 16]
    await ingress.ModelInfer(_grpc_request("tiny-cnn", "input", IMG), Context())
    stats = await ingress.ModelStatistics(pb().ModelStatisticsRequest(name="tiny-cnn"), Context())
    assert stats.model_stats[0].name == "tiny-cnn" and stats.model_stats[0].inference_stats.success.count == 1
