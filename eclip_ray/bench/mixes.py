"""The mixes of the benchmark: the ECLIP paper's, and latency-critical models beside batch jobs.

M1-M7 are the paper's mixes (`docs/eclip-paper.md`, "Evaluation"); ALBERT is the base
size (``albert-base``), ResNeXt is ``resnext101_32x8d`` and ShuffleNet is
``shufflenet_v2_x1_0``. A model listed twice is two instances, each with its
own stream (or partition) and its own requests. Their batch size is the run's
(``--batch-size``) and every instance is a service.

H1-H4 are heterogeneous: one or two batch-1 latency-critical services beside a
batch job running batches of 8 or 16, CNNs and transformers on both sides.
Each instance has a role, a batch size and, for the open-loop regimes, a base
rate given as a share of its isolated throughput (requests per second alone, one
request in flight): at load scale 1 the shares of a mix add up to one GPU's worth
of time-sharing. A share left out is an equal one (1 / instances).

A mix on the command line is ``--models MODEL[@BATCH][/ROLE][=SHARE],...``, e.g.
``resnet50@1/latency,vgg19@16/batch`` (role ``latency`` by default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eclip_ray.models.names import canonical

ROLES = ("latency", "batch")


@dataclass(frozen=True)
class Instance:
    """One model instance of a mix: its model, batch size (None: the run's), role and base-rate share."""

    model: str
    batch_size: int | None = None
    role: str = "latency"
    share: float | None = None  # base rate / isolated throughput; None: 1 / instances

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role {self.role!r} of {self.model}; choose one of {ROLES}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"batch size of {self.model} must be >= 1, got {self.batch_size}")
        if self.share is not None and not self.share > 0:
            raise ValueError(f"the base-rate share of {self.model} must be > 0, got {self.share}")

    def describe(self) -> str:
        text = self.model + (f"@{self.batch_size}" if self.batch_size else "")
        return text + (f"/{self.role}" if self.role != "latency" else "") + (f"={self.share:g}" if self.share else "")


MIXES: dict[str, tuple[str, ...]] = {
    "M1": ("albert-base", "albert-base", "densenet201"),
    "M2": ("albert-base", "densenet201"),
    "M3": ("albert-base", "densenet201", "vgg19"),
    "M4": ("alexnet", "resnet152", "vgg19"),
    "M5": ("resnext101_32x8d", "shufflenet_v2_x1_0"),
    "M6": ("densenet201", "densenet201"),
    "M7": ("alexnet", "alexnet", "alexnet"),
}

_LC, _BATCH = "latency", "batch"
HETERO: dict[str, tuple[Instance, ...]] = {
    # A batch-1 CNN service beside a batch-16 CNN job: the measurements (ResNet-50 + VGG-19).
    "H1": (Instance("resnet50", 1, _LC), Instance("vgg19", 16, _BATCH)),
    # A transformer service beside a deep CNN at batch 8.
    "H2": (Instance("bert-base", 1, _LC), Instance("resnet152", 8, _BATCH)),
    # Two small launch-bound CNN services beside a transformer job at batch 16.
    "H3": (
        Instance("mobilenet_v3_large", 1, _LC),
        Instance("shufflenet_v2_x1_0", 1, _LC),
        Instance("bert-base", 16, _BATCH),
    ),
    # ALBERT (the paper's transformer) as the service beside VGG-19 at batch 8.
    "H4": (Instance("albert-base", 1, _LC), Instance("vgg19", 8, _BATCH)),
}


def parse_instances(text: str | Sequence[str]) -> tuple[Instance, ...]:
    """``MODEL[@BATCH][/ROLE][=SHARE]`` tokens (comma-separated or a list) as instances."""
    tokens = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    if not tokens:
        raise ValueError("a mix needs at least one model")
    return tuple(_parse(t) for t in tokens)


def _parse(token: str) -> Instance:
    rest, _, share = token.partition("=")
    rest, _, role = rest.partition("/")
    model, _, batch = rest.partition("@")
    try:
        return Instance(
            canonical(model.strip()),
            int(batch) if batch else None,
            role.strip() or "latency",
            float(share) if share else None,
        )
    except ValueError as e:
        raise ValueError(f"bad mix entry {token!r} (MODEL[@BATCH][/ROLE][=SHARE]): {e}") from e


def resolve(
    mixes: Sequence[str] | None = None, models: Sequence[str] | str | None = None, label: str | None = None
) -> dict[str, tuple[Instance, ...]]:
    """Mix label -> instances: the named mixes (M1-M7, H1-H4), or one mix of ``models`` (labelled ``label``)."""
    if bool(mixes) == bool(models):
        raise ValueError("give either named mixes (M1..M7, H1..H4) or a list of models, not both and not neither")
    if models:
        found = parse_instances(models)
        return {label or "+".join(i.describe() for i in found): found}
    known = {**{k: tuple(Instance(m) for m in v) for k, v in MIXES.items()}, **HETERO}
    unknown = [m for m in mixes or () if m.upper() not in known]
    if unknown:
        raise ValueError(f"unknown mixes {unknown}; the paper's are {list(MIXES)}, the heterogeneous {list(HETERO)}")
    return {m.upper(): known[m.upper()] for m in mixes or ()}


def as_instances(models: Sequence[str | Instance]) -> tuple[Instance, ...]:
    """A mix given as zoo names (every one a service at the run's batch size) or instances, as instances."""
    return tuple(m if isinstance(m, Instance) else Instance(canonical(m)) for m in models)
