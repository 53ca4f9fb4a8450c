"""Placement verified, not assumed: run the ``%smid`` probe kernel on a partition's stream.

The kernel source lives in ``native/smid.cu``; it is compiled once with NVRTC
(cuda.bindings.nvrtc) and launched with the driver API on the partition's raw
stream, so the SM ids it reports are where that stream's kernels really ran.
"""

from __future__ import annotations

import ctypes
from functools import cache
from importlib import resources
from pathlib import Path

import torch

from eclip_ray.errors import BackendError, BackendUnavailable
from eclip_ray.partition.cuda import _driver, check
from eclip_ray.partition.pool import StreamPool

_KERNEL = b"eclip_smid"


def _source() -> bytes:
    packaged = resources.files("eclip_ray").joinpath("native/smid.cu")
    if packaged.is_file():
        return packaged.read_bytes()
    return (Path(__file__).resolve().parents[2] / "native" / "smid.cu").read_bytes()


def _nvrtc_check(result: tuple, call: str, prog=None) -> object:
    from cuda.bindings import nvrtc

    err, rest = result[0], result[1:]
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        log = ""
        if prog is not None:
            _, size = nvrtc.nvrtcGetProgramLogSize(prog)
            buf = b" " * size
            nvrtc.nvrtcGetProgramLog(prog, buf)
            log = buf.decode(errors="replace").strip()
        raise BackendError(call, getattr(err, "name", str(err)), log)
    return rest[0] if len(rest) == 1 else (rest or None)


@cache
def _cubin(major: int, minor: int) -> bytes:
    from cuda.bindings import nvrtc

    prog = _nvrtc_check(nvrtc.nvrtcCreateProgram(_source(), b"smid.cu", 0, [], []), "nvrtcCreateProgram")
    opts = [f"--gpu-architecture=sm_{major}{minor}".encode()]
    _nvrtc_check(nvrtc.nvrtcCompileProgram(prog, len(opts), opts), "nvrtcCompileProgram", prog)
    size = _nvrtc_check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
    buf = b" " * size
    _nvrtc_check(nvrtc.nvrtcGetCUBIN(prog, buf), "nvrtcGetCUBIN")
    _nvrtc_check(nvrtc.nvrtcDestroyProgram(prog), "nvrtcDestroyProgram")
    return buf


@cache
def _function(device_index: int):
    cu = _driver()
    major, minor = torch.cuda.get_device_capability(device_index)
    module = check(cu.cuModuleLoadData(_cubin(major, minor)), "cuModuleLoadData", "smid probe")
    return check(cu.cuModuleGetFunction(module, _KERNEL), "cuModuleGetFunction", "eclip_smid")


def sm_ids(stream: torch.cuda.Stream, device_index: int, blocks: int, spin_cycles: int = 200_000) -> list[int]:
    """Sorted distinct SM ids that ``blocks`` spinning blocks launched on ``stream`` ran on."""
    cu = _driver()
    out = torch.full((blocks,), -1, dtype=torch.int32, device=torch.device("cuda", device_index))
    torch.cuda.synchronize(device_index)
    params = ((out.data_ptr(), blocks, spin_cycles), (ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong))
    raw = cu.CUstream(stream.cuda_stream)
    check(
        cu.cuLaunchKernel(_function(device_index), blocks, 1, 1, 32, 1, 1, 0, raw, params, 0),
        "cuLaunchKernel",
        f"smid probe, {blocks} blocks",
    )
    check(cu.cuStreamSynchronize(raw), "cuStreamSynchronize", "smid probe")
    seen = out.cpu().tolist()
    if -1 in seen:
        raise BackendError("eclip_smid", "unwritten output", f"{seen.count(-1)} of {blocks} blocks wrote nothing")
    return sorted(set(seen))


def verify_pool(pool: StreamPool, blocks_per_sm: int = 4) -> dict[str, list[int]]:
    """Run the probe on every partition, store the SM ids on the partitions and return them by name."""
    if not pool.backend.partitions_sms:
        return {}
    if pool.backend.name != "cuda":  # the probe reads %smid; AMD masks are checked by read-back (docs/amd.md)
        raise BackendUnavailable(f"the placement probe runs on the cuda backend only, not {pool.backend.name!r}")
    device_index = pool.device.index or 0
    blocks = blocks_per_sm * pool.layout.geometry.sm_count
    seen = {}
    for part in pool:
        part.sm_ids = sm_ids(part.stream, device_index, blocks)
        seen[part.name] = part.sm_ids
    return seen
