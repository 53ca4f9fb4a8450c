"""The batching policy (pure) and the asyncio batcher that applies it."""

from __future__ import annotations

import asyncio
import functools

import numpy as np
import pytest

from eclip_ray.actor.spec import BatchResult
from eclip_ray.serve._private.batching import Batcher, BatchPolicy, ServiceTimes
from eclip_ray.serve._private.errors import RequestError

SIZES = (1, 2, 4, 8)


def sync(test):
    """Run an async test in a fresh event loop (no asyncio plugin needed)."""

    @functools.wraps(test)
    def run(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return run


def policy(wait_s=0.010, slo_s=None, max_batch=8):
    return BatchPolicy(max_batch_size=max_batch, batch_wait_timeout_s=wait_s, slo_s=slo_s, sizes=SIZES)


def zero(_bucket: int) -> float:
    return 0.0


def test_a_full_batch_goes_at_once():
    d = policy().decide(now=0.0, rows=[4, 4], oldest=0.0, estimate=zero)
    assert (d.take, d.wait_s) == (2, 0.0)


def test_a_request_that_does_not_fit_sends_the_others_now():
    d = policy().decide(now=0.0, rows=[3, 3, 3], oldest=0.0, estimate=zero)
    assert d.take == 2  # 6 rows now; the third starts the next batch


def test_waits_for_the_timeout_then_sends():
    p = policy(wait_s=0.010)
    d = p.decide(now=0.004, rows=[1, 2], oldest=0.0, estimate=zero)
    assert d.take == 0 and d.wait_s == pytest.approx(0.006)
    assert p.decide(now=0.010, rows=[1, 2], oldest=0.0, estimate=zero).take == 2


def test_the_slo_cuts_the_wait_short():
    p = policy(wait_s=0.050, slo_s=0.030)
    run_s = {4: 0.020}.get
    d = p.decide(now=0.002, rows=[1, 2], oldest=0.0, estimate=lambda b: run_s(b, 0.0))
    # 3 rows pad to 4, which runs 20 ms: the batch must leave by 30 - 20 = 10 ms, not at 50 ms.
    assert d.take == 0 and d.wait_s == pytest.approx(0.008)
    assert p.decide(now=0.010, rows=[1, 2], oldest=0.0, estimate=lambda b: run_s(b, 0.0)).take == 2


def test_a_request_already_late_goes_at_once():
    p = policy(wait_s=0.050, slo_s=0.010)
    assert p.decide(now=0.0, rows=[1], oldest=0.0, estimate=lambda b: 0.020).take == 1


def test_bucket_pads_to_the_captured_size():
    p = policy()
    assert [p.bucket(r) for r in (1, 2, 3, 5, 8)] == [1, 2, 4, 8, 8]


def test_service_times_fall_back_to_smaller_sizes():
    t = ServiceTimes(SIZES, weight=0.5)
    assert t.estimate(4) == 0.0
    t.observe(2, 0.010)
    assert t.estimate(4) == 0.010 and t.estimate(1) == 0.0
    t.observe(4, 0.020)
    t.observe(4, 0.030)
    assert t.estimate(4) == pytest.approx(0.025)


class FakeActor:
    """Doubles its input; records the rows of every batch."""

    def __init__(self, delay_s: float = 0.0, fail: Exception | None = None) -> None:
        self.batches: list[int] = []
        self.delay_s = delay_s
        self.fail = fail

    async def run(self, inputs: list[np.ndarray]) -> BatchResult:
        self.batches.append(int(inputs[0].shape[0]))
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise self.fail
        return BatchResult(("y",), (inputs[0] * 2,), self.delay_s, 0, "whole")


def rows(n: int, start: int) -> list[np.ndarray]:
    return [np.arange(start, start + n, dtype="f4").reshape(n, 1)]


@sync
async def test_concurrent_requests_share_one_batch_and_get_their_own_rows():
    actor = FakeActor()
    b = Batcher(policy(wait_s=1.0), actor.run, max_queue=16, max_inflight=2)
    out = await asyncio.gather(*(b.submit(rows(2, 10 * i), 2) for i in range(4)))
    assert actor.batches == [8]  # full at 8 rows: no need to wait the second
    for i, got in enumerate(out):
        np.testing.assert_array_equal(got.outputs[0], rows(2, 10 * i)[0] * 2)
        assert got.batch_rows == 8 and got.names == ("y",)


@sync
async def test_a_busy_actor_lets_the_next_batch_grow():
    actor = FakeActor(delay_s=0.05)
    b = Batcher(policy(wait_s=0.0), actor.run, max_queue=16, max_inflight=1)
    first = asyncio.ensure_future(b.submit(rows(1, 0), 1))
    await asyncio.sleep(0.01)  # the first batch is running
    rest = [asyncio.ensure_future(b.submit(rows(1, i), 1)) for i in range(1, 6)]
    await asyncio.gather(first, *rest)
    assert actor.batches == [1, 5]


@sync
async def test_a_full_queue_is_refused_with_retry_after():
    actor = FakeActor(delay_s=0.2)
    b = Batcher(policy(wait_s=0.0, max_batch=1), actor.run, max_queue=2, max_inflight=1, retry_after_s=3)
    running = [asyncio.ensure_future(b.submit(rows(1, 0), 1))]
    await asyncio.sleep(0.02)  # the first is running
    running += [asyncio.ensure_future(b.submit(rows(1, i), 1)) for i in (1, 2)]
    await asyncio.sleep(0.02)  # two are queued
    with pytest.raises(RequestError) as e:
        await b.submit(rows(1, 9), 1)
    assert e.value.failure.status == 503 and e.value.failure.retry_after_s == 3
    await asyncio.gather(*running)


@sync
async def test_a_failed_batch_fails_each_of_its_requests():
    actor = FakeActor(fail=RequestError(503, "actor gone", 1))
    b = Batcher(policy(wait_s=0.05), actor.run, max_queue=16, max_inflight=2)
    results = await asyncio.gather(*(b.submit(rows(1, i), 1) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, RequestError) and "actor gone" in str(r) for r in results)
    assert actor.batches == [3]


@sync
async def test_a_cancelled_request_leaves_the_queue():
    actor = FakeActor()
    b = Batcher(policy(wait_s=0.1), actor.run, max_queue=16, max_inflight=2)
    gone = asyncio.ensure_future(b.submit(rows(1, 0), 1))
    kept = asyncio.ensure_future(b.submit(rows(1, 1), 1))
    await asyncio.sleep(0.01)
    gone.cancel()
    got = await kept
    assert actor.batches == [1] and got.outputs[0][0, 0] == 2.0
