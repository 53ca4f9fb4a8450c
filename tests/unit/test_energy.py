from unittest import mock

import pytest

from eclip_ray.energy import Measurement, UnavailableMeter, attribute, open_meter
from eclip_ray.energy.meter import EnergyMeter
from eclip_ray.errors import BackendError, EnergyUnavailable


class FakeMeter(EnergyMeter):
    def __init__(self, readings):
        super().__init__()
        self.readings = iter(readings)

    def _counter_j(self):
        return next(self.readings)

    def power_w(self):
        return 100.0

    def describe(self):
        return {}


def test_window_returns_joules_and_flags_short_windows():
    m = FakeMeter([10.0, 35.0])
    m.min_window_s = 0.0
    m.begin_window("a")
    out = m.end_window("a")
    assert out.joules == 25.0 and out.reliable
    m2 = FakeMeter([0.0, 1.0])
    m2.min_window_s = 3600
    m2.begin_window("a")
    assert not m2.end_window("a").reliable


def test_window_misuse():
    m = FakeMeter([0.0, 0.0])
    m.begin_window("a")
    with pytest.raises(ValueError, match="already open"):
        m.begin_window("a")
    with pytest.raises(ValueError, match="never begun"):
        m.end_window("b")


def test_cpu_meter_says_unavailable_instead_of_zero():
    m = open_meter("cpu")
    assert isinstance(m, UnavailableMeter) and not m.available
    with pytest.raises(EnergyUnavailable, match="cpu"):
        m.begin_window("x")
    with pytest.raises(EnergyUnavailable):
        m.power_w()


def test_attribution_by_sm_time():
    meas = Measurement(seconds=10, joules=300.0, reliable=True)
    assert meas.watts == 30.0
    share = attribute(meas, {"a": 3.0, "b": 1.0})
    assert share == {"a": 225.0, "b": 75.0}
    with pytest.raises(ValueError):
        attribute(meas, {"a": 0.0})
    with pytest.raises(ValueError):
        meas.per_inference(0)


def test_nvml_errors_name_the_call():
    fake = mock.MagicMock()

    class NVMLError(Exception):
        value = 999

    fake.NVMLError = NVMLError

    def broken(*a):
        raise NVMLError("unknown")

    broken.__name__ = "nvmlDeviceGetTotalEnergyConsumption"
    fake.nvmlDeviceGetTotalEnergyConsumption = broken
    with mock.patch("eclip_ray.energy.nvml._nvml", return_value=fake):
        from eclip_ray.energy.nvml import NvmlMeter

        with pytest.raises(BackendError, match="nvmlDeviceGetTotalEnergyConsumption failed"):
            NvmlMeter(0)


def test_nvml_meter_converts_millijoules_once():
    fake = mock.MagicMock()
    fake.NVMLError = type("NVMLError", (Exception,), {})
    fake.nvmlDeviceGetTotalEnergyConsumption.side_effect = [1000, 1000, 4500]
    with mock.patch("eclip_ray.energy.nvml._nvml", return_value=fake):
        from eclip_ray.energy.nvml import NvmlMeter

        m = NvmlMeter(0, min_window_s=0)
        m.begin_window("w")
        assert m.end_window("w").joules == pytest.approx(3.5)
