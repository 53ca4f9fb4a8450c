"""The ``mps`` policy: one process per model instance under NVIDIA MPS, started and stopped by the harness.

The control daemon gets its own pipe and log directories under /tmp, so it
serves only the clients started here (hardware-notes.md section 4):
``nvidia-cuda-mps-control -d`` starts it and ``echo quit | nvidia-cuda-mps-control``
stops it. Each client (``eclip_ray.bench.mps_client``) runs its instance on
the whole GPU with ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE`` set; the parent
starts every client's window at one shared instant and measures the
device's energy over it.
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
from pathlib import Path
from typing import Any

from eclip_ray.bench.driver import LaneResult, Window
from eclip_ray.energy import EnergyMeter
from eclip_ray.errors import BackendError

CONTROL = "nvidia-cuda-mps-control"


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


def _receive(proc: subprocess.Popen, timeout_s: float, name: str) -> dict[str, Any]:
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else ""  # type: ignore[union-attr]
    if not line:
        state = "exited with code " + str(proc.poll()) if proc.poll() is not None else f"sent nothing in {timeout_s} s"
        raise RuntimeError(f"MPS client {name} {state}")
    msg = json.loads(line)
    if "error" in msg:
        raise RuntimeError(f"MPS client {name} failed: {msg['error']}\n{msg.get('traceback', '')}")
    return msg


def _send(proc: subprocess.Popen, message: dict[str, Any]) -> None:
    proc.stdin.write(json.dumps(message) + "\n")  # type: ignore[union-attr]
    proc.stdin.flush()  # type: ignore[union-attr]


def run_clients(
    specs: Sequence[dict[str, Any]],
    *,
    env: Mapping[str, str],
    percent: Mapping[str, int] | None,
    warmup_s: float,
    window_s: float,
    meter: EnergyMeter | None,
    energy_note: str = "",
    servers: Callable[[], list[str]] | None = None,
    start_timeout_s: float = 300.0,
) -> tuple[Window, dict[str, Any]]:
    """Start one client per spec, run their windows at one instant, and collect them.

    Each spec is ``{"instance", "model", "batch_size", "index", "backend", "load", "seed"}``.
    Returns the window and ``{"clients": what each reported when ready, "servers": servers()}``,
    ``servers`` being asked while every client is connected.
    """
    procs: dict[str, subprocess.Popen] = {}
    try:
        for spec in specs:
            name = spec["instance"]
            extra = {"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(percent[name])} if percent else {}
            child_env = {**os.environ, **env, **extra, "PYTHONUNBUFFERED": "1"}
            cmd = [sys.executable, "-m", "eclip_ray.bench.mps_client"]
            procs[name] = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env)
            _send(procs[name], {**spec, "window_s": window_s})
        ready = {n: _receive(p, start_timeout_s, n) for n, p in procs.items()}
        info = {"clients": ready, "servers": servers() if servers is not None else None}
        start_wall = time.time() + warmup_s
        for p in procs.values():
            _send(p, {"start_wall": start_wall})
        energy = _measure(meter, start_wall, window_s)
        done = {n: _receive(p, window_s + 120.0, n) for n, p in procs.items()}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
            p.wait()
    lanes = {n: LaneResult.from_dict(m["result"]) for n, m in done.items()}
    seconds = energy.seconds if energy is not None else sum(m["seconds"] for m in done.values()) / len(done)
    note = "" if energy is not None else (energy_note or "no energy meter")
    loops = [m["loop_us"] for m in done.values() if m.get("loop_us") is not None]
    return Window(seconds, lanes, energy, note, sum(loops) / len(loops) if loops else None), info


def _measure(meter: EnergyMeter | None, start_wall: float, window_s: float):
    time.sleep(max(0.0, start_wall - time.time()))
    if meter is None or not meter.available:
        time.sleep(window_s)
        return None
    meter.begin_window("mps")
    time.sleep(max(0.0, start_wall + window_s - time.time()))
    return meter.end_window("mps")
