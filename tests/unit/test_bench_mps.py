"""The MPS policy's client processes and daemon control, without a GPU or an MPS daemon.

The clients' protocol (spec, ready, one shared start instant, result) runs on
the CPU backend; the daemon itself only exists on a GPU machine, where the
harness starts and stops it (and reports the policy skipped elsewhere).
"""

from __future__ import annotations

import subprocess

import pytest

from eclip_ray.bench import mps
from eclip_ray.bench.load import Load
from eclip_ray.errors import BackendError


def test_clients_run_one_window_at_one_instant_with_their_share():
    specs = [
        {"instance": "cnn", "model": "tiny-cnn", "batch_size": 2, "index": 0, "backend": "cpu",
         "load": Load("closed", 1).to_dict(), "seed": 0},
        {"instance": "cnn-2", "model": "tiny-cnn", "batch_size": 1, "index": 1, "backend": "cpu",
         "load": Load("poisson", rates_rps=(50.0,)).to_dict(), "seed": 0},
    ]  # fmt: skip
    w, info = mps.run_clients(
        specs, env={"OMP_NUM_THREADS": "1"}, percent={"cnn": 30, "cnn-2": 70}, warmup_s=1.0, window_s=0.6, meter=None,
        energy_note="cpu", servers=lambda: ["4242"],
    )  # fmt: skip
    assert set(w.lanes) == {"cnn", "cnn-2"}
    assert w.lanes["cnn"].requests > 0 and w.lanes["cnn"].batch_size == 2
    assert w.lanes["cnn-2"].arrivals > 0
    assert w.energy is None and w.energy_note == "cpu" and w.seconds >= 0.6 * 0.9
    shares = {n: c["active_thread_percentage"] for n, c in info["clients"].items()}
    assert shares == {"cnn": "30", "cnn-2": "70"} and info["servers"] == ["4242"]


def test_a_failing_client_is_reported_with_its_error():
    spec = {"instance": "x", "model": "no-such-model", "batch_size": 1, "index": 0, "backend": "cpu",
            "load": Load().to_dict(), "seed": 0}  # fmt: skip
    with pytest.raises(RuntimeError, match="no-such-model"):
        mps.run_clients([spec], env={}, percent=None, warmup_s=0.1, window_s=0.1, meter=None)


def test_daemon_uses_private_directories_under_tmp_and_reports_start_failures(monkeypatch):
    calls = []

    def fake_run(cmd, **kw):
        calls.append((cmd, kw.get("input"), kw["env"]["CUDA_MPS_PIPE_DIRECTORY"]))
        rc = 1 if cmd[-1] == "-d" else 0
        return subprocess.CompletedProcess(cmd, rc, stdout="", stderr="not permitted")

    monkeypatch.setattr(subprocess, "run", fake_run)
    d = mps.MpsDaemon()
    assert str(d.root).startswith("/tmp/eclip-mps-")
    assert d.env["CUDA_MPS_LOG_DIRECTORY"].startswith(str(d.root))
    with pytest.raises(BackendError, match="not permitted"):
        d.start()
    assert calls[0][0] == [mps.CONTROL, "-d"] and calls[0][2] == d.env["CUDA_MPS_PIPE_DIRECTORY"]
    d.stop()  # never started: nothing to quit
    assert len(calls) == 1 and not d.root.exists()
    d.running = True
    d.stop()
    assert calls[-1][1] == "quit\n" and not d.running
    failed = mps.MpsDaemon()
    with pytest.raises(BackendError), failed:
        pass
    assert not failed.root.exists()
