"""A picture of a mix's plans: per model, the SM range each stage runs on over the request's timeline."""

from __future__ import annotations

from pathlib import Path

from eclip_ray.planner.optimizer import MixPlan, WorkerPlan


def draw(plan: MixPlan, path: str | Path, title: str | None = None) -> Path:
    """Draw ``plan`` with matplotlib and save it to ``path`` (PNG, PDF or SVG, by suffix)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on servers and CI
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("drawing a plan needs matplotlib: pip install 'eclip-ray[plot]'") from e
    workers = list(plan.workers.values())
    names = sorted({s.partition for w in workers for s in w.stages})
    colour = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    fig, axes = plt.subplots(len(workers), 1, figsize=(9, 1.2 + 1.6 * len(workers)), sharex=True, squeeze=False)
    for ax, w in zip(axes[:, 0], workers, strict=True):
        _lane(ax, plan, w, colour)
    axes[-1, 0].set_xlim(0, _span(plan) * 1.05)
    axes[-1, 0].set_xlabel("time within the request (ms, predicted)")
    fig.suptitle(title or f"plan ({plan.objective}): {plan.predicted.throughput:.0f} inferences/s predicted")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _slo(plan: MixPlan, name: str) -> float | None:
    return next(x.slo_ms for x in plan.mix.workers if x.name == name)


def _span(plan: MixPlan) -> float:
    span = max(s.start_ms + s.ms for w in plan.workers.values() for s in w.stages)
    slos = [w.slo_ms for w in plan.mix.workers if w.slo_ms is not None and w.slo_ms <= 2 * span]
    return max([span, *slos])  # show an SLO line unless it would squash the stages


def _lane(ax, plan: MixPlan, w: WorkerPlan, colour: dict) -> None:
    from matplotlib.patches import Rectangle

    for s in w.stages:
        ax.add_patch(Rectangle((s.start_ms, s.sm_start), s.ms, s.sm_count, color=colour[s.partition], alpha=0.8))
        middle = (s.start_ms + s.ms / 2, s.sm_start + s.sm_count / 2)
        ax.text(*middle, s.partition, ha="center", va="center", fontsize=7, clip_on=True)
    slo = _slo(plan, w.name)
    if slo is not None:
        ax.axvline(slo, color="red", linestyle="--", linewidth=1)
    ax.set_ylim(0, plan.mix.layout.geometry.sm_count)
    ax.set_ylabel("SM slots")
    label = f"{w.name} (batch {w.batch_size}): {plan.predicted.latency_ms[w.name]:.2f} ms"
    ax.set_title(label + (f", SLO {slo:g} ms" if slo is not None else ""), fontsize=9, loc="left")
