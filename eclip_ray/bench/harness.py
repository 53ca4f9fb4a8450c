"""The benchmark run: mixes x batch sizes x loads x policies, measured and written as a part file.

For every mix and batch size: the SLO of each model (``slo_factor`` x its
isolated p99, measured first or read from ``isolated_file``), every policy's
set-up (``policies.py``), then one runtime whose pool holds every partition
the in-process policies name; each policy is captured and driven under each
load in turn, and the MPS policy runs last in its own processes. The part
file is rewritten after every policy, so a part stopped early keeps what it
measured, and ``resume`` repeats only what is missing.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eclip_ray.bench import isolated as iso
from eclip_ray.bench import mps, packing, policies, results
from eclip_ray.bench.config import BenchConfig
from eclip_ray.bench.execute import MixRun, record, run_in_process, run_mps
from eclip_ray.bench.load import Load
from eclip_ray.bench.machine import header, probe
from eclip_ray.errors import PlanError
from eclip_ray.models.names import canonical
from eclip_ray.partition import DeviceGeometry
from eclip_ray.planner import catalog
from eclip_ray.planner.mixes import instance_names
from eclip_ray.planner.power import PowerModel
from eclip_ray.planner.profile import ModelProfile
from eclip_ray.planner.settings import PlannerSettings


@dataclass
class ProfileSet:
    profiles: dict[str, ModelProfile] = field(default_factory=dict)
    note: str = ""
    directory: str | None = None
    power: PowerModel | None = None
    power_note: str = "no power model"
    settings: PlannerSettings = field(default_factory=PlannerSettings)  # with the set's fitted co-run coefficients


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Run ``cfg``; return the part document (also written to ``cfg.out`` after every policy)."""
    unknown = [p for p in cfg.policies if p not in policies.POLICIES]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; choose from {policies.POLICIES}")
    backend, geometry, info = probe(cfg.backend)
    doc = _document(cfg, info)

    def save() -> None:
        if cfg.out:
            results.write(doc, cfg.out)

    _isolated(cfg, doc, backend, geometry, save)
    for label, models in cfg.mixes.items():
        for sizes in cfg.batch_sizes:
            _run_mix(cfg, doc, backend, geometry, label, models, sizes, save)
    save()
    return doc


def _document(cfg: BenchConfig, info: dict[str, Any]) -> dict[str, Any]:
    head = header(info)
    if not (cfg.resume and cfg.out and Path(cfg.out).is_file()):
        return results.new_document(head, cfg.command)
    doc = results.read(cfg.out)
    differ = {k: (doc.get(k), head[k]) for k in (*results.HEADER, "backend") if doc.get(k) != head[k]}
    if differ:
        raise ValueError(f"cannot resume {cfg.out}: it was measured elsewhere {differ}")
    doc.setdefault("resumed", []).append({"command": cfg.command, "date": results.now_iso()})
    return doc


def _isolated(cfg: BenchConfig, doc: dict, backend: str, geometry: DeviceGeometry, save: Callable[[], None]) -> None:
    """Fill ``doc["isolated"]`` for every model and batch size of the run: from the file, else measured."""
    if cfg.isolated_file:
        for model, by_batch in results.read(cfg.isolated_file).get("isolated", {}).items():
            doc["isolated"].setdefault(model, {}).update(by_batch)
    pairs = []
    for models in cfg.mixes.values():
        for sizes in cfg.batch_sizes:
            batch = _batches(sizes, instance_names(list(models)))
            pairs += [(m, b) for m, b in zip(models, batch.values(), strict=True)]
    missing = [(m, b) for m, b in dict.fromkeys(pairs) if iso.key(b) not in doc["isolated"].get(m, {})]
    if missing:
        measured = iso.measure(
            missing, backend=backend, geometry=geometry, warmup_s=cfg.warmup_s, window_s=cfg.isolated_s, seed=cfg.seed
        )
        for model, by_batch in measured.items():
            doc["isolated"].setdefault(model, {}).update(by_batch)
        save()


def _batches(sizes: Sequence[int], instances: Sequence[str]) -> dict[str, int]:
    if len(sizes) == 1:
        return dict.fromkeys(instances, sizes[0])
    if len(sizes) != len(instances):
        raise ValueError(f"{len(sizes)} batch sizes for {len(instances)} instances; give one or one each")
    return dict(zip(instances, sizes, strict=True))


def scenario_label(load: Load, sizes: Sequence[int]) -> str:
    return f"{load.label()}-bs{','.join(str(b) for b in sizes)}"


def _profiles(cfg: BenchConfig, models: Sequence[str], batch: Mapping[str, int], sm_count: int) -> ProfileSet:
    if cfg.profiles is None:
        return ProfileSet(note="no profile set was given")
    try:
        directory = catalog.profile_dir(cfg.profiles)
        found = {
            n: catalog.load_profile(directory, m, b, cfg.dtype) for (n, b), m in zip(batch.items(), models, strict=True)
        }
    except PlanError as e:  # the catalog lists every file it has; the first clause says what is missing
        return ProfileSet(note=str(e).split("; it has")[0])
    made_on = {p.key.sm_count for p in found.values()}
    if made_on != {sm_count}:
        return ProfileSet(note=f"the profiles were made on devices of {sorted(made_on)} SMs; this one has {sm_count}")
    power, note = catalog.load_power(directory)
    return ProfileSet(found, "", str(directory), power, note, catalog.fitted_settings(directory))


def _prepare(
    cfg: BenchConfig,
    doc: dict,
    backend: str,
    geometry: DeviceGeometry,
    label: str,
    models: tuple[str, ...],
    sizes: Sequence[int],
) -> MixRun:
    instances = instance_names(list(models))
    batch = _batches(sizes, instances)
    p99 = {n: doc["isolated"][m][iso.key(batch[n])]["p99_ms"] for n, m in zip(instances, models, strict=True)}
    slo = {n: cfg.slo_factor * v for n, v in p99.items()}
    prof = _profiles(cfg, models, batch, geometry.sm_count)
    inputs = policies.MixInputs(
        instances=tuple(instances),
        slo_ms=slo,
        geometry=geometry,
        profiles=prof.profiles,
        profile_note=prof.note,
        power=prof.power,
        power_note=prof.power_note,
        fractions=cfg.fractions,
        objective=cfg.objective,
        mps_share=cfg.mps_share,
        mps_note=mps.unavailable(backend),
        planner=prof.settings,
    )
    work = {n: packing.sm_ms_per_inference(p) for n, p in prof.profiles.items()} or None
    entry = doc["mixes"].setdefault(label, {"models": list(models), "instances": instances, "scenarios": {}})
    if entry["models"] != list(models):
        raise ValueError(f"mix {label} is {entry['models']} in {cfg.out}, not {list(models)}")
    scenarios = {}
    for load in cfg.loads:
        head = {
            "load": load.to_dict(),
            "batch_size": batch,
            "settings": cfg.settings(),
            "slo_ms": slo,
            "isolated_p99_ms": p99,
            "profiles": prof.directory,
            "profile_note": prof.note,
            "profile_cards": sorted({p.key.gpu for p in prof.profiles.values()}),
            "sm_ms_per_inference": work,
            "bound_equal_rps": packing.bound_rps(work, dict.fromkeys(work, 1.0), geometry.sm_count) if work else None,
        }
        sc = entry["scenarios"].setdefault(scenario_label(load, sizes), {**head, "policies": {}})
        for k in results.SAME_IN_A_SCENARIO:
            if sc.get(k) != head[k]:
                raise ValueError(f"{label} {scenario_label(load, sizes)} in {cfg.out} was run with another {k}")
        scenarios[load] = sc
    return MixRun(label, models, instances, batch, inputs, work, scenarios)


def _run_mix(
    cfg: BenchConfig,
    doc: dict,
    backend: str,
    geometry: DeviceGeometry,
    label: str,
    models: tuple[str, ...],
    sizes: Sequence[int],
    save: Callable[[], None],
) -> None:
    mix = _prepare(cfg, doc, backend, geometry, label, models, sizes)
    todo = {
        (load, p)
        for load, sc in mix.scenarios.items()
        for p in cfg.policies
        if sc["policies"].get(p, {}).get("status") not in results.DONE
    }
    if not todo:
        return
    setups = {}
    for p in dict.fromkeys(p for _, p in todo):
        try:
            setups[p] = policies.build(p, mix.inputs)
        except Exception as e:  # a planner failure is this policy's result, not the run's end
            traceback.print_exc()
            setups[p] = policies.Setup(p, skipped=f"the set-up failed: {e!r}")
    for load, p in sorted(todo, key=lambda lp: cfg.policies.index(lp[1])):
        if setups[p].skipped:
            record(mix, load, p, results.not_measured("skipped", setups[p].skipped, setups[p].describe()), save)
    runnable = [(load, p) for load in cfg.loads for p in cfg.policies if (load, p) in todo and not setups[p].skipped]
    inproc = [(load, p) for load, p in runnable if p != "mps"]
    if inproc:
        run_in_process(cfg, backend, mix, setups, inproc, save)
    for load, _ in [(load, p) for load, p in runnable if p == "mps"]:
        run_mps(cfg, backend, mix, setups["mps"], load, save)


def run_isolated(
    models: Sequence[str],
    batch_sizes: Sequence[int],
    *,
    backend: str = "auto",
    warmup_s: float = 2.0,
    window_s: float = 5.0,
    seed: int = 0,
    command: str = "",
    out: str | None = None,
) -> dict[str, Any]:
    """Measure only the isolated latencies (the SLOs' base) of ``models`` at ``batch_sizes``: a part of its own."""
    backend, geometry, info = probe(backend)
    doc = results.new_document(header(info), command)
    pairs = [(m, b) for m in dict.fromkeys(canonical(m) for m in models) for b in batch_sizes]
    doc["isolated"] = iso.measure(
        pairs, backend=backend, geometry=geometry, warmup_s=warmup_s, window_s=window_s, seed=seed
    )
    if out:
        results.write(doc, out)
    return doc
