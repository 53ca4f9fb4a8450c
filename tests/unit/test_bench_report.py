"""eclip against the best baseline, the goal over the mixes, and the Markdown report (no GPU)."""

from __future__ import annotations

import pytest

from eclip_ray.bench import compare, report, results


def _ok(rps: float, jpi: float | None, slo: bool = True) -> dict:
    r = {"status": "ok", "reason": "", "throughput_rps": rps, "joules_per_inference": jpi, "slo_met": slo,
         "avg_power_w": None if jpi is None else rps * jpi, "energy_note": "" if jpi else "no meter",
         "p95_ms": {"a": 1.0}, "p99_ms": {"a": 1.5}, "slo_ms": {"a": 3.0}, "packing_efficiency": 0.2}  # fmt: skip
    return r


def _summary(policies_by_mix: dict[str, dict]) -> dict:
    doc = results.new_document({"card": "test card", "driver": "1.0", "torch": "2"}, "test")
    for mix, pols in policies_by_mix.items():
        sc = {"load": {"kind": "closed", "inflight": 1}, "batch_size": {"a": 1}, "slo_ms": {"a": 3.0},
              "settings": {"window_s": 10, "warmup_s": 2, "slo_factor": 3, "slo_percentile": 99, "seed": 0},
              "policies": pols}  # fmt: skip
        doc["mixes"][mix] = {"models": ["a"], "instances": ["a"], "scenarios": {"closed1-bs1": sc}}
    return doc


def test_best_baselines_are_picked_per_metric_among_those_meeting_every_slo():
    pols = {"multi-stream": _ok(100, 0.10), "time-share": _ok(80, 0.09), "mps": _ok(120, 0.05, slo=False),
            "fixed:a=64": _ok(500, 0.01), "eclip": _ok(150, 0.063)}  # fmt: skip
    c = compare.compare_mix("M1", pols)
    # mps is faster and cheaper but breaks its SLO; a hand-made fixed plan is no baseline at all.
    assert c.best_rps == ("multi-stream", 100) and c.best_jpi == ("time-share", 0.09)
    assert c.throughput_ratio == pytest.approx(150 / 100) and c.energy_ratio == pytest.approx(0.063 / 0.09)
    assert c.meets_goal() and c.baseline_slo["mps"] is False and "fixed:a=64" not in c.baseline_slo


def test_when_no_baseline_meets_every_slo_the_report_says_so():
    pols = {"multi-stream": _ok(100, 0.10, slo=False), "eclip": _ok(90, 0.2)}
    c = compare.compare_mix("M1", pols)
    assert c.none_meets and c.best_rps is None and c.throughput_ratio is None
    text = report.markdown(_summary({"M1": pols}))
    assert "none meets every SLO" in text and "no baseline meets every SLO" in text


def test_goal_is_the_mean_over_mixes_and_needs_every_slo():
    a = compare.compare_mix("M1", {"multi-stream": _ok(100, 0.1), "eclip": _ok(140, 0.06)})
    b = compare.compare_mix("M2", {"multi-stream": _ok(100, 0.1), "eclip": _ok(110, 0.08)})
    g = compare.goal([a, b])
    assert g.mean_throughput_ratio == pytest.approx((1.4 + 1.1) / 2)
    assert g.mean_energy_ratio == pytest.approx((0.6 + 0.8) / 2)
    assert g.met and g.mixes == ("M1", "M2") and not g.missing
    c = compare.compare_mix("M3", {"multi-stream": _ok(100, 0.1), "eclip": _ok(200, 0.01, slo=False)})
    assert not compare.goal([a, b, c]).met
    skipped = compare.compare_mix("M4", {"multi-stream": _ok(100, 0.1), "eclip": results.not_measured("skipped", "x")})
    g = compare.goal([a, skipped])
    assert g.missing == ("M4",) and not g.met and skipped.why_not == "skipped: x"


def test_goal_without_energy_is_not_met_and_says_why():
    a = compare.compare_mix("M1", {"multi-stream": _ok(100, None), "eclip": _ok(150, None)})
    g = compare.goal([a])
    assert g.mean_energy_ratio is None and not g.met
    assert "energy not measured" in report.goal_text(g)


def test_report_tables_say_where_eclip_loses():
    doc = _summary({
        "M1": {"multi-stream": _ok(100, 0.1), "eclip": _ok(130, 0.07)},
        "M2": {"multi-stream": _ok(100, 0.1), "eclip": _ok(90, 0.12), "mps": results.not_measured("skipped", "no MPS")},
    })  # fmt: skip
    text = report.markdown(doc)
    assert text.startswith(report.BEGIN) and text.rstrip().endswith(report.END)
    assert "| M2 | mps | | | | | | | | | | | skipped: no MPS |" in text
    rows = [line for line in text.splitlines() if line.startswith("| M")]
    m1 = next(r for r in rows if r.startswith("| M1 | multi-stream 100.0"))
    m2 = next(r for r in rows if r.startswith("| M2 | multi-stream 100.0"))
    assert "meets the goal" in m1 and "1.30x" in m1
    assert "**loses to the best baseline**" in m2 and "0.90x" in m2
    assert "**NOT MET**" in text


def _found(scale: float | None, goodput: float, jpi: float | None, batch: float = 0.0) -> dict:
    r = _ok(goodput + batch, jpi, slo=scale is not None)
    r.update(goodput_scale=scale, goodput_rps=goodput, normalised_throughput=goodput / 100 + batch / 1000,
             models={"svc": {"throughput_rps": goodput}, "job": {"throughput_rps": batch}})  # fmt: skip
    return r


ROLES = {"svc": "latency", "job": "batch"}


def test_goodput_comparison_takes_the_best_baseline_that_meets_the_slos_at_some_load():
    pols = {"multi-stream": _found(None, 50, 0.2, 900), "mps-equal": _found(0.4, 120, 0.3, 500),
            "stream-priority": _found(0.6, 150, 0.25, 700), "fixed:svc=whole,job=96": _found(2.0, 400, 0.1, 800),
            "eclip": _found(1.0, 260, 0.2, 800)}  # fmt: skip
    c = compare.compare_search("H1", "A", pols, ROLES)
    assert set(c.meeting) == {"mps-equal", "stream-priority"} and "multi-stream" in c.ran
    assert c.best["goodput_scale"] == ("stream-priority", 0.6) and c.best["joules_per_inference"] == (
        "stream-priority",
        0.25,
    )
    assert c.ratio["goodput_scale"] == pytest.approx(1.0 / 0.6)
    assert c.batch_vs_multi_stream == pytest.approx(800 / 900)  # against multi-stream's, whether or not it met
    assert c.verdict() == (True, []) and not c.only_eclip  # 1.67x >= 1.5x, the job kept at 0.89x, J/inf 0.8x


def test_eclip_alone_meeting_the_slos_meets_the_goal_and_the_table_says_none_does_else():
    pols = {"multi-stream": _found(None, 50, 0.2, 900), "eclip": _found(0.3, 60, 0.2, 850)}
    c = compare.compare_search("H1", "A", pols, ROLES)
    assert c.only_eclip and c.best["goodput_scale"] is None and c.verdict() == (True, [])
    lost = compare.compare_search(
        "H1", "B", {"multi-stream": _found(0.5, 50, 0.2), "eclip": _found(None, 0, 0.2)}, ROLES
    )
    assert lost.verdict() == (False, ["eclip meets the SLOs at no load tried"])
    assert compare.search_goal([c, lost])[0] is False
