"""The benchmark run: mixes x batch sizes x SLO factors x regimes x policies, measured and written as a part file.

For every mix, batch-size setting and SLO factor (a *case*): the SLO of each
instance (``slo_factor`` x its isolated p99, measured first or read from
``isolated_file``), every policy's set-up (``policies.py``), then, policy by
policy in the order given, one session (``session.py``: a runtime whose pool
holds only the partitions the policy uses, every plan captured once) that
runs all the case's scenarios: regime C's closed-loop windows and regime A's
and B's load searches (``regimes.py``). Each instance's alone search runs
first, in multi-stream's session. The MPS policies run last, after every
mix: their client processes are started together once and serve every
window of every mix (``mps.py``). The part file is rewritten after every
result, so a part stopped early keeps what it measured, and ``resume``
repeats only what is missing or was cut short.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eclip_ray.bench import isolated as iso
from eclip_ray.bench import mps, packing, policies, regimes, results
from eclip_ray.bench.config import BenchConfig
from eclip_ray.bench.execute import WEIGHTS, Budget, Case, record, run_alone, run_policy, todo
from eclip_ray.bench.load import Load
from eclip_ray.bench.machine import header, probe
from eclip_ray.bench.mixes import Instance
from eclip_ray.bench.session import InProcessSession, ModuleCache
from eclip_ray.energy import open_meter
from eclip_ray.errors import PlanError
from eclip_ray.models.names import canonical
from eclip_ray.partition import DeviceGeometry
from eclip_ray.planner import catalog
from eclip_ray.planner.mixes import instance_names
from eclip_ray.planner.power import PowerModel
from eclip_ray.planner.profile import ModelProfile
from eclip_ray.planner.settings import PlannerSettings


class _Unmeasured(RuntimeError):
    """A mix whose SLOs cannot be set: an isolated measurement failed."""


@dataclass
class ProfileSet:
    profiles: dict[str, ModelProfile] = field(default_factory=dict)
    note: str = ""
    directory: str | None = None
    power: PowerModel | None = None
    power_note: str = "no power model"
    settings: PlannerSettings = field(default_factory=PlannerSettings)  # with the set's fitted co-run coefficients
    sources: dict[str, str] = field(default_factory=dict)  # instance -> the directory its profile came from


def run(cfg: BenchConfig) -> dict[str, Any]:
    """Run ``cfg``; return the part document (also written to ``cfg.out`` after every result)."""
    backend, geometry, info = probe(cfg.backend)
    _check_plans(cfg, geometry)
    doc = _document(cfg, info)

    def save() -> None:
        if cfg.out:
            results.write(doc, cfg.out)

    cache = ModuleCache()
    _isolated(cfg, doc, backend, geometry, save, cache)
    cases = []
    for label, instances in cfg.mixes.items():
        for sizes in _batch_settings(cfg, instances):
            for factor in cfg.slo_factors:
                try:
                    cases.append(_prepare(cfg, doc, backend, geometry, label, instances, sizes, factor))
                except _Unmeasured as e:  # its isolated latency failed: the mix cannot run, the others can
                    entry = doc["mixes"].setdefault(label, {"models": [i.model for i in instances], "scenarios": {}})
                    entry.setdefault("instances", instance_names(entry["models"]))
                    entry["error"] = str(e)
                    print(f"{label}: not run ({e})", file=sys.stderr, flush=True)
    save()
    setups: dict[tuple[int, str], policies.Setup] = {}
    on_mps = [p for p in cfg.policies if p in policies.MPS_POLICIES]
    weight = sum(
        bool(c.alone_needed()) + sum(WEIGHTS.get(p, 1.0) for p in cfg.policies_of(c.label) if todo(c, p)) for c in cases
    )
    budget = Budget(cfg.deadline, weight + bool(on_mps))
    for i, case in enumerate(cases):
        inproc = [p for p in cfg.policies_of(case.label) if p not in policies.MPS_POLICIES]
        _in_process(cfg, case, backend, cache, inproc, lambda p, i=i, c=case: _setup(setups, i, c, p), budget, save)
    cache.clear()
    if on_mps:
        _on_mps(cfg, cases, backend, on_mps, lambda i, c, p: _setup(setups, i, c, p), budget, save)
    save()
    return doc


def _check_plans(cfg: BenchConfig, geometry: DeviceGeometry) -> None:
    """A user's fixed plan that cannot be made on this device is an error before any GPU time is spent."""
    for p in (p for p in cfg.policies if p.startswith(policies.FIXED)):
        for label, instances in ((m, i) for m, i in cfg.mixes.items() if p in cfg.policies_of(m)):
            models = [i.model for i in instances]
            names = instance_names(models)
            mix = policies.MixInputs(tuple(names), {}, geometry, models=dict(zip(names, models, strict=True)))
            try:
                policies.fixed(mix, p[len(policies.FIXED) :])
            except ValueError as e:
                raise ValueError(f"--plan {p[len(policies.FIXED) :]!r} on mix {label}: {e}") from e


def _setup(setups: dict, i: int, case: Case, policy: str) -> policies.Setup:
    if (i, policy) not in setups:
        try:
            setups[(i, policy)] = policies.build(policy, case.inputs)
        except Exception as e:  # a planner failure is this policy's result, not the run's end
            traceback.print_exc()
            setups[(i, policy)] = policies.Setup(policy, skipped=f"the set-up failed: {e!r}")
    return setups[(i, policy)]


def _in_process(
    cfg: BenchConfig,
    case: Case,
    backend: str,
    cache: ModuleCache,
    names: Sequence[str],
    setup_of: Callable[[str], policies.Setup],
    budget: Budget,
    save: Callable[[], None],
) -> None:
    def session(setup: policies.Setup) -> InProcessSession:
        return InProcessSession(backend, case.instances, case.models, case.batch, case.inputs, setup, cache)

    pending = [p for p in names if todo(case, p)]
    if case.alone_needed():  # each instance alone, in multi-stream's session: every instance on the whole GPU
        ms = setup_of("multi-stream")
        until = budget.job()
        try:
            s = session(ms)
        except Exception:
            traceback.print_exc()
        else:
            try:
                run_alone(cfg, case, s, until, save)
                if "multi-stream" in pending:
                    pending.remove("multi-stream")
                    run_policy(cfg, case, ms, s, budget.job(), save)
            finally:
                s.close()
    for p in pending:
        setup = setup_of(p)
        if setup.skipped:
            for lbl in todo(case, p):
                record(case, lbl, p, results.not_measured("skipped", setup.skipped, setup.describe()), save)
            budget.job(WEIGHTS.get(p, 1.0))
            continue
        run_policy(cfg, case, setup, lambda setup=setup: session(setup), budget.job(WEIGHTS.get(p, 1.0)), save)


def _on_mps(
    cfg: BenchConfig,
    cases: Sequence[Case],
    backend: str,
    names: Sequence[str],
    setup_of: Callable[[int, Case, str], policies.Setup],
    budget: Budget,
    save: Callable[[], None],
) -> None:
    """The MPS policies of every case, on client processes started together and kept for every window."""
    jobs = []
    for i, case in enumerate(cases):
        for p in names:
            if p not in cfg.policies_of(case.label) or not todo(case, p):
                continue
            setup = setup_of(i, case, p)
            if setup.skipped:
                for lbl in todo(case, p):
                    record(case, lbl, p, results.not_measured("skipped", setup.skipped, setup.describe()), save)
                budget.job()
                continue
            keys = mps.client_keys(case.inputs.models, case.batch, setup.mps_percent)
            jobs.append((case, setup, keys))
    if not jobs:
        return
    meter = open_meter(backend)
    note = "" if meter.available else meter.describe().get("reason", "no energy meter")
    try:
        with mps.MpsDaemon() as daemon:
            clients = mps.MpsClients(backend, daemon.env)
            try:
                _mps_jobs(cfg, jobs, clients, daemon, meter, note, budget, save)
            finally:
                clients.close()
    except Exception as e:  # the daemon failed to start: every MPS result says why
        traceback.print_exc()
        for case, setup, _ in jobs:
            for lbl in todo(case, setup.policy):
                record(case, lbl, setup.policy, results.not_measured("error", repr(e), setup.describe()), save)
    finally:
        meter.close()


def _mps_jobs(cfg, jobs, clients: mps.MpsClients, daemon: mps.MpsDaemon, meter, note, budget, save) -> None:
    every = [k for _, _, keys in jobs for k in keys.values()]
    if len(set(every)) <= clients.max_clients:  # start them all at once: one start-up for the whole phase
        budget.job()
        try:
            clients.ensure(every)
        except Exception:  # each policy tries again with its own clients below and records its error
            traceback.print_exc()
    for case, setup, keys in jobs:

        def session(keys=keys) -> mps.MpsSession:
            s = mps.MpsSession(clients, keys, meter if meter.available else None, note, servers=daemon.servers)
            if not s.servers:
                raise RuntimeError(
                    f"the clients ran without an MPS server (control.log: {daemon.log_tail() or 'empty'})"
                )
            return s

        run_policy(cfg, case, setup, session, budget.job(), save)


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


def _batch_settings(cfg: BenchConfig, instances: Sequence[Instance]) -> list[tuple[int, ...]]:
    """The batch sizes of each case of a mix: instances with their own size keep it."""
    out: list[tuple[int, ...]] = []
    for sizes in cfg.batch_sizes:
        got = tuple(_batches(sizes, instances).values())
        if got not in out:
            out.append(got)
    return out


def _batches(sizes: Sequence[int], instances: Sequence[Instance]) -> dict[str, int]:
    names = instance_names([i.model for i in instances])
    if len(sizes) not in (1, len(instances)):
        raise ValueError(f"{len(sizes)} batch sizes for {len(instances)} instances; give one or one each")
    given = list(sizes) * len(instances) if len(sizes) == 1 else list(sizes)
    return {n: i.batch_size or b for n, i, b in zip(names, instances, given, strict=True)}


def _isolated(
    cfg: BenchConfig,
    doc: dict,
    backend: str,
    geometry: DeviceGeometry,
    save: Callable[[], None],
    cache: ModuleCache | None = None,
) -> None:
    """Fill ``doc["isolated"]`` for every model and batch size of the run: from the file, else measured."""
    if cfg.isolated_file:
        for model, by_batch in results.read(cfg.isolated_file).get("isolated", {}).items():
            doc["isolated"].setdefault(model, {}).update(by_batch)
    pairs = [
        (i.model, b)
        for instances in cfg.mixes.values()
        for sizes in _batch_settings(cfg, instances)
        for i, b in zip(instances, sizes, strict=True)
    ]
    have = doc["isolated"]
    missing = [(m, b) for m, b in dict.fromkeys(pairs) if "p99_ms" not in have.get(m, {}).get(iso.key(b), {})]
    if missing:
        measured = iso.measure(
            missing,
            backend=backend,
            geometry=geometry,
            warmup_s=cfg.warmup_s,
            window_s=cfg.isolated_s,
            seed=cfg.seed,
            cache=cache,
        )
        for model, by_batch in measured.items():
            doc["isolated"].setdefault(model, {}).update(by_batch)
        save()


def _sizes(sizes: Sequence[int]) -> str:
    return "bs" + ",".join(str(b) for b in (sizes[:1] if len(set(sizes)) == 1 else sizes))


def scenario_label(load: Load, sizes: Sequence[int], slo_factor: float = 3.0) -> str:
    """Regime C's scenario: the load and batch sizes (and the SLO factor, where it is not the paper's 3)."""
    return f"{load.label()}-{_sizes(sizes)}" + (f"-slo{slo_factor:g}x" if slo_factor != 3 else "")


def regime_label(regime: str, sizes: Sequence[int], slo_factor: float) -> str:
    return f"{regime}-{_sizes(sizes)}-slo{slo_factor:g}x"


def _profiles(cfg: BenchConfig, models: Sequence[str], batch: Mapping[str, int], sm_count: int) -> ProfileSet:
    """Every instance's profile from the first profile set of ``cfg.profiles`` (comma-separated) that has it."""
    if cfg.profiles is None:
        return ProfileSet(note="no profile set was given")
    try:
        dirs = [catalog.profile_dir(p.strip()) for p in cfg.profiles.split(",") if p.strip()]
    except PlanError as e:
        return ProfileSet(note=str(e))
    found, sources, missing = {}, {}, []
    for (n, b), m in zip(batch.items(), models, strict=True):
        for d in dirs:
            try:
                found[n], sources[n] = catalog.load_profile(d, m, b, cfg.dtype), str(d)
                break
            except PlanError:
                continue
        else:
            missing.append(f"{canonical(m)} at batch {b}")
    if missing:
        return ProfileSet(note=f"no profile of {', '.join(missing)} in {', '.join(map(str, dirs))}")
    made_on = {p.key.sm_count for p in found.values()}
    if made_on != {sm_count}:
        return ProfileSet(note=f"the profiles were made on devices of {sorted(made_on)} SMs; this one has {sm_count}")
    first = Path(next(iter(sources.values())))
    power, note = catalog.load_power(first)
    return ProfileSet(
        found, "", ",".join(dict.fromkeys(sources.values())), power, note, catalog.fitted_settings(first), sources
    )


def _prepare(
    cfg: BenchConfig,
    doc: dict,
    backend: str,
    geometry: DeviceGeometry,
    label: str,
    instances: Sequence[Instance],
    sizes: Sequence[int],
    factor: float,
) -> Case:
    models = tuple(i.model for i in instances)
    names = instance_names(list(models))
    batch = dict(zip(names, sizes, strict=True))
    isolated = {n: doc["isolated"].get(m, {}).get(iso.key(batch[n]), {}) for n, m in zip(names, models, strict=True)}
    failed = {n: v.get("error", "not measured") for n, v in isolated.items() if "p99_ms" not in v}
    if failed:
        raise _Unmeasured(f"no isolated latency of {failed}")
    p99 = {n: v["p99_ms"] for n, v in isolated.items()}
    slo = {n: factor * v for n, v in p99.items()}
    roles = {n: i.role for n, i in zip(names, instances, strict=True)}
    shares = {n: i.share if i.share is not None else 1.0 / len(names) for n, i in zip(names, instances, strict=True)}
    iso_rps = {n: v["throughput_rps"] for n, v in isolated.items()}
    base = {n: shares[n] * iso_rps[n] / batch[n] for n in names}
    prof = _profiles(cfg, models, batch, geometry.sm_count)
    inputs = policies.MixInputs(
        instances=tuple(names),
        slo_ms=slo,
        geometry=geometry,
        profiles=prof.profiles,
        profile_note=prof.note,
        power=prof.power,
        power_note=prof.power_note,
        fractions=cfg.fractions,
        objective=cfg.objective,
        mps_note=mps.unavailable(backend),
        planner=prof.settings,
        models=dict(zip(names, models, strict=True)),
        selection_budget_s=cfg.eclip_selection_s,
        **policies.roles_of(names, roles),
    )
    work = {n: packing.sm_ms_per_inference(p) for n, p in prof.profiles.items()} or None
    facts = regimes.MixFacts(tuple(names), roles, batch, slo, iso_rps, base, cfg.batch_inflight, cfg.max_inflight,
                             cfg.slo_percentile)  # fmt: skip
    case = Case(label, models, names, batch, factor, inputs, facts, work)
    entry = doc["mixes"].setdefault(label, {"models": list(models), "instances": names, "scenarios": {}})
    if entry["models"] != list(models):
        raise ValueError(f"mix {label} is {entry['models']} in {cfg.out}, not {list(models)}")
    common = {
        "batch_size": batch,
        "slo_ms": slo,
        "isolated_p99_ms": p99,
        "isolated_rps": iso_rps,
        "roles": roles,
        "profiles": prof.directory,
        "profile_note": prof.note,
        "profile_sources": prof.sources,
        "profile_cards": sorted({p.key.gpu for p in prof.profiles.values()}),
        "sm_ms_per_inference": work,
        "bound_equal_rps": packing.bound_rps(work, dict.fromkeys(work, 1.0), geometry.sm_count) if work else None,
    }
    heads: dict[str, dict] = {}
    if "C" in cfg.regimes:
        for load in cfg.loads:
            lbl = scenario_label(load, sizes, factor)
            heads[lbl] = {"regime": "C", "load": load.to_dict(), "settings": cfg.settings(factor), **common}
            case.loads[lbl] = load
    for r in (r for r in cfg.regimes if r in regimes.REGIMES):
        lbl = regime_label(r, sizes, factor)
        load = {"kind": "search", "regime": r, "base_rps": base, "shares": shares, "open": facts.open_lanes(r)}
        heads[lbl] = {"regime": r, "load": load, "settings": cfg.settings(factor, r), **common}
        case.regimes[r] = lbl
    for lbl, head in heads.items():
        sc = entry["scenarios"].setdefault(lbl, {**head, "policies": {}})
        for k in results.SAME_IN_A_SCENARIO:
            if sc.get(k) != head[k]:
                raise ValueError(f"{label} {lbl} in {cfg.out} was run with another {k}")
        case.scenarios[lbl] = sc
    return case


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
