"""One model on one stream pool: weights, static buffers, and one CUDA graph per (plan, batch size).

For a plan, the executor captures ONE graph per request: it forks from the
runner's own stream into each stage's partition stream, and each switch is a
graph edge (`docs/hardware.md` section 2: kernel nodes keep the partition they
were captured on). A request is then a copy into the static input, one replay
and a copy out, with no per-switch work on the CPU. All graphs of a runner
share one memory pool: they never run at the same time, because every request
of a runner is issued on the runner's own stream.

Inputs arrive from host memory either as one tensor each or as the parts of a
batch (each request's rows, as the front's batcher sends them): ``submit`` copies
the parts once into a pinned staging buffer (the concatenation and the pinning in
one copy), then into the graph's static input without blocking. UINT8 image
inputs are normalised by the runner's prologue (``prologue.py``) inside the graph.

On the CPU backend the same API runs the stages eagerly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from eclip_ray.errors import PlanError
from eclip_ray.graph.host import HostIO
from eclip_ray.graph.plan import Plan
from eclip_ray.graph.prologue import HostInput, Prologue, parts_of
from eclip_ray.graph.stages import CutPoint, StageRouter, trace_calls
from eclip_ray.partition.pool import StreamPool

if TYPE_CHECKING:
    from eclip_ray.actor.spec import Normalize

InputFactory = Callable[[int], tuple[torch.Tensor, ...]]


def as_outputs(out: object) -> tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in out):
        return tuple(out)
    raise TypeError(f"a served model must return a tensor or a tuple of tensors, not {type(out).__name__}")


def check_plan(owner: str, calls: Sequence[CutPoint], pool: StreamPool, plan: Plan) -> None:
    """Raise PlanError unless ``plan`` cuts at ``calls`` in execution order and names partitions of ``pool``."""
    order = {c.id: i for i, c in enumerate(calls)}
    unknown = [c for c in plan.cuts if c not in order]
    if unknown:
        raise PlanError(f"cut points {unknown[:5]} are not module calls of this model")
    missing = [p for p in plan.partitions if p not in pool]
    if missing:
        raise PlanError(f"plan for {owner!r} names partitions {missing} that the pool lacks")
    idx = [order[c] for c in plan.cuts]
    if idx != sorted(idx):
        raise PlanError(f"plan for {owner!r} lists its cut points out of execution order")


@dataclass
class CapturedGraph:
    """A plan captured at one batch size: replaying it runs a whole request."""

    plan: Plan
    batch_size: int
    graph: torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]
    capture_ms: float
    pool_growth_bytes: int

    def replay(self) -> None:
        """Replay on the current stream (which must be the runner's stream)."""
        self.graph.replay()


@dataclass
class Pending:
    """A request issued on the GPU; ``result()`` waits for it."""

    outputs: tuple[torch.Tensor, ...]
    event: torch.cuda.Event | None = None
    rows: int = 0

    def done(self) -> bool:
        return self.event is None or self.event.query()

    def result(self) -> tuple[torch.Tensor, ...]:
        if self.event is not None:
            self.event.synchronize()
        return tuple(o[: self.rows] for o in self.outputs)


class ModelRunner:
    """A model on a pool. ``name`` also keys the runner's private streams in the pool.

    ``priority`` is the CUDA stream priority of all its streams (lower is more urgent; 0
    the default): graphs keep the priority of the streams they were captured on.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        make_inputs: InputFactory,
        pool: StreamPool,
        dtype: torch.dtype | None = None,
        warmup: int = 2,
        normalize: Sequence[Normalize | None] = (),
        priority: int = 0,
    ) -> None:
        self.name = name
        self.priority = priority  # of every stream the runner captures and replays on (lower: more urgent)
        self.pool = pool
        self.device = pool.device
        self.on_gpu = self.device.type == "cuda"
        self.dtype = dtype or (torch.float16 if self.on_gpu else torch.float32)
        self.model = model.to(self.device, self.dtype).eval()
        self._make_inputs = make_inputs
        self.warmup = warmup
        self.prologue = Prologue(name, make_inputs, self.device, self.dtype, normalize)
        self.calls: list[CutPoint] = trace_calls(self.model, self.prologue(self.example_inputs(1)))
        self._router = StageRouter(self.model, self.calls)
        self._graphs: dict[tuple[Plan, int], CapturedGraph] = {}
        self._static: dict[int, tuple[torch.Tensor, ...]] = {}
        self._lock = threading.Lock()
        if self.on_gpu:
            self.stream = pool.stream("whole", owner=name, priority=priority)
            self._mempool = torch.cuda.graph_pool_handle()
        self.host = HostIO(name, self.device, len(self.input_dtypes))  # request arrays in, outputs out

    # -- inputs and plans ---------------------------------------------------------------------

    @property
    def input_dtypes(self) -> tuple[torch.dtype, ...]:
        """The dtypes of the inputs as requests bring them (uint8 for those it normalises)."""
        return self.prologue.input_dtypes

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, ...]:
        """Random inputs of ``batch_size`` on the runner's device as requests bring them: floats in the runner's
        dtype, uint8 for inputs it normalises."""
        return self.prologue.example(batch_size)

    def host_inputs(self, inputs: Sequence[HostInput]) -> tuple[torch.Tensor, ...]:
        """One tensor per input in host memory, parts joined and cast to what requests bring (the eager path)."""
        return self.prologue.host(inputs)

    def validate(self, plan: Plan) -> None:
        """Raise PlanError unless every cut point and partition of ``plan`` exists."""
        check_plan(self.name, self.calls, self.pool, plan)

    def _streams(self, plan: Plan) -> list[torch.cuda.Stream]:
        return [self.pool.stream(p, owner=self.name, priority=self.priority) for p in plan.partitions]

    # -- eager execution (CPU backend, warm-up, reference) ------------------------------------

    def _forward(self, inputs: Sequence[torch.Tensor], plan: Plan) -> tuple[torch.Tensor, ...]:
        """Run the stages of ``plan``; on the GPU each on its partition's stream, joined at every switch."""
        inputs = self.prologue(inputs)
        if not self.on_gpu:
            with self._router.active({c: (lambda: None) for c in plan.cuts}):
                return as_outputs(self.model(*inputs))
        streams = self._streams(plan)
        origin = torch.cuda.current_stream(self.device)
        current = [streams[0]]

        def switch_to(nxt: torch.cuda.Stream) -> Callable[[], None]:
            def go() -> None:
                if nxt != current[0]:
                    nxt.wait_stream(current[0])
                    torch.cuda.set_stream(nxt)
                    current[0] = nxt

            return go

        if streams[0] != origin:
            streams[0].wait_stream(origin)
        schedule = {cut: switch_to(streams[i + 1]) for i, cut in enumerate(plan.cuts)}
        with torch.cuda.stream(streams[0]), self._router.active(schedule):
            out = as_outputs(self.model(*inputs))
        if current[0] != origin:
            origin.wait_stream(current[0])
        return out

    @torch.inference_mode()
    def eager(self, inputs: Sequence[torch.Tensor], plan: Plan) -> tuple[torch.Tensor, ...]:
        """Run one request eagerly under ``plan`` (synchronous; not for concurrent serving on a GPU)."""
        self.validate(plan)
        with self._lock:
            out = self._forward(tuple(inputs), plan)
            if self.on_gpu:
                torch.cuda.current_stream(self.device).synchronize()
            return out

    # -- graphs --------------------------------------------------------------------------------

    def capture(self, plan: Plan, batch_size: int) -> CapturedGraph:
        """Capture ``plan`` at ``batch_size`` (once; later calls return the cached graph)."""
        key = (plan, batch_size)
        if key in self._graphs:
            return self._graphs[key]
        if not self.on_gpu:
            raise PlanError("CUDA graphs need the cuda backend; the cpu backend runs plans eagerly")
        self.validate(plan)
        with self._lock, torch.inference_mode():
            if batch_size not in self._static:
                self._static[batch_size] = self.example_inputs(batch_size)
            static_in = self._static[batch_size]
            torch.cuda.synchronize(self.device)
            with torch.cuda.stream(self.stream):
                for _ in range(self.warmup):  # lazy inits and per-stream library workspaces, outside capture
                    self._forward(static_in, plan)
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()  # capture empties the cache too; do it first so the delta is the graph's
            reserved = torch.cuda.memory_reserved(self.device)
            t0 = time.perf_counter()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._mempool, stream=self.stream):
                static_out = self._forward(static_in, plan)
            torch.cuda.synchronize(self.device)
            captured = CapturedGraph(
                plan=plan,
                batch_size=batch_size,
                graph=graph,
                inputs=static_in,
                outputs=static_out,
                capture_ms=1e3 * (time.perf_counter() - t0),
                pool_growth_bytes=torch.cuda.memory_reserved(self.device) - reserved,
            )
            self._graphs[key] = captured
            return captured

    def captured(self, plan: Plan, rows: int) -> CapturedGraph:
        """The smallest captured graph of ``plan`` that holds ``rows`` rows."""
        sizes = sorted(bs for (p, bs) in self._graphs if p == plan and bs >= rows)
        if not sizes:
            have = sorted({bs for (p, bs) in self._graphs if p == plan})
            raise PlanError(
                f"{self.name!r}: no graph of this plan holds a batch of {rows} (captured sizes: {have}); "
                "capture it at start-up, not on the request path"
            )
        return self._graphs[(plan, sizes[0])]

    def submit(self, inputs: Sequence[HostInput], plan: Plan) -> Pending:
        """Issue one request or batch under ``plan``: copy in (padded to a captured size), replay, copy out.

        Each input is a tensor or the parts of a batch (joined in the copy). On the GPU this returns at
        once; requests of one runner run in order on its stream. On the CPU it runs eagerly and returns a
        finished Pending.
        """
        rows = sum(int(p.shape[0]) for p in parts_of(inputs[0]))
        if not self.on_gpu:
            return Pending(self.eager(self.host_inputs(inputs), plan), None, rows)
        cap = self.captured(plan, rows)
        if len(inputs) != len(cap.inputs):
            raise PlanError(f"{self.name!r} takes {len(cap.inputs)} input tensors, got {len(inputs)}")
        with self._lock, torch.inference_mode(), torch.cuda.stream(self.stream):
            for dst, src in zip(cap.inputs, inputs, strict=True):
                dst[:rows].copy_(_staged(src, rows), non_blocking=True)
            cap.replay()
            outputs = tuple(o.clone() for o in cap.outputs)
            event = torch.cuda.Event()
            event.record(self.stream)
        return Pending(outputs, event, rows)

    def run(self, inputs: Sequence[HostInput], plan: Plan) -> tuple[torch.Tensor, ...]:
        """Run one request and wait for it."""
        return self.submit(inputs, plan).result()

    def memory_report(self) -> dict:
        """Bytes the graph pool grew by at each capture (later plans should reuse the first's activations)."""
        return {
            "model": self.name,
            "graphs": [
                {
                    "switches": g.plan.switches,
                    "batch_size": g.batch_size,
                    "capture_ms": round(g.capture_ms, 3),
                    "pool_growth_bytes": g.pool_growth_bytes,
                }
                for g in self._graphs.values()
            ],
            "graph_pool_bytes": sum(g.pool_growth_bytes for g in self._graphs.values()),
        }

    def close(self) -> None:
        self._graphs.clear()
        self._static.clear()
        self._router.remove()


def _staged(x: HostInput, rows: int) -> torch.Tensor:
    """``x`` in pinned host memory, its parts joined, with one copy; a tensor already on a device or pinned as is.

    From pageable memory a copy to the device would block the caller until the stream's earlier requests
    finish. The pinned block comes from torch's caching host allocator, which records the copy's stream and
    hands the block out again only after the copy is done."""
    parts = parts_of(x)
    if len(parts) == 1 and (parts[0].device.type != "cpu" or parts[0].is_pinned()):
        return parts[0]
    staged = torch.empty((rows, *parts[0].shape[1:]), dtype=parts[0].dtype, pin_memory=True)
    return torch.cat(list(parts), out=staged) if len(parts) > 1 else staged.copy_(parts[0])
