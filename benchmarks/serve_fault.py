"""Bad values and a poisoned GPU through real Ray Serve: out-of-range token ids get 400, a sticky device fault
restarts the GPU actor, and the service comes back with no request hung or lost.

The application, on one GPU: a text model (``--text-model``, bert-base) and an image model
(``--image-model``, resnet50), and ``fault``, a user's model (``tests/serve_models.py``: IndexedTable)
that indexes a 64-row table with its integer input by plain indexing, so that no range is known
anywhere: a value past the table passes every check and reaches the device.

1. **ranges**: text-model requests with a token id past the vocabulary (10^7) and a negative one, JSON
   and binary, must each get 400 naming the input and its range; then good requests of both models get
   200, from the same actor process, which has seen no device fault.
2. **fault**: an open loop of requests to each of the two models (Poisson, ``--rate-rps`` each) for
   ``--duration-s``; ``--fault-at-s`` in, one ``fault`` request with an index past its table: on a GPU a
   device-side assert, which poisons the CUDA context of every model there. The fault request and the
   batches in flight must get 503 with Retry-After, the actor must be a new process afterwards, every
   request must have an answer (200 or 503 with Retry-After: none lost, none hung past the client
   timeout), and both models must answer 200 again within ``--recover-within-s`` of the fault.

Results are written after each phase (``--out``); the run stays inside ``--budget-s`` by shortening the
open loop. On the CPU backend the fault request is an IndexError (500) and nothing restarts, so the run
fails phase 2 there: the sticky path needs a GPU. ``--fault-loader tests.serve_models:SimulatedAssert``
tries the whole run on the CPU, with a model that makes the CPU backend's context probe fail.

    python benchmarks/serve_fault.py --out benchmarks/results/h200/fault/fault.json
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import serve_load

from eclip_ray.bench import results
from eclip_ray.serve._private import codec
from eclip_ray.serve.config import AppConfig

FAULT_MODEL = "fault"
FAULT_LOADER = "tests.serve_models:IndexedTable"  # imported by Ray's workers from the repository root
SIMULATED = "tests.serve_models:SimulatedAssert"  # the same on the CPU backend, acting as a poisoned GPU
TABLE_ROWS = 64
BAD_IDS = (10**7, -1)


@dataclass
class Settings:
    text_model: str = "bert-base"
    image_model: str = "resnet50"
    backend: str = "auto"
    rate_rps: float = 20.0
    duration_s: float = 40.0
    fault_at_s: float = 6.0
    recover_within_s: float = 30.0
    timeout_s: float = 30.0
    budget_s: float = 115.0
    seed: int = 0
    fault_loader: str = FAULT_LOADER
    out: Path | None = None


def app_config(s: Settings) -> AppConfig:
    batching = {"max_batch_size": 4, "batch_wait_timeout_s": 0.002}
    return AppConfig.model_validate(
        {
            "backend": s.backend,
            "allowed_modules": [s.fault_loader.split(":")[0]],
            "models": [
                {"name": s.text_model, **batching},
                {"name": s.image_model, **batching},
                {
                    "name": FAULT_MODEL,
                    "loader": s.fault_loader,
                    "max_batch_size": 1,
                    "inputs": [{"name": "idx", "datatype": "INT64", "shape": [8]}],
                },
            ],
            "limits": {"request_timeout_s": 10, "retry_after_s": 1},
        }
    ).resolved()


def post(url: str, model: str, body: bytes, headers: Mapping[str, str], timeout_s: float = 30.0):
    """(status, error text or None, Retry-After) of one KServe request."""
    request = urllib.request.Request(f"{url}/v2/models/{model}/infer", data=body, headers=dict(headers), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as r:
            return r.status, None, r.headers.get("Retry-After")
    except urllib.error.HTTPError as e:
        return e.code, serve_load.error_text(e.read()), e.headers.get("Retry-After")


def post_arrays(url: str, model: str, inputs: Sequence[tuple[str, np.ndarray]], binary: bool = True):
    body, length = codec.encode_request(inputs, binary=binary)
    return post(url, model, body, {} if length is None else {codec.HEADER: str(length)})


def actor(app: str = serve_load.APP) -> dict[str, Any]:
    """The GPU actor's process and its device-fault counters."""
    import ray

    handle = serve_load.gpu_actor(0, app)
    process, stats = ray.get([handle.process.remote(), handle.stats.remote()], timeout=30)
    keep = ("device_faults", "last_device_fault", "context_probes", "context_fault")
    return {"pid": process["pid"], **{k: stats.get(k) for k in keep}}


def ranges_phase(url: str, config: AppConfig, s: Settings) -> dict[str, Any]:
    """Token ids out of range get 400 naming the range; good requests of both models get 200; no fault."""
    text = config.model(s.text_model)
    spec = text.inputs[0]
    low, high = spec.value_range
    before = actor()
    cases = []
    for value in BAD_IDS:
        for binary in (True, False):
            ids = np.zeros((1, *spec.shape), "<i8")
            ids[0, -1] = value
            status, error, _ = post_arrays(url, text.name, [(spec.name, ids)], binary)
            ok = status == 400 and f"holds the value {value} " in (error or "")
            ok = ok and f"outside its range [{low}, {high}]" in error
            cases.append({"value": value, "binary": binary, "status": status, "error": error, "ok": ok})
    good = []
    for model in (s.text_model, s.image_model):
        target = serve_load.target_for(url, config.model(model), 1, s.seed)
        status, error, _ = post(url, model, target.body, target.headers)
        good.append({"model": model, "status": status, "error": error, "ok": status == 200})
    after = actor()
    problems = [f"{c['value']} ({'binary' if c['binary'] else 'JSON'}) got {c['status']}" for c in cases if not c["ok"]]
    problems += [f"a good {g['model']} request got {g['status']}: {g['error']}" for g in good if not g["ok"]]
    if after["pid"] != before["pid"] or after["device_faults"]:
        problems.append(f"the actor changed or saw a device fault: before {before}, after {after}")
    return {"range": [low, high], "bad": cases, "good": good, "actor": after, "problems": problems}


def fault_phase(url: str, config: AppConfig, s: Settings, duration_s: float) -> dict[str, Any]:
    """Open loops of both models with the poisoning request ``fault_at_s`` in; how each came through."""
    before = actor()
    poison: dict[str, Any] = {}

    def send_poison() -> None:
        poison["sent_at"] = time.time()
        idx = np.full((1, 8), TABLE_ROWS * 10**4, "<i8")  # far past the table's rows: a device-side assert
        t0 = time.perf_counter()
        try:
            poison["status"], poison["error"], poison["retry_after"] = post_arrays(url, FAULT_MODEL, [("idx", idx)])
        except OSError as e:  # no answer within the client timeout, or the connection broke
            poison["error"] = f"no answer: {type(e).__name__}: {e}"
        poison["latency_ms"] = 1e3 * (time.perf_counter() - t0)

    targets = {m: serve_load.target_for(url, config.model(m), 1, s.seed) for m in (s.text_model, s.image_model)}
    events = {s.image_model: {s.fault_at_s: send_poison}, s.text_model: {s.fault_at_s: lambda: None}}

    async def loops():
        runs = [
            serve_load.open_loop(t, s.rate_rps, duration_s, s.seed + i, s.timeout_s, events[m])
            for i, (m, t) in enumerate(targets.items())
        ]
        return dict(zip(targets, await asyncio.gather(*runs), strict=True))

    out: dict[str, Any] = {"rate_rps": s.rate_rps, "duration_s": duration_s, "fault_at_s": s.fault_at_s}
    per_model = {}
    for model, (answers, happened) in asyncio.run(loops()).items():
        per_model[model] = {
            **serve_load.summarize(answers, duration_s, None),
            "recovery": serve_load.recovery(answers, happened[f"{s.fault_at_s:g}"]),
        }
    out["models"] = per_model
    out["poison"] = poison
    out["actor_before"], out["actor_after"] = before, _actor_when_back()
    status, error, _ = post_arrays(url, FAULT_MODEL, [("idx", np.arange(8, dtype="<i8")[None])])
    out["fault_model_after"] = {"status": status, "error": error}
    out["problems"] = fault_problems(out, s)
    return out


def _actor_when_back(wait_s: float = 30.0) -> dict[str, Any] | None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return actor()
        except Exception as e:  # restarting still, or gone for good
            if time.monotonic() > deadline:
                return {"error": f"{type(e).__name__}: {e}"}
            time.sleep(0.5)


def fault_problems(out: Mapping[str, Any], s: Settings) -> list[str]:
    problems = []
    p = out["poison"]
    if p.get("status") != 503 or p.get("retry_after") is None:
        problems.append(f"the poisoning request got {p.get('status')} ({p.get('error')}), not 503 with Retry-After")
    before, after = out["actor_before"], out["actor_after"] or {}
    if after.get("pid") in (None, before["pid"]):
        problems.append(f"the GPU actor was not replaced (before {before}, after {after})")
    for model, m in out["models"].items():
        r = m["recovery"]
        if m["lost"]:
            problems.append(f"{model}: {m['lost']} of {m['sent']} requests got no answer within {s.timeout_s:g} s")
        if m["errors"]:
            problems.append(f"{model}: {m['errors']} answers were errors: {m['error_messages']}")
        if r["faults"] != r["faults_with_retry_after"]:
            problems.append(f"{model}: {r['faults'] - r['faults_with_retry_after']} faults came without Retry-After")
        if not r["faults"]:
            problems.append(f"{model}: no request of it failed around the fault, so its recovery was not measured")
        elif r["recovery_s"] is None or r["recovery_s"] > s.recover_within_s:
            problems.append(
                f"{model}: not serving again within {s.recover_within_s:g} s (recovery_s {r['recovery_s']})"
            )
    if out["fault_model_after"]["status"] != 200:
        problems.append(f"the fault model's good request got {out['fault_model_after']} after the restart")
    return problems


def check_fault_module(loader: str) -> None:
    """RuntimeError unless the fault model's module is this repository's file, as Ray's workers will import it
    (from the working directory): a ``tests`` package installed elsewhere would shadow it."""
    import importlib.util

    module = loader.split(":")[0]
    want = Path(__file__).resolve().parents[1] / "tests" / "serve_models.py"
    if str(Path.cwd()) not in sys.path:
        sys.path.append(str(Path.cwd()))  # as Ray adds it to its workers' path
    spec = importlib.util.find_spec(module) if Path.cwd().resolve() == want.parents[1] else None
    if spec is None or Path(spec.origin or "").resolve() != want:
        where = None if spec is None else spec.origin
        raise RuntimeError(f"run from the repository root, so that {module} is {want} (it resolves to {where})")


def run(s: Settings) -> dict[str, Any]:
    """Both phases on a local Ray instance; the result document (written to ``s.out`` after each phase)."""
    t0 = time.monotonic()
    check_fault_module(s.fault_loader)
    config = app_config(s)
    doc: dict[str, Any] = {
        "command": serve_load.command_of(sys.argv) if Path(sys.argv[0]).name == "serve_fault.py" else None,
        "date": results.now_iso(),
        "machine": serve_load.machine(),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(s).items()},
        "config": config.model_dump(mode="json", exclude_none=True),
    }
    with serve_load.local_app(config.model_dump(mode="json")) as url:
        doc["ready_after_s"] = time.monotonic() - t0
        doc["ranges"] = ranges_phase(url, config, s)
        _save(doc, s)
        left = s.budget_s - (time.monotonic() - t0) - 10.0  # 10 s for the last requests and Ray's shutdown
        duration = min(s.duration_s, left - s.timeout_s / 3)
        if duration < s.fault_at_s + s.recover_within_s / 2:
            doc["fault"] = {"problems": [f"no time left in the budget of {s.budget_s:g} s for the fault phase"]}
        else:
            doc["fault"] = fault_phase(url, config, s, duration)
    doc["problems"] = doc["ranges"]["problems"] + doc["fault"]["problems"]
    doc["passed"] = not doc["problems"]
    doc["wall_s"] = time.monotonic() - t0
    _save(doc, s)
    return doc


def _save(doc: Mapping[str, Any], s: Settings) -> None:
    if s.out is not None:
        results.write(dict(doc), s.out)


def table(doc: Mapping[str, Any]) -> str:
    """The short table at the end of a run."""
    lines = [f"ready after {doc.get('ready_after_s', float('nan')):.1f} s"]
    r = doc.get("ranges", {})
    for c in r.get("bad", []):
        lines.append(f"  id {c['value']:>9} {'binary' if c['binary'] else 'JSON  '} -> {c['status']}")
    for g in r.get("good", []):
        lines.append(f"  good {g['model']:<10} -> {g['status']}")
    f = doc.get("fault", {})
    if "poison" in f:
        lines.append(f"fault request -> {f['poison'].get('status')} in {f['poison'].get('latency_ms', 0):.0f} ms")
        lines.append(f"actor pid {f['actor_before']['pid']} -> {(f['actor_after'] or {}).get('pid')}")
        lines.append("model      sent  200  503  errors lost  faults  recovery_s  max_ms")
        for model, m in f["models"].items():
            rec = m["recovery"]
            back = "-" if rec["recovery_s"] is None else f"{rec['recovery_s']:.2f}"
            lines.append(
                f"{model:<10} {m['sent']:>4} {m['accepted']:>4} {m['rejected']:>4} {m['errors']:>7} {m['lost']:>4} "
                f"{rec['faults']:>7}  {back:>10}  {rec['max_latency_after_kill_ms'] or 0:>6.0f}"
            )
    lines.append("PASS" if doc.get("passed") else "FAIL: " + "; ".join(doc.get("problems", [])))
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Settings()
    p.add_argument("--text-model", default=d.text_model)
    p.add_argument("--image-model", default=d.image_model)
    p.add_argument("--backend", default=d.backend, choices=["auto", "cuda", "cpu"])
    p.add_argument("--rate-rps", type=float, default=d.rate_rps, help="requests per second to each model")
    p.add_argument("--duration-s", type=float, default=d.duration_s, help="length of the open loops")
    p.add_argument("--fault-at-s", type=float, default=d.fault_at_s, help="when the poisoning request is sent")
    p.add_argument("--recover-within-s", type=float, default=d.recover_within_s)
    p.add_argument("--timeout-s", type=float, default=d.timeout_s, help="client timeout: later is a lost request")
    p.add_argument("--budget-s", type=float, default=d.budget_s, help="the whole run, Ray's start included")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--fault-loader",
        default=d.fault_loader,
        help=f"the fault model; {SIMULATED} tries the whole run on the CPU backend (a simulated poisoning)",
    )
    p.add_argument("--out", type=Path, help="write the result JSON here (after each phase)")
    return Settings(**vars(p.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    doc = run(parse_args(argv))
    print(table(doc), flush=True)
    return 0 if doc["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
