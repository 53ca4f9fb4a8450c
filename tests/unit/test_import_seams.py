"""The planner, the layouts and the plans import without torch (a fresh interpreter per check)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import eclip_ray.planner

PURE = [
    "eclip_ray.planner",
    "eclip_ray.partition.layout",
    "eclip_ray.graph.plan",
    "eclip_ray.planner.steering",
    *sorted(f"eclip_ray.planner.{m.name}" for m in pkgutil.iter_modules(eclip_ray.planner.__path__)),
]


def _heavy_modules_after(imports: list[str]) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"for name in {imports!r}:\n"
        "    importlib.import_module(name)\n"
        "print(','.join(m for m in ('torch', 'ray', 'cuda') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_the_planner_layouts_plans_and_steering_import_without_torch_ray_or_cuda():
    assert "eclip_ray.planner.cost" in PURE and "eclip_ray.planner.table" in PURE  # every submodule is listed
    assert _heavy_modules_after(PURE) == []


def test_the_check_sees_torch_when_a_module_does_import_it():
    assert "torch" in _heavy_modules_after(["eclip_ray.graph.runner"])
