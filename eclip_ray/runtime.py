"""The partitioned runtime of one GPU: backend, stream pool, energy meter and model runners.

Built once at start (the pool is never rebuilt on the request path); the GPU
actor of the serving layer owns one of these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from eclip_ray.energy import EnergyMeter, UnavailableMeter, open_meter
from eclip_ray.errors import EclipError
from eclip_ray.graph.runner import ModelRunner
from eclip_ray.models.zoo import ZooModel
from eclip_ray.models.zoo import get as zoo_get
from eclip_ray.partition import Layout, StreamPool, open_backend
from eclip_ray.partition.layout import DeviceGeometry, ladder

if TYPE_CHECKING:
    from eclip_ray.actor.spec import Normalize


def _meter(backend_name: str, device_index: int, required: bool) -> EnergyMeter:
    try:
        return open_meter(backend_name, device_index)
    except EclipError as e:
        if required:
            raise
        return UnavailableMeter(f"the energy meter failed to open ({type(e).__name__}: {e})")


class Runtime:
    """One device's pool and models.

    ``layout`` is a Layout, a function of the device's geometry that returns one
    (when the caller does not know the device yet), or None for ECLIP's ladder for
    ``workers`` co-located models. With ``require_energy`` False, a meter that
    fails to open (NVML or amdsmi missing or failing) leaves energy unavailable,
    with the reason, instead of failing the runtime.
    """

    def __init__(
        self,
        backend: str = "auto",
        layout: Layout | Callable[[DeviceGeometry], Layout] | None = None,
        workers: int = 2,
        fractions: tuple[float, ...] = (0.25, 0.5, 0.75),
        device_index: int = 0,
        require_energy: bool = True,
    ) -> None:
        self.backend = open_backend(backend, device_index)
        try:
            geometry = self.backend.geometry()
            if layout is None:
                layout = ladder(geometry, workers, fractions)
            self.layout = layout(geometry) if callable(layout) else layout
            self.pool = StreamPool(self.backend, self.layout)
            self.meter: EnergyMeter = _meter(self.backend.name, device_index, require_energy)
        except BaseException:
            self.backend.close()
            raise
        self.runners: dict[str, ModelRunner] = {}

    def load(
        self,
        name: str,
        model: ZooModel | str | None = None,
        dtype: torch.dtype | None = None,
        normalize: Sequence[Normalize | None] = (),
        priority: int = 0,
    ) -> ModelRunner:
        """Build a zoo model (or ``model``) and place it on this device under ``name``; ``normalize`` (per input)
        takes uint8 images for float inputs (``ModelRunner``).

        ``priority``: the CUDA stream priority of the runner's streams (lower is more urgent).
        """
        if name in self.runners:
            raise ValueError(f"a model named {name!r} is already loaded")
        spec = model if isinstance(model, ZooModel) else zoo_get(model or name)
        if spec.kind == "onnx":  # onnxruntime runs it on the CPU backend, the converted module on a GPU
            from eclip_ray.graph.onnx_runner import runner_for

            runner = runner_for(name, spec.meta["onnx"], self.pool, dtype=dtype, normalize=normalize, priority=priority)
        else:
            runner = ModelRunner(
                name, spec.build(), spec.make_inputs, self.pool, dtype=dtype, normalize=normalize, priority=priority
            )
        self.runners[name] = runner
        return runner

    def describe(self) -> dict[str, Any]:
        info = self.backend.describe()
        info["energy"] = self.meter.describe()
        return info

    def close(self) -> None:
        for r in self.runners.values():
            r.close()
        self.runners.clear()
        self.meter.close()
        self.pool.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
