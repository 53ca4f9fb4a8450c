"""The per-GPU actor: one Runtime, the models placed on its GPU, their graphs, and the plan of the active mix.

A plain class (``eclip_ray.actor.remote.worker_class`` makes it a Ray actor):
everything that can fail at start (the pool, each model, each plan) fails in
``__init__``, so a restarted actor rebuilds it all, and nothing is captured on
the request path. A model that fails to load is reported, not fatal: the other
models of the GPU keep serving.

``infer`` takes a batch as its requests' arrays (the front does not join
them: the runner copies them once, into pinned memory) and never blocks the
event loop on the device: on a GPU it issues the replay (non-blocking) and polls
the request's CUDA event with asyncio sleeps; on the CPU backend the eager run
goes to a thread. Several models are in flight at once; of one model, at most
two batches, and those that arrive meanwhile are merged into the next
(``coalesce.py``), so batches stay large however the requests were spread over
the front's replicas. At start each model's run time alone at its smallest
batch size is measured (``ready()["models"][m]["solo_ms"]``): the front reports
an SLO that the model misses even alone.

Every request is checked against its model's inputs before it joins a batch
(``actor/inputs.py``): a value outside an input's range (declared, from the zoo,
or learnt from the model's embeddings at start) is ``InvalidInput``, for that
request alone.

A device error during a batch (a CUDA or driver call failing) fails that batch
with ``DeviceFault``, naming the GPU, the model and the call. Then the actor
probes its device context (``actor/faults.py``): if it is still usable (one
batch's out-of-memory), the actor goes on serving; if the error poisoned it (a
device-side assert), the batches in flight and waiting fail too and the process
exits so that Ray restarts the actor. Energy is read beside the batches
(``actor/ledger.py``); the meter never fails a request. Requests' arrays become
tensors and results come back as arrays in the runner (``graph/host.py``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from eclip_ray.actor.coalesce import Coalescer
from eclip_ray.actor.faults import DeviceHealth, exit_process
from eclip_ray.actor.inputs import Ranges, check_requests, resolve_ranges
from eclip_ray.actor.ledger import EnergyLoop
from eclip_ray.actor.loader import zoo_entry
from eclip_ray.actor.metrics import GpuMetrics, RayGpuMetrics
from eclip_ray.actor.plans import WHOLE_PLAN, PlanSelector, label, open_table, sm_share
from eclip_ray.actor.selection import open_adaptive, start_adaptive
from eclip_ray.actor.spec import (
    BatchResult,
    DeviceFault,
    InvalidInput,
    ModelConfig,
    ModelUnavailable,
    TensorSpec,
    torch_dtype,
)
from eclip_ray.errors import BackendError, PlanError
from eclip_ray.graph.plan import Plan
from eclip_ray.graph.runner import ModelRunner, Pending
from eclip_ray.models.ranges import embedding_ranges
from eclip_ray.partition.layout import DeviceGeometry, Layout
from eclip_ray.partition.layout import from_dict as layout_from_dict
from eclip_ray.runtime import Runtime

log = logging.getLogger(__name__)

SOLO_RUNS = 5  # timed runs (after one warm-up) of each model alone at start, for the front's SLO check
RUNNING_PER_MODEL = 2  # batches of one model on the device at once: one running, the next queued behind it


@dataclass
class _Served:
    """A loaded model and its counters."""

    spec: ModelConfig
    runner: ModelRunner
    outputs: tuple[TensorSpec, ...]
    out_dtypes: tuple[torch.dtype, ...]
    ranges: Ranges = ()
    solo_ms: float | None = None  # fastest run of the smallest captured batch size, alone, at start
    solo_p50_ms: float | None = None  # and the median of those runs
    inferences: int = 0
    batches: int = 0
    seconds: float = 0.0
    joules_per_inference: float | None = None
    by_rows: dict[int, list[float]] = field(default_factory=dict)  # rows -> [batches, seconds]

    def arrays(self, outputs: Sequence[torch.Tensor]) -> tuple[np.ndarray, ...]:
        """A batch's outputs as host arrays of the declared output datatypes (``graph/host.py``)."""
        return self.runner.host.arrays(outputs, self.out_dtypes)


class GpuWorker:
    """Serves ``models`` on one device of ``backend`` ("auto", "cuda", "cpu").

    ``gpu`` labels this worker in results and metrics; ``device_index`` is the
    CUDA device (0 inside a Ray actor, which sees only its own GPU).
    ``plan_table`` is a path of an ``eclip_ray.planner.PlanTable`` (or an
    object with its ``lookup``); without it every model runs on the whole GPU.
    ``adaptive`` (an ``actor.selection.AdaptiveConfig`` or its fields as a dict) builds
    the pool from the models' candidate plans, measures them at start (or takes the
    selection its plan table holds) and guards every batch; it takes precedence over
    ``plan_table`` for the models it covers, and if it cannot start, the table serves.
    ``allowed_modules`` and ``allowed_model_dirs`` bound what loaders may import
    and read, checked here again whatever the config said. ``exit_hook(reason)``
    is called once the device context is poisoned and the batches in flight
    have their answers; by default it ends the process, for Ray to restart.
    """

    def __init__(
        self,
        models: Sequence[ModelConfig],
        backend: str = "auto",
        gpu: int = 0,
        device_index: int = 0,
        plan_table: Any = None,
        allowed_modules: Sequence[str] = (),
        allowed_model_dirs: Sequence[str] = (),
        active_window_s: float = 1.0,
        energy_window_s: float = 5.0,
        metrics: bool = False,
        exit_hook: Callable[[str], None] | None = None,
        adaptive: Any = None,
    ) -> None:
        self.gpu = gpu
        self.device_index = device_index
        self.specs = {m.name: m for m in models}
        self.allowed_modules = tuple(allowed_modules)
        self.allowed_model_dirs = tuple(allowed_model_dirs)
        self.metrics: GpuMetrics = RayGpuMetrics(gpu) if metrics else GpuMetrics()
        self.table_error: str | None = None
        table = self._open_table(plan_table)
        self.adaptive, self.adaptive_error = open_adaptive(adaptive, models, self.metrics)
        self.runtime = self._runtime(backend, table, max(1, len(models)), device_index)
        self._sm = {name: self.runtime.pool.sm_count(name) for name in self.runtime.pool.names}
        self.selector = PlanSelector(table, {m.name: m.captured_sizes() for m in models}, active_window_s)
        self.models: dict[str, _Served] = {}
        self._coalescers: dict[str, Coalescer] = {}
        self.failed: dict[str, str] = {}
        self.plan_errors: list[str] = []
        self.device_faults = 0
        self.last_device_fault: str | None = None
        self._inflight = 0  # requests in this actor: waiting for the device or on it
        self.health = DeviceHealth(self._probe, lambda: self._inflight, exit_hook or exit_process)
        try:
            self._load_all()
        except BaseException:
            self.runtime.close()
            raise
        self.energy = EnergyLoop(self.runtime, self.metrics, energy_window_s, gpu, self._model_joules)
        self._labels = {m: label(WHOLE_PLAN) for m in self.models}
        for m, text in self._labels.items():
            self.metrics.plan(m, text, None)

    # -- start-up ---------------------------------------------------------------------------

    def _open_table(self, table: Any):
        try:
            return open_table(table)
        except Exception as e:  # serve on the whole GPU rather than not at all, and say why
            self.table_error = f"{type(e).__name__}: {e}"
            log.error("plan table %s could not be loaded (%s); every model runs on the whole GPU", table, e)
            return None

    def _runtime(self, backend: str, table: Any, workers: int, device_index: int) -> Runtime:
        """The adaptive candidates' pool, else the one the table's plans were made for, else ECLIP's ladder."""
        if self.adaptive is not None:
            try:
                return Runtime(backend, layout=self.adaptive.layout, device_index=device_index, require_energy=False)
            except (PlanError, KeyError, TypeError, ValueError) as e:  # LayoutError too
                self.adaptive, self.adaptive_error = None, f"the candidates' pool could not be made: {e}"
                log.error("adaptive plans are off: %s", self.adaptive_error)
        try:
            layout = _table_layout(table)
            if layout is not None:
                return Runtime(backend, layout=layout, device_index=device_index, require_energy=False)
        except (KeyError, TypeError, ValueError) as e:  # LayoutError too: a layout made for another device
            self.table_error = f"the plan table's pool layout does not fit this device ({e})"
            log.error("%s; using the default layout: plans naming missing partitions fall back", self.table_error)
        return Runtime(backend, workers=workers, device_index=device_index, require_energy=False)

    def _load_all(self) -> None:
        candidates = self.selector.candidates()
        if self.adaptive is not None:
            for name, plans in self.adaptive.plans().items():
                candidates.setdefault(name, set()).update(plans)
        prepared: dict[str, set[Plan]] = {}
        for name, spec in self.specs.items():
            try:
                self.models[name] = self._load(spec)
                prepared[name] = self._prepare(self.models[name], candidates[name])
                self.models[name].solo_ms, self.models[name].solo_p50_ms = _solo_ms(self.models[name])
                self._coalescers[name] = Coalescer(
                    functools.partial(self._run_batch, name), max(spec.captured_sizes()), RUNNING_PER_MODEL
                )
            except Exception as e:
                self.models.pop(name, None)
                runner = self.runtime.runners.pop(name, None)
                if runner is not None:
                    runner.close()
                self.failed[name] = f"{type(e).__name__}: {e}"
                log.exception("model %s failed to load on GPU %d", name, self.gpu)
        self.selector.prepare(prepared)
        if self.adaptive is not None:
            self.adaptive_error = start_adaptive(self.adaptive, self.models, prepared, self.metrics)
            if self.adaptive_error:
                self.adaptive = None

    def _load(self, spec: ModelConfig) -> _Served:
        entry = zoo_entry(spec, self.allowed_modules, allowed_model_dirs=self.allowed_model_dirs)
        if spec.inputs is not None and len(spec.inputs) != len(entry.input_names):
            raise ValueError(
                f"{spec.name!r} is declared with {len(spec.inputs)} inputs; the model takes {len(entry.input_names)}"
            )
        normalize = [t.normalize for t in spec.inputs or ()]
        runner = self.runtime.load(spec.name, entry, normalize=normalize)
        example = runner.example_inputs(1)
        _check_inputs(spec, example)
        if isinstance(runner, ModelRunner):  # onnxruntime's runner has no modules: its Gathers gave entry ranges
            out, learnt = embedding_ranges(runner.model, example, lambda: runner.eager(example, WHOLE_PLAN))
        else:
            out, learnt = runner.eager(example, WHOLE_PLAN), {}
        outputs = _output_infos(spec, out)
        return _Served(
            spec=spec,
            runner=runner,
            outputs=outputs,
            out_dtypes=tuple(torch_dtype(o.datatype) for o in outputs),
            ranges=resolve_ranges(spec, entry.ranges(), learnt),
        )

    def _prepare(self, served: _Served, plans: set[Plan]) -> set[Plan]:
        """Validate (and on a GPU capture at every batch size) each plan; the whole-GPU plan must work."""
        ok = set()
        for plan in sorted(plans, key=lambda p: p != WHOLE_PLAN):
            try:
                served.runner.validate(plan)
                if served.runner.on_gpu:
                    for size in served.spec.captured_sizes():
                        served.runner.capture(plan, size)
            except PlanError as e:
                if plan == WHOLE_PLAN:
                    raise
                self.plan_errors.append(f"{served.spec.name}: plan {label(plan)}: {e}")
                continue
            ok.add(plan)
        return ok

    def _probe(self) -> str | None:
        return self.runtime.backend.context_fault()

    # -- serving ----------------------------------------------------------------------------

    def _served(self, model: str) -> _Served:
        if model in self.models:
            return self.models[model]
        if model in self.failed:
            raise ModelUnavailable(f"model {model!r} failed to load on GPU {self.gpu}: {self.failed[model]}")
        raise ModelUnavailable(f"model {model!r} is not placed on GPU {self.gpu}; it serves {sorted(self.models)}")

    def _plan_for(self, model: str, rows: int) -> Plan:
        if self.adaptive is not None and self.adaptive.covers(model):
            current = {model: self.adaptive.plan(model, time.perf_counter())}
        else:
            plan = self.selector.observe(model, rows, time.monotonic())
            current = {**self.selector.current(), model: plan}
        for m, p in current.items():
            text = label(p)
            if m in self._labels and self._labels[m] != text:
                self.metrics.plan(m, text, self._labels[m])
                self._labels[m] = text
        return current[model]

    def _check_usable(self) -> None:
        if self.health.poisoned is not None:
            raise DeviceFault(
                f"GPU {self.gpu}'s device context is unusable ({self.health.poisoned}); its actor is restarting"
            )

    async def infer(self, model: str, *requests: Sequence[np.ndarray]) -> BatchResult:
        """Run ``requests`` of ``model`` (each its arrays in the model's input order) as one batch, or joined to
        other callers' batches waiting for the device; the result has their rows, in order.

        Raises InvalidInput for a request the model cannot take (before it joins anything), DeviceFault when
        the device fails the batch.
        """
        self._check_usable()
        served = self._served(model)
        if not requests:
            raise InvalidInput(f"model {model!r}: a batch needs at least one request")
        rows = check_requests(served.spec, served.ranges, requests)
        self._inflight += 1
        try:
            return await self._coalescers[model].submit(requests, rows)
        finally:
            self._inflight -= 1

    async def _run_batch(self, model: str, requests: list[Sequence[np.ndarray]]) -> BatchResult:
        self._check_usable()  # it may have waited for the device while another batch poisoned the context
        served = self._served(model)
        rows = sum(int(r[0].shape[0]) for r in requests)
        self.energy.start()
        tensors = served.runner.host.views(requests)
        plan = self._plan_for(model, rows)
        t0 = time.perf_counter()
        try:
            outputs = await _run(served, tensors, plan)
        except (BackendError, torch.AcceleratorError, torch.OutOfMemoryError) as e:
            raise await self._device_fault(model, e) from e
        finally:
            if self.adaptive is not None and self.adaptive.covers(model):
                self.adaptive.finish(model, t0, time.perf_counter())
        seconds = time.perf_counter() - t0
        served.inferences += rows
        served.batches += 1
        served.seconds += seconds
        count = served.by_rows.setdefault(rows, [0, 0.0])
        count[0], count[1] = count[0] + 1, count[1] + seconds
        self.energy.record(model, rows, seconds, sm_share(plan, self._sm))
        return BatchResult(tuple(o.name for o in served.outputs), outputs, seconds, self.gpu, label(plan), rows)

    async def _device_fault(self, model: str, e: Exception) -> DeviceFault:
        self.device_faults += 1
        error = self.last_device_fault = f"{type(e).__name__}: {e}"
        first = self.health.poisoned is None
        poisoned = await self.health.check()
        self.metrics.device_fault(sticky=poisoned is not None)
        if poisoned is None:
            log.error("GPU %d failed a batch of %s, and its context is still usable: %s", self.gpu, model, error)
            return DeviceFault(f"GPU {self.gpu} failed a batch of model {model!r}: {error}")
        if first:
            self.metrics.context_poisoned()
            self.energy.stop()
            log.critical(
                "GPU %d failed a batch of %s and its device context is unusable (%s): failing the batches in "
                "flight, then exiting for Ray to restart the actor. The error: %s",
                self.gpu,
                model,
                poisoned,
                error,
            )
        return DeviceFault(
            f"GPU {self.gpu} failed a batch of model {model!r}: {error}; its device context is unusable "
            f"({poisoned}), so its actor restarts"
        )

    def energy_tick(self) -> None:
        """Close the energy window now (``EnergyLoop.tick``): what the loop does every ``energy_window_s``."""
        self.energy.tick()

    def _model_joules(self, model: str, joules: float) -> None:
        self.models[model].joules_per_inference = joules

    # -- reports ----------------------------------------------------------------------------

    def ready(self) -> dict[str, Any]:
        """Per model: loaded or the reason not, its tensors (outputs as learnt at start), the value range of each
        input that has one (declared or learnt at start), by name, and its run time alone (at start)."""
        out = {}
        unusable = self.health.poisoned and f"GPU {self.gpu}'s device context is unusable ({self.health.poisoned})"
        for name, spec in self.specs.items():
            served = self.models.get(name)
            ranges = zip(spec.inputs or (), served.ranges if served else (), strict=False)
            out[name] = {
                "ready": served is not None and not unusable,
                "error": self.failed.get(name) or unusable or None,
                "inputs": [t.metadata() for t in spec.inputs or ()],
                "outputs": [t.metadata() for t in served.outputs] if served else [],
                "value_ranges": {t.name: list(r) for t, r in ranges if r is not None},
                "solo_ms": served.solo_ms if served else None,
                "solo_p50_ms": served.solo_p50_ms if served else None,
                "solo_rows": min(spec.captured_sizes()),
            }
        return {"gpu": self.gpu, "models": out}

    def stats(self) -> dict[str, Any]:
        """Counters per model, the plans in use, and energy when the backend measures it."""
        plans = self.selector.current()
        models = {
            name: {
                "inferences": s.inferences,
                "batches": s.batches,
                "busy_s": round(s.seconds, 6),
                "plan": label(plans[name]),
                "joules_per_inference": s.joules_per_inference,
                "solo_ms": s.solo_ms,
                "merged": self._coalescers[name].merged,
                "by_rows": {str(r): {"batches": n, "seconds": round(t, 6)} for r, (n, t) in sorted(s.by_rows.items())},
            }
            for name, s in self.models.items()
        }
        return {
            "gpu": self.gpu,
            "backend": self.runtime.backend.name,
            "models": models,
            "failed": dict(self.failed),
            "active": self.selector.active,
            "plan_switches": self.selector.switches,
            "plan_fallbacks": self.selector.fallbacks,
            "plan_errors": list(self.plan_errors),
            "plan_table_error": self.table_error,
            "adaptive": self.adaptive.stats() if self.adaptive is not None else {"active": False},
            "adaptive_error": self.adaptive_error,
            "device_faults": self.device_faults,
            "last_device_fault": self.last_device_fault,
            "context_probes": self.health.probes,
            "context_fault": self.health.poisoned,
            "energy": self.energy.describe(),
        }

    def process(self) -> dict[str, Any]:
        """This actor's process id and, on a GPU, the bytes torch's allocator holds there (None on the CPU)."""
        gpu_memory = None
        if self.runtime.backend.name != "cpu":
            gpu_memory = {
                "allocated_bytes": torch.cuda.memory_allocated(self.device_index),
                "reserved_bytes": torch.cuda.memory_reserved(self.device_index),
            }
        return {"pid": os.getpid(), "gpu": self.gpu, "gpu_memory": gpu_memory}

    def describe(self) -> dict[str, Any]:
        return {"gpu": self.gpu, **self.runtime.describe(), "pool": self.runtime.pool.report()}

    def close(self) -> None:
        self.energy.stop()
        self.runtime.close()


def _table_layout(table: Any) -> Layout | None:
    data = getattr(table, "layout", None)
    if data is None or isinstance(data, Layout):
        return data
    return layout_from_dict(DeviceGeometry(sm_count=int(data["sm_count"])), data)


def _solo_ms(served: _Served) -> tuple[float, float]:
    """The fastest and the median wall time (ms) of the model alone at its smallest captured batch size, host to
    host. The fastest is the best the hardware does, so that an SLO is called unreachable only when even that
    misses it (on shared CPUs a run can wait a scheduler time slice for one of its threads)."""
    rows = min(served.spec.captured_sizes())
    example = [[t.cpu()] for t in served.runner.example_inputs(rows)]
    runs = []
    for _ in range(1 + SOLO_RUNS):
        t0 = time.perf_counter()
        served.arrays(served.runner.run(example, WHOLE_PLAN))
        runs.append(1e3 * (time.perf_counter() - t0))
    return round(min(runs[1:]), 3), round(float(np.median(runs[1:])), 3)


async def _run(served: _Served, tensors: Sequence[Sequence[torch.Tensor]], plan: Plan) -> tuple[np.ndarray, ...]:
    if served.runner.on_gpu:
        pending = served.runner.submit(tensors, plan)
        await _until_done(pending)
    else:  # eager on the CPU: off the event loop so other models' batches proceed
        pending = await asyncio.to_thread(served.runner.submit, tensors, plan)
    return served.arrays(pending.result())


async def _until_done(pending: Pending, first_s: float = 5e-5, max_s: float = 1e-3) -> None:
    delay = first_s
    while not pending.done():
        await asyncio.sleep(delay)
        delay = min(2 * delay, max_s)


def _check_inputs(spec: ModelConfig, example: Sequence[torch.Tensor]) -> None:
    inputs = spec.inputs or ()
    if len(example) != len(inputs):
        raise ValueError(f"{spec.name!r} is declared with {len(inputs)} inputs; the model takes {len(example)}")
    for info, t in zip(inputs, example, strict=True):
        if tuple(t.shape[1:]) != info.shape:
            raise ValueError(
                f"{spec.name!r}: input {info.name!r} is declared with shape {list(info.shape)}; "
                f"the model's inputs have {list(t.shape[1:])}"
            )
        if t.is_floating_point() != torch_dtype(info.datatype).is_floating_point:
            raise ValueError(
                f"{spec.name!r}: input {info.name!r} is declared {info.datatype}; the model takes {t.dtype}"
            )


def _default_datatype(t: torch.Tensor) -> str:
    # Floats leave as FP32 on every backend, whatever precision the runner computes in.
    if t.dtype == torch.bool:
        return "BOOL"
    return "FP32" if t.is_floating_point() else "INT64"


def _output_infos(spec: ModelConfig, outputs: Sequence[torch.Tensor]) -> tuple[TensorSpec, ...]:
    if any(o.dim() == 0 or o.shape[0] != 1 for o in outputs):
        raise ValueError(f"{spec.name!r}: every output must keep the batch dimension first")
    if spec.outputs is None:
        return tuple(TensorSpec(f"output{i}", _default_datatype(o), tuple(o.shape[1:])) for i, o in enumerate(outputs))
    if len(spec.outputs) != len(outputs):
        raise ValueError(
            f"{spec.name!r} is declared with {len(spec.outputs)} outputs; the model returns {len(outputs)}"
        )
    infos = []
    for info, o in zip(spec.outputs, outputs, strict=True):
        if info.shape is not None and tuple(o.shape[1:]) != info.shape:
            raise ValueError(
                f"{spec.name!r}: output {info.name!r} is declared with shape {list(info.shape)}; "
                f"the model returns {list(o.shape[1:])}"
            )
        infos.append(TensorSpec(info.name, info.datatype, tuple(o.shape[1:])))
    return tuple(infos)
