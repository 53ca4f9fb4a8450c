"""The anchor: the same models served the way a Ray Serve user would without eclip_ray, under the same requests.

Each model is its own Serve application (route prefix ``/v2/models/{name}``), one
replica on a fraction of the GPU (``num_gpus = 1 / models``; none on the CPU),
answering ``POST /infer`` with ``@serve.batch`` (the model's ``max_batch_size``
and ``batch_wait_timeout_s`` from the config) and torch eager (fp16 on a GPU,
fp32 on the CPU) under ``torch.inference_mode``. Requests and answers are KServe
v2 with binary tensors, decoded and encoded with the codec eclip_ray's front
uses (a few microseconds; what a user's own parsing would cost at best), so the
load generator of ``serve_load.py`` drives both alike: its closed loop measures
the capacity of ``--model``, then its open loop offers ``--rate-rps`` (default:
that capacity) of Poisson arrivals. The modules are the zoo's (the same
torchvision and transformers architectures, random weights); nothing else of
eclip_ray runs in the serving path.

    python benchmarks/serve_anchor.py --config deployments/example.yaml --model resnet50 --out /tmp/anchor.json
"""

# No `from __future__ import annotations`: FastAPI reads the route's `request: Request` annotation in the replica,
# where the class arrives pickled by value, without this module's globals.
import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import serve_load
from fastapi import FastAPI, Request

from eclip_ray.bench import results
from eclip_ray.serve.config import AppConfig, ModelConfig


class PlainModel:
    """One model as a plain Serve deployment: FastAPI route, ``@serve.batch``, torch eager. Built by ``app_of``."""

    def __init__(self, model: ModelConfig, device: str) -> None:
        import torch

        from eclip_ray.actor.loader import zoo_entry

        entry = zoo_entry(model)
        self.device = torch.device(device)
        self.dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        self.model = entry.build().to(self.device, self.dtype).eval()
        self.inputs = model.inputs
        self.name = model.name

    async def handle(self, request) -> Any:
        """One KServe v2 request: decode, wait for its batch, encode."""
        from fastapi.responses import Response

        from eclip_ray.serve._private import codec

        body = await request.body()
        decoded = codec.decode_request(body, codec.header_length(request.headers.get(codec.HEADER)))
        arrays = [decoded.inputs[t.name] for t in self.inputs]
        outputs = [(f"output{i}", o) for i, o in enumerate(await self.batched(arrays))]
        binary = codec.binary_choice(decoded, [n for n, _ in outputs])
        payload, n = codec.encode_response(self.name, outputs, binary, decoded.id)
        if n is None:
            return Response(payload, media_type="application/json")
        return Response(payload, media_type="application/octet-stream", headers={codec.HEADER: str(n)})

    def run(self, requests: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        """One batch: each request's arrays joined per input, one forward, the outputs split back."""
        import torch

        rows = [len(r[0]) for r in requests]
        with torch.inference_mode():
            inputs = []
            for i in range(len(self.inputs)):
                x = torch.from_numpy(np.concatenate([r[i] for r in requests])).to(self.device)
                inputs.append(x.to(self.dtype) if x.is_floating_point() else x)
            out = self.model(*inputs)
            outs = [o.float().cpu().numpy() for o in (out if isinstance(out, tuple | list) else (out,))]
        split = np.cumsum(rows)[:-1]
        return [list(parts) for parts in zip(*(np.split(o, split) for o in outs), strict=True)]


def app_of(model: ModelConfig, device: str, gpu_share: float):
    """The plain Serve application of ``model``: FastAPI ingress, ``@serve.batch``, ``gpu_share`` of a GPU."""
    from ray import serve

    api = FastAPI()

    @serve.deployment(
        name=f"plain-{model.name}",
        ray_actor_options={"num_gpus": gpu_share, "num_cpus": 0},
        max_ongoing_requests=2 * model.max_batch_size,  # room for a batch to form: Serve's default is 5
    )
    @serve.ingress(api)
    class Plain(PlainModel):
        @serve.batch(max_batch_size=model.max_batch_size, batch_wait_timeout_s=model.batch_wait_timeout_s)
        async def batched(self, requests: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
            return self.run(requests)

        @api.post("/infer")
        async def infer(self, request: Request):
            return await self.handle(request)

    return Plain.bind(model, device)


@contextlib.contextmanager
def plain_apps(config: AppConfig, device: str, num_cpus: int | None = None) -> Iterator[str]:
    """A local Ray instance serving every model of ``config`` as plain Serve applications; yields the URL."""
    import ray
    from ray import serve

    port = serve_load.free_port()
    os.environ.update(serve_load.BENCH_ENV)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    if __name__ != "__main__":  # imported (tests): the replicas get this module's classes by value
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        serve.start(http_options={**config.http_options(), "host": "127.0.0.1", "port": port})
        share = 1.0 / len(config.models) if device == "cuda" else 0.0
        for m in config.models:
            serve.run(app_of(m, device, share), name=f"plain-{m.name}", route_prefix=f"/v2/models/{m.name}")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def run(url: str, config: AppConfig, args: argparse.Namespace) -> dict[str, Any]:
    model = config.model(args.model or config.models[0].name)
    target = serve_load.target_for(url, model, args.rows, args.seed)
    timeout = serve_load.client_timeout_s(config, args.timeout_s)
    out: dict[str, Any] = {}
    if args.rate_rps is None:
        out["capacity"] = asyncio.run(
            serve_load.closed_loop(target, args.concurrency, args.capacity_s, timeout, processes=args.client_processes)
        )
    rate = args.rate_rps or args.load_factor * out["capacity"]["capacity_rps"]
    answers, _ = asyncio.run(
        serve_load.open_loop(target, rate, args.duration_s, args.seed, timeout, processes=args.client_processes)
    )
    out["open_loop"] = {
        "rate_rps": rate,
        "duration_s": args.duration_s,
        "seed": args.seed,
        "rows": args.rows,
        **serve_load.summarize(answers, args.duration_s, model.slo_ms),
    }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="AppConfig or Serve config YAML (default: serve_load's --preset)")
    p.add_argument("--preset", choices=sorted(serve_load.PRESETS), default="resnet18")
    p.add_argument("--model", help="model to load (default: the config's first)")
    p.add_argument("--backend", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=4, help="clients of the closed loop that measures capacity")
    p.add_argument("--capacity-s", type=float, default=4.0)
    p.add_argument("--rate-rps", type=float, help="the open loop's rate (default: --load-factor x the capacity)")
    p.add_argument("--load-factor", type=float, default=1.0, help="the open loop's rate as a multiple of the capacity")
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-cpus", type=int)
    p.add_argument("--client-processes", type=int, default=1, help="processes the load generator runs in")
    serve_load.add_timeout_argument(p)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    import torch

    config = serve_load.config_of(args.config, args.preset)
    device = "cuda" if args.backend == "cuda" or (args.backend == "auto" and torch.cuda.is_available()) else "cpu"
    doc = serve_load.header(sys.argv if argv is None else ["serve_anchor.py", *argv], config, args.model or "")
    doc.update({"anchor": "plain Ray Serve: @serve.batch, torch eager", "device": device, "front": "proxy"})
    with plain_apps(config, device, args.num_cpus) as url:
        doc.update(run(url, config, args))
    o = doc["open_loop"]
    doc["problems"] = [f"{o['lost']} of {o['sent']} requests got no answer"] if o["lost"] else []
    doc["passed"] = not doc["problems"]
    if args.out:
        results.write(doc, args.out)
    lat = o["accepted_latency_ms"] or {}
    if "capacity" in doc:
        print(f"capacity: {doc['capacity']['capacity_rps']:.1f} req/s ({args.concurrency} clients)")
    print(
        f"open loop {o['rate_rps']:.1f} req/s for {args.duration_s:g} s: sent {o['sent']}, accepted {o['accepted']}, "
        f"rejected {o['rejected']}, errors {o['errors']}, lost {o['lost']}; accepted p50 "
        f"{lat.get('p50', float('nan')):.1f} ms, p99 {lat.get('p99', float('nan')):.1f} ms",
        flush=True,
    )
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
