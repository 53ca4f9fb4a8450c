"""What a device error means for a GPU actor: one lost batch, or a poisoned context that only a new process clears.

Some CUDA errors are sticky: after a device-side assert, an illegal address or a launch failure,
every later call in the process's context fails too, for every model on the GPU. Others (one
batch's out-of-memory) leave the context usable. The actor does not read the error's text to tell
them apart: after a batch fails on the device it probes the context
(``PartitionBackend.context_fault``: a synchronize and a tiny allocation, return codes checked),
once for all the batches that fail together, in a thread, within ``probe_timeout_s`` (a probe that
does not return in time counts as poisoned: the device hangs).

A poisoned context is final for the process. ``DeviceHealth`` then refuses new batches, lets the
batches in flight fail (each gets ``DeviceFault``, a retryable 503), waits for their answers to
leave (at most ``grace_s``), and calls ``exit_process``, which by default ends the process so that
Ray restarts the actor (``actor/remote.py``: ``max_restarts``); callers still waiting then get
``RayActorError``, also a 503. The hook is injectable so that tests run the class without dying.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

EXIT_POISONED = 70  # EX_SOFTWARE: not 0, so that Ray counts the exit as a failure and restarts the actor
PROBE_TIMEOUT_S = 10.0
GRACE_S = 2.0
REPLY_S = 0.2  # after the last failed batch returns, for Ray to send its answer before the process ends


def exit_process(reason: str) -> None:
    """End this process at once (no clean-up: the CUDA context cannot run it), so that Ray restarts the actor."""
    log.critical("exiting (code %d) so that Ray restarts this GPU actor: %s", EXIT_POISONED, reason)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_POISONED)


class DeviceHealth:
    """Whether the device context still works, decided by ``probe`` (None: usable; else why not)."""

    def __init__(
        self,
        probe: Callable[[], str | None],
        inflight: Callable[[], int],
        exit_hook: Callable[[str], None] = exit_process,
        probe_timeout_s: float = PROBE_TIMEOUT_S,
        grace_s: float = GRACE_S,
    ) -> None:
        self._probe = probe
        self._inflight = inflight
        self._exit = exit_hook
        self.probe_timeout_s = probe_timeout_s
        self.grace_s = grace_s
        self.poisoned: str | None = None
        self.probes = 0
        self._probing: asyncio.Future | None = None
        self._leaving: asyncio.Task | None = None

    async def check(self) -> str | None:
        """After a batch failed on the device: None if the context is usable, else why it is not (and the
        process is on its way out). Batches that fail while a probe runs share it."""
        if self.poisoned is None:
            if self._probing is None:
                self._probing = asyncio.ensure_future(self._run_probe())
            probing = self._probing
            fault = await asyncio.shield(probing)
            if self._probing is probing:
                self._probing = None
            if fault is not None and self.poisoned is None:
                self._poison(fault)
        return self.poisoned

    async def _run_probe(self) -> str | None:
        self.probes += 1
        try:
            return await asyncio.wait_for(asyncio.to_thread(self._probe), self.probe_timeout_s)
        except TimeoutError:
            return f"the device did not finish its work within {self.probe_timeout_s:g} s of the error"
        except Exception as e:  # a probe that cannot run says as much about the context as one that fails
            return f"the probe of the context failed ({type(e).__name__}: {e})"

    def _poison(self, fault: str) -> None:
        self.poisoned = fault
        self._leaving = asyncio.get_running_loop().create_task(self._leave())

    async def _leave(self) -> None:
        deadline = time.monotonic() + self.grace_s
        while self._inflight() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(REPLY_S)
        self._exit(f"the device context is unusable: {self.poisoned}")
