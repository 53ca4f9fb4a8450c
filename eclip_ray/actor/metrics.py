"""Per-GPU metrics of the actor: power, energy, joules per inference and the plan in use.

``GpuMetrics`` records nothing (plain-class use and tests); ``RayGpuMetrics``
exports through ``ray.util.metrics`` (Ray's Prometheus endpoint) and imports
Ray only when built.
"""

from __future__ import annotations


class GpuMetrics:
    def power(self, watts: float) -> None:
        """Current board power, in watts."""

    def energy(self, joules: float) -> None:
        """Energy drawn over the last window, in joules."""

    def joules_per_inference(self, model: str, joules: float) -> None:
        """Energy per inference of ``model`` over the last window, in joules."""

    def plan(self, model: str, label: str, previous: str | None) -> None:
        """``model`` now runs under the plan ``label``."""


class RayGpuMetrics(GpuMetrics):
    def __init__(self, gpu: int) -> None:
        from ray.util.metrics import Counter, Gauge

        self._tags = {"gpu": str(gpu)}
        self._power = Gauge("eclip_gpu_power_watts", "GPU board power (W)", tag_keys=("gpu",))
        self._energy = Counter("eclip_gpu_energy_joules", "GPU energy drawn (J)", tag_keys=("gpu",))
        self._jpi = Gauge(
            "eclip_joules_per_inference", "Energy per inference over the last window (J)", tag_keys=("gpu", "model")
        )
        self._plan = Gauge(
            "eclip_gpu_plan",
            "1 for the plan a model runs under now, 0 for plans left",
            tag_keys=("gpu", "model", "plan"),
        )
        self._switches = Counter("eclip_gpu_plan_switches", "Plan changes of a model", tag_keys=("gpu", "model"))

    def power(self, watts: float) -> None:
        self._power.set(watts, tags=self._tags)

    def energy(self, joules: float) -> None:
        if joules > 0:
            self._energy.inc(joules, tags=self._tags)

    def joules_per_inference(self, model: str, joules: float) -> None:
        self._jpi.set(joules, tags={**self._tags, "model": model})

    def plan(self, model: str, label: str, previous: str | None) -> None:
        tags = {**self._tags, "model": model}
        if previous is not None:
            self._plan.set(0, tags={**tags, "plan": previous})
            self._switches.inc(1, tags=tags)
        self._plan.set(1, tags={**tags, "plan": label})
