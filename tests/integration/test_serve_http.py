"""End to end through real Ray Serve on the CPU backend: tritonclient.http and .grpc, plain HTTP, JSON and binary.

One application for the module, behind Serve's HTTP and gRPC proxies: two
logical GPUs (CPU backend, ``num_gpus=0`` actors), tiny-cnn replicated on both,
tiny-bert on one and a ResNet-18 with a short queue ("flood") on the other, a
TinyCNN exported to ONNX ("onnx-cnn", loaded from ``allowed_model_dirs``, run by
onnxruntime) beside tiny-bert, tiny-cnn taking UINT8 images ("cnn-u8") and
tiny-cnn with an SLO no hardware meets ("strict"). The last test kills a GPU
actor and watches requests fail fast with 503 and recover by themselves.
"""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pytest

pytestmark = pytest.mark.integration

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
httpx = pytest.importorskip("httpx")
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")

from onnx_export import export_zoo  # noqa: E402

from eclip_ray.actor.loader import zoo_entry  # noqa: E402
from eclip_ray.serve import AppConfig, build_app  # noqa: E402
from eclip_ray.serve._private import codec  # noqa: E402

APP = "eclip-test"
CONFIG = {
    "gpus": 2,
    "backend": "cpu",
    "models": [
        # a long wait so that concurrent requests surely meet in one batch
        {"name": "tiny-cnn", "replicas": 2, "max_batch_size": 8, "batch_wait_timeout_s": 0.3},
        {"name": "tiny-bert", "max_batch_size": 4, "batch_wait_timeout_s": 0.002, "slo_ms": 5000},
        # to be flooded: a short queue before a model slow enough on a CPU (~40 ms a row) to fill it
        {"name": "flood", "loader": "resnet18", "max_batch_size": 1, "batch_wait_timeout_s": 0, "max_queue_size": 2},
        # images as bytes, normalised on the device: the same answers as tiny-cnn on the normalised floats
        {
            "name": "cnn-u8",
            "loader": "tiny-cnn",
            "max_batch_size": 4,
            "inputs": [{"name": "input", "datatype": "UINT8", "shape": [3, 32, 32], "normalize": {}}],
        },
        # an SLO of 1 us: no hardware meets it, so it is reported and refuses nothing
        {"name": "strict", "loader": "tiny-cnn", "max_batch_size": 2, "slo_ms": 0.001},
    ],
    "limits": {"request_timeout_s": 20, "retry_after_s": 1, "max_request_bytes": 1 << 20},
}
IMG = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype("<f4")
IDS = np.random.default_rng(1).integers(0, 1000, (3, 16)).astype("<i8")


@dataclass
class Server:
    url: str
    host_port: str
    metrics_url: str
    grpc: str


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            r = httpx.get(f"{url}/v2/health/ready", timeout=5)
            if r.status_code == 200:
                return
            reason = r.text
        except httpx.HTTPError as e:
            reason = repr(e)
        if time.monotonic() > deadline:
            raise TimeoutError(f"not ready after {timeout_s} s: {reason}")
        time.sleep(0.5)


ONNX_MODEL = "onnx-cnn"


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny-cnn.onnx"
    export_zoo("tiny-cnn", path)
    return path


@pytest.fixture(scope="module")
def server(onnx_file):
    http_port, metrics_port, grpc_port = _free_port(), _free_port(), _free_port()
    config = {
        **CONFIG,
        "models": [*CONFIG["models"], {"name": ONNX_MODEL, "loader": f"onnx:{onnx_file}", "max_batch_size": 4}],
        "allowed_model_dirs": [str(onnx_file.parent)],
        "port": http_port,
        "grpc_port": grpc_port,
        "front": "proxy",
    }
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        _metrics_export_port=metrics_port,
        _system_config={"metrics_report_interval_ms": 1000},
    )
    try:
        serve.start(**AppConfig.model_validate(config).serve_options())
        serve.run(build_app(config), name=APP, route_prefix="/")
        url = f"http://127.0.0.1:{http_port}"
        _wait_ready(url, 120)
        metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        yield Server(url, f"127.0.0.1:{http_port}", metrics, f"127.0.0.1:{grpc_port}")
    finally:
        serve.shutdown()
        ray.shutdown()


def reference(name: str, x: np.ndarray) -> np.ndarray:
    import torch

    served = AppConfig.model_validate(CONFIG).resolved().model(name)
    with torch.inference_mode():
        return zoo_entry(served).build().eval()(torch.from_numpy(np.array(x))).numpy()


def test_tritonclient_health_metadata_and_binary_inference(server):
    client = httpclient.InferenceServerClient(url=server.host_port)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny-cnn") and client.is_model_ready("tiny-bert")
    meta = client.get_model_metadata("tiny-cnn")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    expected = reference("tiny-cnn", IMG)
    for _ in range(4):  # replicas on both GPUs (round-robin): the same seeded weights answer alike
        inp = httpclient.InferInput("input", list(IMG.shape), "FP32")
        inp.set_data_from_numpy(IMG)
        out = client.infer("tiny-cnn", [inp]).as_numpy("output0")
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    gpus = client.get_inference_statistics("tiny-cnn")["model_stats"][0]["gpus"]
    assert sorted(g["gpu"] for g in gpus) == [0, 1] and all(g["inferences"] > 0 for g in gpus)


def test_tritonclient_grpc_health_metadata_inference_and_statistics(server):
    client = grpcclient.InferenceServerClient(url=server.grpc)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("tiny-cnn")
    assert "binary_tensor_data" in client.get_server_metadata(as_json=True)["extensions"]
    meta = client.get_model_metadata("tiny-bert", as_json=True)
    assert meta["inputs"] == [{"name": "input_ids", "datatype": "INT64", "shape": ["-1", "16"]}]
    before = client.get_inference_statistics("tiny-bert", as_json=True)["model_stats"][0]
    inp = grpcclient.InferInput("input_ids", list(IDS.shape), "INT64")
    inp.set_data_from_numpy(IDS)
    out = client.infer("tiny-bert", [inp], outputs=[grpcclient.InferRequestedOutput("output0")])
    np.testing.assert_allclose(out.as_numpy("output0"), reference("tiny-bert", IDS), rtol=1e-4, atol=1e-5)
    after = client.get_inference_statistics("tiny-bert", as_json=True)["model_stats"][0]
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == len(IDS)


def test_tritonclient_grpc_sees_the_errors_as_status_codes(server):
    client = grpcclient.InferenceServerClient(url=server.grpc)
    inp = grpcclient.InferInput("input", [1, 3, 16, 16], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3, 16, 16), "f4"))
    with pytest.raises(grpcclient.InferenceServerException) as e:
        client.infer("tiny-cnn", [inp])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "the model takes [-1, 3, 32, 32]" in e.value.message()
    with pytest.raises(grpcclient.InferenceServerException) as e:
        client.infer("resnet9", [inp])
    assert e.value.status() == "StatusCode.NOT_FOUND" and "unknown model 'resnet9'" in e.value.message()
    with pytest.raises(grpcclient.InferenceServerException, match="NOT_FOUND"):
        client.is_model_ready("resnet9")
    good = grpcclient.InferInput("input", list(IMG.shape), "FP32")
    good.set_data_from_numpy(IMG)
    assert client.infer("tiny-cnn", [good]).as_numpy("output0").shape == (2, 10)  # it serves on


def test_uint8_images_give_what_fp32_normalised_images_give(server):
    images = np.random.default_rng(3).integers(0, 256, (2, 3, 32, 32)).astype("u1")
    mean, std = (np.array(v, "f4").reshape(1, 3, 1, 1) for v in ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    floats = ((images.astype("f4") / 255 - mean) / std).astype("f4")
    client = httpclient.InferenceServerClient(url=server.host_port)
    inp = httpclient.InferInput("input", list(images.shape), "UINT8")
    inp.set_data_from_numpy(images)
    got = client.infer("cnn-u8", [inp]).as_numpy("output0")
    np.testing.assert_allclose(got, reference("tiny-cnn", floats), rtol=1e-4, atol=1e-5)
    assert client.get_model_metadata("cnn-u8")["inputs"][0]["datatype"] == "UINT8"


def test_an_slo_no_hardware_meets_is_reported_and_refuses_no_request(server):
    ready = httpx.get(f"{server.url}/v2/models/strict/ready", timeout=10).json()
    assert ready["slo"]["feasible"] is False and ready["slo"]["solo_ms"] > 0.001
    assert "cannot be met on this hardware" in ready["warning"]
    assert any("model 'strict'" in w for w in httpx.get(f"{server.url}/v2/health/ready", timeout=10).json()["warnings"])
    meta = httpx.get(f"{server.url}/v2/models/strict", timeout=10).json()
    assert meta["parameters"]["slo"]["feasible"] is False
    with ThreadPoolExecutor(8) as pool:  # concurrent, so most wait behind others: none is refused for the SLO
        codes = list(pool.map(lambda _: _infer(server, "strict", "input", IMG[:1]).status_code, range(8)))
    assert codes == [200] * 8


def test_the_ingress_replicas_never_import_torch(server):
    ingress = serve.get_deployment_handle("ingress", app_name=APP)
    process = ingress.process.remote().result(timeout_s=30)
    assert process["torch"] is False, process  # and the libraries are not mapped either:
    maps = open(f"/proc/{process['pid']}/maps").read()  # noqa: SIM115 - read once
    assert "libtorch" not in maps and "libc10" not in maps


def test_an_onnx_model_from_an_allowed_dir_answers_as_onnxruntime(server, onnx_file):
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"input": IMG})[0]
    r = _infer(server, ONNX_MODEL, "input", IMG)
    assert r.status_code == 200, r.text
    _, outputs = codec.decode_response(r.content, codec.header_length(r.headers.get(codec.HEADER)))
    np.testing.assert_allclose(outputs["output0"], expected, rtol=1e-4, atol=1e-5)
    meta = httpx.get(f"{server.url}/v2/models/{ONNX_MODEL}", timeout=10).json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]


def test_tritonclient_json_inputs_and_outputs(server):
    client = httpclient.InferenceServerClient(url=server.host_port)
    inp = httpclient.InferInput("input_ids", list(IDS.shape), "INT64")
    inp.set_data_from_numpy(IDS, binary_data=False)
    result = client.infer("tiny-bert", [inp], outputs=[httpclient.InferRequestedOutput("output0", binary_data=False)])
    assert "parameters" not in result.get_output("output0")  # JSON data, not bytes
    np.testing.assert_allclose(result.as_numpy("output0"), reference("tiny-bert", IDS), rtol=1e-4, atol=1e-5)


def test_tritonclient_sees_kserve_errors(server):
    client = httpclient.InferenceServerClient(url=server.host_port)
    inp = httpclient.InferInput("input", [1, 3, 16, 16], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3, 16, 16), "f4"))
    with pytest.raises(httpclient.InferenceServerException) as e:
        client.infer("tiny-cnn", [inp])
    assert e.value.status() == "400" and "the model takes [-1, 3, 32, 32]" in e.value.message()


def test_plain_http_json_and_hand_framed_binary(server):
    doc = {"id": "r1", "inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [3, 16], "data": IDS.tolist()}]}
    r = httpx.post(f"{server.url}/v2/models/tiny-bert/infer", json=doc, timeout=30)
    assert r.status_code == 200 and r.json()["id"] == "r1"
    out = r.json()["outputs"][0]
    assert out["shape"] == [3, 16, 64] and out["datatype"] == "FP32"
    via_json = np.array(out["data"], dtype="f4").reshape(3, 16, 64)

    head = json.dumps(
        {
            "inputs": [
                {"name": "input_ids", "datatype": "INT64", "shape": [3, 16], "parameters": {"binary_data_size": 384}}
            ],
            "outputs": [{"name": "output0", "parameters": {"binary_data": True}}],
        }
    ).encode()
    r = httpx.post(
        f"{server.url}/v2/models/tiny-bert/infer",
        content=head + IDS.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"},
        timeout=30,
    )
    assert r.status_code == 200
    n = int(r.headers["Inference-Header-Content-Length"])
    meta = json.loads(r.content[:n])["outputs"][0]
    assert meta["parameters"]["binary_data_size"] == 3 * 16 * 64 * 4 == len(r.content) - n
    np.testing.assert_array_equal(np.frombuffer(r.content[n:], "<f4").reshape(3, 16, 64), via_json)


def _head(shape: list[int], size: int) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "parameters": {"binary_data_size": size}}]}
    ).encode()


ONE = np.zeros((1, 3, 32, 32), "<f4").tobytes()
BAD_OVER_HTTP = {  # id: (path, body, headers, status, words)
    "malformed JSON": ("tiny-cnn/infer", b'{"inputs": [{"name": ', {}, 400, "malformed"),
    "wrong datatype": (
        "tiny-cnn/infer",
        json.dumps({"inputs": [{"name": "input", "datatype": "INT8", "shape": [1, 3], "data": [1, 2, 3]}]}).encode(),
        {},
        400,
        "has datatype INT8; the model takes FP32",
    ),
    "header length past the body": (
        "tiny-cnn/infer",
        _head([1, 3, 32, 32], 12288) + ONE,
        {codec.HEADER: "99999"},
        400,
        "but the body has",
    ),
    "binary_data_size vs shape": (
        "tiny-cnn/infer",
        _head([2, 3, 32, 32], 12288) + ONE,
        {codec.HEADER: str(len(_head([2, 3, 32, 32], 12288)))},
        400,
        "needs 24576",
    ),
    "body over the limit": ("tiny-cnn/infer", b" " * (2 << 20), {}, 413, "the limit is 1048576"),
    "unknown path": ("tiny-cnn/explain", b"{}", {}, 404, "Not Found"),
}


@pytest.mark.parametrize(("path", "body", "headers", "status", "words"), BAD_OVER_HTTP.values(), ids=BAD_OVER_HTTP)
def test_bad_requests_over_http_leave_the_models_serving(server, path, body, headers, status, words):
    r = httpx.post(f"{server.url}/v2/models/{path}", content=body, headers=headers, timeout=30)
    assert r.status_code == status and words in r.json()["error"], r.text
    assert _infer(server, "tiny-cnn", "input", IMG[:1]).status_code == 200
    assert _infer(server, "tiny-bert", "input_ids", IDS[:1]).status_code == 200


def test_bad_requests_over_http(server):
    r = httpx.post(f"{server.url}/v2/models/resnet9/infer", content=b"{}", timeout=10)
    assert r.status_code == 404 and "unknown model 'resnet9'" in r.json()["error"]
    body, _ = codec.encode_request([("input", np.zeros((9, 3, 32, 32), "f4"))], binary=False)
    r = httpx.post(f"{server.url}/v2/models/tiny-cnn/infer", content=body, timeout=10)
    assert r.status_code == 400 and "exceeds max_batch_size 8" in r.json()["error"]


def _infer(server, model: str, name: str, array: np.ndarray) -> httpx.Response:
    body, n = codec.encode_request([(name, array)])
    return httpx.post(f"{server.url}/v2/models/{model}/infer", content=body, headers={codec.HEADER: str(n)}, timeout=30)


def _stats(server, model: str) -> dict:
    return httpx.get(f"{server.url}/v2/models/{model}/stats", timeout=10).json()["model_stats"][0]


def test_concurrent_requests_are_batched(server):
    before = _stats(server, "tiny-cnn")
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda _: _infer(server, "tiny-cnn", "input", IMG[:1]).status_code, range(8)))
    assert codes == [200] * 8
    after = _stats(server, "tiny-cnn")
    requests = after["inference_count"] - before["inference_count"]
    batches = after["execution_count"] - before["execution_count"]
    assert requests == 8 and batches < 8
    assert max(b["batch_size"] for b in after["batch_stats"]) > 1


FLOOD = 48  # requests, all sent at once
FLOOD_IMG = np.zeros((1, 3, 224, 224), "<f4")


def test_a_flooded_model_answers_every_request_once_200_or_503(server):
    before = _stats(server, "flood")
    with httpx.Client(timeout=60, limits=httpx.Limits(max_connections=FLOOD)) as client:

        def send(i: int) -> httpx.Response:
            body, n = codec.encode_request([("input", FLOOD_IMG)])
            return client.post(f"{server.url}/v2/models/flood/infer", content=body, headers={codec.HEADER: str(n)})

        with ThreadPoolExecutor(FLOOD) as pool:
            answers = list(pool.map(send, range(FLOOD)))
    codes = [r.status_code for r in answers]
    assert len(answers) == FLOOD and set(codes) <= {200, 503}, codes
    for r in answers:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1" and "'flood' is overloaded" in r.json()["error"], r.text
    ok, refused = codes.count(200), codes.count(503)
    assert ok >= 1 and refused >= 1, codes  # 2 queued and 2 running cannot hold 48 at once
    after = _stats(server, "flood")  # the model counted each answered request once; some were refused before it
    assert after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"] == ok
    assert after["inference_stats"]["fail"]["count"] - before["inference_stats"]["fail"]["count"] <= refused
    assert _infer(server, "flood", "input", FLOOD_IMG).status_code == 200  # and it serves on


def test_metrics_reach_prometheus(server):
    httpx.post(
        f"{server.url}/v2/models/tiny-bert/infer",
        json={"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [1, 16], "data": [0] * 16}]},
        timeout=30,
    )
    wanted = [
        "ray_eclip_requests_total{",
        "ray_eclip_request_latency_ms_bucket{",
        "ray_eclip_queue_time_ms_bucket{",
        "ray_eclip_batch_size_bucket{",
        "ray_eclip_gpu_plan{",
        "ray_eclip_slo_feasible{",
    ]
    deadline, text = time.monotonic() + 30, ""
    while time.monotonic() < deadline:
        text = httpx.get(server.metrics_url, timeout=10).text
        if all(w in text for w in wanted):
            break
        time.sleep(1)
    lines = [line for line in text.splitlines() if line.startswith("ray_eclip_")]
    for w in wanted:
        assert any(line.startswith(w) for line in lines), f"{w} missing from {lines}"
    assert any('model="tiny-bert"' in line for line in lines if line.startswith("ray_eclip_requests_total"))
    assert any('plan="whole"' in line for line in lines if line.startswith("ray_eclip_gpu_plan{"))
    assert any('model="strict"' in line and line.endswith(" 0.0") for line in lines if "eclip_slo_feasible{" in line)
    assert not any(line.startswith("ray_eclip_joules_per_inference") for line in lines)  # no energy on the CPU


def test_a_killed_gpu_actor_gives_fast_503s_then_recovers(server):
    actor = ray.get_actor(f"eclip_ray:{APP}:gpu0", namespace="eclip_ray")  # hosts tiny-bert and a tiny-cnn replica
    ray.kill(actor, no_restart=False)
    t0, statuses = time.monotonic(), []
    while time.monotonic() - t0 < 90:
        start = time.monotonic()
        r = _infer(server, "tiny-bert", "input_ids", IDS[:1])
        assert time.monotonic() - start < 25  # an answer, not a hang
        statuses.append(r.status_code)
        if r.status_code == 200:
            break
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        # meanwhile the replicated model keeps answering from GPU 1
        assert _infer(server, "tiny-cnn", "input", IMG[:1]).status_code == 200
        time.sleep(0.5)
    assert statuses[-1] == 200 and 503 in statuses, statuses
