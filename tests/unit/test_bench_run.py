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
from eclip_ray.bench.policies import WHOLE_PLAN
from eclip_ray.cli import main
from eclip_ray.graph.plan import Plan
from eclip_ray.planner.steering import Fixed

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
    assert {"w0.32", "w1.96", "whole"} <= pools["kw-prealloc"]
    assert "whole" in pools["eclip"] and all(q == "whole" or q.startswith("s") for q in pools["eclip"])


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
    assert "| twin | multi-stream |" in text, text
    assert "Goal (mean over mixes" in text
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


MIX = "tiny-cnn@1,tiny-cnn@4/batch"  # a service beside a batch job of the same small model: fast on a CPU
# Loose on purpose: a shared two-core machine stalls for tenths of a second, and these tests check the harness's
# plumbing, not a number. The first window at 2% of the bracket's top, SLOs at 1000x the isolated p99.
SEARCH = ["--search-steps", "2", "--step-window-s", "0.3", "--step-warmup-s", "0.05", "--final-window-s", "0.3"]
SEARCH += ["--search-floor", "0.02", "--isolated-s", "0.5", "--slo-factor", "1000"]


@pytest.fixture(scope="module")
def part_ab(work) -> Path:
    """Regimes A and B on a service beside a batch job, with a fixed plan, through the command line."""
    out = work / "parts" / "ab.json"
    argv = ["bench", "--models", MIX, "--label", "hetero", "--regimes", "A", "B", *FAST]
    argv += [*SEARCH, "--policies", "multi-stream", "stream-priority", "time-share", "mps-equal"]
    argv += ["--plan", "tiny-cnn=whole,tiny-cnn-2=64", "--profiles", str(work / "profiles"), "--out", str(out)]
    assert main(argv) == 0
    return out


def test_regimes_a_and_b_search_every_policy_and_each_model_alone(part_ab):
    doc = results.read(part_ab)
    mix = doc["mixes"]["hetero"]
    assert set(mix["scenarios"]) == {"A-bs1,4-slo1000x", "B-bs1,4-slo1000x"}
    a, b = mix["scenarios"]["A-bs1,4-slo1000x"], mix["scenarios"]["B-bs1,4-slo1000x"]
    assert a["roles"] == {"tiny-cnn": "latency", "tiny-cnn-2": "batch"} and a["load"]["open"] == ["tiny-cnn"]
    assert set(a["alone"]) == {"tiny-cnn"} and set(b["alone"]) == {"tiny-cnn", "tiny-cnn-2"}
    assert a["alone"]["tiny-cnn"] == b["alone"]["tiny-cnn"]  # searched once, kept for both regimes
    assert a["alone"]["tiny-cnn"]["capacity_rps"] == pytest.approx(doc["isolated"]["tiny-cnn"]["bs1"]["throughput_rps"])
    for sc in (a, b):
        assert set(sc["policies"]) == {
            "multi-stream",
            "stream-priority",
            "time-share",
            "mps-equal",
            "fixed:tiny-cnn=whole,tiny-cnn-2=64",
        }
        assert sc["policies"]["mps-equal"]["status"] == "skipped"
        for p in ("multi-stream", "stream-priority", "time-share", "fixed:tiny-cnn=whole,tiny-cnn-2=64"):
            r = sc["policies"][p]
            assert r["status"] == "ok", (p, r["reason"])
            assert r["regime"] == sc["regime"] and 1 <= len(r["search"]["trials"]) <= 2
            assert r["slo_checked"] == sc["load"]["open"] and set(r["offered_rps"]) == set(sc["load"]["open"])
            assert r["normalised_throughput"] > 0 and r["goodput_rps"] >= 0
    fixed = a["policies"]["fixed:tiny-cnn=whole,tiny-cnn-2=64"]["setup"]
    assert {p["name"] for p in fixed["pool"]["partitions"]} == {"s0.64", "whole"}
    assert a["policies"]["stream-priority"]["setup"]["stream_priority_asked"]["tiny-cnn-2"] == 0
    assert a["settings"]["search"]["steps"] == 2 and a["settings"]["slo_factor"] == 1000


def test_regime_report_has_its_tables_curves_and_goal(work, part_ab):
    out = work / "results_ab" / "summary.json"
    assert main(["bench", "merge", str(part_ab), "--out", str(out)]) == 0
    text = (out.parent / "README.md").read_text()
    assert (
        "### Regime A, a batch job beside services: A-bs1,4-slo1000x" in text and "SLO = 1000x the isolated p99" in text
    )
    assert "| hetero | each alone |" in text and "| hetero | multi-stream |" in text
    assert "Goal of issue 15 in regime B" in text and "no eclip result" in text
    assert "fixed:tiny-cnn=whole,tiny-cnn-2=64 are not baselines" in text
    pngs = {p.name for p in (out.parent / "plots").glob("*.png")}
    assert {"attainment_A-bs1_4-slo1000x.png", "goodput_B-bs1_4-slo1000x.png"} <= pngs


def test_a_search_cut_short_by_the_deadline_is_resumed(work, part_ab):
    doc = results.read(part_ab)
    r = doc["mixes"]["hetero"]["scenarios"]["A-bs1,4-slo1000x"]["policies"]["time-share"]
    r["search"]["complete"] = False
    kept = doc["mixes"]["hetero"]["scenarios"]["A-bs1,4-slo1000x"]["policies"]["multi-stream"]
    resumed = work / "parts" / "ab_resumed.json"
    results.write(doc, resumed)
    argv = ["bench", "--models", MIX, "--label", "hetero", "--regimes", "A", "B", *FAST]
    argv += [*SEARCH, "--policies", "multi-stream", "time-share"]
    argv += ["--profiles", str(work / "profiles"), "--out", str(resumed), "--resume"]
    assert main(argv) == 0
    again = results.read(resumed)["mixes"]["hetero"]["scenarios"]["A-bs1,4-slo1000x"]["policies"]
    assert again["time-share"]["search"]["complete"] and again["multi-stream"] == kept


def test_a_bad_plan_fails_before_any_measurement(work):
    with pytest.raises(ValueError, match="--plan 'tiny-cnn=12' on mix hetero"):
        main(["bench", "--models", "tiny-cnn,tiny-bert", "--label", "hetero", *FAST, "--plan", "tiny-cnn=12",
              "--out", str(work / "never.json")])  # fmt: skip
    assert not (work / "never.json").exists()


def test_a_plan_may_belong_to_one_mix():
    cfg = BenchConfig(
        mixes={"H1": ("tiny-cnn", "tiny-bert"), "two": ("tiny-cnn",)},
        policies=("multi-stream", "fixed:tiny-cnn=whole,tiny-bert=64"),
        policy_mixes={"fixed:tiny-cnn=whole,tiny-bert=64": ("H1",)},
    )
    assert cfg.policies_of("H1") == cfg.policies and cfg.policies_of("two") == ("multi-stream",)
    with pytest.raises(ValueError, match="does not have"):
        BenchConfig(mixes={"two": ("tiny-cnn",)}, policies=("multi-stream",), policy_mixes={"multi-stream": ("H9",)})
    with pytest.raises(ValueError, match="regimes"):
        BenchConfig(mixes={"two": ("tiny-cnn",)}, regimes=("D",))


def test_a_model_that_fails_its_isolated_run_stops_only_its_own_mix(work):
    out = work / "parts" / "partial.json"
    cfg = BenchConfig(
        mixes={"fine": ("tiny-cnn",), "broken": ("tiny-cnn", "no-such-model")},
        policies=("multi-stream",),
        window_s=0.2,
        warmup_s=0.05,
        isolated_s=0.2,
        backend="cpu",
        profiles=None,
        out=str(out),
        command="partial",
    )
    doc = run(cfg)
    assert "no-such-model" in doc["mixes"]["broken"]["error"] and doc["mixes"]["broken"]["scenarios"] == {}
    assert doc["mixes"]["fine"]["scenarios"]["closed1-bs1"]["policies"]["multi-stream"]["status"] == "ok"
    assert results.check(results.read(out)) == []
    assert "Not run: broken (no isolated latency" in report.markdown(doc)


class Adaptive:
    """An adaptive policy by the contract of issue 15: every plan named up front, a steering per load level."""

    def __init__(self, geometry) -> None:
        from eclip_ray.partition.layout import arrange, union

        self.confined = Plan.single("s0.64")
        self.layout = union(geometry, arrange(geometry, [None, 64]))
        self.levels: list = []

    def plans(self):
        return {"tiny-cnn": {WHOLE_PLAN}, "tiny-cnn-2": {WHOLE_PLAN, self.confined}}

    def steering(self, load, trial):
        self.levels.append(load)
        m = trial({"tiny-cnn": WHOLE_PLAN, "tiny-cnn-2": self.confined}, 0.3)
        assert {"slo_met", "p99_ms", "models"} <= set(m)
        steer = Fixed({"tiny-cnn": WHOLE_PLAN, "tiny-cnn-2": self.confined})
        steer.describe = lambda: {"chosen": "confined"}  # type: ignore[attr-defined]
        return steer


def test_an_adaptive_eclip_runs_through_the_harness_in_every_regime(work, monkeypatch):
    from eclip_ray.bench import policies

    made = []

    def build(mix):
        made.append(Adaptive(mix.geometry))
        return policies.Setup("eclip", layout=made[-1].layout, adaptive=made[-1])

    monkeypatch.setitem(policies._BUILDERS, "eclip", build)
    write_profiles(work / "profiles", ["tiny-cnn"], batch_size=4)  # eclip is a profiled policy
    out = work / "parts" / "adaptive.json"
    argv = ["bench", "--models", MIX, "--label", "hetero", "--regimes", "A", "C", *FAST, *SEARCH]
    argv += ["--policies", "eclip", "--profiles", str(work / "profiles"), "--out", str(out)]
    assert main(argv) == 0
    mix = results.read(out)["mixes"]["hetero"]
    assert "error" not in mix, mix.get("error")
    scenarios = mix["scenarios"]
    c, a = scenarios["closed1-bs1,4-slo1000x"]["policies"]["eclip"], scenarios["A-bs1,4-slo1000x"]["policies"]["eclip"]
    assert c["status"] == a["status"] == "ok", (c["reason"], a["reason"])
    assert c["steering"] == {"chosen": "confined"} and c["selection_s"] >= 0
    assert a["selection_s"] >= 0 and all(t["steering"] == {"chosen": "confined"} for t in a["search"]["trials"])
    assert a["setup"]["adaptive"] == "Adaptive" and a["setup"]["candidate_plans"] == {"tiny-cnn": 1, "tiny-cnn-2": 2}
    assert {p["name"] for p in a["setup"]["pool"]["partitions"]} == {"s0.64", "whole"}
    levels = made[0].levels
    assert len(levels) == 1 + len({t["scale"] for t in a["search"]["trials"]})  # C's load, then each level once
