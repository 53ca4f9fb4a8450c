"""The ROCm backend's HIP call sequence, error mapping and selection, with a fake hip-python module (no GPU)."""

import array
import enum
import importlib
import inspect
import sys
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from rocm_fixtures import CPU_PROPERTIES, MI50_PROPERTIES

from eclip_ray.errors import BackendError, BackendUnavailable, LayoutError
from eclip_ray.partition import StreamPool, choose_backend, open_backend
from eclip_ray.partition import rocm as rocm_backend
from eclip_ray.partition.layout import PartitionSpec, disjoint, ladder


class hipError_t(enum.IntEnum):  # hip-python's names, so the backend reads them as it would there
    hipSuccess = 0
    hipErrorInvalidValue = 1
    hipErrorOutOfMemory = 2
    hipErrorNoDevice = 100


class hipDeviceAttribute_t(enum.IntEnum):
    hipDeviceAttributeMultiprocessorCount = 63


class FakeHip:
    """The hip-python functions the backend calls, with hip-python's signatures, on a 60-CU MI50."""

    hipError_t = hipError_t
    hipDeviceAttribute_t = hipDeviceAttribute_t

    def __init__(self, cus=60, global_mask=None, fail=None):
        self.cus, self.global_mask, self.fail = cus, global_mask, fail or {}
        self.masks, self.next_handle = {}, 0x1000

    def _err(self, name):
        return self.fail.get(name, hipError_t.hipSuccess)

    def hipGetDeviceCount(self):
        return (self._err("hipGetDeviceCount"), 1)

    def hipSetDevice(self, deviceId):
        return (self._err("hipSetDevice"),)

    def hipDeviceGetAttribute(self, attr, deviceId):
        return (self._err("hipDeviceGetAttribute"), self.cus)

    def hipDeviceGetPCIBusId(self, len, device):
        return (self._err("hipDeviceGetPCIBusId"), "0000:03:00.0")

    def hipExtStreamCreateWithCUMask(self, cuMaskSize, cuMask):
        err = self._err("hipExtStreamCreateWithCUMask")
        if err:
            return (err, None)
        self.next_handle += 0x10
        self.masks[self.next_handle] = list(cuMask)[:cuMaskSize]
        return (err, self.next_handle)

    def hipExtStreamGetCUMask(self, stream, cuMaskSize, cuMask):
        mask = self.masks[stream]
        if self.global_mask:  # the runtime ANDs a global HSA_CU_MASK into what it reports
            mask = [a & b for a, b in zip(mask, self.global_mask, strict=True)]
        cuMask[:cuMaskSize] = array.array("I", mask)
        return (self._err("hipExtStreamGetCUMask"),)

    def hipStreamDestroy(self, stream):
        self.masks.pop(stream)
        return (self._err("hipStreamDestroy"),)

    def hipRuntimeGetVersion(self):
        return (hipError_t.hipSuccess, 60241134)

    def hipDriverGetVersion(self):
        return (hipError_t.hipSuccess, 60241134)


_CALLS = [n for n in vars(FakeHip) if n.startswith("hip") and callable(getattr(FakeHip, n))]


def fake_hip(**kw):
    """An autospec mock of FakeHip (calls are checked against its signatures) that behaves like it."""
    real = FakeHip(**kw)
    hip = mock.create_autospec(FakeHip, instance=True)
    hip.hipError_t, hip.hipDeviceAttribute_t = hipError_t, hipDeviceAttribute_t
    for name in _CALLS:
        getattr(hip, name).side_effect = getattr(real, name)
    hip.real = real
    return hip


def fake_torch(arch="gfx906:sramecc+:xnack-"):
    t = mock.MagicMock()
    t.version.hip = "6.2.41134"
    t.cuda.is_available.return_value = True
    t.cuda.get_device_properties.return_value = SimpleNamespace(gcnArchName=arch, name="AMD Instinct MI50")
    t.cuda.ExternalStream.side_effect = lambda ptr, device: ("masked", ptr)
    t.cuda.Stream.side_effect = lambda device: ("plain", device)
    t.device = torch.device
    t.__version__ = torch.__version__
    return t


@pytest.fixture
def kfd(tmp_path):
    for i, text in enumerate((CPU_PROPERTIES, MI50_PROPERTIES)):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "properties").write_text(text)
    return tmp_path


def backend(kfd, hip=None, **kw):
    hip = hip or fake_hip()
    with (
        mock.patch.object(rocm_backend, "_hip", return_value=hip),
        mock.patch.object(rocm_backend, "torch", fake_torch()),
    ):
        be = rocm_backend.RocmCuMaskBackend(0, kfd_root=kfd, **kw)
    be._test_hip = hip
    return be


def test_check_unwraps_and_maps_codes_to_backend_errors():
    assert rocm_backend.check((hipError_t.hipSuccess, 5), "hipX") == 5
    assert rocm_backend.check((hipError_t.hipSuccess,), "hipX") is None
    with pytest.raises(BackendError, match=r"hipExtStreamCreateWithCUMask failed with hipErrorOutOfMemory \(SE0\)"):
        rocm_backend.check((hipError_t.hipErrorOutOfMemory, None), "hipExtStreamCreateWithCUMask", "SE0")
    with pytest.raises(BackendError, match="hipError 719"):
        rocm_backend.check((719, None), "hipX")


def test_a_hip_runtime_that_cannot_load_is_unavailable_not_a_crash():
    hip = SimpleNamespace(hipGetDeviceCount=mock.Mock(side_effect=RuntimeError("failed to dlopen 'libamdhip64.so'")))
    with pytest.raises(BackendUnavailable, match="could not load the HIP runtime"):
        rocm_backend.call(hip, "hipGetDeviceCount")
    with mock.patch.object(rocm_backend, "_hip", return_value=hip):
        assert rocm_backend.gpu_count() is None
    no_device = fake_hip(fail={"hipGetDeviceCount": hipError_t.hipErrorNoDevice})
    with mock.patch.object(rocm_backend, "_hip", return_value=no_device):
        assert rocm_backend.gpu_count() == 0


def test_backend_reads_the_topology_and_the_queue_limit(kfd):
    be = backend(kfd)
    g = be.geometry()
    assert (g.sm_count, g.min_sms, g.granularity) == (60, 15, 15)
    assert (be.max_masked, be.limit_source) == (7, "measured on gfx906 (ECLIP)")
    hip = be._test_hip
    hip.hipDeviceGetPCIBusId.assert_called_once_with(64, 0)
    hip.hipDeviceGetAttribute.assert_called_once_with(hipDeviceAttribute_t.hipDeviceAttributeMultiprocessorCount, 0)


def test_hip_and_kfd_disagreeing_on_cus_is_refused(kfd):
    with pytest.raises(LayoutError, match="HIP reports 64 CUs but the topology has 60"):
        backend(kfd, fake_hip(cus=64))


def test_pool_creates_one_masked_stream_per_partition_and_none_for_the_whole_gpu(kfd):
    be = backend(kfd)
    with mock.patch.object(rocm_backend, "torch", fake_torch()):
        pool = StreamPool(be, ladder(be.geometry(), 2))
        hip = be._test_hip
        created = [(c.args[0], list(c.args[1])) for c in hip.hipExtStreamCreateWithCUMask.call_args_list]
        assert len(created) == 6  # w0.15/30/45 and w1.15/30/45; "whole" is an ordinary stream
        assert created[0] == (2, [0x11111111, 0x01111111])  # w0.15 = SE0
        assert pool["whole"].stream[0] == "plain" and pool["w1.15"].stream[0] == "masked"
        assert hip.hipExtStreamGetCUMask.call_count == 6  # each mask read back
        pool.close()
    assert hip.hipStreamDestroy.call_count == 6 and not hip.real.masks


def test_first_owner_of_a_partition_reuses_its_stream_and_later_owners_cost_a_queue(kfd):
    be = backend(kfd)
    with mock.patch.object(rocm_backend, "torch", fake_torch()):
        pool = StreamPool(be, ladder(be.geometry(), 2))
        assert pool.stream("w0.15", owner="a") is pool["w0.15"].stream
        second = pool.stream("w0.15", owner="b")  # the 7th masked stream: the last the MI50 takes
        assert second != pool["w0.15"].stream
        assert list(be._test_hip.real.masks[second[1]]) == [0x11111111, 0x01111111]
        with pytest.raises(LayoutError, match=r"'w1.15'.*stream 8 but the GPU takes 7 \(measured on gfx906"):
            pool.stream("w1.15", owner="a")
            pool.stream("w1.15", owner="b")
        pool.close()


def test_asking_for_more_masked_streams_than_configured_is_a_clear_error(kfd):
    be = backend(kfd, max_masked_streams=2)
    with (
        mock.patch.object(rocm_backend, "torch", fake_torch()),
        pytest.raises(
            LayoutError,
            match=r"partition 'p2': 15 CUs \(slots 30..44\): SE2.*stream 3 but the GPU takes 2 \(configured\)",
        ),
    ):
        StreamPool(be, disjoint(be.geometry(), [15, 15, 15, 15]))
    assert be._test_hip.hipExtStreamCreateWithCUMask.call_count == 2
    assert not be._test_hip.real.masks  # the pool closed the backend, destroying the two it made


def test_hip_failure_names_the_call_and_the_cus_asked(kfd):
    hip = fake_hip(fail={"hipExtStreamCreateWithCUMask": hipError_t.hipErrorInvalidValue})
    be = backend(kfd, hip)
    with mock.patch.object(rocm_backend, "torch", fake_torch()), pytest.raises(BackendError) as e:
        be.create(PartitionSpec("w1.30", 30, 30, 1))
    assert e.value.call == "hipExtStreamCreateWithCUMask" and e.value.code == "hipErrorInvalidValue"
    assert "partition 'w1.30': 30 CUs (slots 30..59): SE2, SE3, mask [0xcccccccc, 0x0ccccccc]" in e.value.context


def test_a_mask_the_runtime_changed_is_caught_on_read_back(kfd):
    be = backend(kfd, fake_hip(global_mask=[0x0000FFFF, 0]))
    with (
        mock.patch.object(rocm_backend, "torch", fake_torch()),
        pytest.raises(
            BackendError, match=r"mask differs .*got \[0x00001111, 0x00000000\] \(is ROC_GLOBAL_CU_MASK set\?\)"
        ),
    ):
        be.create(PartitionSpec("w0.15", 0, 15, 0))


def test_torch_and_hip_python_on_different_hip_runtimes_is_refused(kfd):
    two = {"/venv/torch/lib/libamdhip64.so", "/opt/rocm/lib/libamdhip64.so.6"}
    with (
        mock.patch.object(rocm_backend.cumask, "hip_runtimes", return_value=two),
        pytest.raises(BackendUnavailable, match="two HIP runtimes are loaded"),
    ):
        backend(kfd)


def test_a_mask_below_hip_is_refused_at_start(kfd):
    with mock.patch.dict("os.environ", {"HSA_CU_MASK": "0:0-7"}), pytest.raises(BackendUnavailable, match="unset it"):
        backend(kfd)


def test_describe_reports_topology_limit_and_versions(kfd):
    be = backend(kfd)
    with (
        mock.patch.object(rocm_backend, "torch", fake_torch()),
        mock.patch.object(rocm_backend.metadata, "version", return_value="6.2.0"),
    ):
        info = be.describe()
    assert info["cus_per_engine"] == [15, 15, 15, 15] and info["max_masked_streams"] == 7
    assert info["arch"].startswith("gfx906") and info["hip_runtime"] == 60241134


def test_without_hip_python_the_backend_says_what_to_install():
    with mock.patch.dict(sys.modules, {"hip": None}), pytest.raises(BackendUnavailable, match=r"eclip-ray\[amd\]"):
        rocm_backend._hip()


def test_modules_import_without_vendor_libraries():
    with mock.patch.dict(sys.modules, {"hip": None, "amdsmi": None}):
        importlib.reload(rocm_backend)
        from eclip_ray.energy import amdsmi as amdsmi_meter

        importlib.reload(amdsmi_meter)
        assert rocm_backend.gpu_count() is None
    importlib.reload(rocm_backend)


def test_rocm_backend_on_a_cuda_or_cpu_torch_is_unavailable():
    if torch.version.hip is not None:
        pytest.skip("this torch is a ROCm build")
    with pytest.raises(BackendUnavailable, match="ROCm build of torch"):
        open_backend("rocm")


@pytest.mark.parametrize(
    ("torch_hip", "sees_gpu", "amd_gpus", "expected"),
    [
        (None, True, None, "cuda"),
        (None, False, None, "cpu"),
        ("6.2", True, 1, "rocm"),
        ("6.2", False, 0, "cpu"),
        ("6.2", False, None, "cpu"),
    ],
)
def test_auto_picks_rocm_only_for_rocm_torch_with_an_amd_gpu(torch_hip, sees_gpu, amd_gpus, expected):
    assert choose_backend(torch_hip, sees_gpu, amd_gpus) == expected


def test_auto_on_rocm_torch_without_hip_python_is_an_error_not_a_cpu_run():
    with pytest.raises(BackendUnavailable, match=r"hip-python is missing: pip install 'eclip-ray\[amd\]'"):
        choose_backend("6.2", True, None)
    with pytest.raises(BackendUnavailable, match="finds none"):
        choose_backend("6.2", True, 0)


def test_cuda_backend_is_refused_on_a_rocm_torch():
    with mock.patch.object(torch.version, "hip", "6.2"), pytest.raises(BackendUnavailable, match="use 'rocm'"):
        open_backend("cuda")


def test_auto_on_this_machine_opens_cpu_without_asking_hip():
    if torch.cuda.is_available() or torch.version.hip is not None:
        pytest.skip("a GPU or a ROCm torch is present")
    with mock.patch.object(rocm_backend, "gpu_count", side_effect=AssertionError("hip asked")):
        assert open_backend("auto").name == "cpu"


def test_fake_signatures_match_hip_python_where_installed():
    try:
        from hip import hip
    except ImportError:
        pytest.skip("hip-python is not installed; the fake's signatures are checked where it is")
    for name in _CALLS:
        real = [p for p in inspect.signature(getattr(hip, name)).parameters]
        ours = [p for p in inspect.signature(getattr(FakeHip, name)).parameters if p != "self"]
        assert ours == real, name


def test_the_cuda_placement_probe_is_not_run_on_amd(kfd):
    from eclip_ray.partition.placement import verify_pool

    be = backend(kfd)
    with mock.patch.object(rocm_backend, "torch", fake_torch()):
        pool = StreamPool(be, ladder(be.geometry(), 2))
        with pytest.raises(BackendUnavailable, match="cuda backend only, not 'rocm'"):
            verify_pool(pool)
        pool.close()
