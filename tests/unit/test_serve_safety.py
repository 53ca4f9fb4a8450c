"""Safe defaults: loopback only, limits on, nothing unpickled, models only from where the config allows."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from eclip_ray.actor.loader import zoo_entry
from eclip_ray.actor.spec import TensorSpec
from eclip_ray.serve import AppConfig, Limits, ModelConfig, load_config
from eclip_ray.serve.cli import add_parser, app_config

ROOT = Path(__file__).resolve().parents[2]


def _serve_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    return parser.parse_args(["serve", *argv])


def test_http_binds_to_loopback_unless_configured():
    assert AppConfig(models=[ModelConfig(name="tiny-cnn")]).host == "127.0.0.1"
    assert app_config(_serve_args())[0].host == "127.0.0.1"  # eclip-ray serve with the example config
    assert app_config(_serve_args("--host", "0.0.0.0"))[0].host == "0.0.0.0"
    for path in sorted((ROOT / "deployments").glob("*.yaml")):
        assert load_config(path)[0].host == "127.0.0.1", path
    serve_config = pytest.importorskip("ray.serve.config")  # `serve run` without http_options: Ray's default
    assert serve_config.HTTPOptions().host == "127.0.0.1"


def test_limits_are_on_by_default():
    limits = Limits()
    assert limits.max_request_bytes == 64 << 20 and limits.max_queue_size == 256
    assert limits.reject_over_slo and limits.request_timeout_s == 30 and limits.retry_after_s == 1
    assert ModelConfig(name="m").max_queue_size is None  # the app's bound applies
    assert ModelConfig(name="m").front_bound() == 32  # requests the HTTP front holds per model
    assert limits.proxy_queue_size == 8 and limits.front_slo_share == 0.5
    assert AppConfig(models=[ModelConfig(name="m")]).http_options()["request_timeout_s"] == 65  # no request hangs


UNSAFE = re.compile(
    r"\bpickle\b|cloudpickle|torch\.load\(|allow_pickle\s*=\s*True|np\.load\(|yaml\.load\(|\beval\(|\bexec\("
)


# The one module that unpickles: what Python code handed to eclip_ray.serve.model, in the GPU actor. A ModelSource is
# never made from a config file or a request (pydantic takes nothing but the object: test_serve_python_api.py).
PYTHON_SOURCES = {"eclip_ray/actor/source.py"}


@pytest.mark.parametrize("package", ["eclip_ray/serve", "eclip_ray/actor"])
def test_nothing_from_the_network_is_unpickled(package):
    # Bodies are JSON and raw numbers (codec.py); config files are read with yaml.safe_load.
    hits = [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for path in sorted((ROOT / package).rglob("*.py"))
        if str(path.relative_to(ROOT)) not in PYTHON_SOURCES
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if UNSAFE.search(line) and "nothing is unpickled" not in line
    ]
    assert hits == []


def _served(loader: str) -> ModelConfig:
    return ModelConfig(name="m", loader=loader, max_batch_size=1, inputs=(TensorSpec("x", "FP32", (4,)),))


@pytest.mark.parametrize(
    ("loader", "allowed"),
    [
        ("os:system", ()),
        ("subprocess:run", ["mine"]),
        ("mine_evil.nets:build", ["mine"]),
        ("mine:build", ["mine.nets"]),
    ],
)
def test_the_actor_loads_import_paths_only_under_allowed_modules(loader, allowed):
    # Checked again in the actor, so that a config that skipped validation cannot run arbitrary code.
    with pytest.raises(ValueError, match="not under allowed_modules"):
        zoo_entry(_served(loader), allowed)


def test_an_allowed_factory_loads():
    entry = zoo_entry(_served("collections:OrderedDict"), ["collections"])
    assert entry.kind == "custom" and entry.input_names == ("x",)
