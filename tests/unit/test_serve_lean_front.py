"""The front imports no torch: the ingress module, its config, its HTTP app and its gRPC codec, in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys

from eclip_ray.actor.remote import WORK_QUEUES
from eclip_ray.serve import AppConfig

PROBE = """
import json, sys
from eclip_ray.serve.config import AppConfig
from eclip_ray.serve._private import grpc_codec
from eclip_ray.serve._private.ingress import Ingress, make_app
import eclip_ray.actor.remote  # the actor class the front holds handles of
cfg = AppConfig.model_validate(json.loads(sys.argv[1]))
app = make_app(Ingress(cfg, None, metrics=False))
grpc_codec.pb()
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "transformers", "cuda"))
print(json.dumps({"heavy": heavy, "routes": len(app.routes)}))
"""


def test_the_ingress_builds_its_app_from_a_resolved_config_without_torch():
    resolved = AppConfig.model_validate(
        {"models": [{"name": "tiny-cnn", "max_batch_size": 4}, {"name": "tiny-bert", "slo_ms": 50}]}
    ).resolved()  # here, where the app is built, the zoo (torch) fills in the inputs
    doc = json.dumps(resolved.model_dump(mode="json"))
    out = subprocess.run([sys.executable, "-c", PROBE, doc], capture_output=True, text=True, timeout=120, check=True)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["heavy"] == [] and found["routes"] > 5


def test_the_actor_module_keeps_the_work_queue_count_of_the_cuda_backend():
    from eclip_ray.partition.cuda import WORK_QUEUES as CUDA_WORK_QUEUES

    assert WORK_QUEUES == CUDA_WORK_QUEUES
