"""The HTTP front: KServe v2 (Open Inference Protocol) over FastAPI, one ingress for all models.

Ray Serve allows one ingress deployment per application, so this one routes
``/v2/models/{name}/...`` to the model's own deployment (batching) through its
handle. A request is decoded and checked against the model here: a bad one is
answered 4xx without touching a batch or a GPU. Errors are KServe-style
``{"error": "..."}``; retryable ones are 503 with Retry-After.

``Ingress`` is a plain class; ``make_app(ingress)`` builds the FastAPI app, and
Serve calls ``__serve_build_asgi_app__`` for it in the replica.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from eclip_ray.serve._private import codec
from eclip_ray.serve._private.admission import FrontLimit
from eclip_ray.serve._private.errors import Failure, RequestError, unavailable
from eclip_ray.serve._private.metrics import RayServeMetrics, ServeMetrics
from eclip_ray.serve._private.model_deployment import Reply
from eclip_ray.serve._private.validate import check_inputs, check_outputs
from eclip_ray.serve.config import AppConfig, ModelConfig

log = logging.getLogger(__name__)

VERSION = "1"
READY_TIMEOUT_S = 5.0


def _is_backpressure(e: Exception) -> bool:
    from ray.serve.exceptions import BackPressureError

    return isinstance(e, BackPressureError)


def error_response(failure: Failure) -> JSONResponse:
    return JSONResponse({"error": failure.message}, status_code=failure.status, headers=failure.headers())


class Ingress:
    """``models`` maps each model name to a handle of its ModelDeployment."""

    def __init__(self, config: dict, models: Mapping[str, Any], metrics: bool = True) -> None:
        self.cfg = AppConfig.model_validate(config)
        self.specs = {m.name: m for m in self.cfg.models}
        self.models = dict(models)
        self.metrics: ServeMetrics = RayServeMetrics(self.specs) if metrics else ServeMetrics()
        self._output_names: dict[str, tuple[str, ...]] = {}
        # Each model's requests in progress in this replica, held to its share of the model's front bound and,
        # for a model with an SLO, to what the front gets through within it (admission.py).
        replicas = self.cfg.ingress_count()
        share = self.cfg.limits.front_slo_share
        self.limits = {
            m.name: FrontLimit(math.ceil(m.front_bound() / replicas), share * m.slo_ms / 1e3 if m.slo_ms else None)
            for m in self.cfg.models
        }

    def __serve_build_asgi_app__(self) -> FastAPI:
        return make_app(self)

    def spec(self, name: str, version: str | None = None) -> ModelConfig:
        if name not in self.specs:
            raise RequestError(404, f"unknown model {name!r}; this server serves {sorted(self.specs)}")
        if version not in (None, "", VERSION):
            raise RequestError(404, f"model {name!r} has no version {version!r}; it has version {VERSION}")
        return self.specs[name]

    # -- inference --------------------------------------------------------------------------

    async def infer(self, name: str, version: str | None, request: Request) -> Response:
        t0, status = time.perf_counter(), 500
        try:
            response = await self._infer(name, version, request)
            status = response.status_code
            return response
        except RequestError as e:
            status = e.failure.status
            return error_response(e.failure)
        except Exception as e:  # a bug, not the client's fault: still one KServe-style answer
            log.exception("request for model %r failed", name)
            return error_response(Failure(500, f"internal error ({type(e).__name__}); see the server's log"))
        finally:
            slo = self.specs[name].slo_ms if name in self.specs else None
            self.metrics.request(name, status, time.perf_counter() - t0, slo)

    async def _infer(self, name: str, version: str | None, request: Request) -> Response:
        received_at = time.time()  # wall clock: the model's deployment compares it in another process
        model = self.spec(name, version)
        limit = self.limits[name]
        if not limit.admit():  # refused before its body is read: cheap, and at once
            raise unavailable(
                f"model {name!r} is overloaded: {limit.ongoing} of its requests are in progress in this ingress "
                f"replica, as many as it takes at once now (at most {limit.ceiling}); retry later",
                self.cfg.limits.retry_after_s,
            )
        t0 = time.perf_counter()
        try:
            return await self._admitted(name, model, request, received_at)
        finally:
            limit.done(time.perf_counter() - t0)

    async def _admitted(self, name: str, model: ModelConfig, request: Request, received_at: float) -> Response:
        body = await self._body(request)
        decoded = codec.decode_request(body, codec.header_length(request.headers.get(codec.HEADER)))
        arrays, _ = check_inputs(model, decoded)
        if name in self._output_names:  # known after the first answer: refuse before running the model
            check_outputs(name, decoded, self._output_names[name])
        reply = await self._call(name, arrays, received_at)
        self._output_names[name] = reply.names
        check_outputs(name, decoded, reply.names)
        binary = codec.binary_choice(decoded, reply.names)
        outputs = [(n, o) for n, o in zip(reply.names, reply.outputs, strict=True) if n in binary]
        payload, json_length = codec.encode_response(name, outputs, binary, decoded.id)
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

    async def _call(self, name: str, arrays: list, received_at: float) -> Reply:
        try:
            reply: Reply = await self.models[name].infer.remote(arrays, received_at)
        except Exception as e:  # the model's deployment itself is down, or Serve's queue before it is full
            why = (
                "is overloaded: too many requests waiting"
                if _is_backpressure(e)
                else f"is unavailable ({type(e).__name__})"
            )
            raise unavailable(f"model {name!r} {why}; retry later", self.cfg.limits.retry_after_s) from None
        if reply.failure is not None:
            raise RequestError(reply.failure.status, reply.failure.message, reply.failure.retry_after_s)
        return reply

    # -- health, metadata, statistics -------------------------------------------------------

    async def model_ready(self, name: str) -> dict:
        try:
            return await asyncio.wait_for(self.models[name].ready.remote(), READY_TIMEOUT_S)
        except Exception as e:
            return {"ready": False, "reason": f"its deployment is not answering ({type(e).__name__})"}

    async def server_ready(self) -> Response:
        states = await asyncio.gather(*(self.model_ready(n) for n in self.specs))
        waiting = [f"{n}: {s['reason']}" for n, s in zip(self.specs, states, strict=True) if not s["ready"]]
        if waiting:
            return error_response(Failure(400, "not ready: " + "; ".join(waiting)))
        return JSONResponse({"ready": True})

    async def metadata(self, name: str, version: str | None) -> Response:
        self.spec(name, version)
        meta = await self.models[name].metadata.remote()
        if "error" in meta:
            return error_response(Failure(503, meta["error"], self.cfg.limits.retry_after_s))
        return JSONResponse(meta)

    async def statistics(self, names: list[str]) -> Response:
        stats = await asyncio.gather(*(self.models[n].statistics.remote() for n in names))
        return JSONResponse({"model_stats": list(stats)})


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
        return {"name": "eclip_ray", "version": __version__, "extensions": ["binary_tensor_data", "statistics"]}

    @app.get("/v2/models/stats")
    async def all_stats() -> Response:
        return await ingress.statistics(list(ingress.specs))

    @app.get("/v2/models/{name}/stats")
    @app.get("/v2/models/{name}/versions/{version}/stats")
    async def model_stats(name: str, version: str | None = None) -> Response:
        ingress.spec(name, version)
        return await ingress.statistics([name])

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def model_ready(name: str, version: str | None = None) -> Response:
        ingress.spec(name, version)
        state = await ingress.model_ready(name)
        if not state["ready"]:
            return error_response(Failure(400, f"model {name!r} is not ready: {state['reason']}"))
        return JSONResponse({"name": name, "ready": True})

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    async def model_metadata(name: str, version: str | None = None) -> Response:
        return await ingress.metadata(name, version)

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None) -> Response:
        return await ingress.infer(name, version, request)

    return app
