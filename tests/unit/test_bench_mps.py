"""The MPS policies' client processes and daemon control, without a GPU or an MPS daemon.

The clients' protocol (spec, ready, then windows at one shared instant each,
at any load, until quit) runs on the CPU backend; the daemon itself only
exists on a GPU machine, where the harness starts and stops it (and reports
the policies skipped elsewhere).
"""

from __future__ import annotations

import subprocess

import pytest

from eclip_ray.bench import mps
from eclip_ray.bench.load import Load
from eclip_ray.errors import BackendError


@pytest.fixture(scope="module")
def clients():
    pool = mps.MpsClients("cpu", {"OMP_NUM_THREADS": "1", "CUDA_DEVICE_MAX_CONNECTIONS": "32"})
    yield pool
    pool.close()


def test_persistent_clients_serve_windows_at_several_loads_each_with_its_own_rate(clients):
    keys = mps.client_keys({"cnn": "tiny-cnn", "cnn-2": "tiny-cnn"}, {"cnn": 2, "cnn-2": 1}, {"cnn": 30, "cnn-2": 70})
    assert keys["cnn"] != keys["cnn-2"] and keys["cnn"].percent == 30
    session = mps.MpsSession(clients, keys, None, "cpu", servers=lambda: ["4242"])
    pids = {n: c.ready["pid"] for n, c in ((n, clients.live[k]) for n, k in keys.items())}
    # The batch job in closed loop, the service at its own rate: one rate per instance, as in regime A.
    first = session.window(Load.mixed([None, 50.0]), warmup_s=0.3, window_s=0.4)
    second = session.window(Load("poisson", rates_rps=(80.0, 20.0)), warmup_s=0.2, window_s=0.4, seed=3)
    assert set(first.lanes) == {"cnn", "cnn-2"} and first.lanes["cnn"].requests > 0
    assert first.lanes["cnn"].batch_size == 2 and first.lanes["cnn-2"].arrivals > 0
    assert second.lanes["cnn"].arrivals > second.lanes["cnn-2"].arrivals  # 80 against 20 requests/s
    assert first.energy is None and first.energy_note == "cpu" and first.seconds >= 0.4 * 0.9
    info = session.describe()
    assert {n: c["pid"] for n, c in info["clients"].items()} == pids  # the same processes served both windows
    assert {n: c["active_thread_percentage"] for n, c in info["clients"].items()} == {"cnn": "30", "cnn-2": "70"}
    # Each client asks for few hardware work queues: under one MPS server they share one pool.
    assert {c["work_queues"] for c in info["clients"].values()} == {str(mps.CLIENT_QUEUES)}
    assert info["servers"] == ["4242"]
    with pytest.raises(ValueError, match="no plans"):
        session.window(Load(), warmup_s=0.1, window_s=0.1, plans={"cnn": None})


def test_a_mix_reuses_the_clients_it_shares_with_another(clients):
    keys = mps.client_keys({"cnn": "tiny-cnn"}, {"cnn": 2}, {"cnn": 30})
    before = dict(clients.live)
    session = mps.MpsSession(clients, keys, None, "cpu")
    assert clients.live[keys["cnn"]] is before[keys["cnn"]] and session.startup_s < 1.0


def test_a_failing_client_is_reported_with_its_error():
    pool = mps.MpsClients("cpu", {})
    try:
        with pytest.raises(RuntimeError, match="no-such-model"):
            pool.ensure([mps.ClientKey("no-such-model", 1, None)])
        assert not pool.live  # nothing half-started is kept
    finally:
        pool.close()


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
