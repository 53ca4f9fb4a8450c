"""The MPS policies: one process per model instance under NVIDIA MPS, started once and driven for many windows.

The control daemon gets its own pipe and log directories under /tmp, so it
serves only the clients started here: ``nvidia-cuda-mps-control -d`` starts it
and ``echo quit | nvidia-cuda-mps-control`` stops it. Each client
(``eclip_ray.bench.mps_client``) loads one instance on the whole GPU with
``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` set, then serves window after window at
whatever load the parent asks (a load search runs many windows; starting a
client costs seconds). For each window the parent gives every client its own
lane's load and one shared start instant, and measures the device's energy.

Work queues: under MPS the clients of a server share one pool of hardware work
queues, each client holding the ``CUDA_DEVICE_MAX_CONNECTIONS`` it asks for
exclusively (NVIDIA's MPS documentation, "CUDA_DEVICE_MAX_CONNECTIONS"). With
the 32 that in-process policies need, three clients fitted on an H200 and the
fourth failed to create its context ("CUDA error: out of memory" at
``torch.cuda.set_device``; ``docs/hardware.md`` section 8). A client drives one instance on one stream, so
each asks for :data:`CLIENT_QUEUES` instead, whatever the parent's setting.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eclip_ray.bench.driver import LaneResult, Window
from eclip_ray.bench.load import Load
from eclip_ray.energy import EnergyMeter
from eclip_ray.errors import BackendError

CONTROL = "nvidia-cuda-mps-control"
CLIENT_QUEUES = 4  # hardware work queues per client: its stream, the default stream and copies
MAX_CLIENTS = 24  # clients kept at once (24 x 4 queues: the 96 three 32-queue clients had); idle ones beyond it stop


def unavailable(backend: str) -> str:
    """Why MPS cannot run with ``backend`` on this machine; empty when it can."""
    if backend != "cuda":
        return f"MPS shares a CUDA GPU between processes; this run's backend is {backend!r}"
    if shutil.which(CONTROL) is None:
        return f"{CONTROL} is not on the PATH of this machine"
    return ""


class MpsDaemon:
    """The MPS control daemon with private pipe and log directories under /tmp."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="eclip-mps-", dir="/tmp"))
        self.env = {
            "CUDA_MPS_PIPE_DIRECTORY": str(self.root / "pipe"),
            "CUDA_MPS_LOG_DIRECTORY": str(self.root / "log"),
        }
        self.running = False

    def _control(self, *args: str, command: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [CONTROL, *args], input=command, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60
        )

    def start(self) -> None:
        for d in self.env.values():
            Path(d).mkdir(parents=True, exist_ok=True)
        done = self._control("-d")
        if done.returncode != 0:
            raise BackendError(CONTROL + " -d", str(done.returncode), (done.stderr or done.stdout).strip())
        self.running = True

    def servers(self) -> list[str]:
        """PIDs of the MPS servers the daemon runs (one once a client has connected)."""
        return self._control(command="get_server_list\n").stdout.split()

    def log_tail(self, lines: int = 20) -> str:
        path = Path(self.env["CUDA_MPS_LOG_DIRECTORY"]) / "control.log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.is_file() else ""

    def stop(self) -> None:
        """Quit the daemon (once its clients are gone) and remove its directories."""
        if self.running:
            self._control(command="quit\n")
            self.running = False
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> MpsDaemon:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class ClientKey:
    """What a client process holds: a model at a batch size, its MPS share, and which copy it is."""

    model: str
    batch_size: int
    percent: int | None
    copy: int = 0  # a mix with the model twice at the same share needs two processes


class Client:
    """One client process and its JSON-lines protocol."""

    def __init__(self, key: ClientKey, backend: str, env: Mapping[str, str]) -> None:
        self.key = key
        share = {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(key.percent)} if key.percent is not None else {}
        child_env = {
            **os.environ,
            **env,
            **share,
            "CUDA_DEVICE_MAX_CONNECTIONS": str(CLIENT_QUEUES),
            "PYTHONUNBUFFERED": "1",
        }
        cmd = [sys.executable, "-m", "eclip_ray.bench.mps_client"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env)
        self.name = f"{key.model}@{key.batch_size}" + (f"#{key.copy}" if key.copy else "")
        self.ready: dict[str, Any] | None = None
        self.send({"model": key.model, "batch_size": key.batch_size, "backend": backend})

    def send(self, message: dict[str, Any]) -> None:
        self.proc.stdin.write(json.dumps(message) + "\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]

    def receive(self, timeout_s: float) -> dict[str, Any]:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
        if not line:
            code = self.proc.poll()
            state = f"exited with code {code}" if code is not None else f"sent nothing in {timeout_s:g} s"
            raise RuntimeError(f"MPS client {self.name} {state}")
        msg = json.loads(line)
        if "error" in msg:
            raise RuntimeError(f"MPS client {self.name} failed: {msg['error']}\n{msg.get('traceback', '')}")
        return msg

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"quit": True})
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


class MpsClients:
    """Client processes kept across windows and mixes (one set of processes serves a whole load search)."""

    def __init__(
        self, backend: str, env: Mapping[str, str], max_clients: int = MAX_CLIENTS, start_timeout_s: float = 300.0
    ) -> None:
        self.backend, self.env = backend, dict(env)
        self.max_clients, self.start_timeout_s = max_clients, start_timeout_s
        self.live: dict[ClientKey, Client] = {}

    def ensure(self, keys: Sequence[ClientKey]) -> float:
        """Start every client of ``keys`` not running yet, all at once; return the seconds it took."""
        t0 = time.perf_counter()
        missing = [k for k in dict.fromkeys(keys) if k not in self.live]
        spare = [k for k in self.live if k not in keys]
        while spare and len(self.live) + len(missing) > self.max_clients:
            self.live.pop(spare.pop(0)).stop()
        started = {k: Client(k, self.backend, self.env) for k in missing}
        self.live.update(started)
        try:
            for c in started.values():
                c.ready = c.receive(self.start_timeout_s)
        except BaseException:
            for k in started:
                self.live.pop(k).stop()
            raise
        return time.perf_counter() - t0

    def close(self) -> None:
        for c in self.live.values():
            c.stop()
        self.live.clear()


def client_keys(models: Mapping[str, str], batch: Mapping[str, int], percent: Mapping[str, int] | None) -> dict:
    """Instance -> the key of the client that serves it (copies numbered where a key repeats)."""
    out, seen = {}, {}
    for n, m in models.items():
        base = ClientKey(m, int(batch[n]), None if percent is None else int(percent[n]))
        seen[base] = seen.get(base, -1) + 1
        out[n] = ClientKey(base.model, base.batch_size, base.percent, seen[base])
    return out


class MpsSession:
    """The instances of one mix, each served by its client, driven window after window."""

    def __init__(
        self,
        clients: MpsClients,
        keys: Mapping[str, ClientKey],
        meter: EnergyMeter | None,
        note: str,
        servers: Callable[[], list[str]] | None = None,
    ) -> None:
        self.clients, self.keys = clients, dict(keys)
        self.startup_s = clients.ensure(list(keys.values()))
        self.meter, self.energy_note = meter, note
        self.order = list(keys)
        self.servers = servers() if servers is not None else None  # asked while every client is connected

    def window(
        self,
        load: Load,
        *,
        warmup_s: float,
        window_s: float,
        seed: int = 0,
        energy: bool = True,
        only: Sequence[str] | None = None,
        steering: Any = None,
        plans: Any = None,
    ) -> Window:
        """One window of every instance (or ``only`` these) under ``load``, at one shared instant."""
        if steering is not None or plans is not None:
            raise ValueError("MPS clients run each instance on the whole GPU: no plans or steering")
        names = list(only) if only is not None else self.order
        n = len(self.order)
        start_wall = time.time() + max(warmup_s, 0.1)  # every client has its command before the window opens
        for name in names:
            i = self.order.index(name)
            lane_load = load.for_lane(i, n) if only is None else load
            self._client(name).send(
                {
                    "window": {
                        "instance": name,
                        "index": i,
                        "load": lane_load.to_dict(),
                        "start_wall": start_wall,
                        "window_s": window_s,
                        "seed": seed,
                    }
                }
            )
        measured = _measure(self.meter if energy else None, start_wall, window_s)
        done = {name: self._client(name).receive(window_s + warmup_s + 120.0) for name in names}
        lanes = {name: LaneResult.from_dict(m["result"]) for name, m in done.items()}
        seconds = measured.seconds if measured is not None else sum(m["seconds"] for m in done.values()) / len(done)
        note = "" if measured is not None else (self.energy_note or "no energy meter")
        loops = [m["loop_us"] for m in done.values() if m.get("loop_us") is not None]
        return Window(seconds, lanes, measured, note, sum(loops) / len(loops) if loops else None)

    def _client(self, name: str) -> Client:
        return self.clients.live[self.keys[name]]

    def describe(self) -> dict[str, Any]:
        return {
            "clients": {n: self._client(n).ready for n in self.order},
            "client_work_queues": CLIENT_QUEUES,
            "startup_s": round(self.startup_s, 2),
            "servers": self.servers,
        }

    def close(self) -> None:
        """Nothing to free: the clients serve the next mix (``MpsClients.close`` stops them)."""


def _measure(meter: EnergyMeter | None, start_wall: float, window_s: float):
    time.sleep(max(0.0, start_wall - time.time()))
    if meter is None or not meter.available:
        time.sleep(window_s)
        return None
    meter.begin_window("mps")
    time.sleep(max(0.0, start_wall + window_s - time.time()))
    return meter.end_window("mps")
