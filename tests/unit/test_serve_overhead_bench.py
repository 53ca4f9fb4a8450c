"""benchmarks/serve_overhead.py without Ray: its closed loops, the layer overheads and the executor path."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_overhead.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("serve_overhead", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["serve_overhead"] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["serve_overhead"]


def test_closed_loops_count_the_window_and_wait_for_the_minimum(bench):
    summary = bench.closed_loop(lambda: time.sleep(0.002), 2, bench.Window(0.02, 0.1, 1))
    assert summary["clients"] == 2 and 20 <= summary["requests"] <= 110
    assert 2 <= summary["p50_ms"] <= summary["p99_ms"] and summary["cpu_ms_per_request"] >= 0
    slow = bench.closed_loop(lambda: time.sleep(0.03), 1, bench.Window(0.0, 0.01, 3))
    assert slow["requests"] == 3  # past the window's end, until three were counted

    async def call() -> None:
        await asyncio.sleep(0.002)

    summary = asyncio.run(bench.closed_loop_async(call, 4, bench.Window(0.01, 0.1, 1)))
    assert summary["requests"] >= 40 and summary["p50_ms"] >= 2


def test_a_failing_client_fails_the_measurement(bench):
    def call() -> None:
        raise ValueError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        bench.closed_loop(call, 1, bench.Window(0.0, 0.05, 1))


def test_overheads_are_differences_to_the_layer_below(bench):
    paths = {
        "executor": {"requests": 10, "rps": 1000.0, "p50_ms": 1.0, "clients": 1},
        "worker": {"requests": 10, "rps": 500.0, "p50_ms": 1.5, "clients": 1},
        "http-binary": {"requests": 10, "rps": 100.0, "p50_ms": 9.0, "clients": 1},
        "http-json": {"requests": 0, "rps": 0.0, "p50_ms": None, "clients": 1},
    }
    assert bench.overheads(paths) == {
        "worker - executor": {"p50_ms": 0.5, "per_request_ms": 1.0},
        "http-binary - worker": {"p50_ms": 7.5, "per_request_ms": 8.0},
    }


def test_the_executor_and_worker_paths_of_a_tiny_model(bench):
    args = bench.parser().parse_args(
        ["--models", "tiny-cnn", "--batch-sizes", "2", "--warmup-s", "0", "--duration-s", "0.2", "--backend", "cpu"]
    )
    config = bench.app_config(args.models, args.batch_sizes, "cpu", 0.0)
    cases = [("tiny-cnn", 2, bench.request_arrays(config, "tiny-cnn", 2))]
    executor = bench.executor_paths(config, cases, "cpu", args)[("tiny-cnn", 2)]
    worker = bench.worker_paths(config, cases, "cpu", args)[("tiny-cnn", 2)]
    assert executor["requests"] >= 5 and worker["requests"] >= 5
    doc = {
        "machine": bench.machine(),
        "backend": "cpu",
        "settings": {"clients": 1, "duration_s": 0.2},
        "versions": bench.versions(),
        "date": "now",
        "results": [{"model": "tiny-cnn", "batch_size": 2, "paths": {"executor": executor, "worker": worker}}],
    }
    doc["results"][0]["overhead_ms"] = bench.overheads(doc["results"][0]["paths"])
    table = bench.markdown(doc)
    assert "| tiny-cnn | 2 |" in table and "worker +" in table
    assert bench.gpu_command(args).startswith("python3 benchmarks/serve_overhead.py --backend cuda")
