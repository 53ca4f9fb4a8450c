"""Per-GPU metrics of the actor: power, energy, joules per inference, the plan in use, the adaptive candidate,
and device faults.

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

    def candidate(self, name: str, previous: str | None, kind: str) -> None:
        """The adaptive plans now run candidate ``name`` (``kind``: selected, breach, recover, load)."""

    def selection(self, seconds: float, measured: int, met: bool) -> None:
        """A measured selection took ``seconds`` over ``measured`` candidates; whether its choice met every SLO."""

    def device_fault(self, sticky: bool) -> None:
        """A batch failed on the device; ``sticky``: its device context was unusable after it."""

    def context_poisoned(self) -> None:
        """The device context became unusable: the actor is about to exit for Ray to restart it."""


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
        self._candidate = Gauge(
            "eclip_gpu_candidate",
            "1 for the adaptive candidate running now, 0 for those left",
            tag_keys=("gpu", "name"),
        )
        self._moves = Counter(
            "eclip_gpu_candidate_switches", "Moves of the adaptive guard, by kind", tag_keys=("gpu", "kind")
        )
        self._selection_s = Gauge(
            "eclip_gpu_selection_seconds", "Time of the last measured selection (s)", tag_keys=("gpu",)
        )
        self._selection_n = Gauge(
            "eclip_gpu_selection_trials", "Candidates the last selection measured", tag_keys=("gpu",)
        )
        self._selection_met = Gauge(
            "eclip_gpu_selection_slo_met", "1 if the selected candidate met every SLO when measured", tag_keys=("gpu",)
        )
        self._faults = Counter(
            "eclip_gpu_device_faults",
            "Batches failed by the device; sticky: the context was unusable after it",
            tag_keys=("gpu", "sticky"),
        )
        self._poisoned = Counter(
            "eclip_gpu_context_poisoned", "Device contexts found unusable (each ends its actor)", tag_keys=("gpu",)
        )
        # The process exits right after a poisoning, possibly before Ray exports its last counts; its successor
        # counts the restart, which survives.
        restarts = Counter("eclip_gpu_actor_restarts", "GPU actors started again by Ray", tag_keys=("gpu",))
        if _reconstructed():
            restarts.inc(1, tags=self._tags)

    def power(self, watts: float) -> None:
        self._power.set(watts, tags=self._tags)

    def energy(self, joules: float) -> None:
        if joules > 0:
            self._energy.inc(joules, tags=self._tags)

    def joules_per_inference(self, model: str, joules: float) -> None:
        self._jpi.set(joules, tags={**self._tags, "model": model})

    def device_fault(self, sticky: bool) -> None:
        self._faults.inc(1, tags={**self._tags, "sticky": str(sticky).lower()})

    def context_poisoned(self) -> None:
        self._poisoned.inc(1, tags=self._tags)

    def plan(self, model: str, label: str, previous: str | None) -> None:
        tags = {**self._tags, "model": model}
        if previous is not None:
            self._plan.set(0, tags={**tags, "plan": previous})
            self._switches.inc(1, tags=tags)
        self._plan.set(1, tags={**tags, "plan": label})

    def candidate(self, name: str, previous: str | None, kind: str) -> None:
        if previous is not None:
            self._candidate.set(0, tags={**self._tags, "name": previous})
            self._moves.inc(1, tags={**self._tags, "kind": kind})
        self._candidate.set(1, tags={**self._tags, "name": name})

    def selection(self, seconds: float, measured: int, met: bool) -> None:
        self._selection_s.set(seconds, tags=self._tags)
        self._selection_n.set(measured, tags=self._tags)
        self._selection_met.set(1.0 if met else 0.0, tags=self._tags)


def _reconstructed() -> bool:
    import ray

    try:
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)
    except Exception:  # outside an actor (tests, tools): not a restart
        return False
