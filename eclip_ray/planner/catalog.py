"""Where profiles live: ``benchmarks/profiles/<name>/`` (e.g. ``h100``) or any directory.

A profile directory holds ``<model>_bs<B>_<dtype>.json`` files (one per model,
batch size and dtype; see ``profile.py``), optionally ``power.json`` and
``corun.json`` (the co-run coefficients fitted to measured mixes, ``corun.py``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from eclip_ray.errors import PlanError
from eclip_ray.models.names import canonical
from eclip_ray.planner import profile as profile_io
from eclip_ray.planner.cost import Pressure
from eclip_ray.planner.power import FILENAME as POWER_FILE
from eclip_ray.planner.power import PowerModel
from eclip_ray.planner.profile import ModelProfile
from eclip_ray.planner.settings import PlannerSettings

CORUN_FILE = "corun.json"

SHIPPED = Path("benchmarks") / "profiles"


def roots() -> list[Path]:
    """Directories searched for shipped profile sets: the working directory's and the source tree's."""
    source_tree = Path(__file__).resolve().parents[2]
    return list(dict.fromkeys([Path.cwd() / SHIPPED, source_tree / SHIPPED]))


def profile_dir(spec: str | Path) -> Path:
    """The directory of profile set ``spec``: an existing directory, or a name under a shipped root."""
    path = Path(spec)
    if path.is_dir():
        return path
    for root in roots():
        if (root / str(spec)).is_dir():
            return root / str(spec)
    known = sorted({p.name for r in roots() if r.is_dir() for p in r.iterdir() if p.is_dir()})
    raise PlanError(
        f"no profile set {str(spec)!r}: not a directory, and not under {[str(r) for r in roots()]} "
        f"(profile sets there: {known or 'none'})"
    )


def load_profile(directory: Path, model: str, batch_size: int, dtype: str = "float16") -> ModelProfile:
    """The profile of zoo model ``model`` (aliases allowed) at ``batch_size`` and ``dtype`` in ``directory``."""
    name = canonical(model)
    path = directory / f"{name}_bs{batch_size}_{dtype}.json"
    if not path.is_file():
        have = sorted(p.name for p in directory.glob("*.json") if p.name not in (POWER_FILE, CORUN_FILE))
        raise PlanError(f"no profile of {name} at batch {batch_size} ({dtype}) in {directory}; it has {have}")
    return profile_io.load(path)


def load_power(directory: Path, fitted: bool = True) -> tuple[PowerModel | None, str]:
    """The power model beside the profiles, or None and the reason energy cannot be predicted.

    With ``fitted``, its dynamic power is scaled by the ``power_scale`` of ``corun.json``
    where there is one (inference kernels draw less than the compute-bound calibration kernel).
    """
    path = directory / POWER_FILE
    if not path.is_file():
        return None, f"no {POWER_FILE} in {directory}: energy is not predicted"
    power = PowerModel.load(path)
    scale = (load_corun(directory) or {}).get("power_scale") if fitted else None
    return (power if scale is None else power.scaled(float(scale))), ""


def load_corun(directory: Path) -> dict | None:
    """The fitted co-run coefficients beside the profiles (``corun.json``), or None.

    Files fitted before blocking and tails were modelled lack them: blocking 0, no tail model.
    """
    path = directory / CORUN_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        out = {k: data[k] for k in ("interference", "contention", "power_scale")}
        out["blocking"] = float(data.get("blocking", 0.0))
        out["coverage"] = float(data.get("coverage", 1.0))
        tail = data.get("tail")
        out["tail"] = None if tail is None else Pressure(**{k: float(v) for k, v in tail.items()})
        return out
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise PlanError(f"malformed {path}: {e!r}") from e


def fitted_settings(directory: Path, base: PlannerSettings | None = None) -> PlannerSettings:
    """``base`` (default settings) with the co-run coefficients of ``corun.json``, where there is one."""
    base = base or PlannerSettings()
    fit = load_corun(directory)
    if fit is None:
        return base
    return replace(
        base,
        interference=float(fit["interference"]),
        contention=float(fit["contention"]),
        blocking=fit["blocking"],
        coverage=fit["coverage"],
        tail=fit["tail"],
    )
