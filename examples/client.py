"""A client of the example application: tritonclient.http (binary tensors), plain requests (JSON) and tritonclient.grpc.

    python examples/client.py [--url 127.0.0.1:8000] [--grpc 127.0.0.1:9000] [--requests 20]

None of the clients needs eclip_ray: any KServe v2 / Triton client works.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import requests
import tritonclient.http as httpclient


def classify(client: httpclient.InferenceServerClient, batch: int) -> np.ndarray:
    """ResNet-50 through tritonclient: the input and the output travel as raw bytes."""
    images = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    inp = httpclient.InferInput("input", list(images.shape), "FP32")
    inp.set_data_from_numpy(images)  # binary_data=True: the binary tensor data extension
    result = client.infer("resnet50", [inp], outputs=[httpclient.InferRequestedOutput("output0")])
    return result.as_numpy("output0")


def encode(url: str, batch: int) -> np.ndarray:
    """BERT-base through plain HTTP and JSON."""
    ids = np.random.default_rng(1).integers(0, 30522, (batch, 128))
    body = {"inputs": [{"name": "input_ids", "datatype": "INT64", "shape": list(ids.shape), "data": ids.tolist()}]}
    r = requests.post(f"http://{url}/v2/models/bert-base/infer", json=body, timeout=60)
    if r.status_code != 200:
        raise SystemExit(f"HTTP {r.status_code}: {r.json().get('error')}")
    out = r.json()["outputs"][0]
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def over_grpc(address: str) -> None:
    """Both models through tritonclient.grpc (KServe v2's GRPCInferenceService), raw tensors both ways."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=address)
    print("gRPC server ready:", client.is_server_ready())
    rng = np.random.default_rng(2)
    for model, name, x, datatype in (
        ("resnet50", "input", rng.standard_normal((1, 3, 224, 224)).astype(np.float32), "FP32"),
        ("bert-base", "input_ids", rng.integers(0, 30522, (1, 128)), "INT64"),
    ):
        inp = grpcclient.InferInput(name, list(x.shape), datatype)
        inp.set_data_from_numpy(x)
        t0 = time.perf_counter()
        out = client.infer(model, [inp]).as_numpy("output0")
        print(f"gRPC {model}: output0 {out.shape} in {1e3 * (time.perf_counter() - t0):.1f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="127.0.0.1:8000", help="host:port of the server")
    p.add_argument("--grpc", default=None, help="host:port of its gRPC endpoint (e.g. 127.0.0.1:9000)")
    p.add_argument("--requests", type=int, default=20, help="requests per model for the latency line")
    args = p.parse_args()

    client = httpclient.InferenceServerClient(url=args.url)
    if not client.is_server_ready():
        raise SystemExit(f"{args.url} is not ready yet: {requests.get(f'http://{args.url}/v2/health/ready').text}")
    print("server:", client.get_server_metadata())
    print("resnet50:", client.get_model_metadata("resnet50"))

    logits = classify(client, batch=2)
    print("resnet50 logits", logits.shape, "top-5 of image 0:", np.argsort(logits[0])[::-1][:5].tolist())
    hidden = encode(args.url, batch=2)
    print("bert-base last hidden state", hidden.shape, "mean", float(hidden.mean()))

    for name, call in (("resnet50", lambda: classify(client, 1)), ("bert-base", lambda: encode(args.url, 1))):
        ms = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            call()
            ms.append(1e3 * (time.perf_counter() - t0))
        print(f"{name}: p50 {statistics.median(ms):.1f} ms over {len(ms)} sequential requests (batch 1)")
    stats = client.get_inference_statistics("resnet50")["model_stats"][0]
    print("resnet50 stats: inferences", stats["inference_count"], "batches", stats["execution_count"])
    if args.grpc:
        over_grpc(args.grpc)


if __name__ == "__main__":
    main()
