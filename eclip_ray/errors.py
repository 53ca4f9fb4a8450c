"""Exception types of eclip_ray. Few on purpose: callers branch on these, not on text."""

from __future__ import annotations


class EclipError(Exception):
    """Base class of every error eclip_ray raises on purpose."""


class LayoutError(EclipError, ValueError):
    """A partition layout that cannot be made on this device."""


class BackendError(EclipError, RuntimeError):
    """A vendor call (CUDA driver, NVML, HIP, amdsmi) failed.

    ``call`` names the vendor function, ``code`` is its return code as text, and
    ``context`` says what was asked (for example the requested SMs).
    """

    def __init__(self, call: str, code: str, context: str = "") -> None:
        self.call, self.code, self.context = call, code, context
        where = f" ({context})" if context else ""
        super().__init__(f"{call} failed with {code}{where}")


class BackendUnavailable(EclipError, RuntimeError):
    """The requested backend's library or device is not present on this machine."""


class PlanError(EclipError, ValueError):
    """A plan that does not fit the model or the pool (unknown partition, bad cut point)."""


class EnergyUnavailable(EclipError, RuntimeError):
    """Energy cannot be measured with this backend (e.g. the CPU backend)."""


class InfeasibleSLO(PlanError):
    """No plan meets a model's latency SLO under the cost model.

    ``model`` names the model (its instance name in the mix), ``slo_ms`` is its
    SLO and ``best_ms`` the lowest latency the planner could predict for it.
    """

    def __init__(self, model: str, slo_ms: float, best_ms: float, detail: str) -> None:
        self.model, self.slo_ms, self.best_ms = model, slo_ms, best_ms
        super().__init__(detail)
