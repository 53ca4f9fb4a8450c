"""Per-model request metrics, exported through ``ray.util.metrics`` (Ray's Prometheus endpoint).

``ServeMetrics`` records nothing (tests, plain-class use); ``RayServeMetrics``
imports Ray when built. The ``model`` tag only ever takes configured model
names (others are ``"_unknown"``) so that clients cannot grow the label set.
Ray adds the ``ray_`` prefix on export: ``ray_eclip_requests_total`` etc.
"""

from __future__ import annotations

from collections.abc import Iterable

LATENCY_MS_BOUNDARIES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
UNKNOWN = "_unknown"


class ServeMetrics:
    def request(self, model: str, status: int, latency_s: float, slo_ms: float | None) -> None:
        """One HTTP inference request answered with ``status`` after ``latency_s`` seconds."""

    def queued(self, model: str, queue_s: float) -> None:
        """Seconds a request waited for its batch."""

    def batch(self, model: str, rows: int) -> None:
        """A batch of ``rows`` rows sent to a GPU actor."""

    def slo(self, model: str, solo_ms: float, feasible: bool) -> None:
        """The model's run time alone (smallest batch), and whether its SLO can be met at all."""


class RayServeMetrics(ServeMetrics):
    def __init__(self, models: Iterable[str]) -> None:
        from ray.util.metrics import Counter, Gauge, Histogram

        self._models = set(models)
        tags = ("model",)
        self._requests = Counter("eclip_requests", "Inference requests", tag_keys=tags)
        self._failures = Counter(
            "eclip_request_failures", "Inference requests answered with an error", tag_keys=(*tags, "code")
        )
        self._latency = Histogram(
            "eclip_request_latency_ms", "Server-side latency of inference requests (ms)", LATENCY_MS_BOUNDARIES, tags
        )
        self._violations = Counter(
            "eclip_slo_violations", "Requests answered later than the model's SLO", tag_keys=tags
        )
        self._queue = Histogram(
            "eclip_queue_time_ms", "Time a request waited for its batch (ms)", LATENCY_MS_BOUNDARIES, tags
        )
        self._batch = Histogram("eclip_batch_size", "Rows per batch sent to a GPU actor", BATCH_BOUNDARIES, tags)
        self._feasible = Gauge(
            "eclip_slo_feasible", "1 if the model meets its SLO alone on its GPU, 0 if it cannot", tag_keys=tags
        )
        self._solo = Gauge(
            "eclip_solo_latency_ms", "The model's run time alone at its smallest batch (ms)", tag_keys=tags
        )

    def _tags(self, model: str) -> dict[str, str]:
        return {"model": model if model in self._models else UNKNOWN}

    def request(self, model: str, status: int, latency_s: float, slo_ms: float | None) -> None:
        tags = self._tags(model)
        self._requests.inc(1, tags=tags)
        if status >= 400:
            self._failures.inc(1, tags={**tags, "code": str(status)})
            return
        self._latency.observe(1e3 * latency_s, tags=tags)
        if slo_ms is not None and 1e3 * latency_s > slo_ms:
            self._violations.inc(1, tags=tags)

    def queued(self, model: str, queue_s: float) -> None:
        self._queue.observe(1e3 * queue_s, tags=self._tags(model))

    def batch(self, model: str, rows: int) -> None:
        self._batch.observe(rows, tags=self._tags(model))

    def slo(self, model: str, solo_ms: float, feasible: bool) -> None:
        self._solo.set(solo_ms, tags=self._tags(model))
        self._feasible.set(1.0 if feasible else 0.0, tags=self._tags(model))
