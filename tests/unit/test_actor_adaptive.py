"""The GPU actor with adaptive plans, as a plain class on the CPU backend: candidates, a measured selection
cached in the plan table, and the guard consulted for every batch (no Ray, no GPU)."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
from bench_fixtures import tiny_profile

from eclip_ray.actor import GpuWorker, ServedModel
from eclip_ray.actor.loader import zoo_inputs
from eclip_ray.actor.plans import label
from eclip_ray.actor.selection import AdaptiveConfig, profiled_batch
from eclip_ray.errors import PlanError


@pytest.fixture(scope="module")
def profiles(tmp_path_factory):
    d = tmp_path_factory.mktemp("profiles")
    tiny_profile("tiny-cnn", batch_size=1, seed=1).save(d)
    tiny_profile("tiny-bert", batch_size=4, seed=2).save(d)
    return d


def _models():
    return [
        ServedModel("svc", "tiny-cnn", (1,), zoo_inputs("tiny-cnn")),
        ServedModel("job", "tiny-bert", (2, 4), zoo_inputs("tiny-bert")),
    ]


def _config(profiles, table, **kw) -> dict:
    return {
        "profiles": str(profiles),
        "slo_ms": {"svc": 5000.0, "job": 20000.0},  # loose: the CPU backend does not partition, and CI shares cores
        "trial_window_s": 0.2,
        "warmup_s": 0.05,
        "budget_s": 2.0,
        "table": str(table),
        **kw,
    }


@pytest.fixture(scope="module")
def measured(profiles, tmp_path_factory):
    table = tmp_path_factory.mktemp("tables") / "plans.json"
    w = GpuWorker(_models(), backend="cpu", adaptive=_config(profiles, table))
    yield w, table
    w.close()


def test_the_pool_holds_every_candidate_and_the_selection_is_measured_and_written(measured):
    w, table = measured
    a = w.stats()["adaptive"]
    assert w.stats()["adaptive_error"] is None and a["active"] and a["source"] == "measured"
    assert all(c.name in a["measured"] or a["skipped"][c.name] for c in w.adaptive.candidates.candidates)
    assert a["selected"] == a["candidate"] and a["measured"] and a["selection_s"] <= 2.0 + 0.5
    assert a["batch_sizes"] == {"svc": 1, "job": 4}
    cands = w.adaptive.candidates
    assert set(w.runtime.layout.names) == set(cands.layout.names)
    assert "multi-stream" in a["measured"]
    doc = json.loads(table.read_text())
    assert doc["schema"] == 2 and doc["measured"][0]["selections"][0]["selection"]["chosen"] == a["selected"]


def test_every_batch_runs_under_the_guards_plan(measured):
    w, _ = measured
    chosen = w.adaptive.candidates[w.stats()["adaptive"]["candidate"]]
    x = np.zeros((1, 3, 32, 32), dtype="<f4")
    ids = np.zeros((3, 16), dtype="<i8")
    out = asyncio.run(w.infer("svc", [x]))
    assert out.plan == label(chosen.plans["svc"])
    out = asyncio.run(w.infer("job", [ids]))
    assert out.plan in {label(p) for p in chosen.all_plans()["job"]}
    lanes = w.adaptive.views()
    assert lanes["svc"].completed == 1 and lanes["svc"].inflight == 0 and lanes["job"].arrivals == 1


def test_a_restart_takes_the_selection_from_the_plan_table(measured, profiles):
    first, table = measured
    again = GpuWorker(_models(), backend="cpu", adaptive=_config(profiles, table))
    try:
        a = again.stats()["adaptive"]
        assert a["source"] == "plan table" and a["selected"] == first.stats()["adaptive"]["selected"]
        assert again.adaptive.candidates.names == first.adaptive.candidates.names
    finally:
        again.close()


def test_without_profiles_it_says_why_and_serves_on_the_whole_gpu(tmp_path):
    w = GpuWorker(_models(), backend="cpu", adaptive={"profiles": str(tmp_path / "nowhere")})
    try:
        assert w.adaptive is None and "no profile set" in w.stats()["adaptive_error"]
        assert asyncio.run(w.infer("svc", [np.zeros((1, 3, 32, 32), dtype="<f4")])).plan == "whole"
    finally:
        w.close()


def test_the_config_names_unknown_settings_and_the_profile_batch_is_the_largest_served(profiles):
    with pytest.raises(PlanError, match="unknown settings"):
        AdaptiveConfig.of({"profiles": "x", "windows": 3})
    assert profiled_batch(profiles, "tiny-bert", 8).key.batch_size == 4
    assert profiled_batch(profiles, "tiny-cnn", 16).key.batch_size == 1


def test_the_serve_config_hands_each_actor_its_models_settings():
    from eclip_ray.serve.config import AppConfig

    cfg = AppConfig.model_validate(
        {
            "models": [{"name": "svc", "loader": "tiny-cnn", "slo_ms": 5.0}, {"name": "job", "loader": "tiny-bert"}],
            "adaptive_plans": {"profiles": "h100", "latency_critical": ["svc", "elsewhere"], "budget_s": 4.0},
        }
    )
    config = AdaptiveConfig.of(cfg.adaptive_plans.for_actor({"svc": 5.0, "job": None}))
    assert config.latency_critical == ("svc",) and config.budget_s == 4.0 and config.slo_ms == {"svc": 5.0, "job": None}
