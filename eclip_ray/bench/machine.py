"""The device a run measures: its geometry, a whole-GPU-only layout, and what result files record about it."""

from __future__ import annotations

import platform
from typing import Any

import torch

from eclip_ray.energy import open_meter
from eclip_ray.partition import DeviceGeometry, Layout, open_backend
from eclip_ray.partition.layout import whole


def probe(backend: str) -> tuple[str, DeviceGeometry, dict[str, Any]]:
    """``(backend name, geometry, description)`` of the device ``backend`` opens, closed again at once."""
    be = open_backend(backend)
    try:
        info = be.describe()
        geometry = be.geometry()
        name = be.name
    finally:
        be.close()
    meter = open_meter(name)
    try:
        info["energy"] = meter.describe()
    finally:
        meter.close()
    return name, geometry, info


def whole_only(geometry: DeviceGeometry) -> Layout:
    """A pool of the whole GPU alone (no green contexts): isolated runs and MPS clients."""
    return Layout(geometry, (whole(geometry),))


def header(info: dict[str, Any]) -> dict[str, Any]:
    """The card, driver and versions every result file names."""
    energy = info.get("energy", {})
    return {
        "card": str(info.get("device", platform.machine())),
        "driver": energy.get("driver") or info.get("cuda_driver_api"),
        "torch": torch.__version__,
        "backend": info.get("backend"),
        "python": platform.python_version(),
        "machine": info,
    }
