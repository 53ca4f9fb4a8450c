"""What a benchmark run does: mixes, policies, regimes, loads, windows, SLOs, the search and where results go."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from eclip_ray.bench import policies, search
from eclip_ray.bench.load import Load
from eclip_ray.bench.mixes import Instance, as_instances

REGIMES = ("A", "B", "C")


@dataclass(frozen=True)
class BenchConfig:
    """What to run and how; every field has the default of ``eclip-ray bench``.

    Regime C (the paper's table) runs each of ``loads`` for ``window_s`` after
    ``warmup_s``; regimes A and B search each policy's SLO-goodput with ``search``.
    Each SLO factor of ``slo_factors`` is a scenario of its own.
    """

    mixes: Mapping[str, tuple[str | Instance, ...]]
    policies: tuple[str, ...] = policies.PAPER_POLICIES
    policy_mixes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # a policy run on these mixes only
    regimes: tuple[str, ...] = ("C",)
    loads: tuple[Load, ...] = (Load(),)  # regime C
    batch_sizes: tuple[tuple[int, ...], ...] = ((1,),)  # per scenario, for instances without their own batch size
    window_s: float = 10.0
    warmup_s: float = 2.0
    isolated_s: float = 5.0
    seed: int = 0
    slo_factors: tuple[float, ...] = (3.0,)
    slo_percentile: float = 99.0
    profiles: str | None = "h100"  # profile sets under benchmarks/profiles/ or directories, comma-separated
    dtype: str = "float16"
    backend: str = "auto"
    objective: str = "throughput"
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    search: search.Settings = field(default_factory=search.Settings)
    eclip_selection_s: float | None = None  # eclip's selection budget per load level; None: its own default
    batch_inflight: int = 1  # regime A: the batch job's requests in flight
    max_inflight: int = 32  # open loop: requests queued on the GPU per instance
    isolated_file: str | None = None
    out: str | None = None
    resume: bool = False
    deadline: float | None = None  # time.time() by which the run must be done
    command: str = ""

    def __post_init__(self) -> None:
        bad = [r for r in self.regimes if r not in REGIMES]
        if bad or not self.regimes:
            raise ValueError(f"regimes {list(self.regimes)}; choose among {REGIMES}")
        policies.check_names(self.policies)
        stray = {p: [m for m in ms if m not in self.mixes] for p, ms in self.policy_mixes.items()}
        if any(stray.values()):
            raise ValueError(f"policies given for mixes the run does not have: {stray}; its mixes: {list(self.mixes)}")
        if not self.slo_factors or min(self.slo_factors) <= 0:
            raise ValueError(f"SLO factors must be > 0, got {self.slo_factors}")
        object.__setattr__(self, "mixes", {k: as_instances(v) for k, v in self.mixes.items()})

    def policies_of(self, mix: str) -> tuple[str, ...]:
        """The policies run on ``mix``, in order."""
        return tuple(p for p in self.policies if mix in self.policy_mixes.get(p, (mix,)))

    def settings(self, slo_factor: float, regime: str = "C") -> dict[str, Any]:
        """What a scenario's numbers depend on besides its load and batch sizes."""
        out: dict[str, Any] = {
            "seed": self.seed,
            "slo_factor": slo_factor,
            "slo_percentile": self.slo_percentile,
            "isolated_s": self.isolated_s,
            "profiles": self.profiles,
            "objective": self.objective,
            "fractions": list(self.fractions),
            "eclip_selection_s": self.eclip_selection_s,
        }
        if regime == "C":
            return {"window_s": self.window_s, "warmup_s": self.warmup_s, **out}
        return {
            **out,
            "search": self.search.to_dict(),
            "batch_inflight": self.batch_inflight,
            "max_inflight": self.max_inflight,
        }
