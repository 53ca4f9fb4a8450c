"""Result files: a part (one run of the harness) and the summary merged from parts, in one schema.

A part and a summary are the same document::

    {"schema", "command", "card", "driver", "torch", "date", "backend", "machine",
     "isolated": {model: {"bs<B>": {"p50_ms", "p95_ms", "p99_ms", ...}}},
     "mixes": {mix: {"models": [...], "instances": [...],
                     "scenarios": {scenario: {"load", "batch_size", "slo_ms", ...,
                                              "policies": {policy: result}}}}},
     "parts": [...]}   # summaries only: the command and date of each part merged

Every policy result has ``status`` (``ok``; ``skipped``: cannot run here, with
the reason; ``error``: failed, with the error; ``not-run``: the part's
deadline came first) and the issue's fields ``throughput_rps``,
``joules_per_inference``, ``avg_power_w`` (None when energy was not
measured, with ``energy_note`` saying why), ``p95_ms`` and ``p99_ms`` per
model and ``slo_met``; all None unless the status is ``ok``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA = "eclip-ray-bench/1"
STATUSES = ("ok", "skipped", "error", "not-run")
DONE = ("ok", "skipped")  # a resumed run does not repeat these
HEADER = ("card", "driver", "torch")
SAME_IN_A_SCENARIO = ("settings", "slo_ms", "batch_size", "load")  # parts may share a scenario only if equal
RESULT_KEYS = ("throughput_rps", "joules_per_inference", "avg_power_w", "p95_ms", "p99_ms", "slo_met")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_document(header: Mapping[str, Any], command: str) -> dict[str, Any]:
    return {"schema": SCHEMA, "command": command, **header, "date": now_iso(), "isolated": {}, "mixes": {}}


def not_measured(status: str, reason: str, setup: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A policy result with no measurement: skipped, failed or not run, and why."""
    if status not in STATUSES or status == "ok":
        raise ValueError(f"status {status!r} is not one of {STATUSES[1:]}")
    return {"status": status, "reason": reason, **dict.fromkeys(RESULT_KEYS), "setup": dict(setup or {})}


def write(doc: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``doc`` atomically: a reader (or a killed run) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_finite(doc), indent=1, allow_nan=False))
    tmp.replace(path)
    return path


def _finite(x: Any) -> Any:
    """``x`` with NaN and infinities as None: JSON has no such numbers, and a result file must stay readable."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def read(path: str | Path) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text())
    problems = check(doc)
    if problems:
        raise ValueError(f"{path} is not a bench result file: " + "; ".join(problems[:5]))
    return doc


# -- schema -----------------------------------------------------------------------------------


def check(doc: Any) -> list[str]:
    """Everything wrong with ``doc`` as a part or summary (empty: well-formed)."""
    if not isinstance(doc, dict):
        return ["not a JSON object"]
    out = []
    if doc.get("schema") != SCHEMA:
        out.append(f"schema is {doc.get('schema')!r}, expected {SCHEMA!r}")
    for key in ("command", "card", "torch", "date"):
        if not isinstance(doc.get(key), str) or not doc.get(key):
            out.append(f"{key} must be a non-empty string")
    if "driver" not in doc:
        out.append("driver is missing (null where the device has none)")
    if not isinstance(doc.get("isolated"), dict):
        out.append("isolated must be an object")
    mixes = doc.get("mixes")
    if not isinstance(mixes, dict):
        return [*out, "mixes must be an object"]
    for name, mix in mixes.items():
        out += [f"mix {name}: {p}" for p in _check_mix(mix)]
    return out


def _check_mix(mix: Any) -> list[str]:
    if not isinstance(mix, dict) or not isinstance(mix.get("scenarios"), dict):
        return ["needs models, instances and scenarios"]
    out = []
    instances = mix.get("instances")
    if not isinstance(instances, list) or len(instances) != len(mix.get("models", [])):
        out.append("instances must list one name per model")
    for label, sc in mix["scenarios"].items():
        if not isinstance(sc, dict) or not isinstance(sc.get("policies"), dict):
            out.append(f"scenario {label}: needs policies")
            continue
        for policy, r in sc["policies"].items():
            out += [f"scenario {label}, {policy}: {p}" for p in _check_result(r, instances or [])]
    return out


def _check_result(r: Any, instances: list[str]) -> list[str]:
    if not isinstance(r, dict):
        return ["not an object"]
    missing = [k for k in ("status", *RESULT_KEYS) if k not in r]
    if missing:
        return [f"missing {missing}"]
    if r["status"] not in STATUSES:
        return [f"status {r['status']!r} is not one of {STATUSES}"]
    if r["status"] != "ok":
        return [] if isinstance(r.get("reason"), str) and r["reason"] else ["a result that is not ok needs a reason"]
    out = []
    if not _positive(r["throughput_rps"]):
        out.append("throughput_rps must be a number > 0")
    for key in ("joules_per_inference", "avg_power_w"):
        if r[key] is None and not r.get("energy_note"):
            out.append(f"{key} is null without an energy_note saying why")
        elif r[key] is not None and not _positive(r[key]):
            out.append(f"{key} must be a number > 0 or null")
    for key in ("p95_ms", "p99_ms"):
        if not isinstance(r[key], dict) or sorted(r[key]) != sorted(instances):
            out.append(f"{key} must give every instance {instances}")
    if not isinstance(r["slo_met"], bool):
        out.append("slo_met must be true or false")
    return out


def _positive(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0


# -- merging ----------------------------------------------------------------------------------


def merge(docs: Iterable[tuple[str, Mapping[str, Any]]], command: str) -> dict[str, Any]:
    """One summary from parts ``(name, document)``: every mix, scenario and policy they hold.

    Parts must come from the same card, driver and torch version. Where two
    parts hold the same policy result (a part run again), the newer part's
    wins unless it is not ``ok`` and the older one is; ``merge_notes`` lists
    what was replaced.
    """
    parts = sorted(docs, key=lambda nd: nd[1]["date"])
    if not parts:
        raise ValueError("nothing to merge")
    first = parts[0][1]
    for name, doc in parts:
        differ = {k: (first.get(k), doc.get(k)) for k in (*HEADER, "backend") if doc.get(k) != first.get(k)}
        if differ:
            raise ValueError(f"part {name} was measured elsewhere than {parts[0][0]}: {differ}")
    out = new_document({k: first.get(k) for k in (*HEADER, "backend", "python", "machine")}, command)
    out["parts"], notes = [], []
    for name, doc in parts:
        out["parts"].append({"file": name, "command": doc["command"], "date": doc["date"]})
        _merge_isolated(out["isolated"], doc.get("isolated", {}), name, notes)
        for mix, entry in doc["mixes"].items():
            _merge_mix(out["mixes"], mix, entry, name, notes)
    out["mixes"] = dict(sorted(out["mixes"].items()))  # M1, M2, ... whatever order the parts ran in
    out["merge_notes"] = notes
    return out


def _merge_isolated(into: dict, part: Mapping, name: str, notes: list[str]) -> None:
    for model, by_batch in part.items():
        for batch, value in by_batch.items():
            if batch in into.setdefault(model, {}) and into[model][batch] != value:
                notes.append(f"isolated {model} {batch}: {name} replaced an earlier measurement")
            into[model][batch] = value


def _merge_mix(into: dict, mix: str, entry: Mapping, name: str, notes: list[str]) -> None:
    if mix not in into:
        into[mix] = {k: v for k, v in entry.items() if k != "scenarios"} | {"scenarios": {}}
    elif into[mix]["models"] != entry["models"]:
        raise ValueError(f"mix {mix} is {into[mix]['models']} in one part and {entry['models']} in {name}")
    for label, sc in entry["scenarios"].items():
        have = into[mix]["scenarios"].get(label)
        if have is None:
            into[mix]["scenarios"][label] = json.loads(json.dumps(sc))
            continue
        for key in SAME_IN_A_SCENARIO:
            if have.get(key) != sc.get(key):
                raise ValueError(f"{mix} {label}: {name} was run with another {key} ({sc.get(key)} vs {have.get(key)})")
        for policy, r in sc["policies"].items():
            old = have["policies"].get(policy)
            if old is not None and old["status"] == "ok" and r["status"] != "ok":
                continue
            if old is not None:
                notes.append(f"{mix} {label} {policy}: {name} replaced an earlier {old['status']} result")
            have["policies"][policy] = r
