"""The kernel-group profiler: each unit of a model, alone, on each partition size (GPU only).

It lives with the GPU code: the planner reads the profiles it writes (``eclip_ray.planner.profile``)
and never imports it, so planning needs no torch.

Sizes go down to the hardware's step (8 SMs on Hopper; the CLI's default is
``eclip_ray.planner.profile.DEFAULT_SIZES``), so pools can hold partitions that small and the
planner can cost them: it interpolates between measured sizes and refuses sizes outside them
(``planner/timing.py``).

Per-kernel times come from CUPTI through ``torch.profiler``: every unit (the
kernels between two consecutive leaf-module calls) runs inside a
``record_function`` range opened at its cut point, and the kernels under a
range are that unit's. Whole-model latency per size comes from CUDA-graph
replays timed with events. Warm-up runs are excluded; the median and the 10th
and 90th percentiles of the repeats are kept.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch

from eclip_ray.graph.plan import Plan
from eclip_ray.graph.runner import ModelRunner
from eclip_ray.graph.stages import leaf_cuts
from eclip_ray.partition.layout import WHOLE, DeviceGeometry, Layout, PartitionSpec
from eclip_ray.planner.profile import ModelProfile, ProfileKey, Stat, Unit

_RANGE = "eclip_unit"


def profiling_layout(geometry: DeviceGeometry, sizes: Sequence[int]) -> Layout:
    """Prefix partitions ``p{size}`` of each size below the whole device, plus the whole device."""
    parts = tuple(PartitionSpec(f"p{s}", 0, s) for s in sorted(set(sizes)) if s < geometry.sm_count)
    return Layout(geometry, (*parts, PartitionSpec(WHOLE, 0, geometry.sm_count)))


def partition_for(size: int, geometry: DeviceGeometry) -> str:
    return WHOLE if size >= geometry.sm_count else f"p{size}"


def _kernels_under(evt) -> list[tuple[str, float]]:
    out = [(k.name, k.duration / 1e3) for k in getattr(evt, "kernels", [])]
    for child in evt.cpu_children:
        out.extend(_kernels_under(child))
    return out


def _profile_eager(runner: ModelRunner, partition: str, batch: int, repeats: int) -> list[list[list[tuple]]]:
    """For each repeat, for each unit, the (kernel name, ms) it ran."""
    units = leaf_cuts(runner.calls)
    x = runner.example_inputs(batch)
    stream = runner.pool.stream(partition, owner=runner.name)
    state: dict[str, object] = {}

    def opener(rep: int, i: int):
        def go() -> None:
            if "rf" in state:
                state["rf"].__exit__(None, None, None)
            state["rf"] = torch.profiler.record_function(f"{_RANGE}:{rep}:{i}")
            state["rf"].__enter__()

        return go

    with torch.inference_mode(), torch.cuda.stream(stream):
        for _ in range(2):
            runner.model(*x)
        stream.synchronize()
        acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=acts) as prof:
            for rep in range(repeats):
                opener(rep, 0)()
                with runner._router.active({u.id: opener(rep, i + 1) for i, u in enumerate(units[1:])}):
                    runner.model(*x)
                state.pop("rf").__exit__(None, None, None)
                stream.synchronize()
    found: dict[tuple[int, int], list[tuple[str, float]]] = defaultdict(list)
    for evt in prof.events():
        if evt.name.startswith(_RANGE + ":"):
            _, rep, i = evt.name.split(":")
            found[(int(rep), int(i))].extend(_kernels_under(evt))
    return [[found.get((rep, i), []) for i in range(len(units))] for rep in range(repeats)]


def graph_latency(runner: ModelRunner, plan: Plan, batch: int, repeats: int = 30) -> Stat:
    """Median and spread of one request's latency as a graph replay on the runner's stream."""
    cap = runner.capture(plan, batch)
    stream = runner.stream
    samples = []
    with torch.cuda.stream(stream):
        for _ in range(3):
            cap.replay()
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            cap.replay()
            end.record(stream)
            end.synchronize()
            samples.append(start.elapsed_time(end))
    return Stat.of(samples)


def profile_model(
    runner: ModelRunner, batch: int, sizes: Sequence[int], key: ProfileKey, repeats: int = 3, graph_repeats: int = 30
) -> ModelProfile:
    """Profile ``runner``'s model at ``batch`` on every size of ``sizes`` (the runner's pool must hold them)."""
    geometry = runner.pool.layout.geometry
    leaves = leaf_cuts(runner.calls)
    t0 = time.perf_counter()
    per_size: dict[int, list[list[list[tuple]]]] = {}
    total: dict[int, Stat] = {}
    for size in sizes:
        part = partition_for(size, geometry)
        per_size[size] = _profile_eager(runner, part, batch, repeats)
        total[size] = graph_latency(runner, Plan.single(part), batch, graph_repeats)
    units = []
    for i, leaf in enumerate(leaves):
        ms = {s: Stat.of([sum(d for _, d in per_size[s][r][i]) for r in range(repeats)]) for s in sizes}
        first = per_size[sizes[-1]][0][i]
        kernels = [
            {"name": name, "ms": {str(s): _kernel_median(per_size[s], i, j) for s in sizes}}
            for j, (name, _) in enumerate(first)
        ]
        units.append(Unit(cut=None if i == 0 else leaf.id, module=leaf.module, ms=ms, kernels=kernels))
    meta = {"repeats": repeats, "graph_repeats": graph_repeats, "profile_s": round(time.perf_counter() - t0, 2)}
    return ModelProfile(key=key, sizes=list(sizes), units=units, total_ms=total, meta=meta)


def _kernel_median(runs: list[list[list[tuple]]], unit: int, j: int) -> float | None:
    vals = [r[unit][j][1] for r in runs if j < len(r[unit])]
    return float(sorted(vals)[len(vals) // 2]) if vals else None


def profile_key(runtime_info: dict, model: str, batch: int, dtype: torch.dtype) -> ProfileKey:
    return ProfileKey(
        gpu=runtime_info["device"],
        sm_count=int(runtime_info["sm_count"]),
        driver=str(runtime_info.get("energy", {}).get("driver", runtime_info.get("cuda_driver_api", "?"))),
        torch=torch.__version__,
        model=model,
        batch_size=batch,
        dtype=str(dtype).removeprefix("torch."),
    )


def covers(path: Path, sizes: Sequence[int], sm_count: int) -> bool:
    """Whether the profile at ``path`` already holds every size of ``sizes`` (made on a device of ``sm_count``)."""
    from eclip_ray.planner.profile import load

    try:
        prof = load(path)
    except (OSError, ValueError, KeyError, TypeError):  # unreadable or of another schema: profile it again
        return False
    want = {min(s, sm_count) for s in sizes}
    return prof.key.sm_count == sm_count and want <= set(prof.sizes)


def run_profiles(
    models: Sequence[str],
    batch_sizes: Sequence[int],
    sizes: Sequence[int],
    out_dir: str,
    repeats: int = 3,
    progress: bool = True,
    budget_s: float | None = None,
) -> list[str]:
    """Profile every (model, batch size) into ``out_dir``; a file there that holds every size is kept.

    Resumable: each profile is written as soon as it is made, a file that lacks a size of ``sizes``
    is made again, and with ``budget_s`` no profile starts after that many seconds (what is left is
    printed, to run again).
    """
    from tqdm import tqdm

    from eclip_ray.models.names import canonical
    from eclip_ray.models.zoo import get as zoo_get
    from eclip_ray.runtime import Runtime

    written, left = [], []
    t0 = time.perf_counter()
    with Runtime(backend="cuda", layout=lambda g: profiling_layout(g, sizes)) as rt:
        info = rt.describe()
        sm_count = rt.layout.geometry.sm_count
        bar = tqdm(total=len(models) * len(batch_sizes), disable=not progress, desc="profiling", unit="profile")
        for model in models:
            name = canonical(model)
            runner = None
            for batch in batch_sizes:
                key = profile_key(info, name, batch, torch.float16)
                bar.set_postfix_str(f"{name} bs{batch}")
                if budget_s is not None and time.perf_counter() - t0 > budget_s:
                    left.append(f"{name} bs{batch}")
                elif not covers(Path(out_dir) / key.filename(), sizes, sm_count):
                    runner = runner or rt.load(name, zoo_get(name))
                    written.append(str(profile_model(runner, batch, sizes, key, repeats=repeats).save(out_dir)))
                bar.update()
            if runner is not None:
                rt.runners.pop(name).close()
                torch.cuda.empty_cache()
    if left:
        print(f"the {budget_s:.0f} s budget ran out; not profiled: {', '.join(left)} (run the command again)")
    return written
