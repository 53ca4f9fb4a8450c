"""``eclip-ray plan`` from a directory of synthetic profiles (no GPU)."""

from __future__ import annotations

import pytest
from planner_fixtures import POWER, write_profiles

from eclip_ray.cli import main
from eclip_ray.planner import PlanTable, synthetic
from eclip_ray.planner.catalog import profile_dir


@pytest.fixture
def profiles(tmp_path):
    made = [
        synthetic.profile("albert-base", 20, seed=1, whole_ms=1.1),
        synthetic.profile("densenet201", 30, seed=2, whole_ms=3.8),
    ]
    return write_profiles(tmp_path / "h100", made, POWER)


def test_plan_prints_the_plan_and_the_gains(profiles, tmp_path, capsys):
    png = tmp_path / "plan.png"
    args = ["--models", "albert,densenet201", "--slo-ms", "5,20", "--profiles", str(profiles), "--plot", str(png)]
    rc = main(["plan", *args])
    out = capsys.readouterr().out
    assert rc == 0
    for text in ("albert-base (albert-base, batch 1, worker 0)", "densenet201", "partition", "inferences/s"):
        assert text in out
    for baseline in ("time-share", "multi-stream", "model-wise"):
        assert baseline in out
    assert png.stat().st_size > 0


def test_a_model_named_twice_is_two_instances(profiles, capsys):
    assert main(["plan", "--models", "densenet201,densenet201", "--profiles", str(profiles)]) == 0
    out = capsys.readouterr().out
    assert "densenet201 (densenet201, batch 1, worker 0)" in out
    assert "densenet201-2 (densenet201, batch 1, worker 1)" in out


def test_without_power_json_energy_is_not_guessed(tmp_path, capsys):
    directory = write_profiles(tmp_path / "p", [synthetic.profile("vgg19", 10, seed=3)], power=None)
    assert main(["plan", "--models", "vgg19", "--profiles", str(directory)]) == 0
    out = capsys.readouterr().out
    assert "energy n/a (no power.json" in out
    assert main(["plan", "--models", "vgg19", "--profiles", str(directory), "--objective", "energy"]) == 2
    assert "power" in capsys.readouterr().err


def test_an_impossible_slo_is_a_clear_error(profiles, capsys):
    rc = main(["plan", "--models", "albert-base,densenet201", "--slo-ms", "0.1,20", "--profiles", str(profiles)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "albert-base" in err and "best latency achievable" in err


def test_the_plan_table_can_be_written(profiles, tmp_path, capsys):
    path = tmp_path / "table.json"
    assert main(["plan", "--models", "albert,densenet201", "--profiles", str(profiles), "--table", str(path)]) == 0
    table = PlanTable.load(path)
    assert table.lookup({"albert-base": 1, "densenet201": 1}) is not None
    assert table.lookup({"densenet201": 1}) is not None


def test_unknown_profile_sets_and_models_are_named(profiles, capsys):
    assert main(["plan", "--models", "alexnet", "--profiles", str(profiles)]) == 2
    assert "no profile of alexnet" in capsys.readouterr().err
    with pytest.raises(Exception, match="no profile set 'nowhere'"):
        profile_dir("nowhere")
