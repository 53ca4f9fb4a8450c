"""The summary of one gpu_serve.sh run: a table per JSON result in the folder given, and the issue's goals checked.

python3 scripts/gpu_serve_table.py WORK_DIR     # the folder of anchor.json, before.json, proxy.json, haproxy.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

RUNS = (("anchor", "plain Ray Serve"), ("before", "before (98e1797)"), ("proxy", "after, Serve's proxy"))
RUNS += (("haproxy", "after, HAProxy"),)


def _ms(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def _lat(d: dict | None, key: str) -> float | None:
    return None if not d else (d.get("accepted_latency_ms") or {}).get(key)


def _model(doc: dict) -> str:
    return (doc.get("model") or {}).get("name", "resnet50")


def row(name: str, label: str, doc: dict) -> str:
    model = _model(doc)
    one = (doc.get("overhead") or {}).get(model, {})
    solo = one.get("solo") or {}
    cap = (doc.get("capacity") or {}).get("capacity_rps")
    u8 = ((doc.get("capacity_of") or {}).get(f"{model}-u8") or {}).get("capacity_rps")
    o, eq = doc.get("open_loop") or {}, doc.get("equal_load") or (doc.get("open_loop") if name == "anchor" else None)
    refused = (o.get("rejected_latency_ms") or {}).get("p50")
    within = o.get("accepted_within_slo")
    cells = [
        label,
        _ms((one.get("http_binary") or {}).get("p50_ms")),
        _ms((one.get("grpc") or {}).get("p50_ms")),
        _ms(solo.get("solo_p50_ms")),
        _ms(cap) + (f" ({u8:.0f} UINT8)" if u8 else ""),
        "-"
        if name == "anchor"
        else f"{o.get('lost', '-')} / {_ms(_lat(o, 'p99'))} / "
        + ("-" if within is None else f"{100 * within:.0f}%")
        + f" / {_ms(refused)}",
        "-" if not eq else f"{eq['rate_rps']:.0f}: {_ms(_lat(eq, 'p50'))} / {_ms(_lat(eq, 'p99'))}",
        _ms((doc.get("batching") or {}).get("mean_rows")),
    ]
    return "| " + " | ".join(cells) + " |"


def goals(docs: dict[str, dict]) -> list[str]:
    out = []
    for name in ("proxy", "haproxy"):
        doc = docs.get(name)
        if not doc:
            continue
        one = (doc.get("overhead") or {}).get(_model(doc), {})
        http, solo = (one.get("http_binary") or {}).get("p50_ms"), (one.get("solo") or {}).get("solo_p50_ms")
        if http is not None and solo is not None:
            out.append(
                f"{name}: HTTP binary p50 {http:.2f} ms vs the model alone {solo:.2f} ms + 3 ms: "
                + ("met" if http <= solo + 3 else "NOT met")
            )
        cap = (doc.get("capacity") or {}).get("capacity_rps")
        if cap is not None:
            verdict = "met" if cap >= 1000 else "NOT met"
            out.append(f"{name}: {_model(doc)} capacity {cap:.0f} req/s vs 1000: {verdict}")
        o = doc.get("open_loop") or {}
        if o:
            p99, slo = _lat(o, "p99"), o.get("slo_ms")
            refused = (o.get("rejected_latency_ms") or {}).get("p50")
            ok = o.get("lost") == 0 and p99 is not None and slo and p99 <= slo and (refused is None or refused <= 5)
            out.append(
                f"{name}: 2x: lost {o.get('lost')}, accepted p99 {_ms(p99)} ms (SLO {slo}), refusals p50 "
                f"{_ms(refused)} ms: " + ("met" if ok else "NOT met")
            )
        anchor = docs.get("anchor")
        if anchor and doc.get("equal_load"):
            a_cap = (anchor.get("capacity") or {}).get("capacity_rps")
            a99, e99 = _lat(anchor.get("open_loop"), "p99"), _lat(doc["equal_load"], "p99")
            more = cap is not None and a_cap is not None and cap > a_cap
            lower = a99 is not None and e99 is not None and e99 < a99
            out.append(
                f"{name} vs plain Ray Serve: capacity {_ms(cap)} vs {_ms(a_cap)} req/s, p99 at equal load "
                f"{_ms(e99)} vs {_ms(a99)} ms: " + ("met" if more and lower else "NOT met")
            )
        soak = doc.get("soak")
        if soak:
            out.append(
                f"{name}: soak {soak['load']['duration_s']:.0f} s: "
                + ("flat, nothing lost" if not soak["problems"] else "; ".join(soak["problems"]))
            )
    return out


def main() -> int:
    work = Path(sys.argv[1])
    docs = {}
    for name, _ in RUNS:
        path = work / f"{name}.json"
        if path.is_file():
            docs[name] = json.loads(path.read_text())
    print(
        "| run | 1 client HTTP p50 ms | gRPC p50 ms | alone p50 ms | capacity req/s | 2x: lost / p99 ms / "
        "within SLO / refusals p50 ms | equal load req/s: p50 / p99 ms | rows per batch |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, label in RUNS:
        if name in docs:
            print(row(name, label, docs[name]))
    print()
    for line in goals(docs):
        print(f"- {line}")
    missing = [n for n, _ in RUNS if n not in docs]
    if missing:
        print(f"- not run or no result: {', '.join(missing)}")
    if (work / "fault.json").is_file():
        print("- fault: fault.json (tests/gpu/test_serve_fault_gpu.py's verdict is in fault.log)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
