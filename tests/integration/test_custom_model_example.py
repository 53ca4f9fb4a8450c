"""examples/custom_model.py through real Ray Serve on the CPU backend: a user's own nn.Module declared in Python,
behind the example's preprocessing deployment, which calls the eclip_ray app through a DeploymentHandle.

``eclip_ray.serve.run`` starts Serve with the app's options (free ports here). The answers are checked against the
same module built locally under the GPU actor's seed: the actor built the weights the driver inferred the specs
with. A direct handle call shows the failures a Python caller gets: the project's exceptions, not HTTP statuses.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = pytest.mark.integration

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

import torch  # noqa: E402
from test_serve_http import _free_port  # noqa: E402

import eclip_ray.serve as eclip  # noqa: E402
from eclip_ray.actor.loader import SEED  # noqa: E402
from examples import custom_model as example  # noqa: E402

APP = "custom-model-test"


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        app = example.build(backend="cpu", port=port, grpc_port=None)
        eclip.run(app, name=APP, route_prefix="/classify")
        ingress = serve.get_deployment_handle("ingress", app_name=APP)
        deadline = time.monotonic() + 120
        while True:  # the GPU actor loads the model in the background: ModelUnavailable until it has
            try:
                ingress.infer.remote(example.MODEL, {"features": np.zeros((1, example.FEATURES), "f4")}).result()
                break
            except eclip.ModelUnavailable:
                assert time.monotonic() < deadline, "the model did not load"
                time.sleep(0.5)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield client, ingress
    finally:
        serve.shutdown()
        ray.shutdown()


def _expected(features: np.ndarray) -> dict:
    torch.manual_seed(SEED)
    local = example.TinyClassifier().eval()
    with torch.no_grad():
        scores = local(torch.from_numpy(features)).numpy()
    return example.answer(scores[0], 2)


def test_the_preprocessing_deployment_answers_with_the_seeded_models_top_classes(server):
    client, _ = server
    rng = np.random.default_rng(0)
    rows = [rng.standard_normal(example.FEATURES).astype("f4") for _ in range(3)]
    for row in rows:
        r = client.post("/classify", json={"features": row.tolist()})
        assert r.status_code == 200, r.text
        got, want = r.json(), _expected(row.reshape(1, -1))
        assert got["label"] == want["label"] and [c["label"] for c in got["top_k"]] == [
            c["label"] for c in want["top_k"]
        ]
        assert np.allclose(
            [c["probability"] for c in got["top_k"]], [c["probability"] for c in want["top_k"]], atol=1e-5
        )


def test_a_wrong_feature_count_is_the_models_own_check_named_by_input(server):
    client, _ = server
    r = client.post("/classify", json={"features": [1.0, 2.0]})
    assert r.status_code == 400 and "'features'" in r.json()["error"] and "[-1, 16]" in r.json()["error"], r.text
    assert client.post("/classify", content=b"not json").status_code == 400


def test_python_callers_get_outputs_by_name_and_the_projects_exceptions(server):
    _, ingress = server
    x = np.zeros((3, example.FEATURES), "f4")
    out = ingress.infer.remote(example.MODEL, {"features": x}).result()
    assert list(out) == ["output0"] and out["output0"].shape == (3, len(example.LABELS))
    with pytest.raises(eclip.InvalidInput, match="datatype FP64"):
        ingress.infer.remote(example.MODEL, {"features": x.astype("f8")}).result()
    with pytest.raises(eclip.UnknownModel, match="unknown model 'nope'"):
        ingress.infer.remote("nope", {"features": x}).result()


def test_the_eclip_ingress_imports_no_torch_for_a_python_declared_model(server):
    _, ingress = server
    assert ingress.process.remote().result()["torch"] is False
