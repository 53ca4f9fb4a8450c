"""Measured selection on a fake GPU whose latencies depend on the plan and the load (no GPU, virtual time)."""

from __future__ import annotations

import pytest
from fake_gpu import JOB, SLO_MS, SVC, FakeClock, FakeGpu, service_pair, trial_on
from planner_fixtures import H100

from eclip_ray.errors import PlanError
from eclip_ray.planner.candidates import generate
from eclip_ray.planner.selection import Selection, SelectionSettings, Trial, best, core, select


@pytest.fixture(scope="module")
def cands():
    return generate(service_pair(), H100, SLO_MS)


def _select(cands, rate, settings=None, **kw):
    gpu = FakeGpu(cands.layout, {"svc": SVC, "job": JOB}, seed=1)
    clock = FakeClock()
    trial = trial_on(gpu, {"svc": rate, "job": None}, clock, cands.latency_critical)
    return select(cands, trial, SLO_MS, settings=settings, clock=clock, **kw), trial


def test_a_light_load_adopts_the_least_confined_plan_that_keeps_the_service_within_its_slo(cands):
    sel, trial = _select(cands, 20)
    t = sel.trials
    assert sel.met and not t["multi-stream"].met(SLO_MS)  # the job floods the service's SMs
    chosen = t[sel.chosen]
    assert chosen.violation(SLO_MS) <= -0.1  # met with the margin
    margin_ok = [x for x in t.values() if x.violation(SLO_MS) <= -0.1]
    assert chosen.throughput_rps >= 0.98 * max(x.throughput_rps for x in margin_ok)
    assert sel.seconds <= 10.0 and trial.calls[: len(core(cands))] == [c.name for c in core(cands)]
    assert "meets every SLO by measured p99" in sel.reason


def test_the_choice_moves_to_a_more_confined_plan_as_the_load_rises(cands):
    light, _ = _select(cands, 20)
    heavy, _ = _select(cands, 200)
    assert heavy.met and heavy.chosen != light.chosen
    assert cands[heavy.chosen].sizes["job"] < cands[light.chosen].sizes["job"]
    assert heavy.trials[light.chosen].violation(SLO_MS) > 0  # what suited the light load breaks the SLO here


def test_when_no_candidate_meets_the_slos_the_least_violation_wins_and_it_says_so(cands):
    sel, _ = _select(cands, 500)
    assert not sel.met and sel.reason.startswith("no measured candidate met every SLO")
    assert sel.chosen == min(sel.trials, key=lambda n: sel.trials[n].violation(SLO_MS))
    pb = [c.name for c in cands.candidates if c.adaptive]
    assert all("missed an SLO" in sel.skipped[n] for n in pb)  # its static plan missed: going wide cannot help


def test_the_budget_bounds_the_trials_and_patience_stops_early(cands):
    short, trial = _select(cands, 20, SelectionSettings(window_s=0.5, overhead_s=0.3, budget_s=2.0))
    assert len(trial.calls) == 2 and short.seconds <= 2.0 + 0.7
    assert any("budget" in why for why in short.skipped.values())
    eager, trial = _select(cands, 20, SelectionSettings(patience=1))
    assert any("did not change the best" in why for why in eager.skipped.values())
    assert len(eager.trials) < len(cands)


def test_excluded_candidates_are_not_measured(cands):
    sel, trial = _select(cands, 20, exclude={"multi-stream": "missed at a lower load"})
    assert "multi-stream" not in trial.calls and sel.skipped["multi-stream"] == "missed at a lower load"


def test_within_a_tie_the_candidate_with_the_most_slack_wins():
    slo = {"a": 10.0}
    trials = {
        "fast": Trial("fast", {"a": 8.5}, 1000.0),
        "safe": Trial("safe", {"a": 5.0}, 990.0),
        "slow": Trial("slow", {"a": 2.0}, 500.0),
    }
    assert best(trials, slo, tie=0.02)[0] == "safe"
    assert best(trials, slo, tie=0.0)[0] == "fast"
    assert best(trials, slo, tie=0.0, margin=0.2)[0] == "safe"  # fast is within the SLO but not the margin
    energy = {
        n: Trial(n, t.p99_ms, t.throughput_rps, j) for (n, t), j in zip(trials.items(), (0.3, 0.2, 0.1), strict=True)
    }
    assert best(energy, slo, "energy", tie=0.0)[0] == "slow"
    assert best({"none": Trial("none", {"a": None}, 0.0)}, slo)[2] is False  # completed nothing: not met


def test_trials_and_selections_round_trip_and_bad_metrics_are_named():
    t = Trial.of("x", {"p99_ms": {"a": 1.0}, "throughput_rps": 10, "models": {"a": {"throughput_rps": 10}}})
    sel = Selection("x", "why", True, {"x": t}, {"y": "budget"}, 1.5, "load")
    assert Selection.from_dict(sel.to_dict()) == sel
    with pytest.raises(PlanError, match="trial of 'x' returned no usable metrics"):
        Trial.of("x", {"p50_ms": {}})
    with pytest.raises(PlanError, match="out of range"):
        SelectionSettings(margin=1.5)
    assert SelectionSettings().window([20.0]) == 2.0 and SelectionSettings().window([1000.0]) == 0.5
