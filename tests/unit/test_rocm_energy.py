"""The amdsmi energy meter with a fake amdsmi module (no GPU, no ROCm)."""

import ast
import importlib.util
import inspect
import sys
from pathlib import Path
from unittest import mock

import pytest

from eclip_ray.energy import amdsmi as amdsmi_meter
from eclip_ray.energy import open_meter
from eclip_ray.errors import BackendError, BackendUnavailable


class AmdSmiException(Exception):
    pass


class AmdSmiLibraryException(AmdSmiException):
    def __init__(self, err_code):
        super().__init__(f"AMDSMI_STATUS {err_code}")
        self.err_code = err_code


class FakeAmdSmi:
    """The amdsmi functions the meter calls, with amdsmi's signatures: two GPUs, ours the second."""

    AmdSmiException = AmdSmiException

    def __init__(self, ticks=(1000, 1000, 4000), resolution=15.3, power=None):
        self.ticks = iter(ticks)
        self.resolution = resolution
        self.power = power or {"current_socket_power": "N/A", "average_socket_power": 180}

    def amdsmi_init(self, flag=None):
        return None

    def amdsmi_shut_down(self):
        return None

    def amdsmi_get_processor_handles(self):
        return ["h0", "h1"]

    def amdsmi_get_gpu_device_bdf(self, processor_handle):
        return {"h0": "0000:03:00.0", "h1": "0000:43:00.0"}[processor_handle]

    def amdsmi_get_energy_count(self, processor_handle):
        assert processor_handle == "h1"
        return {"energy_accumulator": next(self.ticks), "counter_resolution": self.resolution, "timestamp": 0}

    def amdsmi_get_power_info(self, processor_handle):
        return dict(self.power)


def fake_amdsmi(**kw):
    real = FakeAmdSmi(**kw)
    sm = mock.create_autospec(FakeAmdSmi, instance=True)
    sm.AmdSmiException = AmdSmiException
    for name in [n for n in vars(FakeAmdSmi) if n.startswith("amdsmi_")]:
        getattr(sm, name).side_effect = getattr(real, name)
    return sm


def meter(sm, **kw):
    with mock.patch.object(amdsmi_meter, "_amdsmi", return_value=sm):
        return amdsmi_meter.AmdSmiMeter(1, bdf="0000:43:00.0", **kw)


def test_counter_is_converted_from_microjoule_ticks_once():
    assert amdsmi_meter.counter_joules({"energy_accumulator": 2_000_000, "counter_resolution": 15.3}) == 30.6
    assert amdsmi_meter.counter_joules({"power": 1_000_000, "counter_resolution": 1.0}) == 1.0  # older amdsmi


def test_window_reads_the_gpu_at_the_hip_devices_pci_address():
    sm = fake_amdsmi()
    m = meter(sm, min_window_s=0)
    m.begin_window("w")
    out = m.end_window("w")
    assert out.joules == pytest.approx(3000 * 15.3 / 1e6) and out.reliable
    assert m.power_w() == 180.0  # MI50-class GPUs report only the average
    m.close()
    sm.amdsmi_init.assert_called_once_with()
    sm.amdsmi_shut_down.assert_called_once_with()


def test_pci_addresses_are_compared_as_numbers():
    assert amdsmi_meter.match_bdf(["0000:03:00.0", "0000:43:00.0"], "43:00.0") == 1
    with pytest.raises(BackendUnavailable, match=r"sees no GPU at 0000:44:00\.0"):
        amdsmi_meter.match_bdf(["0000:43:00.0"], "0000:44:00.0")


def test_amdsmi_errors_name_the_call_and_code():
    sm = fake_amdsmi()
    sm.amdsmi_get_energy_count.side_effect = AmdSmiLibraryException(2)
    with pytest.raises(BackendError, match=r"amdsmi_get_energy_count failed with amdsmi error 2"):
        meter(sm)  # the counter is read at start, so an unsupported one fails there


def test_no_power_reading_is_an_error_not_zero():
    sm = fake_amdsmi(power={"current_socket_power": "N/A", "average_socket_power": "N/A"})
    m = meter(sm)
    with pytest.raises(BackendError, match="amdsmi_get_power_info failed with N/A"):
        m.power_w()


def test_missing_amdsmi_or_its_library_says_what_to_install():
    with mock.patch.dict(sys.modules, {"amdsmi": None}), pytest.raises(BackendUnavailable, match="amdsmi"):
        amdsmi_meter._amdsmi()

    class Broken:  # what `import amdsmi` does without libamd_smi.so: a KeyError from its ctypes loader
        def find_spec(self, name, path=None, target=None):
            if name == "amdsmi":
                raise KeyError("libamd_smi.so")

    with mock.patch.dict(sys.modules), mock.patch.object(sys, "meta_path", [Broken(), *sys.meta_path]):
        sys.modules.pop("amdsmi", None)
        with pytest.raises(BackendUnavailable, match=r"libamd_smi.so: pip install 'eclip-ray\[amd\]'"):
            amdsmi_meter._amdsmi()


def test_open_meter_for_rocm_is_amdsmi():
    sm = fake_amdsmi()
    with (
        mock.patch.object(amdsmi_meter, "_amdsmi", return_value=sm),
        mock.patch("eclip_ray.partition.rocm.pci_bus_id", return_value="0000:43:00.0"),
    ):
        m = open_meter("rocm", 1)
    assert isinstance(m, amdsmi_meter.AmdSmiMeter) and m.bdf == "0000:43:00.0"


def test_fake_signatures_match_amdsmi_where_installed():
    # Read from amdsmi's source: importing it needs libamd_smi.so, which only ROCm machines have.
    spec = importlib.util.find_spec("amdsmi")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("amdsmi is not installed; the fake's signatures are checked where it is")
    source = Path(spec.submodule_search_locations[0], "amdsmi_interface.py").read_text()
    real = {f.name: [a.arg for a in f.args.args] for f in ast.walk(ast.parse(source)) if isinstance(f, ast.FunctionDef)}
    for name in [n for n in vars(FakeAmdSmi) if n.startswith("amdsmi_")]:
        ours = [p for p in inspect.signature(getattr(FakeAmdSmi, name)).parameters if p != "self"]
        assert ours == real[name], name
