"""Serving overhead: requests/s and latency of each layer, from the in-process executor to HTTP.

The same requests (one model, ``rows`` rows each) go through five paths, each a closed loop of
``--clients`` clients that send their next request as soon as the last one is answered, counted
over ``--duration-s`` after ``--warmup-s`` of the same load:

    executor     ModelRunner.submit(...).result() in this process, outputs copied to host memory
    worker       await GpuWorker.infer(...) in this process: the actor's class without Ray
    actor        await actor.infer.remote(...): a Ray handle call to the per-GPU actor
    http-binary  the Serve application over HTTP, KServe v2 with the binary tensor extension
    http-json    the same with JSON tensors (inputs and outputs)
    grpc         the same application over gRPC (tritonclient.grpc, raw tensor contents)

Each layer's overhead is its latency minus the previous layer's (ms per request, at p50 and at
the mean time per request, clients / rps). The HTTP paths use tritonclient.http when it is
installed (``--http-client``), else plain ``requests`` with the project's codec. The client runs
on the same machine as the server. The application's batching wait is ``--batch-wait-ms`` (0 by
default: a request is sent as soon as it arrives, so that the plumbing is measured, not the
policy), and SLO admission is off.

    python benchmarks/serve_overhead.py --models tiny-cnn tiny-bert --duration-s 3 --out /tmp/overhead.json
    python benchmarks/serve_overhead.py --backend cpu --out benchmarks/results/cpu/serve_overhead.json

``--front`` puts the application behind Serve's HTTP proxy (default), HAProxy or
direct ingress (a setting of the local Ray this starts); ``--uint8`` sends image
models' inputs as UINT8, normalised on the device. The JSON records the command,
the machine, the versions and the command line to run on a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import os
import platform
import shlex
import socket
import statistics
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

PATHS = ("executor", "worker", "actor", "http-binary", "http-json", "grpc")
HTTP_PATHS = ("http-binary", "http-json", "grpc")
EXAMPLE = Path(__file__).resolve().parents[1] / "deployments" / "example.yaml"
APP = "eclip-overhead"


# -- measuring ------------------------------------------------------------------------------------


def cpu_seconds() -> float:
    """CPU time (s) of this process and every process it started: a local Ray instance, its actors and replicas."""
    try:
        import psutil  # Ray puts its bundled copy on the path once imported
    except ImportError:  # then no Ray processes either: this process alone
        return time.process_time()

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:  # ended meanwhile
            continue
        total += t.user + t.system
    return total


class Window:
    """The counting window of a closed loop: it opens ``warmup_s`` from now and closes ``duration_s`` later,
    or at the first completion after that which brings the requests counted to ``min_requests``. Requests
    that start inside it count; the CPU time of every process of the run is read when it opens and closes."""

    def __init__(self, warmup_s: float, duration_s: float, min_requests: int) -> None:
        self.start = time.perf_counter() + warmup_s
        self.end = self.start + duration_s
        self.min_requests = min_requests
        self.latencies_s: list[float] = []
        self.last_s = self.start
        self._cpu0: float | None = None
        self._timer = threading.Timer(warmup_s, self._open)
        self._timer.start()

    def _open(self) -> None:
        self._cpu0 = cpu_seconds()

    def more(self, now: float) -> bool:
        """Whether a client should send another request at ``now``."""
        return now < self.end or len(self.latencies_s) < self.min_requests

    def record(self, t0: float, t1: float) -> None:
        if t0 >= self.start:
            self.latencies_s.append(t1 - t0)
            self.last_s = max(self.last_s, t1)

    def summary(self, clients: int) -> dict[str, Any]:
        """Requests/s, nearest-rank p50 and p99 and mean latency (ms), and CPU ms per request of all processes."""
        from eclip_ray.bench.stats import percentile

        self._timer.join()
        cpu_s = cpu_seconds() - (self._cpu0 or 0.0)
        ms = [1e3 * x for x in self.latencies_s]
        if not ms:
            return {"requests": 0, "rps": 0.0, "p50_ms": None, "p99_ms": None, "mean_ms": None, "clients": clients}
        return {
            "requests": len(ms),
            "rps": round(len(ms) / (self.last_s - self.start), 2),
            "p50_ms": round(percentile(ms, 50), 3),
            "p99_ms": round(percentile(ms, 99), 3),
            "mean_ms": round(statistics.fmean(ms), 3),
            "cpu_ms_per_request": round(1e3 * cpu_s / len(ms), 3),
            "clients": clients,
        }


def closed_loop(call: Callable[[], object], clients: int, window: Window) -> dict[str, Any]:
    """``clients`` threads each calling ``call()`` back to back while ``window`` wants more."""
    errors: list[BaseException] = []

    def client() -> None:
        try:
            while window.more(t0 := time.perf_counter()):
                call()
                window.record(t0, time.perf_counter())
        except BaseException as e:  # surfaced below: a failing path must not pass for a slow one
            errors.append(e)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}") from errors[0]
    return window.summary(clients)


async def closed_loop_async(call: Callable[[], Awaitable[object]], clients: int, window: Window) -> dict[str, Any]:
    """``closed_loop`` with ``clients`` coroutines on the running event loop (as a Serve replica calls)."""

    async def client() -> None:
        while window.more(t0 := time.perf_counter()):
            await call()
            window.record(t0, time.perf_counter())

    await asyncio.gather(*(client() for _ in range(clients)))
    return window.summary(clients)


def overheads(paths: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each path's extra ms per request over the path before it (PATHS order), at p50 and at the mean."""
    out = {}
    measured = [p for p in PATHS if paths.get(p, {}).get("requests")]
    for before, after in itertools.pairwise(measured):
        a, b = paths[before], paths[after]
        out[f"{after} - {before}"] = {
            "p50_ms": round(b["p50_ms"] - a["p50_ms"], 3),
            "per_request_ms": round(1e3 * (b["clients"] / b["rps"] - a["clients"] / a["rps"]), 3),
        }
    return out


# -- the application and its requests --------------------------------------------------------------


def app_config(models: Sequence[str], batch_sizes: Sequence[int], backend: str, batch_wait_s: float, port: int = 8000):
    """The example application's models (``resnet50``, ``bert-base``: their settings from
    deployments/example.yaml), or zoo models by name, with room for the largest batch."""
    from eclip_ray.serve import AppConfig, ModelConfig, load_config

    example = {m.name: m for m in load_config(EXAMPLE)[0].models}
    biggest = max(batch_sizes)
    chosen = []
    for name in models:
        m = example.get(name) or ModelConfig(name=name)
        chosen.append(
            dataclasses.replace(
                m,
                max_batch_size=max(m.max_batch_size, biggest),
                batch_sizes=tuple(sorted({*m.captured_sizes(), *batch_sizes})),
                batch_wait_timeout_s=batch_wait_s,
            )
        )
    config = AppConfig(models=chosen, gpus=1, backend=backend, port=port, limits={"reject_over_slo": False})
    return config.resolved()


def with_front(config, front: str, uint8: bool, grpc_port: int):
    """``config`` behind ``front``, with its gRPC endpoint on ``grpc_port`` and, with ``uint8``, image inputs as
    UINT8 normalised on the device."""
    config = config.model_copy(update={"front": front, "grpc_port": grpc_port})
    if uint8:
        from serve_load import uint8_images

        models = [uint8_images(m) if any(t.shape[:1] == (3,) for t in m.inputs) else m for m in config.models]
        config = config.model_copy(update={"models": models})
    return config


def request_arrays(config, model: str, rows: int) -> list[np.ndarray]:
    """One request of ``rows`` rows for ``model``: the zoo's random inputs (bytes for UINT8 inputs), as little-endian
    arrays."""
    from eclip_ray.actor.loader import zoo_entry

    m = config.model(model)
    made = zoo_entry(m).make_inputs(rows)
    rng = np.random.default_rng(0)
    out = []
    for t, x in zip(m.inputs, made, strict=True):
        out.append(rng.integers(0, 256, tuple(x.shape), dtype=np.uint8) if t.datatype == "UINT8" else x.numpy())
    return [np.ascontiguousarray(a) for a in out]


def resolve_backend(backend: str) -> str:
    import torch

    if backend == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return backend


# -- the five paths ---------------------------------------------------------------------------------


def executor_paths(config, cases, backend: str, args) -> dict:
    """``executor`` per case: the models' runners on one Runtime, whole-GPU plan, host in and out."""
    import torch

    from eclip_ray.actor.loader import zoo_entry
    from eclip_ray.actor.plans import WHOLE_PLAN
    from eclip_ray.runtime import Runtime

    out = {}
    with Runtime(backend, workers=len(config.models)) as rt:
        runners = {
            m.name: rt.load(m.name, zoo_entry(m), normalize=[t.normalize for t in m.inputs]) for m in config.models
        }
        for name, rows, arrays in cases:
            runner = runners[name]
            if runner.on_gpu:
                runner.capture(WHOLE_PLAN, rows)
            tensors = tuple(torch.from_numpy(a).to(dt) for a, dt in zip(arrays, runner.input_dtypes, strict=True))

            def call(runner=runner, tensors=tensors) -> None:
                for o in runner.submit(tensors, WHOLE_PLAN).result():
                    o.cpu()

            out[(name, rows)] = _measured("executor", name, rows, closed_loop(call, *_load(args)))
    return out


def worker_paths(config, cases, backend: str, args) -> dict:
    """``worker`` per case: GpuWorker in this process, its ``infer`` awaited on one event loop."""
    from eclip_ray.actor.worker import GpuWorker

    worker = GpuWorker(config.models, backend=backend)
    _check_loaded(worker.ready())

    async def run_all() -> dict:
        out = {}
        for name, rows, arrays in cases:

            def call(name=name, arrays=arrays):
                return worker.infer(name, arrays)

            out[(name, rows)] = _measured("worker", name, rows, await closed_loop_async(call, *_load(args)))
        return out

    try:
        return asyncio.run(run_all())
    finally:
        worker.close()


def actor_paths(config, cases, backend: str, args) -> dict:
    """``actor`` per case: the GpuWorker Ray actor, called from this driver's event loop as a replica would."""
    import ray

    from eclip_ray.actor.remote import worker_class

    cls = worker_class(1.0 if backend == "cuda" else 0.0, config.actor_num_cpus, max_restarts=0)
    actor = cls.remote(models=config.models, backend=backend)
    try:
        _check_loaded(ray.get(actor.ready.remote()))

        async def run_all() -> dict:
            out = {}
            for name, rows, arrays in cases:

                async def call(name=name, arrays=arrays):
                    return await actor.infer.remote(name, arrays)

                out[(name, rows)] = _measured("actor", name, rows, await closed_loop_async(call, *_load(args)))
            return out

        return asyncio.run(run_all())
    finally:
        ray.kill(actor)


def http_paths(config, cases, args) -> dict:
    """``http-binary``, ``http-json`` and ``grpc`` per case through the Serve application on a local port."""
    from ray import serve

    from eclip_ray.serve import build_app

    url = f"http://127.0.0.1:{config.port}"
    serve.start(**{**config.serve_options(), "http_options": {**config.http_options(), "host": "127.0.0.1"}})
    serve.run(build_app(config), name=APP, route_prefix="/")
    try:
        _wait_ready(url, args.ready_timeout_s)
        out = {}
        for name, rows, arrays in cases:
            for path in HTTP_PATHS:
                if path not in args.paths:
                    continue
                if path == "grpc":
                    make = _grpc_factory(f"127.0.0.1:{config.grpc_port}", name, config.model(name), arrays)
                else:
                    binary = path == "http-binary"
                    make = _client_factory(args.http_client, url, name, config.model(name), arrays, binary)
                out[(name, rows, path)] = _measured(path, name, rows, _threaded(make, args))
        return out
    finally:
        serve.delete(APP)


def _threaded(make: Callable[[], Callable[[], object]], args) -> dict:
    """closed_loop with one client object (connection) per thread, made in the thread that uses it."""
    local = threading.local()

    def call() -> object:
        if not hasattr(local, "send"):
            local.send = make()
        return local.send()

    return closed_loop(call, *_load(args))


def _client_factory(kind: str, url: str, model: str, cfg, arrays: Sequence[np.ndarray], binary: bool):
    """A function making one client's ``send()``, which posts one request and checks and decodes its answer."""
    names = [t.name for t in cfg.inputs]
    if kind == "tritonclient":
        import tritonclient.http as httpclient

        def make_triton() -> Callable[[], object]:
            client = httpclient.InferenceServerClient(url=url.removeprefix("http://"))

            def send() -> object:
                inputs = []
                for name, a, spec in zip(names, arrays, cfg.inputs, strict=True):
                    inp = httpclient.InferInput(name, list(a.shape), spec.datatype)
                    inp.set_data_from_numpy(a, binary_data=binary)
                    inputs.append(inp)
                result = client.infer(model, inputs, outputs=_triton_outputs(client, model, binary))
                return [result.as_numpy(o["name"]) for o in result.get_response()["outputs"]]

            return send

        return make_triton
    import requests

    from eclip_ray.serve._private import codec

    def make_requests() -> Callable[[], object]:
        session = requests.Session()

        def send() -> object:
            body, length = codec.encode_request(list(zip(names, arrays, strict=True)), binary, binary_output=binary)
            headers = {} if length is None else {codec.HEADER: str(length)}
            r = session.post(f"{url}/v2/models/{model}/infer", data=body, headers=headers, timeout=120)
            r.raise_for_status()
            return codec.decode_response(r.content, codec.header_length(r.headers.get(codec.HEADER)))[1]

        return send

    return make_requests


def _grpc_factory(address: str, model: str, cfg, arrays: Sequence[np.ndarray]):
    """``send()`` makers for tritonclient.grpc: raw tensor contents both ways."""
    import tritonclient.grpc as grpcclient

    def make_grpc() -> Callable[[], object]:
        client = grpcclient.InferenceServerClient(url=address)
        outputs = [grpcclient.InferRequestedOutput(o.name) for o in client.get_model_metadata(model).outputs]

        def send() -> object:
            inputs = []
            for spec, a in zip(cfg.inputs, arrays, strict=True):
                inp = grpcclient.InferInput(spec.name, list(a.shape), spec.datatype)
                inp.set_data_from_numpy(a)
                inputs.append(inp)
            result = client.infer(model, inputs, outputs=outputs)
            return [result.as_numpy(o.name()) for o in outputs]

        return send

    return make_grpc


_OUTPUTS: dict[tuple[str, bool], list] = {}


def _triton_outputs(client, model: str, binary: bool) -> list:
    import tritonclient.http as httpclient

    if (model, binary) not in _OUTPUTS:
        names = [o["name"] for o in client.get_model_metadata(model)["outputs"]]
        _OUTPUTS[(model, binary)] = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
    return _OUTPUTS[(model, binary)]


def _load(args) -> tuple[int, Window]:
    return args.clients, Window(args.warmup_s, args.duration_s, args.min_requests)


def _measured(path: str, model: str, rows: int, summary: dict) -> dict:
    print(
        f"{model:10s} bs{rows:<2d} {path:12s} {summary['rps']:9.1f} req/s  p50 {summary['p50_ms']} ms  "
        f"p99 {summary['p99_ms']} ms  CPU {summary.get('cpu_ms_per_request')} ms/request",
        flush=True,
    )
    return summary


def _check_loaded(ready: dict) -> None:
    failed = {name: m["error"] for name, m in ready["models"].items() if not m["ready"]}
    if failed:
        raise SystemExit(f"models failed to load: {failed}")


def _wait_ready(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=10):
                return
        except OSError as e:  # HTTPError (400: loading) included
            if time.monotonic() > deadline:
                raise SystemExit(f"the application was not ready after {timeout_s:.0f} s: {e}") from None
        time.sleep(0.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the record -------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model and cores, and the GPU where torch sees one."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "host": platform.node()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def versions() -> dict[str, str]:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for name in ("ray", "fastapi", "tritonclient"):
        try:
            from importlib.metadata import version

            out[name] = version(name)
        except Exception:
            out[name] = "not installed"
    return out


def gpu_command(args: argparse.Namespace) -> str:
    """This run's command line for the GPU session: the cuda backend, the example models, under $OUT."""
    argv = ["python3", "benchmarks/serve_overhead.py", "--backend", "cuda"]
    argv += ["--batch-sizes", *map(str, args.batch_sizes), "--clients", str(args.clients)]
    argv += ["--warmup-s", str(args.warmup_s), "--duration-s", str(args.duration_s)]
    argv += ["--min-requests", str(args.min_requests)]
    return " ".join(argv) + ' --out "$OUT/serve_overhead.json"'


def run(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    """Measure every requested path for every model and batch size; the result document."""
    import torch

    load_before = os.getloadavg()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.cpu_threads))  # the Ray actor computes with as many
    torch.set_num_threads(args.cpu_threads)
    backend = resolve_backend(args.backend)
    config = app_config(args.models, args.batch_sizes, backend, args.batch_wait_ms / 1e3, args.port or _free_port())
    config = with_front(config, args.front, args.uint8, _free_port())
    cases = [(m, rows, request_arrays(config, m, rows)) for m in args.models for rows in args.batch_sizes]
    found: dict = {}
    if "executor" in args.paths:
        found |= {(*k, "executor"): v for k, v in executor_paths(config, cases, backend, args).items()}
    if "worker" in args.paths:
        found |= {(*k, "worker"): v for k, v in worker_paths(config, cases, backend, args).items()}
    if {"actor", *HTTP_PATHS} & set(args.paths):
        import ray

        from eclip_ray.serve.config import front_env

        os.environ.update({**front_env(config.front), "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"})
        ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False)
        try:
            if "actor" in args.paths:
                found |= {(*k, "actor"): v for k, v in actor_paths(config, cases, backend, args).items()}
            if set(HTTP_PATHS) & set(args.paths):
                found |= http_paths(config, cases, args)
        finally:
            from ray import serve

            serve.shutdown()
            ray.shutdown()
    results = []
    for name, rows, _ in cases:
        paths = {p: found[(name, rows, p)] for p in PATHS if (name, rows, p) in found}
        results.append({"model": name, "batch_size": rows, "paths": paths, "overhead_ms": overheads(paths)})
    return {
        "command": "python benchmarks/serve_overhead.py " + shlex.join(argv),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine() | {"load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)]},
        "versions": versions(),
        "backend": backend,
        "settings": {
            "clients": args.clients,
            "warmup_s": args.warmup_s,
            "duration_s": args.duration_s,
            "min_requests": args.min_requests,
            "batch_wait_ms": args.batch_wait_ms,
            "cpu_threads": args.cpu_threads,
            "http_client": args.http_client,
            "front": args.front,
            "uint8": args.uint8,
        },
        "gpu_command": gpu_command(args),
        "results": results,
    }


def markdown(doc: dict[str, Any]) -> str:
    """A summary table: requests/s, p50 and CPU ms per request per path, and each layer's overhead at p50."""
    m = doc["machine"]
    lines = [
        f"Machine: {m.get('gpu') or m['cpu']} ({m['cores']} cores), backend {doc['backend']}, "
        f"{doc['settings']['clients']} client(s), {doc['settings']['duration_s']} s per path; "
        f"ray {doc['versions']['ray']}, torch {doc['versions']['torch']}, python {doc['versions']['python']}; "
        f"{doc['date']}.",
        "",
        "| model | batch | " + " | ".join(PATHS) + " | overhead at p50 (ms) |",
        "| --- | --- | " + " | ".join("---" for _ in PATHS) + " | --- |",
    ]
    for r in doc["results"]:
        cells = []
        for p in PATHS:
            s = r["paths"].get(p)
            if not s or not s["requests"]:
                cells.append("-")
            else:
                cells.append(f"{s['rps']:g} rps, p50 {s['p50_ms']:g} ms, CPU {s['cpu_ms_per_request']:g} ms")
        over = ", ".join(f"{k.split(' - ')[0]} +{v['p50_ms']:g}" for k, v in r["overhead_ms"].items())
        lines.append(f"| {r['model']} | {r['batch_size']} | " + " | ".join(cells) + f" | {over} |")
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=["resnet50", "bert-base"], help="example or zoo models")
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8], help="rows per request")
    ap.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    ap.add_argument("--backend", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--clients", type=int, default=1, help="concurrent closed-loop clients")
    ap.add_argument("--warmup-s", type=float, default=2.0)
    ap.add_argument("--duration-s", type=float, default=5.0)
    ap.add_argument("--min-requests", type=int, default=5, help="the window stays open until this many are counted")
    ap.add_argument("--batch-wait-ms", type=float, default=0.0, help="the application's batch_wait_timeout_s, in ms")
    ap.add_argument("--cpu-threads", type=int, default=1, help="torch threads here and in the Ray actor")
    ap.add_argument("--http-client", choices=["tritonclient", "requests"], default=_default_client())
    ap.add_argument("--port", type=int, default=0, help="HTTP port (0: a free one)")
    ap.add_argument("--front", choices=["proxy", "haproxy", "direct"], default="proxy", help="how HTTP gets in")
    ap.add_argument("--uint8", action="store_true", help="image inputs as UINT8, normalised on the device")
    ap.add_argument("--ready-timeout-s", type=float, default=600.0)
    ap.add_argument("--out", type=Path, default=None, help="JSON result; a .md summary is written beside it")
    return ap


def _default_client() -> str:
    try:
        import tritonclient.http  # noqa: F401
    except ImportError:
        return "requests"
    return "tritonclient"


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    doc = run(args, argv)
    table = markdown(doc)
    print("\n" + table + f"\nOn a GPU: {doc['gpu_command']}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
        args.out.with_suffix(".md").write_text(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
