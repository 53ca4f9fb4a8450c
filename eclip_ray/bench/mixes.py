"""The co-location mixes of the ECLIP paper, and model instances of any mix.

M1-M7 are the paper's mixes (eclip-paper.md, "Evaluation"); ALBERT is the base
size (``albert-base``), ResNeXt is ``resnext101_32x8d`` and ShuffleNet is
``shufflenet_v2_x1_0``. A model listed twice is two instances, each with its
own stream (or partition) and its own requests.
"""

from __future__ import annotations

from collections.abc import Sequence

from eclip_ray.models.names import canonical

MIXES: dict[str, tuple[str, ...]] = {
    "M1": ("albert-base", "albert-base", "densenet201"),
    "M2": ("albert-base", "densenet201"),
    "M3": ("albert-base", "densenet201", "vgg19"),
    "M4": ("alexnet", "resnet152", "vgg19"),
    "M5": ("resnext101_32x8d", "shufflenet_v2_x1_0"),
    "M6": ("densenet201", "densenet201"),
    "M7": ("alexnet", "alexnet", "alexnet"),
}


def resolve(
    mixes: Sequence[str] | None = None, models: Sequence[str] | None = None, label: str | None = None
) -> dict[str, tuple[str, ...]]:
    """Mix label -> zoo model names: the named paper mixes, or one mix of ``models`` (labelled ``label``)."""
    if bool(mixes) == bool(models):
        raise ValueError("give either paper mixes (M1..M7) or a list of models, not both and not neither")
    if models:
        names = tuple(canonical(m.strip()) for m in models if m.strip())
        return {label or "+".join(names): names}
    unknown = [m for m in mixes or () if m.upper() not in MIXES]
    if unknown:
        raise ValueError(f"unknown mixes {unknown}; the paper's are {list(MIXES)}")
    return {m.upper(): MIXES[m.upper()] for m in mixes or ()}
