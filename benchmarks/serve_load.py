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
``--config`` (default: ``--preset``, resnet18 on the CPU backend); with ``--url`` it loads an
application already running (``--kill-actor-at`` then needs ``--ray-address``).

    python benchmarks/serve_load.py --duration-s 20 --out benchmarks/results/cpu/load_2x.json
    python benchmarks/serve_load.py --load-factor 1 --duration-s 20 --kill-actor-at 3 --no-slo-check \\
        --out benchmarks/results/cpu/kill_recovery.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
    """A binary KServe request of ``rows`` random rows for ``model`` (its inputs resolved)."""
    rng = np.random.default_rng(seed)
    arrays = []
    for t in model.inputs or ():
        dtype = np_dtype(t.datatype)
        data = rng.standard_normal((rows, *t.shape)) if dtype.kind == "f" else np.zeros((rows, *t.shape))
        arrays.append((t.name, data.astype(dtype)))
    body, json_length = codec.encode_request(arrays)
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


async def closed_loop(
    target: Target,
    concurrency: int,
    duration_s: float,
    timeout_s: float = 30.0,
    warmup_s: float = 3.0,
    backoff_s: float = 0.05,
) -> dict[str, Any]:
    """Capacity: ``concurrency`` clients each send the next request when the last is answered, for ``duration_s``
    after ``warmup_s``; ``capacity_rps`` counts the requests answered 2xx per second of the window. A refused
    client waits ``backoff_s`` first, so that a storm of refusals does not eat the capacity it measures."""
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
    accepted = [a for a in answers if a.kind == "accepted"]
    kinds = Counter(a.kind for a in answers)
    return {
        "concurrency": concurrency,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "backoff_s": backoff_s,
        "answers": dict(kinds),
        "capacity_rps": len(accepted) / duration_s,
        "latency_ms": _latency_ms(accepted),
    }


async def open_loop(
    target: Target,
    rate_rps: float,
    duration_s: float,
    seed: int = 0,
    timeout_s: float = 30.0,
    events: Mapping[float, Callable[[], Any]] | None = None,
) -> tuple[list[Answer], dict[str, float]]:
    """Poisson arrivals at ``rate_rps`` for ``duration_s``; each request is sent when due, answered or not.

    ``events`` maps a time (s from the start) to a function run then in a thread (e.g. killing an actor).
    Returns every request's answer, once all are in (each waits at most ``timeout_s``), and the time
    (s from the start) each event's function returned.
    """
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


@contextlib.contextmanager
def local_app(
    config: Mapping[str, Any],
    num_cpus: int | None = None,
    ready_timeout_s: float = 180.0,
    ready_models: Sequence[str] | None = None,
) -> Iterator[str]:
    """A local Ray instance serving ``config`` on a free port, as application ``APP``; yields its URL once
    every model (or those of ``ready_models``) is ready."""
    import ray
    from ray import serve

    from eclip_ray.serve import build_app
    from eclip_ray.serve.cli import wait_ready

    port = free_port()
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    try:
        http = AppConfig.model_validate(config).http_options()
        serve.start(http_options={**http, "host": "127.0.0.1", "port": port})
        serve.run(build_app(config), name=APP, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        for path in [f"/v2/models/{m}/ready" for m in ready_models] if ready_models else ["/v2/health/ready"]:
            wait_ready(url, ready_timeout_s, path)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


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


def header(argv: Sequence[str], config: AppConfig, model: str) -> dict[str, Any]:
    cfg = config.model(model)
    return {
        "command": command_of(argv),
        "date": results.now_iso(),
        "machine": machine(),
        "backend": config.backend,
        "model": cfg.model_dump(mode="json", exclude={"inputs", "outputs"}, exclude_none=True),
        "limits": config.limits.model_dump(mode="json"),
        "ingress_replicas": config.ingress_count(),
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


def run_load(url: str, config: AppConfig, s: Settings, app: str = APP) -> dict[str, Any]:
    """Capacity (unless given), then the open loop at ``load_factor`` x capacity, optionally with a kill."""
    model = config.model(s.model or config.models[0].name)
    target = target_for(url, model, s.rows, s.seed)
    out: dict[str, Any] = {}
    capacity = s.capacity_rps
    if capacity is None:
        out["capacity"] = asyncio.run(closed_loop(target, s.concurrency, s.capacity_s, s.timeout_s))
        capacity = out["capacity"]["capacity_rps"]
        if capacity <= 0:
            raise RuntimeError(f"model {model.name!r} answered no request in the closed loop: {out['capacity']}")
    rate = s.load_factor * capacity
    events = {}
    if s.kill_actor_at_s is not None:
        events[s.kill_actor_at_s] = lambda: kill_gpu_actor(s.kill_gpu, app)
    answers, happened = asyncio.run(open_loop(target, rate, s.duration_s, s.seed, s.timeout_s, events))
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
    return out


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
    p.add_argument("--out", type=Path, help="write the result JSON here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = config_of(args.config, args.preset)
    if args.ingress_replicas is not None:
        config = config.model_copy(update={"ingress_replicas": args.ingress_replicas})
    s = Settings(
        **{k: getattr(args, k) for k in ("model", "rows", "concurrency", "capacity_s", "load_factor", "duration_s")},
        seed=args.seed,
        timeout_s=client_timeout_s(config, args.timeout_s),
        kill_actor_at_s=args.kill_actor_at_s,
        kill_gpu=args.kill_gpu,
        capacity_rps=args.capacity_rps,
    )
    doc = header(sys.argv if argv is None else ["serve_load.py", *argv], config, s.model or config.models[0].name)
    if args.url:
        if args.ray_address:
            import ray

            ray.init(address=args.ray_address)
        doc.update(run_load(args.url, config, s, args.app))
    else:
        with local_app(config.model_dump(mode="json"), args.num_cpus) as url:
            doc.update(run_load(url, config, s))
    doc["problems"] = verdict(doc, not args.no_slo_check)
    doc["passed"] = not doc["problems"]
    if args.out:
        results.write(doc, args.out)
    _print(doc)
    return 0 if doc["passed"] else 1


def _print(doc: Mapping[str, Any]) -> None:
    o = doc["open_loop"]
    if "capacity" in doc:
        print(f"capacity: {doc['capacity']['capacity_rps']:.1f} req/s ({doc['capacity']['concurrency']} clients)")
    lat = o["accepted_latency_ms"] or {}
    print(
        f"open loop {o['load_factor']:g}x = {o['rate_rps']:.1f} req/s for {o['duration_s']:g} s: sent {o['sent']}, "
        f"accepted {o['accepted']}, rejected {o['rejected']}, errors {o['errors']}, lost {o['lost']}; "
        f"accepted p50 {lat.get('p50', float('nan')):.1f} ms, p99 {lat.get('p99', float('nan')):.1f} ms "
        f"(SLO {o['slo_ms']} ms, within: {o['accepted_within_slo']})"
    )
    if "kill" in doc:
        k = doc["kill"]
        print(f"kill at {k['kill_s']:.2f} s: {k['faults']} faults, recovered after {k['recovery_s']} s")
    print("PASS" if doc["passed"] else "FAIL: " + "; ".join(doc["problems"]), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
