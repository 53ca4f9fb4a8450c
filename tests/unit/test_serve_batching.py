"""The batching policy (pure) and the asyncio batcher that applies it."""

from __future__ import annotations

import asyncio
import functools

import numpy as np
import pytest

from eclip_ray.actor.spec import BatchResult
from eclip_ray.serve._private.batching import Batcher, BatchPolicy, Decision, ServiceTimes
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
    d = p.decide(now=0.004, rows=[1, 2], oldest=0.0, estimate=zero, running=1)
    assert d.take == 0 and d.wait_s == pytest.approx(0.006)
    assert p.decide(now=0.010, rows=[1, 2], oldest=0.0, estimate=zero, running=1).take == 2


def test_an_idle_model_sends_at_once_and_a_busy_one_waits_for_company():
    p = policy(wait_s=0.010)
    assert p.decide(now=0.0, rows=[1], oldest=0.0, estimate=zero, running=0) == Decision(1, 0.0)
    assert p.decide(now=0.0, rows=[1], oldest=0.0, estimate=zero, running=1).take == 0


def test_the_slo_cuts_the_wait_short():
    p = policy(wait_s=0.050, slo_s=0.030)
    run_s = {4: 0.020}.get
    d = p.decide(now=0.002, rows=[1, 2], oldest=0.0, estimate=lambda b: run_s(b, 0.0), running=1)
    # 3 rows pad to 4, which runs 20 ms: the batch must leave by 30 - 20 = 10 ms, not at 50 ms.
    assert d.take == 0 and d.wait_s == pytest.approx(0.008)
    assert p.decide(now=0.010, rows=[1, 2], oldest=0.0, estimate=lambda b: run_s(b, 0.0), running=1).take == 2


def test_a_request_already_late_goes_at_once():
    p = policy(wait_s=0.050, slo_s=0.010)
    assert p.decide(now=0.0, rows=[1], oldest=0.0, estimate=lambda b: 0.020, running=1).take == 1


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
    assert t.bound(4) == pytest.approx(0.025 + 4 * 0.005)  # the mean plus four mean deviations
    assert t.bound(8) == t.bound(4) and t.bound(1) == 0.0


class FakeActor:
    """Doubles its input; records the rows of every batch."""

    def __init__(self, delay_s: float = 0.0, fail: Exception | None = None) -> None:
        self.batches: list[int] = []
        self.delay_s = delay_s
        self.fail = fail

    async def run(self, requests: list[list[np.ndarray]]) -> BatchResult:
        x = joined(requests)
        self.batches.append(len(x))
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise self.fail
        return BatchResult(("y",), (x * 2,), self.delay_s, 0, "whole", len(x))


def joined(requests: list[list[np.ndarray]]) -> np.ndarray:
    """The batch's first input: each request's rows, in order (the batcher sends them unjoined)."""
    return np.concatenate([r[0] for r in requests])


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
        assert got.rows == 8 and got.names == ("y",)


@sync
async def test_a_busy_actor_lets_the_next_batch_grow():
    actor = HeldActor()
    b = Batcher(policy(wait_s=0.0), actor.run, max_queue=16, max_inflight=1)
    first = asyncio.ensure_future(b.submit(rows(1, 0), 1))
    await _settle()  # an idle model sends its first request alone, at once
    rest = [asyncio.ensure_future(b.submit(rows(1, i), 1)) for i in range(1, 6)]
    await _settle()
    assert actor.batches == [1] and b.queued == 5
    actor.release.set()
    await asyncio.gather(first, *rest)
    assert actor.batches == [1, 5]


@sync
async def test_a_full_queue_is_refused_with_retry_after():
    actor = HeldActor()
    b = Batcher(policy(wait_s=0.0, max_batch=1), actor.run, max_queue=2, max_inflight=1, retry_after_s=3)
    running = [asyncio.ensure_future(b.submit(rows(1, 0), 1))]
    await _settle()  # the first is running
    running += [asyncio.ensure_future(b.submit(rows(1, i), 1)) for i in (1, 2)]
    await _settle()
    assert b.queued == 2
    with pytest.raises(RequestError) as e:
        await b.submit(rows(1, 9), 1)
    assert e.value.failure.status == 503 and e.value.failure.retry_after_s == 3
    actor.release.set()
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
    actor = HeldActor()
    b = Batcher(policy(wait_s=0.0), actor.run, max_queue=16, max_inflight=1)
    first = asyncio.ensure_future(b.submit(rows(1, 0), 1))
    await _settle()  # running: the next two queue behind it
    gone = asyncio.ensure_future(b.submit(rows(1, 1), 1))
    kept = asyncio.ensure_future(b.submit(rows(1, 2), 1))
    await _settle()
    assert b.queued == 2
    gone.cancel()
    actor.release.set()
    await first
    got = await kept
    assert actor.batches == [1, 1] and got.outputs[0][0, 0] == 2.0


# -- admission: refuse at once what cannot be served in time --------------------------------------------


def test_expected_time_counts_the_batches_ahead_and_those_running():
    p = policy(max_batch=4)
    ten_ms = lambda _bucket: 0.010  # noqa: E731
    assert p.expected_s(rows_ahead=0, rows=1, inflight=0, max_inflight=2, estimate=ten_ms) == pytest.approx(0.010)
    # 9 rows ahead + 3 = 3 full batches, behind 1 running: 4 batches, two at a time = 2 waves
    assert p.expected_s(rows_ahead=9, rows=3, inflight=1, max_inflight=2, estimate=ten_ms) == pytest.approx(0.020)
    assert p.expected_s(rows_ahead=9, rows=3, inflight=2, max_inflight=1, estimate=ten_ms) == pytest.approx(0.050)
    assert p.expected_s(rows_ahead=100, rows=1, inflight=9, max_inflight=1, estimate=zero) == 0.0  # nothing measured


class HeldActor:
    """Batches run until ``release`` is set: the queue behind them stays put while the test looks."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.batches: list[int] = []

    async def run(self, requests: list[list[np.ndarray]]) -> BatchResult:
        x = joined(requests)
        self.batches.append(len(x))
        await self.release.wait()
        return BatchResult(("y",), (x,), 0.0, 0, "whole", len(x))


async def _settle() -> None:
    for _ in range(5):  # let the batcher's loop take what it will
        await asyncio.sleep(0)


def held_batcher(actor: HeldActor, slo_s: float | None, **kw) -> Batcher:
    b = Batcher(
        policy(wait_s=0.0, slo_s=slo_s, max_batch=1), actor.run, max_inflight=1, retry_after_s=2, name="model 'm'", **kw
    )
    b.times.observe(1, 0.100)  # a batch has been measured at 100 ms
    return b


@sync
async def test_a_request_that_would_miss_its_slo_is_refused_at_once():
    actor = HeldActor()
    b = held_batcher(actor, slo_s=0.250, max_queue=100)
    first = asyncio.ensure_future(b.submit(rows(1, 0), 1))
    await _settle()
    assert b.refusal(1) is None  # 1 running + itself: 200 ms
    second = asyncio.ensure_future(b.submit(rows(1, 1), 1))
    await _settle()
    assert actor.batches == [1] and b.queued == 1
    # 1 running + 1 queued + itself: 300 ms > 250 ms, although the queue has room for 98 more
    with pytest.raises(RequestError) as e:
        await b.submit(rows(1, 2), 1)
    f = e.value.failure
    assert f.status == 503 and f.retry_after_s == 2
    assert "model 'm' is overloaded" in f.message and "about 300 ms, over the SLO of 250 ms" in f.message
    assert b.queued == 1  # the refused request took no place
    actor.release.set()
    assert [r.outputs[0][0, 0] for r in await asyncio.gather(first, second)] == [0.0, 1.0]  # nothing lost


@sync
async def test_without_slo_or_with_rejection_off_only_the_queue_bound_applies():
    for slo_s, reject in ((None, True), (0.250, False)):
        actor = HeldActor()
        b = held_batcher(actor, slo_s=slo_s, max_queue=3, reject_over_slo=reject)
        accepted = [asyncio.ensure_future(b.submit(rows(1, 0), 1))]
        await _settle()  # it runs
        accepted += [asyncio.ensure_future(b.submit(rows(1, i), 1)) for i in range(1, 4)]
        await _settle()
        assert len(actor.batches) == 1 and b.queued == 3
        with pytest.raises(RequestError, match="its queue is full \\(3 requests waiting\\)"):
            await b.submit(rows(1, 9), 1)
        actor.release.set()
        assert len(await asyncio.gather(*accepted)) == 4


class Clock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@sync
async def test_nothing_is_refused_for_the_slo_before_a_batch_was_measured():
    actor, clock = HeldActor(), Clock()
    b = Batcher(policy(wait_s=0.0, slo_s=0.001, max_batch=1), actor.run, max_queue=10, max_inflight=1, clock=clock)
    accepted = [asyncio.ensure_future(b.submit(rows(1, i), 1)) for i in range(5)]
    await _settle()
    assert b.queued == 4 and b.refusal(1) is None
    actor.release.set()
    await asyncio.gather(*accepted)


@sync
async def test_a_request_whose_slo_passed_in_the_queue_is_refused_not_run():
    actor, clock = HeldActor(), Clock()
    b = held_batcher(actor, slo_s=0.350, max_queue=10, clock=clock)
    first = asyncio.ensure_future(b.submit(rows(1, 0), 1))
    await _settle()
    old = asyncio.ensure_future(b.submit(rows(1, 1), 1))  # admitted: 200 ms expected
    await _settle()
    clock.now = 0.100
    young = asyncio.ensure_future(b.submit(rows(1, 2), 1))  # admitted: 300 ms expected
    await _settle()
    assert b.queued == 2
    clock.now = 0.400  # the running batch was slower than measured: old has waited 400 ms, young 300 ms
    actor.release.set()
    assert (await first).outputs[0][0, 0] == 0.0
    with pytest.raises(RequestError) as e:
        await old
    f = e.value.failure
    assert f.status == 503 and f.retry_after_s == 2
    assert f.message == ("model 'm' is overloaded: it waited 400 ms in the queue, past the SLO of 350 ms; retry later")
    assert (await young).outputs[0][0, 0] == 2.0
    assert actor.batches == [1, 1]  # the stale request never reached the actor


@sync
async def test_late_requests_still_run_when_rejection_is_off():
    actor, clock = HeldActor(), Clock()
    b = held_batcher(actor, slo_s=0.050, max_queue=10, clock=clock, reject_over_slo=False)
    requests = [asyncio.ensure_future(b.submit(rows(1, i), 1)) for i in range(2)]
    await _settle()
    clock.now = 1.0
    actor.release.set()
    assert len(await asyncio.gather(*requests)) == 2 and actor.batches == [1, 1]


@sync
async def test_a_request_with_nothing_ahead_is_admitted_even_if_batches_were_slow():
    actor = HeldActor()
    b = held_batcher(actor, slo_s=0.050, max_queue=10)  # measured 100 ms, over the 50 ms SLO
    assert b.refusal(1) is None  # it runs at once, and its time refreshes the estimate
    first = asyncio.ensure_future(b.submit(rows(1, 0), 1))
    await _settle()
    assert "over the SLO of 50 ms" in b.refusal(1)
    actor.release.set()
    await first


@sync
async def test_an_idle_model_never_refuses_whatever_it_measured_before():
    actor = HeldActor()
    b = held_batcher(actor, slo_s=0.010, max_queue=1)  # measured 100 ms, ten times the SLO
    assert b.refusal(1) is None  # nothing queued or running ahead: it runs at once
    first = asyncio.ensure_future(b.submit(rows(1, 0), 1))
    await _settle()
    assert "over the SLO of 10 ms" in b.refusal(1)  # not idle any more
    actor.release.set()
    await first
    assert b.refusal(1) is None  # idle again


@sync
async def test_an_slo_the_model_misses_alone_refuses_nothing_and_the_queue_bound_still_holds():
    actor, clock = HeldActor(), Clock()
    b = held_batcher(actor, slo_s=0.050, max_queue=2, clock=clock)
    b.slo_feasible = False  # the front learnt that one row alone takes longer than 50 ms
    first = asyncio.ensure_future(b.submit(rows(1, 0), 1))
    await _settle()
    queued = [asyncio.ensure_future(b.submit(rows(1, i), 1)) for i in (1, 2)]  # 300 ms expected: admitted
    await _settle()
    with pytest.raises(RequestError, match="its queue is full"):
        await b.submit(rows(1, 3), 1)
    clock.now = 1.0  # far past the SLO: the queued requests still run, not refused as stale
    actor.release.set()
    assert [r.outputs[0][0, 0] for r in await asyncio.gather(first, *queued)] == [0.0, 1.0, 2.0]
    b.slo_feasible = True
    assert b.enforces_slo
