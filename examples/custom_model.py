"""Your own nn.Module served by eclip_ray from Python, behind a preprocessing deployment of your own.

    python examples/custom_model.py                                 # a local Ray, serving until Ctrl-C
    serve run examples.custom_model:app --route-prefix /classify    # with Serve's CLI (Serve's defaults: HTTP 8000)

    curl -s -X POST localhost:8000/classify -d '{"features": [0.5, -1, 2, 0, 1, 1, 0, 0, 3, -2, 1, 0, 0, 1, 2, 1]}'

The model (``TinyClassifier``, below) is declared with ``eclip_ray.serve.model`` from the class and an example
batch: its inputs and outputs are inferred from the example (docs/python-api.md). ``Classify`` is a plain Ray Serve
deployment taking Serve's HTTP request: it reads raw JSON, makes the feature array, calls the eclip_ray app through
a DeploymentHandle (``await handle.infer.remote(model, {input: array})``, no HTTP in between; the same batching,
admission and checks as a KServe request) and answers with the softmax's top classes. The two compose into one
application, whose HTTP ingress is ``Classify``: the eclip_ray app's KServe endpoints are then reachable through the
handle only. (Serve takes one FastAPI ingress per application, and eclip_ray's is one: a FastAPI deployment of your
own runs as an application of its own and gets the handle with ``serve.get_app_handle``; docs/python-api.md.)
"""

import os

import numpy as np
import torch
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse
from torch import nn

import eclip_ray.serve as eclip

FEATURES = 16
LABELS = ("cat", "dog", "bird", "fish")
MODEL = "tiny-classifier"


class TinyClassifier(nn.Module):
    """A two-layer MLP from 16 features to 4 class scores (random weights, seeded alike in every GPU actor)."""

    def __init__(self, features: int = FEATURES, classes: int = len(LABELS)) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Classify:
    """Raw JSON in, the eclip_ray model through its handle, the top classes out."""

    def __init__(self, eclip_app: DeploymentHandle, top_k: int = 2) -> None:
        self.eclip = eclip_app
        self.top_k = top_k

    async def __call__(self, request: Request) -> JSONResponse:
        try:
            body = await request.json()
            features = np.asarray(body["features"], dtype=np.float32).reshape(1, -1)  # one row: the batch axis
        except (ValueError, KeyError, TypeError) as e:
            return JSONResponse({"error": f'send {{"features": [{FEATURES} numbers]}} ({e})'}, status_code=400)
        try:
            out = await self.eclip.infer.remote(MODEL, {"features": features})
        except eclip.InvalidInput as e:  # e.g. the wrong number of features: the model's own check
            return JSONResponse({"error": str(e)}, status_code=400)
        except eclip.ModelUnavailable as e:  # overloaded, or not loaded yet: retry
            return JSONResponse({"error": str(e)}, status_code=503, headers={"Retry-After": "1"})
        return JSONResponse(answer(out["output0"][0], self.top_k))


def answer(scores: np.ndarray, top_k: int) -> dict:
    """Softmax of one row's class scores, its argmax and its ``top_k`` classes."""
    p = np.exp(scores - scores.max())
    p /= p.sum()
    order = np.argsort(-p)[:top_k]
    return {
        "label": LABELS[int(order[0])],
        "top_k": [{"label": LABELS[int(i)], "probability": float(p[i])} for i in order],
    }


def build(**options) -> serve.Application:
    """The composed application; ``options`` are the eclip_ray app's AppConfig fields (ports, backend, ...)."""
    classifier = eclip.model(
        TinyClassifier,
        example=torch.zeros(2, FEATURES),  # inputs: "features" (forward's parameter), FP32, [16]; outputs inferred
        name=MODEL,
        slo_ms=200,
        max_batch_size=8,
        batch_wait_timeout_s=0.005,
    )
    return Classify.bind(eclip.build_app([classifier], **options))


app = build()


def main() -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    print("POST http://127.0.0.1:8000/classify with {'features': [16 numbers]} once Serve is up; Ctrl-C stops it")
    try:  # starts Ray and Serve (HTTP 8000, gRPC 9000), then serves until Ctrl-C
        eclip.run(app, name="custom-model", route_prefix="/classify", blocking=True)
    except KeyboardInterrupt:
        serve.shutdown()


if __name__ == "__main__":
    main()
