"""What a benchmark run does: mixes, policies, loads, batch sizes, windows, SLOs and where results go."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from eclip_ray.bench import policies
from eclip_ray.bench.load import Load


@dataclass(frozen=True)
class BenchConfig:
    """What to run and how; every field has the default of ``eclip-ray bench``."""

    mixes: Mapping[str, tuple[str, ...]]
    policies: tuple[str, ...] = policies.POLICIES
    loads: tuple[Load, ...] = (Load(),)
    batch_sizes: tuple[tuple[int, ...], ...] = ((1,),)  # per scenario: one size for all, or one per instance
    window_s: float = 10.0
    warmup_s: float = 2.0
    isolated_s: float = 5.0
    seed: int = 0
    slo_factor: float = 3.0
    slo_percentile: float = 99.0
    profiles: str | None = "h100"  # a profile set under benchmarks/profiles/, or a directory
    dtype: str = "float16"
    backend: str = "auto"
    objective: str = "throughput"
    mps_share: str = "model-wise"
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    isolated_file: str | None = None
    out: str | None = None
    resume: bool = False
    deadline: float | None = None  # time.time() by which the run must be done
    command: str = ""

    def settings(self) -> dict[str, Any]:
        """What a scenario's numbers depend on besides its load and batch sizes."""
        return {
            "window_s": self.window_s,
            "warmup_s": self.warmup_s,
            "isolated_s": self.isolated_s,
            "seed": self.seed,
            "slo_factor": self.slo_factor,
            "slo_percentile": self.slo_percentile,
            "profiles": self.profiles,
            "objective": self.objective,
            "mps_share": self.mps_share,
            "fractions": list(self.fractions),
        }
