"""One policy's mix, set up once (runtime, models, captured plans) and driven for many windows at any load.

A load search runs many short windows of one policy at different loads; each
window must not pay for loading models or capturing graphs again. An
:class:`InProcessSession` holds a runtime whose pool has only the partitions the
policy uses (as its own deployment would: every stream takes one of the
device's hardware work queues), a runner per instance with every plan the
policy may use captured at the instance's batch size, and a lane per
instance. ``mps.MpsSession`` is the same for the MPS policies' client
processes.

Built modules are kept by :class:`ModuleCache` across the sessions of a run, so
the next policy of a mix (or the next mix with the same model) does not build
the model again; weights are random anyway.
"""

from __future__ import annotations

import dataclasses
import traceback
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import torch

from eclip_ray.bench import policies
from eclip_ray.bench.driver import Lane, Window, drive
from eclip_ray.bench.load import Load
from eclip_ray.graph.plan import Plan
from eclip_ray.models.zoo import ZooModel
from eclip_ray.models.zoo import get as zoo_get
from eclip_ray.planner.steering import Fixed, Steering
from eclip_ray.runtime import Runtime


class Session(Protocol):
    """A policy's mix ready to run: ``window`` drives it once under a load."""

    def window(
        self,
        load: Load,
        *,
        warmup_s: float,
        window_s: float,
        seed: int = 0,
        energy: bool = True,
        only: Sequence[str] | None = None,
        steering: Steering | None = None,
        plans: Mapping[str, Plan] | None = None,
    ) -> Window: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


class ModuleCache:
    """Built modules by (instance, model): a model is built once per run, whatever the policies."""

    def __init__(self) -> None:
        self._built: dict[tuple[str, str], torch.nn.Module] = {}

    def zoo(self, instance: str, model: str) -> ZooModel:
        spec = zoo_get(model)
        if spec.kind == "onnx":  # converted per runner
            return spec
        key = (instance, spec.name)

        def build() -> torch.nn.Module:
            if key not in self._built:
                self._built[key] = spec.build()
            return self._built[key]

        return dataclasses.replace(spec, build=build)

    def clear(self) -> None:
        self._built.clear()


class InProcessSession:
    """A policy's runtime, runners and lanes; plans captured at start-up, none on the request path."""

    def __init__(
        self,
        backend: str,
        instances: Sequence[str],
        models: Sequence[str],
        batch: Mapping[str, int],
        mix: policies.MixInputs,
        setup: policies.Setup,
        cache: ModuleCache,
    ) -> None:
        self.setup = setup
        self.layout = policies.policy_layout(mix, setup)
        self.rt = Runtime(backend=backend, layout=self.layout)
        try:
            self.lanes = self._lanes(instances, models, batch, cache)
        except BaseException:
            self.close()
            raise
        self.meter = self.rt.meter if self.rt.meter.available else None
        self.energy_note = "" if self.meter else self.rt.meter.describe().get("reason", "no energy meter")
        self.placement: dict[str, Any] = _placement(self.rt, setup) if setup.partitions else {}

    def _lanes(self, instances, models, batch, cache) -> dict[str, Lane]:
        every = self.setup.all_plans()
        lanes = {}
        for i, (name, model) in enumerate(zip(instances, models, strict=True)):
            runner = self.rt.load(name, cache.zoo(name, model), priority=self.setup.priorities.get(name, 0))
            plans = every.get(name) or {policies.WHOLE_PLAN}
            if runner.on_gpu:
                for plan in sorted(plans, key=lambda p: (p.partitions, p.cuts)):
                    runner.capture(plan, batch[name])
            else:
                for plan in plans:
                    runner.validate(plan)
            first = self.setup.plans.get(name) or next(iter(plans))
            lanes[name] = Lane(name, runner, first, batch[name], runner.example_inputs(batch[name]), index=i)
        return lanes

    def window(
        self,
        load: Load,
        *,
        warmup_s: float,
        window_s: float,
        seed: int = 0,
        energy: bool = True,
        only: Sequence[str] | None = None,
        steering: Steering | None = None,
        plans: Mapping[str, Plan] | None = None,
    ) -> Window:
        """Drive the lanes (``only`` these: each alone) under ``load``; ``plans`` for this window only."""
        lanes = [self.lanes[n] for n in (only if only is not None else self.lanes)]
        if plans is not None:
            steering = Fixed({ln.name: plans.get(ln.name, ln.plan) for ln in lanes})
        return drive(
            lanes,
            load,
            warmup_s=warmup_s,
            window_s=window_s,
            serial=self.setup.serial,
            meter=self.meter if energy else None,
            energy_note=self.energy_note if energy else "energy is measured on the final windows only",
            seed=seed,
            steering=steering,
        )

    def describe(self) -> dict[str, Any]:
        info = self.rt.describe()
        out: dict[str, Any] = {"pool": self.layout.to_dict(), "work_queues": info.get("work_queues")}
        if self.setup.partitions:
            out["placement_overlap"] = self.placement.get("disjoint_overlap")
        if self.setup.priorities:
            out["stream_priorities"] = info.get("stream_priorities")
            out["stream_priority"] = {n: _priority(ln.runner) for n, ln in self.lanes.items()}
        return out

    def close(self) -> None:
        try:
            self.rt.close()
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def _priority(runner: Any) -> int | None:
    stream = getattr(runner, "stream", None)
    return int(stream.priority) if stream is not None else None


def _placement(rt: Runtime, setup: policies.Setup) -> dict[str, Any]:
    """The SMs each partition's kernels really ran on (``%smid`` probe), and the overlap of partitions meant
    to be disjoint (Model-Wise's): the driver places a split of a remainder by its own rules, so
    disjointness is verified, not assumed."""
    if not rt.backend.partitions_sms:
        return {"verified": False, "reason": f"the {rt.backend.name} backend does not partition SMs"}
    try:
        from eclip_ray.partition.placement import verify_pool

        seen = {n: set(ids) for n, ids in verify_pool(rt.pool).items()}
    except Exception as e:  # the benchmark still runs; the file says placement was not checked
        traceback.print_exc()
        return {"verified": False, "reason": repr(e)}
    meant = [p.name for p in setup.partitions if p.name in seen]
    overlap = {f"{a}&{b}": len(seen[a] & seen[b]) for i, a in enumerate(meant) for b in meant[i + 1 :]}
    return {"verified": True, "sm_ids": {n: sorted(v) for n, v in seen.items()}, "disjoint_overlap": overlap}
