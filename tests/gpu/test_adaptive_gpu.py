"""On the GPU: the actor with adaptive plans (no Ray): the candidates' pool of green contexts, every candidate
captured at start, a measured selection within its budget, and batches run under the guard's plans."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import numpy as np
import pytest

from eclip_ray.actor import GpuWorker, ServedModel
from eclip_ray.actor.loader import zoo_inputs
from eclip_ray.actor.plans import label

pytestmark = pytest.mark.gpu
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from bench_fixtures import tiny_profile  # noqa: E402  (synthetic profiles of the tiny models' real cut points)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    profiles = tmp_path_factory.mktemp("profiles")
    tiny_profile("tiny-cnn", batch_size=1, seed=1).save(profiles)
    tiny_profile("tiny-bert", batch_size=4, seed=2).save(profiles)
    table = tmp_path_factory.mktemp("tables") / "plans.json"
    models = [
        ServedModel("svc", "tiny-cnn", (1,), zoo_inputs("tiny-cnn")),
        ServedModel("job", "tiny-bert", (4,), zoo_inputs("tiny-bert")),
    ]
    adaptive = {"profiles": str(profiles), "slo_ms": {"svc": 50.0, "job": 200.0}, "budget_s": 4.0, "table": str(table)}
    w = GpuWorker(models, backend="cuda", adaptive=adaptive)
    yield w
    w.close()


def test_the_candidates_are_captured_measured_and_served(worker):
    stats = worker.stats()
    a = stats["adaptive"]
    assert stats["adaptive_error"] is None and a["active"] and a["source"] == "measured", stats
    assert a["selection_s"] <= 4.0 + 1.0 and a["measured"] and a["pool_streams"] <= 32
    print(f"selection: {a['selected']} in {a['selection_s']:.2f} s over {len(a['measured'])} ({a['reason']})")
    assert not stats["plan_errors"]  # every candidate's plan captured
    cands = worker.adaptive.candidates
    assert set(worker.runtime.pool.names) == set(cands.layout.names)
    chosen = cands[a["candidate"]]
    out = asyncio.run(worker.infer("svc", [np.zeros((1, 3, 32, 32), dtype="<f4")]))
    assert out.plan == label(chosen.plans["svc"]) and out.outputs[0].shape == (1, 10)
    out = asyncio.run(worker.infer("job", [np.zeros((4, 16), dtype="<i8")]))
    assert out.plan in {label(p) for p in chosen.all_plans()["job"]}
