"""Latency percentiles, SLO attainment and the metrics of one window.

Percentiles are nearest-rank: the p-th percentile is a latency that was
actually observed, the smallest with at least p% of the samples at or below
it. An SLO is met when at least ``percentile``% of a model's requests finish
within it (with the default 99, exactly when its p99 is within the SLO).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from eclip_ray.bench.driver import Window

# Points of the stored latency CDFs (percent), finer in the tail.
CDF_POINTS = (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 96, 97, 98, 99, 99.5, 99.9, 100)


def percentile(samples: Sequence[float], q: float) -> float:
    """The nearest-rank ``q``-th percentile (0 <= q <= 100) of ``samples``."""
    if not samples:
        raise ValueError("no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {q}")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return float(ordered[rank - 1])


def attainment(samples: Sequence[float], slo_ms: float, unfinished_ms: Sequence[float] = ()) -> float:
    """Fraction of requests within ``slo_ms``: ``samples`` completed, ``unfinished_ms`` the ages of those
    still waiting when the window closed (one older than the SLO has missed it; a younger one is not counted)."""
    late = sum(a > slo_ms for a in unfinished_ms)
    if not samples and not late:
        raise ValueError("no samples")
    return sum(x <= slo_ms for x in samples) / (len(samples) + late)


def slo_met(attained: Mapping[str, float], percentile_pct: float) -> bool:
    """Every model has at least ``percentile_pct``% of its requests within its SLO."""
    return all(a >= percentile_pct / 100 - 1e-12 for a in attained.values())


def cdf(samples: Sequence[float]) -> list[list[float]]:
    """``[[percent, ms], ...]`` at :data:`CDF_POINTS`."""
    ordered = sorted(samples)
    return [[q, percentile(ordered, q)] for q in CDF_POINTS]


def window_metrics(
    w: Window,
    slo_ms: Mapping[str, float],
    percentile_pct: float,
    *,
    checked: Sequence[str] | None = None,
    isolated_rps: Mapping[str, float] | None = None,
) -> dict:
    """Throughput, latency, SLO and energy of a window, per model and for the mix.

    ``throughput_rps`` counts inferences (samples) per second: at batch 1 that
    is requests per second. Energy is ``None`` when the window measured none;
    a model that completed no request has ``None`` percentiles. Attainment counts
    open-loop requests still waiting past their SLO at the window's end as misses.
    ``slo_met`` asks it of the ``checked`` models (default: all; a batch job in closed
    loop has none to keep), and ``goodput_rps`` counts their inferences completed within
    their SLOs per second. With ``isolated_rps`` (each model's throughput alone),
    ``normalised_throughput`` is the sum over models of throughput / isolated throughput.
    """
    models, inferences = {}, 0
    for name, r in w.lanes.items():
        done = r.requests * r.batch_size
        inferences += done
        models[name] = {
            "batch_size": r.batch_size,
            "requests": r.requests,
            "arrivals": r.arrivals,
            "unserved": r.unserved,
            "throughput_rps": done / w.seconds,
            "goodput_rps": sum(x <= slo_ms[name] for x in r.latencies_ms) * r.batch_size / w.seconds,
            "late_unfinished": sum(a > slo_ms[name] for a in r.unfinished_ms),
            "latency_cdf_ms": cdf(r.latencies_ms) if r.latencies_ms else [],
        }
    lat = {n: r.latencies_ms for n, r in w.lanes.items()}
    attained = {n: _attained(r, slo_ms[n]) for n, r in w.lanes.items()}
    checked = list(w.lanes) if checked is None else list(checked)
    e = w.energy
    return {
        "throughput_rps": inferences / w.seconds,
        "joules_per_inference": e.joules / inferences if e is not None and inferences else None,
        "avg_power_w": e.watts if e is not None else None,
        "energy_reliable": e.reliable if e is not None else None,
        "energy_note": w.energy_note,
        "p50_ms": {n: _pct(v, 50) for n, v in lat.items()},
        "p95_ms": {n: _pct(v, 95) for n, v in lat.items()},
        "p99_ms": {n: _pct(v, 99) for n, v in lat.items()},
        "slo_ms": dict(slo_ms),
        "slo_attainment": attained,
        "slo_met": slo_met({n: attained[n] for n in checked}, percentile_pct),
        "slo_checked": checked,
        "goodput_rps": sum(models[n]["goodput_rps"] for n in checked),
        "unserved": sum(r.unserved for r in w.lanes.values()),
        "normalised_throughput": normalised(models, isolated_rps),
        "window_s": w.seconds,
        "host_loop_us": w.loop_us,
        "inferences": inferences,
        "models": models,
    }


def _attained(r, slo: float) -> float:
    if not r.latencies_ms and not any(a > slo for a in r.unfinished_ms):
        # Open loop: nothing finished and nothing waits past its SLO (a low rate, a short window), so
        # nothing was missed. Closed loop: it completed nothing in the window, it attained none of its SLO.
        return 0.0 if r.closed else 1.0
    return attainment(r.latencies_ms, slo, r.unfinished_ms)


def normalised(models: Mapping[str, Mapping], isolated_rps: Mapping[str, float] | None) -> float | None:
    """Sum over models of throughput / throughput alone: 1.0 is time-sharing's ideal, more is co-location's gain."""
    if not isolated_rps or any(not isolated_rps.get(n) for n in models):
        return None
    return sum(m["throughput_rps"] / isolated_rps[n] for n, m in models.items())


def _pct(samples: Sequence[float], q: float) -> float | None:
    return percentile(samples, q) if samples else None
