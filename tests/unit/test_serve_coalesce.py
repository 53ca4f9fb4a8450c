"""The GPU actor's second batching: batches that wait for the device are joined, those of an idle model run alone."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from test_serve_batching import sync

from eclip_ray.actor.coalesce import Coalescer
from eclip_ray.actor.spec import BatchResult


class Device:
    """Runs a batch (doubling it) when the test releases it; records the rows of every batch."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.batches: list[int] = []
        self.gates: list[asyncio.Event] = []
        self.fail_at = fail_at

    async def run(self, requests) -> BatchResult:
        x = np.concatenate([r[0] for r in requests])
        self.batches.append(len(x))
        gate = asyncio.Event()
        self.gates.append(gate)
        await gate.wait()
        if self.fail_at is not None and len(self.batches) == self.fail_at:
            raise RuntimeError("the device failed the batch")
        return BatchResult(("y",), (2 * x,), 0.0, 0, "whole", len(x))


def request(rows: int, start: int) -> list[np.ndarray]:
    return [np.arange(start, start + rows, dtype="f4").reshape(rows, 1)]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


@sync
async def test_batches_that_wait_are_joined_and_each_caller_gets_its_own_rows():
    device = Device()
    c = Coalescer(device.run, max_rows=8, running=1)
    first = asyncio.ensure_future(c.submit([request(1, 0)], 1))
    await settle()  # it runs alone: the model was idle
    waiting = [asyncio.ensure_future(c.submit([request(2, 10 * i), request(1, 10 * i + 5)], 3)) for i in (1, 2, 3)]
    await settle()
    assert device.batches == [1] and c.waiting == 3
    device.gates[0].set()
    await settle()  # 3 + 3 rows join, the third (3 more) would pass 8 rows: it waits for the next
    assert device.batches == [1, 6]
    device.gates[1].set()
    await settle()
    device.gates[2].set()
    results = await asyncio.gather(first, *waiting)
    assert device.batches == [1, 6, 3] and c.merged == 2
    for i, r in enumerate(results[1:], 1):
        np.testing.assert_array_equal(r.outputs[0][:, 0], 2 * np.array([10 * i, 10 * i + 1, 10 * i + 5], "f4"))
        assert r.rows in (6, 3)


@sync
async def test_a_failed_run_fails_its_callers_only():
    device = Device(fail_at=2)
    c = Coalescer(device.run, max_rows=8, running=1)
    first = asyncio.ensure_future(c.submit([request(1, 0)], 1))
    await settle()
    joined = [asyncio.ensure_future(c.submit([request(1, i)], 1)) for i in (1, 2)]
    await settle()
    device.gates[0].set()
    await settle()
    later = asyncio.ensure_future(c.submit([request(1, 9)], 1))
    device.gates[1].set()
    await settle()
    device.gates[2].set()
    assert (await first).outputs[0][0, 0] == 0.0
    for f in joined:
        with pytest.raises(RuntimeError, match="failed the batch"):
            await f
    assert (await later).outputs[0][0, 0] == 18.0 and device.batches == [1, 2, 1]


@sync
async def test_a_caller_that_went_away_takes_no_place():
    device = Device()
    c = Coalescer(device.run, max_rows=8, running=1)
    first = asyncio.ensure_future(c.submit([request(1, 0)], 1))
    await settle()
    gone = asyncio.ensure_future(c.submit([request(4, 0)], 4))
    kept = asyncio.ensure_future(c.submit([request(1, 7)], 1))
    await settle()
    gone.cancel()
    device.gates[0].set()
    await settle()
    device.gates[1].set()
    await asyncio.gather(first, kept)
    assert device.batches == [1, 1]


def test_bounds_are_checked():
    with pytest.raises(ValueError, match="running >= 1"):
        Coalescer(Device().run, max_rows=8, running=0)
