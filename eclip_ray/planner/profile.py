"""Kernel-group profiles: how long each unit of a model takes on each partition size.

A *unit* is the run of kernels between two consecutive legal cut points (leaf
module calls, see ``eclip_ray.graph.stages``); its ``cut`` is the cut-point id
where it begins (None for the first unit, which begins at the input). Per unit
the profile keeps each kernel's median time and the unit's median and spread at
every measured SM count; ``total_ms`` is the whole model's CUDA-graph replay
latency at each size, which includes the launch gaps that kernel sums miss.

Profiles are JSON files keyed by GPU, SM count, driver, torch version, model,
batch size and dtype. Loading one made on another GPU or version warns.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = 1
# SM counts the profiler measures by default: down to Hopper's split step of 8, denser where time
# changes fastest (few SMs); a count >= the device's SM count is the whole GPU.
DEFAULT_SIZES = (8, 16, 24, 32, 48, 64, 96, 132)


@dataclass(frozen=True)
class Stat:
    """Median and spread (10th and 90th percentile) of repeated measurements, in milliseconds."""

    median: float
    p10: float
    p90: float

    @classmethod
    def of(cls, samples: list[float]) -> Stat:
        import numpy as np

        if not samples:
            raise ValueError("no samples")
        a = np.asarray(samples, dtype=float)
        return cls(float(np.median(a)), float(np.percentile(a, 10)), float(np.percentile(a, 90)))


@dataclass(frozen=True)
class ProfileKey:
    gpu: str
    sm_count: int
    driver: str
    torch: str
    model: str
    batch_size: int
    dtype: str

    def filename(self) -> str:
        return f"{self.model}_bs{self.batch_size}_{self.dtype}.json"


@dataclass
class Unit:
    cut: str | None
    module: str
    ms: dict[int, Stat]
    kernels: list[dict[str, Any]] = field(default_factory=list)  # {"name": str, "ms": {size: median}}


@dataclass
class ModelProfile:
    key: ProfileKey
    sizes: list[int]
    units: list[Unit]
    total_ms: dict[int, Stat]
    meta: dict[str, Any] = field(default_factory=dict)

    def unit_ms(self, size: int) -> list[float]:
        """Median time of every unit at ``size`` SMs."""
        return [u.ms[size].median for u in self.units]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "key": asdict(self.key),
            "sizes": self.sizes,
            "units": [
                {
                    "cut": u.cut,
                    "module": u.module,
                    "ms": {str(s): asdict(v) for s, v in u.ms.items()},
                    "kernels": u.kernels,
                }
                for u in self.units
            ],
            "total_ms": {str(s): asdict(v) for s, v in self.total_ms.items()},
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelProfile:
        if d.get("schema") != SCHEMA:
            raise ValueError(f"profile schema {d.get('schema')!r}, this version reads schema {SCHEMA}")
        stats = lambda m: {int(s): Stat(**v) for s, v in m.items()}  # noqa: E731
        return cls(
            key=ProfileKey(**d["key"]),
            sizes=[int(s) for s in d["sizes"]],
            units=[Unit(u["cut"], u["module"], stats(u["ms"]), u.get("kernels", [])) for u in d["units"]],
            total_ms=stats(d["total_ms"]),
            meta=d.get("meta", {}),
        )

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / self.key.filename()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)  # never leave a half-written profile behind
        return path


def load(path: str | Path, expect: dict[str, Any] | None = None) -> ModelProfile:
    """Read a profile; warn when ``expect`` (e.g. this GPU's name and torch version) differs from its key."""
    prof = ModelProfile.from_dict(json.loads(Path(path).read_text()))
    for k, v in (expect or {}).items():
        have = getattr(prof.key, k)
        if have != v:
            warnings.warn(f"profile {path} was made with {k}={have!r}, this machine has {v!r}", stacklevel=2)
    return prof
