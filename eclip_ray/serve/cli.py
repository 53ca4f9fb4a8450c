"""``eclip-ray serve``: the example application (or any config) on a local Ray instance, until interrupted."""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

EXAMPLE = Path(__file__).resolve().parents[2] / "deployments" / "example.yaml"


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="serve models over HTTP (KServe v2) with Ray Serve until interrupted")
    p.add_argument("--config", type=Path, default=None, help=f"Serve config YAML (default: {EXAMPLE})")
    p.add_argument("--host", default=None, help="HTTP bind address (default: the config's, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="HTTP port (default: the config's)")
    p.add_argument("--backend", choices=["auto", "cuda", "cpu"], default=None, help="override the config's backend")
    p.add_argument(
        "--front",
        choices=["proxy", "haproxy", "direct"],
        default=None,
        help="how HTTP reaches the ingress replicas (default: the config's; set on the local Ray this starts)",
    )
    p.add_argument("--grpc-port", type=int, default=None, help="KServe v2 gRPC port (default: the config's, 9000)")
    p.add_argument("--ingress-replicas", type=int, default=None, help="replicas of the front (default: the config's)")
    p.add_argument("--metrics-port", type=int, default=8080, help="Ray's Prometheus export port (local Ray only)")
    p.add_argument("--ready-timeout-s", type=float, default=900.0, help="how long to wait for the models to load")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import ray
    from ray import serve

    from eclip_ray.serve import build_app
    from eclip_ray.serve.config import front_env

    cfg, entry = app_config(args)
    name = entry.get("name", "eclip")
    local = "RAY_ADDRESS" not in os.environ
    if local:  # Serve reads its front from the environment of the processes the local Ray starts
        os.environ.update(front_env(cfg.front))
        # With direct ingress a replica drains 30 s before it stops, for an outside load balancer; HAProxy here is
        # reconfigured by Serve itself, so Ctrl-C need not wait that long.
        os.environ.setdefault("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "2")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(**({"_metrics_export_port": args.metrics_port} if local else {}))
    try:
        serve.start(**cfg.serve_options())
        serve.run(build_app(cfg), name=name, route_prefix=entry.get("route_prefix", "/"))
        url = f"http://{cfg.host}:{cfg.port}"
        ready = wait_ready(url, args.ready_timeout_s)
        fleet = serve.get_deployment_handle("gpu-fleet", app_name=name).describe.remote().result()
        _banner(url, cfg, fleet, args.metrics_port if local else None, ready.get("warnings", []))
        _block_until_interrupted()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def app_config(args: argparse.Namespace):
    """The AppConfig to serve (the config file's, with the command line's overrides) and its Serve entry."""
    from eclip_ray.serve import load_config

    path = args.config or EXAMPLE
    if not path.is_file():
        raise SystemExit(f"no config at {path}; pass --config PATH")
    cfg, entry = load_config(path)
    overrides = {"host": args.host, "port": args.port, "backend": args.backend, "front": args.front}
    overrides["ingress_replicas"] = args.ingress_replicas
    if args.grpc_port is not None:
        overrides["grpc_port"] = args.grpc_port
    return cfg.model_copy(update={k: v for k, v in overrides.items() if v is not None}).resolved(), entry


def wait_ready(url: str, timeout_s: float, path: str = "/v2/health/ready") -> dict:
    """Block until ``url`` answers ``path`` (by default: every model is ready) with 200, and return its JSON
    document; SystemExit with the reason after ``timeout_s``."""
    deadline, last_note = time.monotonic() + timeout_s, 0.0
    while True:
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=10) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            reason = json.loads(e.read() or b"{}").get("error", f"HTTP {e.code}")
        except OSError as e:
            reason = str(e)
        if time.monotonic() > deadline:
            raise SystemExit(f"the models were not ready after {timeout_s:.0f} s: {reason}")
        if time.monotonic() - last_note > 15:
            print(f"waiting for the models to load ({reason})", flush=True)
            last_note = time.monotonic()
        time.sleep(1.0)


def example_requests(url: str, cfg) -> dict[str, str]:
    """Per model, a JSON request file of one random row and the curl line that sends it."""
    from eclip_ray.actor.spec import np_dtype
    from eclip_ray.serve._private.codec import encode_request

    rng = np.random.default_rng(0)
    lines = {}
    for model in cfg.models:
        arrays = []
        for t in model.inputs:
            dtype = np_dtype(t.datatype)
            data = rng.standard_normal((1, *t.shape)) if dtype.kind == "f" else rng.integers(0, 100, (1, *t.shape))
            arrays.append((t.name, data.astype(dtype)))
        body, _ = encode_request(arrays, binary=False)
        path = Path(tempfile.gettempdir()) / f"eclip_ray_{model.name}_request.json"
        path.write_bytes(body)
        lines[model.name] = (
            f"curl -s -H 'Content-Type: application/json' -d @{path} {url}/v2/models/{model.name}/infer "
            "| head -c 300; echo"
        )
    return lines


def _banner(url: str, cfg, fleet: dict, metrics_port: int | None, warnings: list[str]) -> None:
    curls = example_requests(url, cfg)
    print(f"\neclip_ray is serving {[m.name for m in cfg.models]} at {url}  (backend: {fleet['backend']})")
    for gpu, models in enumerate(fleet["placement"]["gpus"]):
        print(f"  GPU {gpu}: {list(models)}")
    if cfg.grpc_port is not None:
        print(f"  gRPC (KServe v2, tritonclient.grpc): {cfg.host}:{cfg.grpc_port}")
    print(f"  front: {cfg.front}")
    for w in warnings:
        print(f"  WARNING: {w}")
    print(f"\n  curl {url}/v2/health/ready")
    print(f"  curl {url}/v2/models/{cfg.models[0].name}")
    for curl in curls.values():
        print(f"  {curl}")
    if metrics_port is not None:
        print(f"  curl -s http://127.0.0.1:{metrics_port}/metrics | grep eclip_")
    print("\nCtrl-C stops it.", flush=True)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def _block_until_interrupted() -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
