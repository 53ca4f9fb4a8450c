"""A short benchmark run on the CPU backend with tiny models: part files, schema, merge, report, resume.

Windows are half a second and profiles synthetic (``bench_fixtures``): these
tests check the harness's logic and its files, not any number it measures.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest
from bench_fixtures import write_profiles

from eclip_ray.bench import BenchConfig, merge_files, publish, report, results, run
from eclip_ray.bench.policies import PAPER_POLICIES as POLICIES
from eclip_ray.cli import main

FAST = ["--window-s", "0.5", "--warmup-s", "0.2", "--isolated-s", "0.3", "--backend", "cpu"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bench")
    write_profiles(d / "profiles", ["tiny-cnn", "tiny-bert"])
    return d


@pytest.fixture(scope="module")
def part_a(work) -> Path:
    """All six policies on a two-model mix, through the command line."""
    out = work / "parts" / "a.json"
    argv = ["bench", "--models", "tiny-cnn,tiny-bert", "--label", "tiny", *FAST]
    assert main([*argv, "--profiles", str(work / "profiles"), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def part_b(work, part_a) -> Path:
    """Two instances of one model, a subset of policies, the isolated latencies of part a, through the API."""
    out = work / "parts" / "b.json"
    cfg = BenchConfig(
        mixes={"twin": ("tiny-cnn", "tiny-cnn")},
        policies=("multi-stream", "model-wise", "eclip"),
        window_s=0.5,
        warmup_s=0.2,
        profiles=str(work / "profiles"),
        backend="cpu",
        isolated_file=str(part_a),
        out=str(out),
        command="test part b",
    )
    run(cfg)
    return out


def test_part_is_a_well_formed_summary(part_a):
    doc = json.loads(part_a.read_text())
    assert results.check(doc) == []
    assert doc["command"].startswith("eclip-ray bench --models tiny-cnn,tiny-bert")
    assert doc["card"] and doc["torch"] and doc["date"] and "driver" in doc
    assert set(doc["isolated"]) == {"tiny-cnn", "tiny-bert"}
    sc = doc["mixes"]["tiny"]["scenarios"]["closed1-bs1"]
    assert set(sc["policies"]) == set(POLICIES)
    assert sc["slo_ms"]["tiny-cnn"] == pytest.approx(3 * doc["isolated"]["tiny-cnn"]["bs1"]["p99_ms"])
    for policy, r in sc["policies"].items():
        if policy == "mps":
            assert r["status"] == "skipped" and "backend" in r["reason"]
            continue
        assert r["status"] == "ok", r["reason"]
        assert r["throughput_rps"] > 0 and set(r["p99_ms"]) == {"tiny-cnn", "tiny-bert"}
        assert r["joules_per_inference"] is None and r["avg_power_w"] is None and r["energy_note"]
        assert isinstance(r["slo_met"], bool) and r["packing_efficiency"] > 0 and r["host_loop_us"] > 0
    assert sc["policies"]["time-share"]["setup"]["plans"]["tiny-cnn"]["partitions"] == ["whole"]
    pools = {
        p: {q["name"] for q in r["setup"]["pool"]["partitions"]}
        for p, r in sc["policies"].items()
        if "pool" in r["setup"]
    }
    assert pools["multi-stream"] == {"whole"} and pools["model-wise"] == {"mw0", "mw1", "whole"}
    assert {"w0.32", "w1.96", "whole"} <= pools["eclip"] == pools["kw-prealloc"]


def test_schema_check_finds_what_is_missing(part_a):
    doc = json.loads(part_a.read_text())
    broken = copy.deepcopy(doc)
    r = broken["mixes"]["tiny"]["scenarios"]["closed1-bs1"]["policies"]["eclip"]
    del r["p99_ms"]
    broken["mixes"]["tiny"]["scenarios"]["closed1-bs1"]["policies"]["multi-stream"]["slo_met"] = "yes"
    broken["mixes"]["tiny"]["scenarios"]["closed1-bs1"]["policies"]["mps"]["reason"] = ""
    problems = results.check(broken)
    assert len(problems) == 3
    assert any("eclip" in p and "p99_ms" in p for p in problems)
    assert results.check({"schema": "other"})


def test_merge_joins_parts_and_keeps_ok_results(work, part_a, part_b):
    summary = merge_files([part_a, part_b], "test merge")
    assert results.check(summary) == []
    assert set(summary["mixes"]) == {"tiny", "twin"}
    assert [p["file"] for p in summary["parts"]] == ["a.json", "b.json"]
    b = json.loads(part_b.read_text())
    assert (
        b["isolated"]["tiny-cnn"] == json.loads(part_a.read_text())["isolated"]["tiny-cnn"]
    )  # reused, not re-measured
    # A later part whose result failed does not replace an ok one; a later ok one does.
    later = json.loads(part_a.read_text())
    later["date"] = "9999-01-01T00:00:00+00:00"
    pols = later["mixes"]["tiny"]["scenarios"]["closed1-bs1"]["policies"]
    pols["eclip"] = results.not_measured("error", "boom")
    pols["multi-stream"]["throughput_rps"] *= 2
    merged = results.merge([("a", json.loads(part_a.read_text())), ("later", later)], "m")
    got = merged["mixes"]["tiny"]["scenarios"]["closed1-bs1"]["policies"]
    assert got["eclip"]["status"] == "ok"
    assert got["multi-stream"]["throughput_rps"] == pols["multi-stream"]["throughput_rps"]
    assert any("multi-stream" in n for n in merged["merge_notes"])


def test_merge_refuses_parts_from_another_card(part_a):
    other = json.loads(part_a.read_text())
    other["card"] = "another GPU"
    with pytest.raises(ValueError, match="measured elsewhere"):
        results.merge([("a", json.loads(part_a.read_text())), ("b", other)], "m")
    with pytest.raises(ValueError, match="nothing"):
        results.merge([], "m")


def test_merge_command_writes_summary_table_and_plots(work, part_a, part_b):
    out = work / "results" / "summary.json"
    readme = out.parent / "README.md"
    readme.parent.mkdir(parents=True, exist_ok=True)
    readme.write_text("# Results\n\nHand-written notes stay.\n")
    assert main(["bench", "merge", str(part_a), str(part_b), "--out", str(out)]) == 0
    summary = results.read(out)
    assert summary["command"].startswith("eclip-ray bench merge")
    text = readme.read_text()
    assert text.startswith("# Results\n\nHand-written notes stay.") and text.count(report.BEGIN) == 1
    for policy in POLICIES:
        assert f"| tiny | {policy} |" in text
    assert "| twin | multi-stream |" in text and "Goal (mean over mixes" in text
    pngs = sorted((out.parent / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["latency_cdf_closed1-bs1.png", "throughput_closed1-bs1.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert "(plots/throughput_closed1-bs1.png)" in text
    # Written again, the block is replaced, not appended.
    assert main(["bench", "report", str(out)]) == 0
    assert readme.read_text().count(report.BEGIN) == 1


def test_resume_reruns_only_what_is_missing(work, part_b):
    doc = json.loads(part_b.read_text())
    pols = doc["mixes"]["twin"]["scenarios"]["closed1-bs1"]["policies"]
    pols["eclip"] = results.not_measured("not-run", "the run's deadline")
    kept = pols["multi-stream"]
    resumed = work / "parts" / "b_resumed.json"
    results.write(doc, resumed)
    cfg = BenchConfig(
        mixes={"twin": ("tiny-cnn", "tiny-cnn")},
        policies=("multi-stream", "model-wise", "eclip"),
        window_s=0.5,
        warmup_s=0.2,
        profiles=str(work / "profiles"),
        backend="cpu",
        out=str(resumed),
        resume=True,
        command="resume",
    )
    again = run(cfg)
    got = again["mixes"]["twin"]["scenarios"]["closed1-bs1"]["policies"]
    assert got["eclip"]["status"] == "ok" and got["multi-stream"] == kept
    assert again["resumed"][0]["command"] == "resume"
    with pytest.raises(ValueError, match="another settings"):
        run(BenchConfig(**{**cfg.__dict__, "window_s": 0.25}))


def test_deadline_leaves_policies_not_run_with_the_reason(work, part_a):
    out = work / "parts" / "late.json"
    cfg = BenchConfig(
        mixes={"tiny": ("tiny-cnn", "tiny-bert")},
        policies=("time-share", "multi-stream"),
        window_s=0.5,
        warmup_s=0.2,
        profiles=str(work / "profiles"),
        backend="cpu",
        isolated_file=str(part_a),
        out=str(out),
        deadline=time.time(),
        command="late",
    )
    doc = run(cfg)
    assert results.check(doc) == []
    for r in doc["mixes"]["tiny"]["scenarios"]["closed1-bs1"]["policies"].values():
        assert r["status"] == "not-run" and "deadline" in r["reason"]


def test_bench_command_line_errors():
    with pytest.raises(SystemExit, match="--out"):
        main(["bench", "--mixes", "M1"])
    with pytest.raises(ValueError, match="unknown mixes"):
        main(["bench", "--mixes", "M9", "--out", "x.json"])
    with pytest.raises(ValueError, match="not both"):
        main(["bench", "--mixes", "M1", "--models", "a", "--out", "x.json"])


def test_publish_without_a_readme_still_draws(work, part_a):
    summary = results.read(part_a)
    written = publish(summary, None, work / "only_plots")
    assert written["plots"] and "readme" not in written
