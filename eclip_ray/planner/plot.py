"""A picture of a mix's plans: per model, the SM range each stage runs on over the request's timeline."""

from __future__ import annotations

from pathlib import Path

from eclip_ray.planner.optimizer import MixPlan


def draw(plan: MixPlan, path: str | Path, title: str | None = None) -> Path:
    """Draw ``plan`` with matplotlib and save it to ``path`` (PNG, PDF or SVG, by suffix)."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display on servers and CI
        import matplotlib.pyplot as plt
        from matplotlib.patches import Rectangle
    except ImportError as e:
        raise ImportError("drawing a plan needs matplotlib: pip install 'eclip-ray[plot]'") from e
    workers = list(plan.workers.values())
    sm_count = plan.mix.layout.geometry.sm_count
    span = max(s.start_ms + s.ms for w in workers for s in w.stages)
    names = sorted({s.partition for w in workers for s in w.stages})
    colour = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    fig, axes = plt.subplots(len(workers), 1, figsize=(9, 1.2 + 1.6 * len(workers)), sharex=True, squeeze=False)
    for ax, w in zip(axes[:, 0], workers, strict=True):
        for s in w.stages:
            ax.add_patch(Rectangle((s.start_ms, s.sm_start), s.ms, s.sm_count, color=colour[s.partition], alpha=0.8))
            ax.text(s.start_ms + s.ms / 2, s.sm_start + s.sm_count / 2, s.partition, ha="center", va="center",
                    fontsize=7, clip_on=True)  # fmt: skip
        slo = next(x.slo_ms for x in plan.mix.workers if x.name == w.name)
        if slo is not None:
            ax.axvline(slo, color="red", linestyle="--", linewidth=1)
        ax.set_ylim(0, sm_count)
        ax.set_ylabel("SM")
        ax.set_title(f"{w.name} (batch {w.batch_size}): {plan.predicted.latency_ms[w.name]:.2f} ms"
                     + (f", SLO {slo:g} ms" if slo is not None else ""), fontsize=9, loc="left")  # fmt: skip
    axes[-1, 0].set_xlim(0, span * 1.05)
    axes[-1, 0].set_xlabel("time within the request (ms, predicted)")
    fig.suptitle(title or f"plan ({plan.objective}): {plan.predicted.throughput:.0f} inferences/s predicted")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
