"""The accounting of benchmarks/serve_placement.py: settings per GPU count and the actors' windows (no server)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import serve_placement

from eclip_ray.serve.config import AppConfig

CONFIG = AppConfig.model_validate(
    {
        "gpus": 2,
        "backend": "cpu",
        "models": [{"name": "tiny-cnn", "replicas": 2}, {"name": "tiny-bert"}],
    }
)


def stats(inferences: dict[str, int], joules: float | None) -> dict:
    energy = {"available": joules is not None}
    if joules is None:
        energy["reason"] = "the cpu backend measures no energy"
    else:
        energy["joules"] = joules
    return {
        "models": {m: {"inferences": n, "batches": n // 2, "busy_s": n / 100} for m, n in inferences.items()},
        "plan_switches": 1,
        "energy": energy,
    }


def test_a_setting_caps_replicas_at_its_gpus_and_keeps_the_rest():
    one = serve_placement.config_for(CONFIG, 1, "cuda")
    assert one.gpus == 1 and one.backend == "cuda"
    assert [m.replicas for m in one.models] == [1, 1]
    two = serve_placement.config_for(CONFIG, 2, None)
    assert two.backend == "cpu" and [m.replicas for m in two.models] == [2, 1]


def test_the_window_is_the_difference_of_two_readings_with_energy_per_inference():
    before = {0: stats({"a": 10}, 100.0), 1: stats({"b": 0}, 50.0)}
    after = {0: stats({"a": 30, "c": 4}, 124.0), 1: stats({"b": 8}, 58.0)}
    w = serve_placement.window(before, after)
    a = w["0"]["models"]["a"]
    assert (a["inferences"], a["batches"]) == (20, 10) and a["busy_s"] == pytest.approx(0.2)
    assert w["0"]["models"]["c"]["inferences"] == 4  # a model first counted inside the window
    assert w["0"]["inferences"] == 24 and w["0"]["joules"] == 24.0
    assert w["0"]["joules_per_inference"] == 1.0
    assert w["1"]["joules_per_inference"] == 1.0


def test_no_energy_is_reported_where_the_backend_measures_none():
    w = serve_placement.window({0: stats({"a": 0}, None)}, {0: stats({"a": 5}, None)})
    assert "joules" not in w["0"] and "cpu backend" in w["0"]["energy"]


def test_the_table_compares_each_setting_with_the_first():
    def setting(gpus: int, rps: float) -> dict:
        return {
            "gpus": gpus,
            "placement": {"gpus": [["a"]] * gpus, "warnings": ["GPU 0 is predicted 120% busy (over 100%)"]},
            "models": {"a": {"rps": rps, "latency_ms": {"p50": 1.0, "p99": 2.0}, "slo_ms": 5, "p99_within_slo": True}},
            "per_gpu": {str(g): {"inferences": 10, "joules": 3.0} for g in range(gpus)},
            "total_rps": rps,
            "joules_per_inference": 0.3,
        }

    doc = {
        "config": "two-gpus.yaml",
        "date": "2026-11-28",
        "machine": {"gpu": "H100", "cpu": "x"},
        "command": "python benchmarks/serve_placement.py",
        "clients": 4,
        "rows": 1,
        "duration_s": 10.0,
        "settings": [setting(1, 100.0), setting(2, 150.0)],
    }
    md = serve_placement.markdown(doc)
    assert "| 2 | 150.0 | 1.50x | 0.300 |" in md
    assert "Placement warnings: GPU 0 is predicted 120% busy" in md
