"""``benchmarks/corun_tails.py`` end to end on the CPU backend (a smoke test: no partitions), read back by the fit."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from bench_fixtures import tiny_profile

from eclip_ray.planner import corun

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "corun_tails.py"


def _script():
    spec = importlib.util.spec_from_file_location("corun_tails", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_co_runs_are_written_as_observations_the_fit_reads(tmp_path):
    out = tmp_path / "corun_tails.json"
    args = ["--out", str(out), "--backend", "cpu", "--pairs", "tiny-cnn:tiny-bert:4", "--nested", "96"]
    doc = _script().main([*args, "--disjoint", "32", "--warmup-s", "0.05", "--window-s", "0.5", "--budget-s", "30"])
    assert json.loads(out.read_text()) == doc and doc["kind"] == "corun"
    labels = [r["label"] for r in doc["runs"] if "measured" in r]
    assert len(doc["runs"]) == 8 and len(labels) >= 4  # on a loaded CPU a run may outlast its window, and says so
    assert all("measured" in r or "window closed" in r["error"] for r in doc["runs"])
    assert {"multi-stream closed", "multi-stream open"} <= {r["label"] for r in doc["runs"]}
    for opened in (r for r in doc["runs"] if r["label"].endswith(" open") and "measured" in r):
        assert set(opened["measured"]["p99_ms"]) == {"tiny-cnn"}  # the flat-out neighbour's queue is no latency
        assert opened["instances"][0]["rate_rps"] > 0 and opened["instances"][1]["rate_rps"] is None
    profiles = tmp_path / "profiles"
    tiny_profile("tiny-cnn", batch_size=1, seed=1).save(profiles)
    tiny_profile("tiny-bert", batch_size=4, seed=2).save(profiles)
    obs = corun.load_observations([out])
    assert len(obs) == len(labels) and all(o.p99_ms for o in obs)
    fitted = corun.fit(corun.Predictor(profiles), obs)
    assert fitted.tail is not None  # p99s were measured, so a tail model is fitted
