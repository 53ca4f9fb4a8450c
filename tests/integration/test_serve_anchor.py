"""The anchor of the serving benchmarks (``benchmarks/serve_anchor.py``): plain Ray Serve deployments with
``@serve.batch`` answer the same KServe v2 requests as eclip_ray's front, with the same outputs, and its batches
form from concurrent requests."""

from __future__ import annotations

import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import serve_anchor  # noqa: E402
import serve_load  # noqa: E402

from eclip_ray.actor.loader import zoo_entry  # noqa: E402
from eclip_ray.serve._private import codec  # noqa: E402

IMG = np.random.default_rng(5).standard_normal((1, 3, 32, 32)).astype("<f4")


def test_plain_serve_answers_kserve_requests_as_eclip_does():
    import torch

    config = serve_load.config_of(None, "tiny-cnn")
    model = config.model("tiny-cnn")
    with torch.inference_mode():
        expected = zoo_entry(model).build().eval()(torch.from_numpy(IMG)).numpy()
    with serve_anchor.plain_apps(config, "cpu", num_cpus=2) as url:
        body, n = codec.encode_request([("input", IMG)], binary_output=True)

        def send(_: int) -> httpx.Response:
            return httpx.post(
                f"{url}/v2/models/tiny-cnn/infer", content=body, headers={codec.HEADER: str(n)}, timeout=60
            )

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, range(8)))
    for r in answers:
        assert r.status_code == 200, r.text
        _, outputs = codec.decode_response(r.content, int(r.headers[codec.HEADER]))
        np.testing.assert_allclose(outputs["output0"], expected, rtol=1e-4, atol=1e-5)
