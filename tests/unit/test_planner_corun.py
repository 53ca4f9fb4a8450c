"""Fitting the co-run coefficients to measured mixes (``eclip_ray.planner.corun``), on synthetic data."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from planner_fixtures import H100, POWER, write_profiles

from eclip_ray.cli import main
from eclip_ray.errors import PlanError
from eclip_ray.graph.plan import Plan
from eclip_ray.partition.layout import ladder
from eclip_ray.planner import catalog, corun, synthetic

TRUE = corun.Coefficients(0.5, 0.3, 0.4)
MIXES = {"A": ["albert-base", "densenet201"], "B": ["vgg19", "densenet201", "albert-base"], "C": ["vgg19", "vgg19"]}


@pytest.fixture
def profiles(tmp_path):
    made = [
        synthetic.profile("albert-base", 20, seed=1, whole_ms=1.1),
        synthetic.profile("densenet201", 30, seed=2, whole_ms=3.8),
        synthetic.profile("vgg19", 12, seed=3, whole_ms=0.7, heavy=0.6),
    ]
    return write_profiles(tmp_path / "h100", made, POWER)


def _plans(models: list[str], cut: str) -> dict[str, dict[str, dict]]:
    names = [f"{m}#{i}" for i, m in enumerate(models)]
    k = len(models)
    size = 64 if k == 2 else 32
    staged = {"cuts": [cut], "partitions": ["w0.32", "whole"]}
    return {
        "multi": {n: {"cuts": [], "partitions": ["whole"]} for n in names},
        "split": {n: {"cuts": [], "partitions": [f"w{i}.{size}"]} for i, n in enumerate(names)},
        "eclip": {n: (staged if i == 0 else {"cuts": [], "partitions": [f"w{i}.{size}"]}) for i, n in enumerate(names)},
    }


def _measured(pred: corun.Predictor, mix: str, layout, models, plans) -> dict:
    """What a GPU would measure if the cost model with TRUE were exact."""
    insts = tuple(corun.Instance(n, m, 1, Plan.from_dict(plans[n])) for n, m in zip(plans, models, strict=True))
    obs = corun.Observation(mix, "made up", layout, insts, False, {}, 0.0, None)
    p = pred.predict(obs, TRUE)
    watts = POWER.idle_w + TRUE.power_scale * POWER.dynamic_w(p.busy_sms)
    return {"latency_p50_ms": p.latency_ms, "throughput_rps": p.throughput, "avg_power_w": watts}


def _validation_doc(profiles) -> dict:
    """A result file shaped like ``benchmarks/validate_cost_model.py``'s."""
    pred = corun.Predictor(profiles)
    mixes = []
    for name, models in MIXES.items():
        lay = ladder(H100, len(models))
        cut = pred.profile(models[0], 1).units[3].cut
        plans = _plans(models, cut)
        mixes.append(
            {
                "mix": name,
                "models": models,
                "batch_size": 1,
                "layout": lay.to_dict(),
                "plans": plans["eclip"],
                "split_plans": plans["split"],
                "measured_eclip": _measured(pred, name, lay, models, plans["eclip"]),
                "measured_split": _measured(pred, name, lay, models, plans["split"]),
                "measured_multi_stream": _measured(pred, name, lay, models, plans["multi"]),
            }
        )
    return {"mixes": mixes}


def test_the_fit_recovers_the_coefficients_that_made_the_measurements(profiles):
    obs = corun.from_validation(_validation_doc(profiles), "made up")
    assert len(obs) == 9 and {o.mix for o in obs} == set(MIXES)
    report = corun.leave_one_mix_out(corun.Predictor(profiles), obs)
    assert report.coefficients == TRUE
    medians = report.medians()
    assert medians["median_abs_latency_error"] < 1e-9 and medians["median_abs_throughput_error"] < 1e-9
    assert medians["median_abs_power_error"] < 0.01


def test_the_fit_is_judged_on_mixes_it_did_not_see(profiles):
    doc = _validation_doc(profiles)
    for m in doc["mixes"]:  # mix C ran 50% slower than anything the model can say
        if m["mix"] == "C":
            for key in ("measured_eclip", "measured_split", "measured_multi_stream"):
                m[key]["latency_p50_ms"] = {n: 1.5 * v for n, v in m[key]["latency_p50_ms"].items()}
    report = corun.leave_one_mix_out(corun.Predictor(profiles), corun.from_validation(doc, "x"))
    assert report.held_out["C"] == TRUE  # fitted on A and B alone
    held_c = [r for r in report.rows if r["mix"] == "C"]
    assert all(abs(e) > 0.2 for r in held_c for e in r["latency_rel_error"].values())


def test_bench_results_are_observations_too(profiles):
    pred = corun.Predictor(profiles)
    models = MIXES["A"]
    lay = ladder(H100, 2)
    plans = _plans(models, pred.profile(models[0], 1).units[3].cut)["split"]
    m = _measured(pred, "A", lay, models, plans)
    names = list(plans)
    policy = {
        "status": "ok",
        "p50_ms": m["latency_p50_ms"],
        "throughput_rps": m["throughput_rps"],
        "avg_power_w": m["avg_power_w"],
        "energy_reliable": True,
        "setup": {"plans": plans},
    }
    scenario = {"load": {"kind": "closed"}, "batch_size": dict.fromkeys(names, 1), "pool": lay.to_dict()}
    scenario["policies"] = {"model-wise": policy, "mps": {"status": "ok", "setup": {}}}
    doc = {"mixes": {"A": {"models": models, "instances": names, "scenarios": {"closed1-bs1": scenario}}}}
    (obs,) = corun.from_bench(doc, "m.json")
    assert obs.source == "m.json: closed1-bs1 model-wise" and not obs.serial
    assert pred.predict(obs, TRUE).latency_ms == pytest.approx(m["latency_p50_ms"])


def test_a_plan_cut_the_profile_does_not_have_is_an_error(profiles):
    prof = corun.Predictor(profiles).profile("vgg19", 1)
    with pytest.raises(PlanError, match="'nowhere#0' is not a cut point of vgg19"):
        corun.stage_groups(prof, Plan(("nowhere#0",), ("w0.32", "whole")))
    groups = corun.stage_groups(prof, Plan((prof.units[5].cut,), ("w0.32", "whole")))
    assert [(g.first, g.stop) for g in groups] == [(0, 5), (5, len(prof.units))]


def test_fit_corun_writes_what_plan_then_uses(profiles, tmp_path, capsys):
    results = tmp_path / "validation.json"
    results.write_text(json.dumps(_validation_doc(profiles)))
    table = tmp_path / "table.md"
    assert main(["fit-corun", str(results), "--profiles", str(profiles), "--table", str(table)]) == 0
    assert table.read_text().count("\n| ") == 2 + 9  # header, rule, one row per observation
    out = capsys.readouterr().out
    assert (
        "interference 0.5, contention 0.3, blocking 0.0, coverage 1.0, power scale 0.4; tail (p99): not measured" in out
    )
    fitted = json.loads((profiles / catalog.CORUN_FILE).read_text())
    assert fitted["interference"] == 0.5 and len(fitted["observations"]) == 9
    settings = catalog.fitted_settings(profiles)
    assert (settings.interference, settings.contention) == (0.5, 0.3)
    power, _ = catalog.load_power(profiles)
    assert power.dynamic_w(64) == pytest.approx(0.4 * POWER.dynamic_w(64))
    assert catalog.load_power(profiles, fitted=False)[0] == POWER
    assert main(["plan", "--models", "albert-base,vgg19", "--profiles", str(profiles)]) == 0
    assert "interference 0.5, contention 0.3 (corun.json)" in capsys.readouterr().out


def test_fit_corun_names_a_file_that_is_not_a_result(profiles, tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["fit-corun", str(bad), "--profiles", str(profiles)]) == 2
    assert "bad.json: neither a validation nor a bench result" in capsys.readouterr().err


def test_blocking_coverage_tails_and_queueing_are_fitted_from_batched_neighbours(tmp_path):
    """Co-runs shaped like benchmarks/corun_tails.py's, made by the cost model with known coefficients."""
    from eclip_ray.partition.layout import arrange, union

    made = [
        synthetic.profile("svc", 16, seed=5, whole_ms=1.0, heavy=0.3),
        synthetic.profile("svc2", 16, seed=6, whole_ms=0.6, heavy=0.2),
        synthetic.profile("job", 12, batch_size=16, seed=7, whole_ms=5.0, heavy=0.9, kernels_per_unit=2),
        synthetic.profile("job2", 10, batch_size=8, seed=8, whole_ms=3.0, heavy=0.8),
    ]
    profiles = write_profiles(tmp_path / "p", made, POWER)
    pred = corun.Predictor(profiles)
    truth = corun.Coefficients(0.4, 0.2, None, 0.3, corun.Pressure(0.8, 0.4, 0.9, 1.0, 2.0), 2.0)
    parts = [*arrange(H100, [96]), *arrange(H100, [32, -1])]
    lay = union(H100, parts)
    whole = Plan.single("whole")
    obs = []
    for svc, job in (("svc", "job"), ("svc2", "job2"), ("svc", "job2")):
        plans = {
            "multi": (whole, whole),
            "nested": (whole, Plan.single("s0.96")),
            "disjoint": (Plan.single("s0.32"), Plan.single("s32.100")),
            "inverted": (Plan.single("s0.96"), whole),
        }
        batch = pred.profile(job, 16 if job == "job" else 8).key.batch_size
        for label, (p_svc, p_job) in plans.items():
            for rate in (None, 300.0):
                insts = (corun.Instance(svc, svc, 1, p_svc, rate), corun.Instance(job, job, batch, p_job))
                o = corun.Observation(f"{svc}+{job}", label, lay, insts, False, {}, 0.0, None)
                p = pred.predict(o, truth)
                obs.append(replace(o, p50_ms=p.latency_ms, throughput=p.throughput, p99_ms=p.tail_ms))
    report = corun.leave_one_mix_out(pred, obs)
    m = report.medians()
    assert m["median_abs_latency_error"] < 0.01 and m["median_abs_p99_error"] < 0.01
    assert m["p99_pairs_ordered"] > 0.95 and report.coefficients.tail is not None
    fitted = report.coefficients
    assert (fitted.blocking, fitted.coverage) != (0.0, 1.0)  # the batched neighbours' terms are needed to fit
