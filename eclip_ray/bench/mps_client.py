"""One MPS client process of the MPS policies: one model instance, driven like the in-process lanes.

Started by :mod:`eclip_ray.bench.mps` with ``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``
and ``CUDA_DEVICE_MAX_CONNECTIONS`` (and the daemon's pipe directory) in its
environment. It speaks JSON lines: it reads its spec (model, batch size,
backend), loads and captures its model, writes ``{"ready": ...}``, then serves
windows until told to quit: each ``{"window": {"instance", "index", "load",
"start_wall", "window_s", "seed"}}`` (``start_wall`` a ``time.time()`` instant
shared by every client and the parent's energy window; until then it runs the
load as warm-up) is answered with ``{"result": ...}``; ``{"quit": true}`` or the
end of its input ends it. Anything else the process prints goes to stderr.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from typing import IO, Any

import torch

from eclip_ray.bench.driver import Lane, drive
from eclip_ray.bench.load import Load
from eclip_ray.bench.machine import whole_only
from eclip_ray.bench.policies import WHOLE_PLAN
from eclip_ray.models.zoo import get as zoo_get
from eclip_ray.partition import open_backend
from eclip_ray.runtime import Runtime


def _send(out: IO[str], message: dict[str, Any]) -> None:
    out.write(json.dumps(message) + "\n")
    out.flush()


def _window(lane: Lane, cmd: dict[str, Any]) -> dict[str, Any]:
    lane.name, lane.index = cmd["instance"], int(cmd["index"])  # the seed of its arrivals follows the mix
    start_at = time.perf_counter() + (float(cmd["start_wall"]) - time.time())
    w = drive(
        [lane],
        Load.from_dict(cmd["load"]),
        warmup_s=0.0,
        window_s=float(cmd["window_s"]),
        seed=int(cmd["seed"]),
        start_at=start_at,
    )
    return {"result": w.lanes[lane.name].to_dict(), "seconds": w.seconds, "loop_us": w.loop_us}


def serve(spec: dict[str, Any], out: IO[str], commands: IO[str]) -> None:
    be = open_backend(spec["backend"])
    geometry = be.geometry()
    be.close()
    with Runtime(backend=spec["backend"], layout=whole_only(geometry)) as rt:
        model = spec["model"]
        runner = rt.load(model, zoo_get(model))
        batch = int(spec["batch_size"])
        if runner.on_gpu:
            runner.capture(WHOLE_PLAN, batch)
        lane = Lane(model, runner, WHOLE_PLAN, batch, runner.example_inputs(batch))
        seen_sms = torch.cuda.get_device_properties(0).multi_processor_count if runner.on_gpu else None
        _send(
            out,
            {
                "ready": True,
                "pid": os.getpid(),
                "device_sm_count": seen_sms,
                "active_thread_percentage": os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"),
                "work_queues": os.environ.get("CUDA_DEVICE_MAX_CONNECTIONS"),
            },
        )
        for line in commands:
            cmd = json.loads(line)
            if cmd.get("quit"):
                return
            _send(out, _window(lane, cmd["window"]))


def main() -> int:
    out = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol's own copy of stdout
    os.dup2(2, 1)  # every other print (libraries, warnings) goes to stderr
    sys.stdout = sys.stderr
    try:
        serve(json.loads(sys.stdin.readline()), out, sys.stdin)
    except Exception as e:  # the parent reports it as the policy's error
        _send(out, {"error": repr(e), "traceback": traceback.format_exc()})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
