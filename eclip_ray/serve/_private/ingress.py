"""The front: KServe v2 (Open Inference Protocol) over HTTP (FastAPI) and gRPC, one ingress for all models.

A request's whole way in one process: the admission limit of its model
(refusing the excess before reading the body), the body read, decoded and
checked against the model (a bad one is answered 4xx here), the model's batcher,
and one Ray call per batch to the GPU actor (``model.py``). So a request crosses
one Serve hop before its batcher (the proxy's, or none with HAProxy or direct
ingress) and its batch one hop to the GPU. Several replicas of this deployment
share the load; the GPU actors join their small batches again.

HTTP errors are KServe-style ``{"error": "..."}``, retryable ones 503 with
Retry-After. Python callers (another deployment, through a DeploymentHandle)
call :meth:`Ingress.infer` with numpy arrays: the same admission, checks and
batching, and the failures as the project's exceptions (``errors.python_error``).
gRPC (``GRPCInferenceService`` of tritonclient's protobufs,
through Serve's gRPC proxy, which calls the methods named like the RPCs) maps
the same failures to status codes (``grpc_codec.py``).

No torch or CUDA code is imported here (a test checks it): the config comes
resolved from the driver that built the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from eclip_ray.actor.spec import BatchResult, ModelConfig, datatype_of
from eclip_ray.serve._private import codec, grpc_codec
from eclip_ray.serve._private.codec import InferRequest
from eclip_ray.serve._private.errors import Failure, RequestError, python_error, unavailable
from eclip_ray.serve._private.metrics import RayServeMetrics, ServeMetrics
from eclip_ray.serve._private.model import ModelFront
from eclip_ray.serve._private.stats import ModelStats
from eclip_ray.serve._private.validate import check_inputs, check_outputs
from eclip_ray.serve.config import AppConfig

with contextlib.suppress(ImportError):  # Serve's gRPC proxy pickles requests to this process: make them unpickle
    import eclip_ray.serve._private.grpc_service  # noqa: F401

log = logging.getLogger(__name__)

VERSION = "1"
READY_TIMEOUT_S = 5.0
STATS_REPORT_S = 1.0  # how often a replica reports its request counts to the fleet (when they changed)
START_CHECK_S = 600.0  # how long a replica keeps asking for its models' readiness at start, for the SLO check


def error_response(failure: Failure) -> JSONResponse:
    return JSONResponse({"error": failure.message}, status_code=failure.status, headers=failure.headers())


@dataclass
class Answered:
    """A request served: its model, what it asked for, and its rows of the result."""

    front: ModelFront
    request: InferRequest
    result: BatchResult


class Ingress:
    """``config`` resolved (every input declared); ``fleet`` a handle of the GpuFleet deployment."""

    def __init__(self, config: AppConfig | dict, fleet: Any, metrics: bool = True) -> None:
        self.cfg = config if isinstance(config, AppConfig) else AppConfig.model_validate(config)
        if not self.cfg.is_resolved():
            raise ValueError("the ingress takes a resolved AppConfig (AppConfig.resolved(), where the app is built)")
        self._fleet = fleet
        names = [m.name for m in self.cfg.models]
        self.metrics: ServeMetrics = RayServeMetrics(names) if metrics else ServeMetrics()
        replicas = self.cfg.ingress_count()
        self.models = {m.name: ModelFront(m, self.cfg.limits, fleet, replicas, self.metrics) for m in self.cfg.models}
        self._replica = _replica_id()
        self._reported: dict[str, int] = {}
        self._tasks: list[asyncio.Task] = []
        with contextlib.suppress(RuntimeError):  # in a Serve replica the constructor runs on the replica's loop
            loop = asyncio.get_running_loop()
            self._tasks += [loop.create_task(self._start_up()), loop.create_task(self._report_loop())]

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_app(self)

    def front(self, name: str, version: str | None = None) -> ModelFront:
        if name not in self.models:
            raise RequestError(404, f"unknown model {name!r}; this server serves {sorted(self.models)}")
        if version not in (None, "", VERSION):
            raise RequestError(404, f"model {name!r} has no version {version!r}; it has version {VERSION}")
        return self.models[name]

    # -- inference, for either protocol -----------------------------------------------------

    async def serve(self, name: str, version: str | None, receive: Callable[[], Awaitable[InferRequest]]) -> Answered:
        """Admit a request of model ``name``, ``receive`` it (read and decode), check it and batch it.

        The model's admission limit is taken before ``receive``, so an excess request is refused before its
        body is read. Its time in the front counts towards the limit's signal without the request's own
        decoding, which is not queueing."""
        front = self.front(name, version)
        if not front.limit.admit():  # refused before its body is read: cheap, and at once
            raise unavailable(
                f"model {name!r} is overloaded: {front.limit.ongoing} of its requests are in progress in this "
                f"ingress replica, as many as it takes at once now (at most {front.limit.ceiling}); retry later",
                self.cfg.limits.retry_after_s,
                overloaded=True,
            )
        t0 = time.perf_counter()
        own = 0.0
        try:
            request = await receive()
            t1 = time.perf_counter()
            arrays, rows = check_inputs(front.cfg, request)
            known = [o["name"] for o in front.outputs or ()]
            if known:  # refuse before running the model
                check_outputs(name, request, known)
            own = time.perf_counter() - t1 + request.decode_s
            result = await front.infer(arrays, rows)
            check_outputs(name, request, result.names)
            return Answered(front, request, result)
        finally:
            front.limit.done(max(0.0, time.perf_counter() - t0 - own))

    async def counted(self, name: str, call: Callable[[], Awaitable[Any]], status_of: Callable[[Any], int]) -> Any:
        """``call()`` with the request counted in the metrics (its status and latency)."""
        t0, status = time.perf_counter(), 500
        try:
            out = await call()
            status = status_of(out)
            return out
        except RequestError as e:
            status = e.failure.status
            raise
        finally:
            slo = self.models[name].cfg.slo_ms if name in self.models else None
            self.metrics.request(name, status, time.perf_counter() - t0, slo)

    # -- Python callers (a DeploymentHandle of this deployment) -----------------------------

    async def infer(
        self, model: str, inputs: Mapping[str, Any] | Any, outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run ``inputs`` (name -> numpy array, the first axis the rows; a bare array for a model of one input)
        through ``model``'s admission, checks and batching, as an HTTP request goes: its outputs by name, in the
        model's order (only ``outputs`` if given).

        Raises UnknownModel, InvalidInput, Overloaded, ModelUnavailable (``eclip_ray/actor/spec.py``) or
        EclipError, as ``errors.python_error`` maps the HTTP answer. Send numpy arrays, not torch tensors: this
        process never imports torch."""

        wanted = [outputs] if isinstance(outputs, str) else None if outputs is None else list(outputs)

        async def receive() -> InferRequest:
            return _python_request(self.models[model].cfg, inputs, wanted)

        try:
            done = await self.counted(model, lambda: self.serve(model, None, receive), lambda _: 200)
        except RequestError as e:
            raise python_error(e) from None
        return {
            n: np.asarray(o)
            for n, o in zip(done.result.names, done.result.outputs, strict=True)
            if wanted is None or n in wanted
        }

    # -- HTTP -------------------------------------------------------------------------------

    async def infer_http(self, name: str, version: str | None, request: Request) -> Response:
        try:
            return await self.counted(name, lambda: self._infer_http(name, version, request), lambda r: r.status_code)
        except RequestError as e:
            return error_response(e.failure)
        except Exception as e:  # a bug, not the client's fault: still one KServe-style answer
            log.exception("request for model %r failed", name)
            return error_response(Failure(500, f"internal error ({type(e).__name__}); see the server's log"))

    async def _infer_http(self, name: str, version: str | None, request: Request) -> Response:
        async def receive() -> InferRequest:
            body = await self._body(request)
            return codec.decode_request(body, codec.header_length(request.headers.get(codec.HEADER)))

        done = await self.serve(name, version, receive)
        binary = codec.binary_choice(done.request, done.result.names)
        outputs = [(n, o) for n, o in zip(done.result.names, done.result.outputs, strict=True) if n in binary]
        payload, json_length = codec.encode_response(name, outputs, binary, done.request.id)
        if json_length is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream", headers={codec.HEADER: str(json_length)})

    async def _body(self, request: Request) -> bytes:
        limit = self.cfg.limits.max_request_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RequestError(413, f"the request body is {declared} bytes; the limit is {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(413, f"the request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- gRPC (GRPCInferenceService), called by Serve's gRPC proxy by method name -------------

    async def ServerLive(self, request, grpc_context=None):
        return grpc_codec.pb().ServerLiveResponse(live=True)

    async def ServerReady(self, request, grpc_context=None):
        states = await asyncio.gather(*(m.ready() for m in self.models.values()))
        return grpc_codec.pb().ServerReadyResponse(ready=all(s["ready"] for s in states))

    async def ModelReady(self, request, grpc_context=None):
        return await grpc_codec.answer(grpc_context, self._model_ready_pb, request)

    async def _model_ready_pb(self, request):
        state = await self.front(request.name, request.version).ready()
        return grpc_codec.pb().ModelReadyResponse(ready=state["ready"])

    async def ServerMetadata(self, request, grpc_context=None):
        from eclip_ray import __version__

        return grpc_codec.pb().ServerMetadataResponse(name="eclip_ray", version=__version__, extensions=EXTENSIONS)

    async def ModelMetadata(self, request, grpc_context=None):
        async def metadata(req):
            return grpc_codec.metadata(await self.front(req.name, req.version).metadata())

        return await grpc_codec.answer(grpc_context, metadata, request)

    async def ModelStatistics(self, request, grpc_context=None):
        async def statistics(req):
            names = [req.name] if req.name else list(self.models)
            for n in names:
                self.front(n, req.version)
            return grpc_codec.statistics(await self.statistics(names))

        return await grpc_codec.answer(grpc_context, statistics, request)

    async def ModelInfer(self, request, grpc_context=None):
        name = request.model_name

        async def infer(req):
            async def receive() -> InferRequest:
                return grpc_codec.decode_request(req, self.cfg.limits.max_request_bytes)

            done = await self.serve(name, req.model_version, receive)
            return grpc_codec.encode_response(name, done.result.names, done.result.outputs, done.request)

        async def call():
            return await grpc_codec.answer(grpc_context, infer, request, raise_errors=True)

        try:
            return await self.counted(name, call, lambda _: 200)
        except RequestError:
            return grpc_codec.pb().ModelInferResponse()  # the status is on the context

    # -- health, metadata, statistics -------------------------------------------------------

    def process(self) -> dict[str, Any]:
        """This replica's process id and whether torch is loaded in it (it should never be)."""
        return {"pid": os.getpid(), "torch": "torch" in sys.modules}

    async def server_ready(self) -> Response:
        states = await asyncio.gather(*(m.ready() for m in self.models.values()))
        waiting = [f"{n}: {s['reason']}" for n, s in zip(self.models, states, strict=True) if not s["ready"]]
        if waiting:
            return error_response(Failure(400, "not ready: " + "; ".join(waiting)))
        notes = [s["note"] for s in states if s["note"]]
        return JSONResponse({"ready": True, **({"warnings": notes} if notes else {})})

    async def statistics(self, names: list[str]) -> dict:
        """Triton-style statistics of ``names``: every replica's request counts (through the fleet) and the GPU
        actors' executions."""
        summed = await self._exchange_stats(names)
        gpus = await asyncio.gather(*(self.models[n].gpu_stats() for n in names))
        out = []
        for n, g in zip(names, gpus, strict=True):
            snap = summed.get(n)
            stats = ModelStats.summed(n, [snap]) if snap else self.models[n].stats
            entry = stats.to_triton(g)
            entry["gpus"], entry["queued"] = g, self.models[n].batcher.queued
            entry["slo"] = self.models[n].slo_state()
            out.append(entry)
        return {"model_stats": out}

    async def _exchange_stats(self, names: list[str]) -> dict[str, dict]:
        """Report this replica's changed counts; every replica's, summed (empty if the fleet does not answer)."""
        changed = {n: m.stats.snapshot() for n, m in self.models.items() if self._reported.get(n) != m.stats.version}
        try:
            summed = await asyncio.wait_for(
                self._fleet.front_stats.remote(self._replica, changed, names), READY_TIMEOUT_S
            )
        except Exception as e:  # statistics are best effort; requests never wait on them
            log.debug("statistics exchange with the fleet failed: %r", e)
            return {}
        self._reported.update({n: self.models[n].stats.version for n in changed})
        return summed

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_REPORT_S)
            if any(self._reported.get(n) != m.stats.version for n, m in self.models.items()):
                await self._exchange_stats([])

    async def _start_up(self) -> None:
        """Ask until every model is ready or failed, so that an SLO the hardware cannot meet is reported (log,
        metric) as the models come up rather than at the first request."""
        pending, deadline = list(self.models), time.monotonic() + START_CHECK_S
        while pending and time.monotonic() < deadline:
            states = await asyncio.gather(*(self.models[n].ready() for n in pending))
            pending = [n for n, s in zip(pending, states, strict=True) if not s["ready"]]
            await asyncio.sleep(1.0)


EXTENSIONS = ["binary_tensor_data", "statistics"]


def _python_request(model: ModelConfig, inputs: Mapping[str, Any] | Any, outputs: Sequence[str] | None) -> InferRequest:
    """A Python caller's arrays as a decoded request (``check_inputs`` then checks them as it checks HTTP's)."""
    if not isinstance(inputs, Mapping):
        names = [t.name for t in model.inputs or ()]
        if len(names) != 1:
            raise RequestError(400, f"model {model.name!r} takes inputs {names}: pass a dict name -> array")
        inputs = {names[0]: inputs}
    arrays, datatypes = {}, {}
    for name, value in inputs.items():
        if not isinstance(value, np.ndarray):
            raise RequestError(
                400, f"model {model.name!r}: input {name!r} is a {type(value).__name__}; send a numpy array"
            )
        try:
            datatypes[name] = datatype_of(value.dtype)
        except ValueError as e:
            raise RequestError(400, f"model {model.name!r}: input {name!r}: {e}") from None
        arrays[name] = value.astype(value.dtype.newbyteorder("<"), copy=False)
    wanted = None if outputs is None else [codec.RequestedOutput(str(o)) for o in outputs]
    return InferRequest(inputs=arrays, datatypes=datatypes, outputs=wanted)


def _replica_id() -> str:
    try:
        from ray import serve

        return serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a Serve replica (tests, tools)
        return f"pid{os.getpid()}-{id(object())}"


def make_app(ingress: Ingress) -> FastAPI:
    """The FastAPI app of ``ingress``: the KServe v2 REST endpoints."""
    from eclip_ray import __version__

    app = FastAPI(title="eclip_ray", version=__version__)

    @app.exception_handler(RequestError)
    async def _request_error(_: Request, e: RequestError) -> Response:
        return error_response(e.failure)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException) -> Response:
        # Unknown paths and methods get the KServe error body too, not FastAPI's {"detail": ...}.
        message = f"{request.method} {request.url.path}: {e.detail}"
        return JSONResponse({"error": message}, status_code=e.status_code, headers=e.headers)

    @app.get("/v2/health/live")
    async def live() -> dict:
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return await ingress.server_ready()

    @app.get("/v2")
    async def server_metadata() -> dict:
        return {"name": "eclip_ray", "version": __version__, "extensions": EXTENSIONS}

    @app.get("/v2/models/stats")
    async def all_stats() -> Response:
        return JSONResponse(await ingress.statistics(list(ingress.models)))

    @app.get("/v2/models/{name}/stats")
    @app.get("/v2/models/{name}/versions/{version}/stats")
    async def model_stats(name: str, version: str | None = None) -> Response:
        ingress.front(name, version)
        return JSONResponse(await ingress.statistics([name]))

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> Response:
        state = await ingress.front(name, version).ready()
        if not state["ready"]:
            return error_response(Failure(400, f"model {name!r} is not ready: {state['reason']}"))
        return JSONResponse({"name": name, "ready": True, "slo": state["slo"], "warning": state["note"]})

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None) -> Response:
        return JSONResponse(await ingress.front(name, version).metadata())

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        return await ingress.infer_http(name, version, request)

    return app
