"""The Markdown tables of regimes A and B: each policy's SLO-goodput, each model alone, eclip against the best.

Per mix: a row of each model alone under the same arrivals (what its SLO
allows at all), then a row per policy: the SLO-goodput (the largest load
scale that met every checked SLO), the offered rates there, the final
window's goodput, batch-job throughput, normalised throughput, J/inf, p99
against the SLO and the share of requests within it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eclip_ray.bench import compare


def _f(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def _cells(values: Mapping[str, Any], fmt) -> str:
    return "<br>".join(f"{n} {fmt(v)}" for n, v in values.items())


def describe(sc: Mapping[str, Any]) -> str:
    """What a regime scenario ran: the load, the search, the SLO."""
    s, regime = sc["settings"], sc["regime"]
    q = s["search"]
    base = ", ".join(f"{n} {v:.1f}" for n, v in sc["load"]["base_rps"].items() if n in sc["load"]["open"])
    load = (
        "the batch jobs in closed loop "
        f"({s['batch_inflight']} request(s) in flight), the latency-critical models Poisson at scale x their base rates"
        if regime == "A"
        else "every model Poisson at scale x its base rate"
    )
    return (
        f"Regime {regime}: {load} (requests/s at scale 1: {base}; a base rate is a share of the model's isolated "
        f"throughput). SLO = {s['slo_factor']:g}x the isolated p99, kept when >= {s['slo_percentile']:g}% of a "
        f"model's requests finish within it (requests still waiting past it when a window closes count as misses) "
        f"and none is left waiting past it at the end. SLO-goodput: the largest scale that kept every "
        f"{'latency-critical model' if regime == 'A' else 'model'}'s SLO, by a search of {q['steps']} windows of "
        f"{q['window_s']:g} s after {q['warmup_s']:g} s of warm-up each: the first at {q['floor']:g}x the bracket's "
        f"top (each model's own SLO-goodput alone, +10%), then bisection. The row's other numbers come from a "
        f"{q['final_window_s']:g} s window at that scale, with energy; seed {s['seed']}"
    )


HEAD = [
    "| mix | policy | SLO-goodput (scale) | offered req/s | goodput inf/s | batch job inf/s | normalised "
    "| J/inf | p99 ms / SLO ms | within SLO | search | note |",
    "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- | --- | --- |",
]


def _alone_row(mix: str, sc: Mapping[str, Any]) -> str:
    alone = sc.get("alone", {})
    rates = {n: a.get("rate_rps") for n, a in alone.items()}
    batch = {n: v for n, v in sc["isolated_rps"].items() if sc["roles"].get(n) == "batch"}
    p99 = {n: a.get("p99_ms") for n, a in alone.items()}
    within = {n: a.get("attainment") for n, a in alone.items()}
    batch_text = "<br>".join(f"{n} {v:.1f} (closed loop)" for n, v in batch.items()) if sc["regime"] == "A" else ""
    steps = sum(len(a.get("search", {}).get("trials", [])) for a in alone.values())
    return (
        f"| {mix} | each alone | | {_cells(rates, lambda v: _f(v, '.1f') if v is not None else 'none')} | | "
        f"{batch_text} | | | {_cells({n: (v, sc['slo_ms'][n]) for n, v in p99.items()}, _p99)} | "
        f"{_cells(within, _pct)} | {steps} windows | the SLO-goodput of each model by itself on the whole GPU |"
    )


def _p99(pair: tuple[float | None, float]) -> str:
    v, slo = pair
    return f"{_f(v, '.2f')} / {slo:.2f}"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _scale(r: Mapping[str, Any]) -> str:
    if r["goodput_scale"] is not None:
        return f"{r['goodput_scale']:.3g}"
    lo = r["search"]["bracket"][0]
    return f"**none** (missed at {lo:.3g})"


def _note(r: Mapping[str, Any]) -> str:
    notes = []
    if r["goodput_scale"] is None:
        notes.append("numbers of the lowest load tried, no energy")
    elif r.get("measured_in") != "final":
        notes.append("no time for the final window: numbers of the search's window, no energy")
    elif not r["slo_met"]:
        notes.append("**the final window missed an SLO** at the scale the search passed")
    if r["search"]["note"]:
        notes.append(r["search"]["note"])
    if r.get("selection_s") is not None:
        notes.append(f"selection {r['selection_s']:.1f} s")
    return "; ".join(notes)


def _policy_row(mix: str, p: str, r: Mapping[str, Any], roles: Mapping[str, str]) -> str:
    if r["status"] != "ok":
        return f"| {mix} | {p} | | | | | | | | | | {r['status']}: {r['reason']} |"
    slo = r["slo_ms"]
    batch = compare.batch_rps(r, roles)
    open_lanes = list(r["offered_rps"])
    search = f"{len(r['search']['trials'])} windows" + ("" if r["search"]["complete"] else ", cut short")
    cells = [
        mix,
        p,
        _scale(r),
        _cells(r["offered_rps"], lambda v: f"{v:.1f}"),
        _f(r.get("goodput_rps"), ".1f"),
        _f(batch, ".1f") if batch is not None and r["regime"] == "A" else "",
        _f(r.get("normalised_throughput"), ".2f"),
        _f(r["joules_per_inference"], ".4f"),
        _cells({n: (r["p99_ms"][n], slo[n]) for n in r["p99_ms"]}, _p99),
        _cells({n: r["slo_attainment"][n] for n in open_lanes}, _pct),
        search,
        _note(r),
    ]
    return "| " + " | ".join(cells) + " |"


def table(summary: Mapping[str, Any], label: str, order) -> list[str]:
    rows = list(HEAD)
    for mix, entry in summary["mixes"].items():
        sc = entry["scenarios"].get(label)
        if sc is None:
            continue
        rows.append(_alone_row(mix, sc))
        for p in order(list(sc["policies"])):
            rows.append(_policy_row(mix, p, sc["policies"][p], sc["roles"]))
    return rows


COMPARISON_HEAD = [
    "| mix | best baseline SLO-goodput | eclip | ratio | best goodput inf/s | eclip | best normalised | eclip "
    "| best J/inf | eclip | eclip's batch job / multi-stream's | verdict |",
    "| --- | --- | ---: | ---: | --- | ---: | --- | ---: | --- | ---: | ---: | --- |",
]


def _best(c: compare.SearchComparison, metric: str, fmt: str) -> str:
    b = c.best[metric]
    if b is not None:
        return f"{b[0]} {format(b[1], fmt)}"
    if metric != "goodput_scale" and c.meeting:
        return "n/a"
    return "none meets the SLOs at any load tried" if c.ran else "none ran"


def _mine(c: compare.SearchComparison, metric: str, fmt: str, roles) -> str:
    if not c.eclip_meets:
        return "none" if c.eclip is not None else "n/a"
    v = compare.batch_rps(c.eclip, roles) if metric == "batch_rps" else c.eclip.get(metric)  # type: ignore[arg-type]
    r = c.ratio.get(metric)
    return _f(v, fmt) + (f" ({r:.2f}x)" if r is not None and metric != "goodput_scale" else "")


def _verdict(c: compare.SearchComparison) -> str:
    ok, misses = c.verdict()
    if ok is None:
        return misses[0]
    if ok:
        return "eclip alone meets the SLOs: meets the goal" if c.only_eclip else "meets the goal"
    loses = c.ratio.get("goodput_scale") is not None and c.ratio["goodput_scale"] < 1
    return ("**loses to the best baseline**: " if loses else "short of the goal: ") + "; ".join(misses)


def comparison(summary: Mapping[str, Any], label: str) -> tuple[list[str], str]:
    rows, comps = list(COMPARISON_HEAD), []
    for mix, entry in summary["mixes"].items():
        sc = entry["scenarios"].get(label)
        if sc is None:
            continue
        c = compare.compare_search(mix, sc["regime"], sc["policies"], sc["roles"])
        comps.append(c)
        ratio = c.ratio.get("goodput_scale")
        kept = c.batch_vs_multi_stream
        rows.append(
            "| "
            + " | ".join(
                [
                    mix,
                    _best(c, "goodput_scale", ".3g"),
                    _mine(c, "goodput_scale", ".3g", sc["roles"]),
                    "only eclip meets" if c.only_eclip else _f(ratio, ".2f") + ("x" if ratio is not None else ""),
                    _best(c, "goodput_rps", ".1f"),
                    _mine(c, "goodput_rps", ".1f", sc["roles"]),
                    _best(c, "normalised_throughput", ".2f"),
                    _mine(c, "normalised_throughput", ".2f", sc["roles"]),
                    _best(c, "joules_per_inference", ".4f"),
                    _mine(c, "joules_per_inference", ".4f", sc["roles"]),
                    _f(kept, ".2f") + ("x" if kept is not None else ""),
                    _verdict(c),
                ]
            )
            + " |"
        )
    return rows, goal_text(comps)


def goal_text(comps: list[compare.SearchComparison]) -> str:
    if not comps:
        return "Goal: not assessed (no mix ran)."
    regime = comps[0].regime
    met, misses = compare.search_goal(comps)
    target = (
        f">= {compare.GOAL_GOODPUT['A']}x the best SLO-meeting baseline's SLO-goodput (or eclip the only policy "
        f"meeting the SLOs), the batch job at >= {compare.GOAL_BATCH_KEPT}x its multi-stream throughput, J/inf <= "
        f"{compare.GOAL_ENERGY_A}x the best baseline's"
        if regime == "A"
        else f">= {compare.GOAL_GOODPUT['B']}x the best SLO-meeting baseline's SLO-goodput"
    )
    state = "MET" if met else "NOT MET"
    return f"Goal of issue 15 in regime {regime} (every mix: {target}): **{state}**" + (
        f" ({'; '.join(misses)})." if misses else "."
    )


def baselines_note(summary: Mapping[str, Any], label: str) -> str:
    from eclip_ray.bench.policies import is_baseline

    ran = {p for m in summary["mixes"].values() if label in m["scenarios"] for p in m["scenarios"][label]["policies"]}
    others = sorted(p for p in ran if not is_baseline(p) and p != compare.TARGET)
    text = "The best baseline of a metric is the best among the baselines that meet the SLOs at some load"
    return text + (f"; {', '.join(others)} are not baselines (plans given by hand)." if others else ".")
