"""Overload and fault behaviour of an eclip_ray Serve application, measured over real HTTP (KServe v2).

First the capacity of one model: a closed loop of ``--concurrency`` clients for
``--capacity-s`` seconds, counting the requests answered 200 per second. Then an
open loop: Poisson arrivals at ``--load-factor`` x that capacity (2 by default)
for ``--duration-s``, from a fixed ``--seed``, each request sent at its arrival
time whether or not earlier ones were answered. Every request is counted once:
accepted (2xx), rejected (503 or 429 *with* Retry-After), errors (any other
status) or no answer (a client timeout or a broken connection). A request with
no answer is lost (``lost = sent - (accepted + rejected + errors)``) and fails
the run, as does an accepted p99 over the model's SLO when ``--check`` is given.

``--kill-actor-at S`` kills the model's GPU actor S seconds into the open loop
(``ray.kill(..., no_restart=False)``: Ray restarts it) and reports how the
requests around the kill were answered and the time until the service recovered.

Without ``--url`` the script starts its own local Ray and the application of
``--config`` (default: ``--preset``, resnet18 on the CPU backend), behind the
front ``--front`` (Serve's proxy, HAProxy or direct ingress: a setting of the Ray
it starts); with ``--url`` it loads an application already running
(``--kill-actor-at`` then needs ``--ray-address``). The model's Triton statistics
before and after the open loop give the batches that ran on the device and their
mean size, to compare how batches form with one ingress replica and with several.

    python benchmarks/serve_load.py --duration-s 20 --out benchmarks/results/cpu/load_2x.json
    python benchmarks/serve_load.py --load-factor 1 --duration-s 20 --kill-actor-at 3 --no-slo-check \\
        --out benchmarks/results/cpu/kill_recovery.json
    python benchmarks/serve_load.py --preset tiny-cnn --front haproxy --ingress-replicas 2 --load-factor 1 \\
        --no-slo-check --out /tmp/haproxy.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import shlex
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eclip_ray.actor.spec import np_dtype
from eclip_ray.bench import results
from eclip_ray.bench.load import poisson_arrivals
from eclip_ray.bench.stats import attainment, percentile
from eclip_ray.serve._private import codec
from eclip_ray.serve.config import AppConfig, ModelConfig

APP = "eclip-load"
REFUSALS = (429, 503)
# The words of refusals for load (the batcher's, the ingress's, Serve's proxy's); other 503s are faults.
OVERLOAD = ("is overloaded", "backpressure")

# Applications on the CPU backend, small enough for CI on two cores. "resnet18": the model is the bottleneck
# (a batch of 4 takes about 0.3 s of two cores), so the batcher's SLO-aware admission is what refuses the excess.
# "tiny-cnn": the model costs next to nothing and the Python HTTP front (proxy, ingress) is the bottleneck.
PRESETS: dict[str, dict[str, Any]] = {
    "resnet18": {
        "backend": "cpu",
        "models": [
            {
                "name": "resnet18",
                "max_batch_size": 4,
                "batch_wait_timeout_s": 0.002,
                "slo_ms": 500,
                "max_queue_size": 64,
            }
        ],
        "limits": {"request_timeout_s": 10, "retry_after_s": 1},
    },
    "tiny-cnn": {
        "backend": "cpu",
        "models": [
            {
                "name": "tiny-cnn",
                "max_batch_size": 8,
                "batch_wait_timeout_s": 0.002,
                "slo_ms": 250,
                "max_queue_size": 64,
            }
        ],
        "limits": {"request_timeout_s": 10, "retry_after_s": 1},
    },
}


@dataclass(frozen=True)
class Target:
    """One model's infer endpoint and a request body for it."""

    url: str
    model: str
    body: bytes
    headers: Mapping[str, str]
    slo_ms: float | None

    @property
    def endpoint(self) -> str:
        return f"{self.url}/v2/models/{self.model}/infer"


def target_for(url: str, model: ModelConfig, rows: int = 1, seed: int = 0) -> Target:
    """A binary KServe request of ``rows`` random rows for ``model`` (its inputs resolved), asking for binary outputs
    as tritonclient does by default: JSON outputs would time the server's JSON encoding of the outputs, not the path
    (benchmarks/results/h200/serve/new_path/README.md, "A measurement error")."""
    rng = np.random.default_rng(seed)
    arrays = []
    for t in model.inputs or ():
        dtype, shape = np_dtype(t.datatype), (rows, *t.shape)
        if dtype.kind == "f":
            data = rng.standard_normal(shape)
        else:  # zeros are valid token ids; bytes for images
            data = rng.integers(0, 256, shape) if t.datatype == "UINT8" else np.zeros(shape)
        arrays.append((t.name, data.astype(dtype)))
    body, json_length = codec.encode_request(arrays, binary_output=True)
    return Target(url, model.name, body, {codec.HEADER: str(json_length)}, model.slo_ms)


@dataclass
class Answer:
    """One request: when it was due and sent, and how (or whether) it was answered. Times in s from the start."""

    due_s: float
    sent_s: float
    done_s: float | None = None
    status: int | None = None  # None: no answer (timed out, connection broken)
    retry_after: str | None = None
    message: str = ""

    @property
    def latency_s(self) -> float | None:
        return None if self.done_s is None else self.done_s - self.sent_s

    @property
    def kind(self) -> str:
        if self.status is None:
            return "no_answer"
        if 200 <= self.status < 300:
            return "accepted"
        if self.status in REFUSALS and self.retry_after is not None:
            return "rejected"
        return "error"

    @property
    def fault(self) -> bool:
        """Failed for another reason than load: no answer, an error, or a refusal that is not an overload."""
        overload = any(w in self.message for w in OVERLOAD)
        return self.kind in ("no_answer", "error") or (self.kind == "rejected" and not overload)


async def _send(session, target: Target, answer: Answer, t0: float) -> Answer:
    import aiohttp

    try:
        async with session.post(target.endpoint, data=target.body, headers=dict(target.headers)) as r:
            body = await r.read()
            answer.status, answer.retry_after = r.status, r.headers.get("Retry-After")
            if r.status >= 300:
                answer.message = error_text(body)
    except (TimeoutError, aiohttp.ClientError) as e:
        answer.message = f"{type(e).__name__}: {e}"
    answer.done_s = time.perf_counter() - t0
    return answer


def error_text(body: bytes) -> str:
    """The ``error`` of a KServe error body, or its first bytes."""
    import json

    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")


def _session(timeout_s: float):
    import aiohttp

    # No connection limit: an open loop must not turn into a closed one inside the client.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=False), timeout=aiohttp.ClientTimeout(total=timeout_s)
    )


async def _closed_answers(
    target: Target, concurrency: int, duration_s: float, timeout_s: float, warmup_s: float, backoff_s: float
) -> list[Answer]:
    async with _session(timeout_s) as session:
        t0 = time.perf_counter()
        start, end = t0 + warmup_s, t0 + warmup_s + duration_s
        answers: list[Answer] = []

        async def client() -> None:
            while time.perf_counter() < end:
                a = await _send(session, target, Answer(0.0, time.perf_counter() - t0), t0)
                if a.sent_s >= start - t0 and a.done_s is not None and a.done_s <= end - t0:
                    answers.append(a)
                if a.kind != "accepted":
                    await asyncio.sleep(backoff_s)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return answers


def _closed_in_process(args: tuple) -> list[Answer]:
    return asyncio.run(_closed_answers(*args))


async def closed_loop(
    target: Target,
    concurrency: int,
    duration_s: float,
    timeout_s: float = 30.0,
    warmup_s: float = 3.0,
    backoff_s: float = 0.05,
    processes: int = 1,
) -> dict[str, Any]:
    """Capacity: ``concurrency`` clients each send the next request when the last is answered, for ``duration_s``
    after ``warmup_s``; ``capacity_rps`` counts the requests answered 2xx per second of the window. A refused
    client waits ``backoff_s`` first, so that a storm of refusals does not eat the capacity it measures. With
    ``processes`` > 1 the clients are split among that many processes, so that one Python process's CPU does not
    bound what is measured."""
    if processes > 1:
        shares = [(target, n, duration_s, timeout_s, warmup_s, backoff_s) for n in _split(concurrency, processes)]
        answers = [a for part in await _in_processes(_closed_in_process, shares) for a in part]
    else:
        answers = await _closed_answers(target, concurrency, duration_s, timeout_s, warmup_s, backoff_s)
    accepted = [a for a in answers if a.kind == "accepted"]
    kinds = Counter(a.kind for a in answers)
    return {
        "concurrency": concurrency,
        "processes": processes,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "backoff_s": backoff_s,
        "answers": dict(kinds),
        "capacity_rps": len(accepted) / duration_s,
        "latency_ms": _latency_ms(accepted),
    }


def _split(n: int, parts: int) -> list[int]:
    return [n // parts + (i < n % parts) for i in range(parts) if n // parts + (i < n % parts)]


async def _in_processes(fn: Callable, shares: Sequence[tuple]) -> list:
    """``fn(share)`` for each share, each in a process of its own (spawned: no Ray state is inherited)."""
    import concurrent.futures
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(len(shares), mp_context=ctx) as pool:
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(loop.run_in_executor(pool, fn, share) for share in shares)))


async def open_loop(
    target: Target,
    rate_rps: float,
    duration_s: float,
    seed: int = 0,
    timeout_s: float = 30.0,
    events: Mapping[float, Callable[[], Any]] | None = None,
    processes: int = 1,
) -> tuple[list[Answer], dict[str, float]]:
    """Poisson arrivals at ``rate_rps`` for ``duration_s``; each request is sent when due, answered or not.

    ``events`` maps a time (s from the start) to a function run then in a thread (e.g. killing an actor).
    Returns every request's answer, once all are in (each waits at most ``timeout_s``), and the time
    (s from the start) each event's function returned. With ``processes`` > 1 (and no events), that many
    processes each send a Poisson stream of ``rate_rps / processes`` (their sum is Poisson at ``rate_rps``).
    """
    if processes > 1 and not events:
        shares = [(target, rate_rps / processes, duration_s, seed * 1000 + i, timeout_s) for i in range(processes)]
        parts = await _in_processes(_open_in_process, shares)
        return [a for part in parts for a in part[0]], {}
    arrivals = poisson_arrivals(rate_rps, duration_s, np.random.default_rng(seed))
    happened: dict[str, float] = {}
    async with _session(timeout_s) as session:
        t0 = time.perf_counter()

        async def event(at_s: float, fn: Callable[[], Any]) -> None:
            await asyncio.sleep(max(0.0, t0 + at_s - time.perf_counter()))
            await asyncio.to_thread(fn)
            happened[f"{at_s:g}"] = time.perf_counter() - t0

        side = [asyncio.create_task(event(at, fn)) for at, fn in (events or {}).items()]
        tasks = []
        for due in arrivals:
            delay = t0 + float(due) - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            answer = Answer(float(due), time.perf_counter() - t0)
            tasks.append(asyncio.create_task(_send(session, target, answer, t0)))
        answers = await asyncio.gather(*tasks)
        await asyncio.gather(*side)
    return list(answers), happened


def _open_in_process(args: tuple) -> tuple[list[Answer], dict[str, float]]:
    return asyncio.run(open_loop(*args))


def _latency_ms(answers: Sequence[Answer]) -> dict[str, float] | None:
    ms = [1e3 * a.latency_s for a in answers if a.latency_s is not None]
    if not ms:
        return None
    return {
        "p50": percentile(ms, 50),
        "p90": percentile(ms, 90),
        "p99": percentile(ms, 99),
        "max": max(ms),
        "mean": sum(ms) / len(ms),
    }


def _messages(answers: Sequence[Answer], top: int = 6) -> list[dict[str, Any]]:
    counts = Counter((a.status, a.message) for a in answers)
    return [{"status": s, "message": m, "count": n} for (s, m), n in counts.most_common(top)]


def summarize(answers: Sequence[Answer], duration_s: float, slo_ms: float | None) -> dict[str, Any]:
    """Counts, the latency of accepted and of rejected requests, and the share of accepted within ``slo_ms``."""
    kinds = Counter(a.kind for a in answers)
    sent = len(answers)
    accepted = [a for a in answers if a.kind == "accepted"]
    rejected = [a for a in answers if a.kind == "rejected"]
    answered = kinds["accepted"] + kinds["rejected"] + kinds["error"]
    within = attainment([1e3 * a.latency_s for a in accepted], slo_ms) if accepted and slo_ms else None
    lag_ms = [1e3 * (a.sent_s - a.due_s) for a in answers]
    return {
        "sent": sent,
        "accepted": kinds["accepted"],
        "rejected": kinds["rejected"],
        "errors": kinds["error"],
        "no_answer": kinds["no_answer"],
        "lost": sent - answered,
        "reject_rate": kinds["rejected"] / sent if sent else None,
        "rejected_without_retry_after": sum(a.status in REFUSALS and a.retry_after is None for a in answers),
        "offered_rps": sent / duration_s,
        "goodput_rps": kinds["accepted"] / duration_s,
        "slo_ms": slo_ms,
        "accepted_latency_ms": _latency_ms(accepted),
        "accepted_within_slo": within,
        "rejected_latency_ms": _latency_ms(rejected),
        "send_lag_ms": {"p99": percentile(lag_ms, 99), "max": max(lag_ms)} if lag_ms else None,
        "refusal_messages": _messages(rejected),
        "error_messages": _messages([a for a in answers if a.kind in ("error", "no_answer")]),
    }


def recovery(answers: Sequence[Answer], kill_s: float) -> dict[str, Any]:
    """How the requests around a kill at ``kill_s`` went, and ``recovery_s``: from the kill to the first
    request answered 2xx among those sent after the last request that failed for a fault (None: no fault)."""
    after = [a for a in answers if a.done_s is not None and a.done_s >= kill_s]
    faults = [a for a in after if a.fault]
    inflight = [a for a in answers if a.sent_s <= kill_s and (a.done_s is None or a.done_s >= kill_s)]
    out: dict[str, Any] = {
        "kill_s": kill_s,
        "in_flight_at_kill": dict(Counter(a.kind for a in inflight)),
        "faults": len(faults),
        "fault_messages": _messages(faults),
        "faults_with_retry_after": sum(a.retry_after is not None for a in faults),
        "max_latency_after_kill_ms": max((1e3 * a.latency_s for a in after if a.latency_s is not None), default=None),
        "recovery_s": None,
        "first_fault_s": None,
        "last_fault_s": None,
    }
    if not faults:
        return out
    last = max(faults, key=lambda a: a.sent_s)
    back = [a.done_s for a in answers if a.kind == "accepted" and a.sent_s > last.sent_s]
    out["first_fault_s"] = min(a.done_s or a.sent_s for a in faults) - kill_s
    out["last_fault_s"] = (last.done_s or last.sent_s) - kill_s
    out["recovery_s"] = min(back) - kill_s if back else None
    return out


# -- the application and the machine ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A replica of a direct-ingress front (HAProxy) drains for 30 s before it stops, so that a load balancer stops
# sending it requests first; a benchmark's app on one machine stops at once.
BENCH_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1", "RAY_USAGE_STATS_ENABLED": "0"}
ENDPOINTS: dict[str, str] = {}  # "grpc": host:port of the local app's gRPC endpoint, once it runs


@contextlib.contextmanager
def local_app(
    config: Mapping[str, Any],
    num_cpus: int | None = None,
    ready_timeout_s: float = 180.0,
    ready_models: Sequence[str] | None = None,
) -> Iterator[str]:
    """A local Ray instance serving ``config`` on a free port, as application ``APP``, behind the config's front
    (set in this process's environment before Ray starts); yields its URL once every model (or those of
    ``ready_models``) is ready."""
    import ray
    from ray import serve

    from eclip_ray.serve import build_app
    from eclip_ray.serve.cli import wait_ready

    port = free_port()
    cfg = AppConfig.model_validate(config)
    os.environ.update({**BENCH_ENV, **front_env(cfg)})
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(**serve_options(cfg, port))
        serve.run(build_app(config), name=APP, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        for path in [f"/v2/models/{m}/ready" for m in ready_models] if ready_models else ["/v2/health/ready"]:
            wait_ready(url, ready_timeout_s, path)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def front_env(cfg: AppConfig) -> dict[str, str]:
    """The environment that selects the config's front (none for code from before fronts were a setting)."""
    try:
        from eclip_ray.serve.config import front_env as env
    except ImportError:
        return {}
    return env(cfg.front)


def serve_options(cfg: AppConfig, port: int) -> dict[str, Any]:
    """``serve.start``'s options for ``cfg`` on 127.0.0.1:``port``, its gRPC endpoint on a free port."""
    http = {**cfg.http_options(), "host": "127.0.0.1", "port": port}
    if not hasattr(cfg, "serve_options"):  # code from before gRPC
        return {"http_options": http}
    grpc = free_port()
    ENDPOINTS["grpc"] = f"127.0.0.1:{grpc}"
    options = cfg.model_copy(update={"grpc_port": grpc}).serve_options()
    return {**options, "http_options": http}


def model_stats(url: str, model: str) -> dict[str, Any] | None:
    """The model's Triton statistics (None if the server does not answer them)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/v2/models/{model}/stats", timeout=30) as r:
            return json.loads(r.read())["model_stats"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return None


def batching(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Batches that ran between two statistics readings, the rows they held, and the mean rows per batch."""
    if not before or not after:
        return None
    rows = after["inference_count"] - before["inference_count"]
    batches = after["execution_count"] - before["execution_count"]
    return {"rows": rows, "batches": batches, "mean_rows": rows / batches if batches else None}


def gpu_actor(gpu: int = 0, app: str = APP):
    """The handle of GPU actor ``gpu`` of application ``app`` (named by the fleet)."""
    import ray

    from eclip_ray.serve._private.fleet import NAMESPACE

    return ray.get_actor(f"eclip_ray:{app}:gpu{gpu}", namespace=NAMESPACE)


def kill_gpu_actor(gpu: int = 0, app: str = APP) -> None:
    """Kill GPU actor ``gpu`` as a crash would; Ray restarts it (``max_restarts``)."""
    import ray

    ray.kill(gpu_actor(gpu, app), no_restart=False)


def machine() -> dict[str, Any]:
    """The CPU, its cores and the versions a result file names."""
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {"python": platform.python_version(), "torch": torch.__version__}
    with contextlib.suppress(ImportError):
        import ray

        versions["ray"] = ray.__version__
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "versions": versions,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def command_of(argv: Sequence[str]) -> str:
    """The command line of a benchmark script, as run from the repository root."""
    return "python benchmarks/" + " ".join(shlex.quote(a) for a in [Path(argv[0]).name, *argv[1:]])


def _model_settings(cfg: Any) -> dict[str, Any]:
    fields = cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else dataclasses.asdict(cfg)
    inputs = [{k: t[k] for k in ("name", "datatype", "shape")} for t in fields.pop("inputs", None) or ()]
    fields.pop("outputs", None)
    return {**{k: v for k, v in fields.items() if v is not None}, "input_datatypes": [t["datatype"] for t in inputs]}


def git_commit() -> str | None:
    """The commit of the code this runs (None outside a git checkout)."""
    import subprocess

    import eclip_ray

    try:
        out = subprocess.run(
            ["git", "-C", str(Path(eclip_ray.__file__).parent), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def header(argv: Sequence[str], config: AppConfig, model: str) -> dict[str, Any]:
    return {
        "command": command_of(argv),
        "commit": git_commit(),
        "date": results.now_iso(),
        "machine": machine(),
        "backend": config.backend,
        "front": getattr(config, "front", "proxy"),
        "model": _model_settings(config.model(model)),
        "limits": config.limits.model_dump(mode="json"),
        "ingress_replicas": config.ingress_count(),
        "load_average_before": [round(x, 2) for x in os.getloadavg()],  # other jobs on the machine
    }


# -- the run ------------------------------------------------------------------------------------


@dataclass
class Settings:
    model: str | None = None
    rows: int = 1
    concurrency: int = 4
    capacity_s: float = 4.0
    load_factor: float = 2.0
    duration_s: float = 10.0
    seed: int = 0
    timeout_s: float = 30.0
    kill_actor_at_s: float | None = None
    kill_gpu: int = 0
    capacity_rps: float | None = None  # given: skip the closed loop
    overhead_s: float = 0.0  # first, one client's requests back to back for this long, per overhead model
    overhead_models: tuple[str, ...] = ()
    grpc: str | None = None  # host:port of the gRPC endpoint, for the overhead phase
    equal_rps: float | None = None  # after the loop at load_factor x capacity: one at this rate
    soak_s: float = 0.0  # last: a steady loop at soak_factor x capacity for this long, memory sampled
    soak_factor: float = 0.5
    processes: int = 1  # client processes of the closed and open loops
    also_capacity: tuple[str, ...] = ()  # more models whose capacity the closed loop measures, after the main one


def run_load(
    url: str, config: AppConfig, s: Settings, app: str = APP, checkpoint: Callable[[dict], None] = lambda _: None
) -> dict[str, Any]:
    """The phases of a run, each saved (``checkpoint``) as it ends: one client's latency (``overhead_s``),
    capacity (unless given), the open loop at ``load_factor`` x capacity (optionally with a kill), one at
    ``equal_rps``, and a soak."""
    model = config.model(s.model or config.models[0].name)
    target = target_for(url, model, s.rows, s.seed)
    out: dict[str, Any] = {}
    if s.overhead_s:
        out["overhead"] = {m: one_client(url, config.model(m), s) for m in s.overhead_models or (model.name,)}
        checkpoint(out)
    capacity = s.capacity_rps
    if capacity is None:
        before = model_stats(url, model.name)
        out["capacity"] = asyncio.run(
            closed_loop(target, s.concurrency, s.capacity_s, s.timeout_s, processes=s.processes)
        )
        out["capacity"]["batching"] = batching(before, model_stats(url, model.name))  # warm-up included
        capacity = out["capacity"]["capacity_rps"]
        if capacity <= 0:
            raise RuntimeError(f"model {model.name!r} answered no request in the closed loop: {out['capacity']}")
        for other in s.also_capacity:
            t = target_for(url, config.model(other), s.rows, s.seed)
            out.setdefault("capacity_of", {})[other] = asyncio.run(
                closed_loop(t, s.concurrency, s.capacity_s, s.timeout_s, processes=s.processes)
            )
        checkpoint(out)
    rate = s.load_factor * capacity
    events = {}
    if s.kill_actor_at_s is not None:
        events[s.kill_actor_at_s] = lambda: kill_gpu_actor(s.kill_gpu, app)
    before = model_stats(url, model.name)
    answers, happened = asyncio.run(open_loop(target, rate, s.duration_s, s.seed, s.timeout_s, events, s.processes))
    out["batching"] = batching(before, model_stats(url, model.name))
    out["open_loop"] = {
        "load_factor": s.load_factor,
        "rate_rps": rate,
        "duration_s": s.duration_s,
        "seed": s.seed,
        "rows": s.rows,
        "timeout_s": s.timeout_s,
        **summarize(answers, s.duration_s, model.slo_ms),
    }
    if s.kill_actor_at_s is not None:
        out["kill"] = {"gpu": s.kill_gpu, **recovery(answers, happened[f"{s.kill_actor_at_s:g}"])}
    checkpoint(out)
    if s.equal_rps:
        answers, _ = asyncio.run(
            open_loop(target, s.equal_rps, s.duration_s, s.seed + 1, s.timeout_s, processes=s.processes)
        )
        out["equal_load"] = {
            "rate_rps": s.equal_rps,
            "duration_s": s.duration_s,
            **summarize(answers, s.duration_s, model.slo_ms),
        }
        checkpoint(out)
    if s.soak_s:
        import serve_soak

        rate = s.soak_factor * capacity
        out["soak"] = serve_soak.soak(target, rate, s.soak_s, s.seed + 2, s.timeout_s, app, processes=s.processes)
        checkpoint(out)
    return out


def one_client(url: str, model: ModelConfig, s: Settings) -> dict[str, Any]:
    """One client's requests of one row back to back, over HTTP (binary tensors) and gRPC: p50 and p99 (ms), after
    a second of warm-up; and the model's run time alone as the GPU actor measured it at start."""
    target = target_for(url, model, 1, s.seed)

    async def http() -> list[float]:
        async with _session(s.timeout_s) as session:
            ms, end = [], time.perf_counter() + 1.0 + s.overhead_s
            while time.perf_counter() < end:
                a = await _send(session, target, Answer(0.0, 0.0), time.perf_counter())
                if a.kind != "accepted":
                    raise RuntimeError(f"model {model.name!r} answered {a.status}: {a.message}")
                ms.append(1e3 * a.done_s)
            return ms

    out: dict[str, Any] = {"http_binary": _tail(asyncio.run(http()))}
    if s.grpc:
        out["grpc"] = _tail(_grpc_one_client(s.grpc, model, s))
    out["solo"] = _solo(url, model.name)
    return out


def _tail(ms: Sequence[float]) -> dict[str, float]:
    kept = ms[max(1, len(ms) // 10) :]  # the first tenth is warm-up
    return {"requests": len(kept), "p50_ms": percentile(kept, 50), "p99_ms": percentile(kept, 99)}


def _grpc_one_client(address: str, model: ModelConfig, s: Settings) -> list[float]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=address)
    rng = np.random.default_rng(s.seed)
    inputs = []
    for t in model.inputs:
        dtype = np_dtype(t.datatype)
        data = rng.standard_normal((1, *t.shape)) if dtype.kind == "f" else np.zeros((1, *t.shape))
        inp = grpcclient.InferInput(t.name, [1, *t.shape], t.datatype)
        inp.set_data_from_numpy(data.astype(dtype))
        inputs.append(inp)
    ms, end = [], time.perf_counter() + 1.0 + s.overhead_s
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        client.infer(model.name, inputs)
        ms.append(1e3 * (time.perf_counter() - t0))
    return ms


def _solo(url: str, model: str) -> dict[str, Any] | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/v2/models/{model}/ready", timeout=30) as r:
            return json.loads(r.read()).get("slo")
    except (OSError, ValueError):
        return None


def verdict(result: Mapping[str, Any], check_slo: bool = True) -> list[str]:
    """What makes a run fail: lost requests, refusals without Retry-After, accepted p99 over the SLO."""
    o = result["open_loop"]
    problems = []
    if o["lost"]:
        problems.append(f"{o['lost']} of {o['sent']} requests got no answer")
    if o["rejected_without_retry_after"]:
        problems.append(f"{o['rejected_without_retry_after']} refusals came without Retry-After")
    p99 = (o["accepted_latency_ms"] or {}).get("p99")
    if check_slo and o["slo_ms"] and p99 is not None and p99 > o["slo_ms"]:
        problems.append(f"accepted p99 {p99:.1f} ms is over the SLO of {o['slo_ms']:g} ms")
    soak = result.get("soak")
    if soak is not None:
        problems += soak["problems"]
    kill = result.get("kill")
    if kill is not None and kill["recovery_s"] is None:
        problems.append("the service did not recover after the kill" if kill["faults"] else "the kill caused no fault")
    return problems


def add_timeout_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--timeout-s",
        type=float,
        help="client timeout: a request unanswered by then is lost (default: 5 s past the proxy's request timeout)",
    )


def client_timeout_s(config: AppConfig, given: float | None) -> float:
    """``given``, or 5 s past the proxy's request timeout: a request the server gives up on is then counted as
    its 408, not as lost."""
    return given or config.http_options()["request_timeout_s"] + 5.0


def adjusted(config: AppConfig, args: argparse.Namespace) -> AppConfig:
    """``config`` with the command line's ingress replicas, front and UINT8 images (instead of FP32, or a copy)."""
    if args.ingress_replicas is not None:
        config = config.model_copy(update={"ingress_replicas": args.ingress_replicas})
    if args.front is not None:
        config = config.model_copy(update={"front": args.front})
    name = args.model or config.models[0].name
    if args.uint8:
        config = config.model_copy(update={"models": [uint8_images(m) if m.name == name else m for m in config.models]})
    if args.uint8_copy:  # the same model (weights, loader) beside it, taking UINT8 images
        m = config.model(name)
        copy = dataclasses.replace(uint8_images(m), name=f"{name}-u8", loader=m.loader_name)
        config = config.model_copy(update={"models": [*config.models, copy]})
    return config


def uint8_images(model: ModelConfig) -> ModelConfig:
    """``model`` taking each 3-channel float image input as UINT8, normalised on the device (ImageNet's mean/std)."""
    from eclip_ray.serve.config import Normalize, TensorSpec

    inputs = [
        TensorSpec(t.name, "UINT8", t.shape, Normalize()) if t.datatype.startswith("FP") and t.shape[:1] == (3,) else t
        for t in model.inputs
    ]
    if inputs == list(model.inputs):
        raise SystemExit(f"model {model.name!r} has no 3-channel float image input to take as UINT8")
    return model.with_inputs(inputs)


def config_of(path: Path | None, preset: str) -> AppConfig:
    if path is None:
        return AppConfig.model_validate(PRESETS[preset]).resolved()
    from eclip_ray.serve import load_config

    return load_config(path)[0].resolved()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, help="AppConfig or Serve config YAML (default: --preset)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="resnet18", help="application without --config")
    p.add_argument("--url", help="an application already running (default: start --config locally)")
    p.add_argument("--ray-address", help="with --url and --kill-actor-at: the Ray cluster to find the actor in")
    p.add_argument("--app", default=APP, help="the Serve application's name (with --url)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray instance")
    p.add_argument("--model", help="model to load (default: the config's first)")
    p.add_argument("--rows", type=int, default=1, help="rows per request")
    p.add_argument("--concurrency", type=int, default=4, help="clients of the closed loop that measures capacity")
    p.add_argument("--capacity-s", type=float, default=4.0, help="length of the closed loop (after 3 s warm-up)")
    p.add_argument("--capacity-rps", type=float, help="skip the closed loop: the capacity is this")
    p.add_argument("--load-factor", type=float, default=2.0, help="open-loop rate as a multiple of the capacity")
    p.add_argument("--duration-s", type=float, default=10.0, help="length of the open loop")
    p.add_argument("--seed", type=int, default=0)
    add_timeout_argument(p)
    p.add_argument("--kill-actor-at", type=float, dest="kill_actor_at_s", help="kill the GPU actor S s into the loop")
    p.add_argument("--kill-gpu", type=int, default=0, help="which GPU actor --kill-actor-at kills")
    p.add_argument("--no-slo-check", action="store_true", help="do not fail the run for an accepted p99 over the SLO")
    p.add_argument("--ingress-replicas", type=int, help="override the config's ingress_replicas")
    p.add_argument("--front", choices=["proxy", "haproxy", "direct"], help="override the config's front")
    p.add_argument("--overhead-s", type=float, default=0.0, help="first: one client's latency, this long per model")
    p.add_argument("--overhead-models", nargs="+", default=(), help="models of the overhead phase (default: --model)")
    p.add_argument("--grpc", help="with --url: host:port of the gRPC endpoint, for the overhead phase")
    p.add_argument("--equal-rps", type=float, help="after the main loop: one at this rate (to compare servers)")
    p.add_argument("--soak-s", type=float, default=0.0, help="last: a steady loop this long, memory sampled")
    p.add_argument("--soak-factor", type=float, default=0.5, help="the soak's rate as a multiple of the capacity")
    p.add_argument("--client-processes", type=int, default=1, help="processes the load generator runs in")
    p.add_argument("--also-capacity", nargs="+", default=(), help="more models whose capacity to measure")
    p.add_argument(
        "--uint8-copy", action="store_true", help="add MODEL-u8: the model taking its images as UINT8 (same weights)"
    )
    p.add_argument("--uint8", action="store_true", help="the model takes its images as UINT8, normalised on the device")
    p.add_argument("--out", type=Path, help="write the result JSON here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = adjusted(config_of(args.config, args.preset), args)
    s = Settings(
        **{k: getattr(args, k) for k in ("model", "rows", "concurrency", "capacity_s", "load_factor", "duration_s")},
        seed=args.seed,
        timeout_s=client_timeout_s(config, args.timeout_s),
        kill_actor_at_s=args.kill_actor_at_s,
        kill_gpu=args.kill_gpu,
        capacity_rps=args.capacity_rps,
        overhead_s=args.overhead_s,
        overhead_models=tuple(args.overhead_models),
        grpc=args.grpc,
        equal_rps=args.equal_rps,
        soak_s=args.soak_s,
        soak_factor=args.soak_factor,
        processes=args.client_processes,
        also_capacity=tuple(args.also_capacity),
    )
    doc = header(sys.argv if argv is None else ["serve_load.py", *argv], config, s.model or config.models[0].name)

    def checkpoint(out: dict) -> None:  # each phase saved as it ends: a run cut short keeps what it measured
        if args.out:
            results.write({**doc, **out, "partial": True}, args.out)

    if args.url:
        if args.ray_address:
            import ray

            ray.init(address=args.ray_address)
        doc.update(run_load(args.url, config, s, args.app, checkpoint))
    else:
        with local_app(config.model_dump(mode="json"), args.num_cpus) as url:
            s.grpc = s.grpc or ENDPOINTS.get("grpc")
            doc.update(run_load(url, config, s, checkpoint=checkpoint))
    doc["problems"] = verdict(doc, not args.no_slo_check)
    doc["passed"] = not doc["problems"]
    doc["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.out:
        results.write(doc, args.out)
    _print(doc)
    return 0 if doc["passed"] else 1


def _print(doc: Mapping[str, Any]) -> None:
    o = doc["open_loop"]
    if "capacity" in doc:
        print(f"capacity: {doc['capacity']['capacity_rps']:.1f} req/s ({doc['capacity']['concurrency']} clients)")
    for m, one in (doc.get("overhead") or {}).items():
        solo = (one.get("solo") or {}).get("solo_ms")
        line = ", ".join(
            f"{k} p50 {v['p50_ms']:.2f} ms p99 {v['p99_ms']:.2f} ms" for k, v in one.items() if k != "solo"
        )
        print(f"one client, {m}: {line}; alone on its GPU {solo} ms")
    if doc.get("batching"):
        print(f"batches on the device: {doc['batching']['batches']}, mean rows {doc['batching']['mean_rows']}")
    lat = o["accepted_latency_ms"] or {}
    print(
        f"open loop {o['load_factor']:g}x = {o['rate_rps']:.1f} req/s for {o['duration_s']:g} s: sent {o['sent']}, "
        f"accepted {o['accepted']}, rejected {o['rejected']}, errors {o['errors']}, lost {o['lost']}; "
        f"accepted p50 {lat.get('p50', float('nan')):.1f} ms, p99 {lat.get('p99', float('nan')):.1f} ms "
        f"(SLO {o['slo_ms']} ms, within: {o['accepted_within_slo']})"
    )
    for key in ("equal_load", "soak"):
        if key in doc:
            e = doc[key] if key == "equal_load" else doc[key]["load"]
            el = e["accepted_latency_ms"] or {}
            print(
                f"{key} {e['rate_rps']:.1f} req/s: sent {e['sent']}, accepted {e['accepted']}, lost {e['lost']}; "
                f"p50 {el.get('p50', float('nan')):.1f} ms, p99 {el.get('p99', float('nan')):.1f} ms"
            )
    if "kill" in doc:
        k = doc["kill"]
        print(f"kill at {k['kill_s']:.2f} s: {k['faults']} faults, recovered after {k['recovery_s']} s")
    print("PASS" if doc["passed"] else "FAIL: " + "; ".join(doc["problems"]), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
