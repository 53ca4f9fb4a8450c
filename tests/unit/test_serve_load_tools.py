"""The accounting of benchmarks/serve_load.py and serve_soak.py: counts, loss, recovery and growth (no server)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import serve_load
import serve_soak
from serve_load import Answer


def answer(sent: float, done: float | None, status: int | None, retry: str | None = None, msg: str = "") -> Answer:
    return Answer(sent, sent, done, status, retry, msg)


OVER = "model 'm' is overloaded: its queue is full (4 requests waiting); retry later"
DIED = "model 'm' is unavailable: GPU 0's actor died with the batch; Ray restarts it (up to max_restarts); retry later"


def test_every_request_is_counted_once_and_a_missing_answer_is_lost():
    answers = [
        answer(0.0, 0.01, 200),
        answer(0.1, 0.11, 503, "1", OVER),
        answer(0.2, 0.21, 429, "2", OVER),
        answer(0.3, 0.31, 503, None, "no Retry-After"),  # an error, not a refusal
        answer(0.4, 0.45, 400, None, "bad"),
        answer(0.5, 20.5, None, None, "TimeoutError: "),
    ]
    s = serve_load.summarize(answers, 1.0, slo_ms=20)
    assert (s["sent"], s["accepted"], s["rejected"], s["errors"], s["no_answer"], s["lost"]) == (6, 1, 2, 2, 1, 1)
    assert s["rejected_without_retry_after"] == 1 and s["accepted_within_slo"] == 1.0
    problems = serve_load.verdict({"open_loop": s})
    assert problems == ["1 of 6 requests got no answer", "1 refusals came without Retry-After"]


def test_accepted_p99_over_the_slo_fails_the_run():
    s = serve_load.summarize([answer(0.0, 0.03, 200)] * 99 + [answer(0.0, 0.5, 200)], 1.0, slo_ms=100)
    assert s["accepted_latency_ms"]["p99"] == pytest.approx(30) and s["accepted_within_slo"] == 0.99
    assert serve_load.verdict({"open_loop": s}) == []
    s = serve_load.summarize([answer(0.0, 0.03, 200)] * 98 + [answer(0.0, 0.5, 200)] * 2, 1.0, slo_ms=100)
    assert serve_load.verdict({"open_loop": s}) == ["accepted p99 500.0 ms is over the SLO of 100 ms"]


def test_recovery_runs_from_the_kill_to_the_first_success_after_the_last_fault():
    answers = [
        answer(0.0, 0.9, 200),
        answer(0.5, 1.2, 503, "1", DIED),  # in flight at the kill (1.0)
        answer(1.1, 1.15, 200),  # got through before the kill took effect
        answer(1.3, 1.35, 503, "1", OVER),  # overload: not a fault
        answer(2.0, 2.1, 503, "1", DIED),  # the last fault
        answer(2.5, 4.0, 200),  # served by the restarted actor
        answer(3.0, 3.5, 200),
    ]
    k = serve_load.recovery(answers, kill_s=1.0)
    assert k["faults"] == 2 and k["faults_with_retry_after"] == 2
    assert k["in_flight_at_kill"] == {"rejected": 1}
    assert k["recovery_s"] == pytest.approx(2.5) and k["last_fault_s"] == pytest.approx(1.1)
    assert serve_load.recovery(answers[:1], kill_s=1.0)["recovery_s"] is None  # no fault: nothing to recover


def test_growth_fits_a_line_after_the_warmup():
    flat = [(t, 100.0 + (5.0 if t < 60 else 0.0)) for t in range(0, 600, 5)]
    g = serve_soak.growth(flat, warmup_s=60)
    assert g["slope_mb_per_min"] == pytest.approx(0.0, abs=1e-9) and g["delta_mb"] == 0.0
    leaking = [(t, 100.0 + 0.5 * t / 60) for t in range(0, 600, 5)]
    g = serve_soak.growth(leaking, warmup_s=60)
    assert g["slope_mb_per_min"] == pytest.approx(0.5) and g["delta_mb"] == pytest.approx(0.5 * 535 / 60)
    _, problems = serve_soak.report({"GpuWorker pid 1": leaking}, warmup_s=60, max_slope=0.25)
    assert problems == ["GpuWorker pid 1 grows 0.50 MB/min (limit 0.25)"]
    assert serve_soak.growth(flat[:13], warmup_s=60) is None  # too few samples after the warm-up


def test_the_client_outwaits_the_proxy_unless_told():
    config = serve_load.config_of(None, "resnet18")  # limits.request_timeout_s 10: the proxy gives up at 25 s
    assert serve_load.client_timeout_s(config, None) == 30.0
    assert serve_load.client_timeout_s(config, 3.0) == 3.0
    assert serve_soak.parse_args([]).timeout_s is None and serve_load.parse_args(["--timeout-s", "7"]).timeout_s == 7


def test_the_load_requests_ask_for_binary_outputs():
    from eclip_ray.actor.spec import ModelConfig, TensorSpec
    from eclip_ray.serve._private import codec

    model = ModelConfig(name="m", inputs=(TensorSpec(name="ids", datatype="INT64", shape=(4,)),))
    target = serve_load.target_for("http://x", model, rows=2)
    request = codec.decode_request(target.body, codec.header_length(target.headers[codec.HEADER]))
    assert request.binary_output is True
    assert codec.binary_choice(request, ["out"]) == {"out": True}
