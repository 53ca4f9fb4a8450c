"""Plots per scenario. Regime C, like the paper's: throughput and energy efficiency per mix normalised to
the plain multi-stream baseline (ECLIP's Baseline), and latency CDFs per mix. Regimes A and B: SLO
attainment against the load scale (every window of every search, each model alone in black), and each
policy's SLO-goodput per mix."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eclip_ray.bench.policies import POLICIES
from eclip_ray.bench.report import regime_of, scenarios

REFERENCE = "multi-stream"
STYLES = ("-", "--", ":", "-.")


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on servers and CI
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("plotting needs matplotlib: pip install 'eclip-ray[plot]'") from e
    return plt


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", label)


def _normalised(summary: Mapping[str, Any], label: str, value) -> tuple[list[str], dict[str, list[float | None]]]:
    """Per policy, ``value(result)`` of each mix over that of the reference policy (None where missing)."""
    mixes, bars = [], {p: [] for p in POLICIES}
    for name, mix in summary["mixes"].items():
        res = mix["scenarios"].get(label, {}).get("policies", {})
        ref = res.get(REFERENCE, {})
        base = value(ref) if ref.get("status") == "ok" else None
        if not base:
            continue
        mixes.append(name)
        for p in POLICIES:
            r = res.get(p, {})
            v = value(r) if r.get("status") == "ok" else None
            bars[p].append(v / base if v else None)
    return mixes, {p: v for p, v in bars.items() if any(x is not None for x in v)}


def _bars(
    plt, mixes: list[str], bars: dict[str, list[float | None]], ylabel: str, title: str, path: Path, reference=1.0
) -> Path:
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(mixes) + 2), 3.6))
    width = 0.8 / max(1, len(bars))
    for i, (p, vals) in enumerate(bars.items()):
        xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(mixes))]
        drawn = ax.bar(xs, [v if v is not None else 0 for v in vals], width, label=p)
        labels = [f"{v:.2f}" if v is not None else "n/a" for v in vals]
        ax.bar_label(drawn, labels, fontsize=5, rotation=90, padding=2)
    if reference is not None:
        ax.axhline(reference, color="black", linewidth=0.8)
    ax.set_xticks(range(len(mixes)), mixes)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.12)
    ax.set_title(title, fontsize=9, wrap=True)
    ax.legend(fontsize=6, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _cdfs(plt, summary: Mapping[str, Any], label: str, path: Path) -> Path | None:
    mixes = [(n, m["scenarios"][label]) for n, m in summary["mixes"].items() if label in m["scenarios"]]
    mixes = [(n, sc) for n, sc in mixes if any(r["status"] == "ok" for r in sc["policies"].values())]
    if not mixes:
        return None
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    cols = min(3, len(mixes))
    rows = -(-len(mixes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.4 * rows + 0.8), squeeze=False)
    colours = {p: plt.get_cmap("tab10")(i) for i, p in enumerate(POLICIES)}
    for ax, (name, sc) in zip(axes.flat, mixes, strict=False):
        instances = list(sc["slo_ms"])
        for p, r in sc["policies"].items():
            if r["status"] != "ok":
                continue
            for k, inst in enumerate(instances):
                pts = r["models"][inst]["latency_cdf_ms"]
                if pts:
                    ms, frac = [v for _, v in pts], [q / 100 for q, _ in pts]
                    ax.plot(ms, frac, STYLES[k % len(STYLES)], color=colours.get(p, "grey"), linewidth=1)
        for k, inst in enumerate(instances):
            ax.axvline(sc["slo_ms"][inst], color="red", linestyle=STYLES[k % len(STYLES)], linewidth=0.7)
        lo, hi = ax.get_xlim()
        if hi > 20 * max(lo, 1e-9):  # a long tail: log scale, labelled in plain milliseconds
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{name} (red: SLOs)", fontsize=9)
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("fraction of requests")
        models = [Line2D([], [], color="black", linestyle=STYLES[k % len(STYLES)]) for k in range(len(instances))]
        ax.legend(models, instances, fontsize=6, loc="lower right")
    for ax in list(axes.flat)[len(mixes) :]:
        ax.axis("off")
    ran = [p for p in POLICIES if any(p in sc["policies"] and sc["policies"][p]["status"] == "ok" for _, sc in mixes)]
    handles = [Line2D([], [], color=colours[p]) for p in ran]
    fig.legend(handles, ran, loc="lower center", ncol=len(ran), fontsize=7)
    fig.suptitle(f"latency CDFs, {label}", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _colours(plt, names) -> dict[str, Any]:
    ordered = [p for p in POLICIES if p in names] + sorted(p for p in names if p not in POLICIES)
    return {p: plt.get_cmap("tab10")(i % 10) for i, p in enumerate(ordered)}


def _curve_panel(ax, sc: Mapping[str, Any], colours: Mapping[str, Any]) -> None:
    lanes = list(sc["load"]["open"])
    target = sc["settings"]["slo_percentile"]
    for p, r in sc["policies"].items():
        if r["status"] != "ok":
            continue
        trials = sorted(r["search"]["trials"], key=lambda t: t["scale"])
        for k, n in enumerate(lanes):
            xs = [t["scale"] for t in trials]
            ys = [100 * t["slo_attainment"][n] for t in trials]
            ax.plot(xs, ys, STYLES[k % len(STYLES)], marker=".", color=colours[p], linewidth=1)
    for k, n in enumerate(lanes):  # each model alone, on its own rate axis turned into the mix's scale
        trials = sorted(sc.get("alone", {}).get(n, {}).get("search", {}).get("trials", []), key=lambda t: t["scale"])
        base = sc["load"]["base_rps"][n]
        xs = [t["scale"] / base for t in trials]
        ax.plot(xs, [100 * t["slo_attainment"][n] for t in trials], STYLES[k % len(STYLES)], color="black", lw=0.8)
    ax.axhline(target, color="red", linewidth=0.7)
    lo = ax.get_ylim()[0]
    ax.set_ylim(max(lo, 0), 100.5)
    ax.set_xlabel("load scale (x base rates)")
    ax.set_ylabel("% of requests within the SLO")


def _curves(plt, summary: Mapping[str, Any], label: str, path: Path) -> Path | None:
    mixes = [(n, m["scenarios"][label]) for n, m in summary["mixes"].items() if label in m["scenarios"]]
    mixes = [(n, sc) for n, sc in mixes if any(r["status"] == "ok" for r in sc["policies"].values())]
    if not mixes:
        return None
    from matplotlib.lines import Line2D

    colours = _colours(plt, {p for _, sc in mixes for p in sc["policies"]})
    cols = min(2, len(mixes))
    rows = -(-len(mixes) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows + 0.9), squeeze=False)
    for ax, (name, sc) in zip(axes.flat, mixes, strict=False):
        _curve_panel(ax, sc, colours)
        lanes = list(sc["load"]["open"])
        ax.set_title(f"{name} (red: {sc['settings']['slo_percentile']:g}% target; black: alone)", fontsize=9)
        styles = [Line2D([], [], color="grey", linestyle=STYLES[k % len(STYLES)]) for k in range(len(lanes))]
        ax.legend(styles, lanes, fontsize=6, loc="lower left")
    for ax in list(axes.flat)[len(mixes) :]:
        ax.axis("off")
    ran = [p for p in colours if any(sc["policies"].get(p, {}).get("status") == "ok" for _, sc in mixes)]
    cols = min(3 if len(mixes) == 1 else 5, len(ran)) or 1
    fig.legend([Line2D([], [], color=colours[p]) for p in ran], ran, loc="lower center", ncol=cols, fontsize=6)
    fig.suptitle(f"SLO attainment against load, {label}", fontsize=10)
    fig.tight_layout(rect=(0, 0.03 + 0.035 * -(-len(ran) // cols) / rows, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _goodput_bars(plt, summary: Mapping[str, Any], label: str, path: Path) -> Path | None:
    mixes, bars = [], {}
    for name, m in summary["mixes"].items():
        sc = m["scenarios"].get(label)
        if sc is None:
            continue
        mixes.append(name)
        for p, r in sc["policies"].items():
            if r["status"] == "ok":  # a policy that met the SLOs at no load tried gets a bar of 0
                bars.setdefault(p, {})[name] = r.get("goodput_scale") or 0.0
    if not mixes or not bars:
        return None
    ordered = {p: [bars[p].get(m) for m in mixes] for p in _colours(plt, bars)}
    title = f"SLO-goodput: the largest load scale meeting every SLO (0: none), {label}"
    return _bars(plt, mixes, ordered, "SLO-goodput (x base rates)", title, path, reference=None)


def draw(summary: Mapping[str, Any], directory: str | Path) -> dict[str, list[Path]]:
    """Write every plot of ``summary`` into ``directory``; scenario label -> files written."""
    plt = _pyplot()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[Path]] = {}
    for label in scenarios(summary):
        files = []
        if regime_of(summary, label) != "C":
            for made in (
                _curves(plt, summary, label, directory / f"attainment_{slug(label)}.png"),
                _goodput_bars(plt, summary, label, directory / f"goodput_{slug(label)}.png"),
            ):
                if made is not None:
                    files.append(made)
            out[label] = files
            continue
        mixes, bars = _normalised(summary, label, lambda r: r["throughput_rps"])
        if mixes:
            title = f"throughput normalised to {REFERENCE}, {label}"
            files.append(_bars(plt, mixes, bars, "throughput (x)", title, directory / f"throughput_{slug(label)}.png"))
        mixes, bars = _normalised(
            summary, label, lambda r: 1 / r["joules_per_inference"] if r["joules_per_inference"] else None
        )
        if mixes:
            title = f"energy efficiency (inferences/J) normalised to {REFERENCE}, {label}"
            files.append(
                _bars(plt, mixes, bars, "inferences per joule (x)", title, directory / f"energy_{slug(label)}.png")
            )
        cdf = _cdfs(plt, summary, label, directory / f"latency_cdf_{slug(label)}.png")
        if cdf is not None:
            files.append(cdf)
        out[label] = files
    return out
