"""Declaring applications: validation, defaults, and reading Serve config files."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from eclip_ray.serve import AppConfig, ModelConfig, load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "deployments" / "example.yaml"


def test_zoo_models_get_their_inputs_and_batch_sizes():
    cfg = AppConfig(models=[ModelConfig(name="tiny-bert", max_batch_size=6)]).resolved()
    served = cfg.models[0]
    assert served.loader_name == "tiny-bert" and served.captured_sizes() == (1, 2, 4, 6)
    assert [(t.name, t.datatype, t.shape) for t in served.inputs] == [("input_ids", "INT64", (16,))]


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"models": [{"name": "a", "max_batch_sz": 4}]}, "max_batch_sz\n  Unexpected keyword argument"),
        ({"models": [{"name": "a"}], "gpu": 2}, "Extra inputs are not permitted"),
        ({"models": [{"name": "a"}, {"name": "a"}]}, "model names repeat"),
        ({"models": [{"name": "a", "replicas": 3}], "gpus": 2}, "asks for 3 replicas but the app has 2 GPUs"),
        ({"models": [{"name": "a", "max_batch_size": 8, "batch_sizes": [1, 4]}]}, "cannot hold max_batch_size 8"),
        ({"models": [{"name": "a/b"}]}, "model name 'a/b' must match"),
        ({"models": [{"name": "a", "max_batch_size": 0}]}, "max_batch_size must be 1 to 1024"),
        ({"models": [{"name": "m", "loader": "os:system"}]}, "not under allowed_modules"),
        ({"models": [{"name": "m", "loader": "mine.nets:build"}], "allowed_modules": ["mine"]}, "declare its inputs"),
        (
            {"models": [{"name": "m", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}]}]},
            "needs a fixed shape",
        ),
        ({"models": [{"name": "m", "inputs": [{"name": "x", "datatype": "STRING", "shape": [1]}]}]}, "datatype"),
    ],
)
def test_invalid_configs_say_why(config, words):
    with pytest.raises(ValidationError, match=None) as e:
        AppConfig.model_validate(config)
    assert words in str(e.value)


def test_an_allowed_import_path_with_inputs_is_accepted():
    cfg = AppConfig.model_validate(
        {
            "allowed_modules": ["mine"],
            "models": [
                {"name": "m", "loader": "mine.nets:build", "inputs": [{"name": "x", "datatype": "FP32", "shape": [4]}]}
            ],
        }
    )
    assert cfg.resolved().models[0].loader_name == "mine.nets:build"


def test_safe_defaults():
    cfg = AppConfig(models=[ModelConfig(name="tiny-cnn")])
    assert cfg.host == "127.0.0.1" and cfg.allowed_modules == [] and cfg.limits.max_request_bytes == 64 << 20


def test_the_example_serve_config_is_an_app_config():
    cfg, app = load_config(EXAMPLE)
    assert [m.name for m in cfg.models] == ["resnet50", "bert-base"]
    assert app["import_path"] == "eclip_ray.serve.api:app_builder" and cfg.host == "127.0.0.1"
    assert cfg.http_options() == {"host": "127.0.0.1", "port": 8000, "request_timeout_s": 65}


def test_the_proxy_timeout_outlasts_the_model_deployments_waits_unless_set():
    cfg = AppConfig.model_validate({"models": [{"name": "tiny-cnn"}], "limits": {"request_timeout_s": 10}})
    assert cfg.http_options()["request_timeout_s"] == 25  # a route, then the batch: 2 x 10 s, plus 5 s
    assert cfg.model_copy(update={"http_timeout_s": 3.0}).http_options()["request_timeout_s"] == 3.0
    with pytest.raises(ValueError, match="http_timeout_s"):
        AppConfig.model_validate({"models": [{"name": "tiny-cnn"}], "http_timeout_s": 0})


@pytest.mark.parametrize(("bound", "replicas", "batch", "expected"), [(None, 1, 8, 32), (None, 2, 4, 32), (5, 1, 8, 5)])
def test_the_front_bound_is_two_waves_of_full_batches_unless_set(bound, replicas, batch, expected):
    m = ModelConfig(name="m", max_ongoing_requests=bound, replicas=replicas, max_batch_size=batch)
    assert m.front_bound() == expected
    with pytest.raises(ValueError, match="max_ongoing_requests"):
        ModelConfig(name="m", max_ongoing_requests=0)


def test_a_bare_app_config_file(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text("models:\n  - name: tiny-cnn\ngpus: 1\nbackend: cpu\n")
    cfg, app = load_config(path)
    assert cfg.backend == "cpu" and app == {}


@pytest.mark.parametrize(("cpus", "replicas"), [(None, 1), (2, 1), (16, 2), (32, 4), (128, 4)])
def test_ingress_replicas_follow_the_cpus_unless_set(monkeypatch, cpus, replicas):
    cfg = AppConfig.model_validate({"models": [{"name": "tiny-cnn"}]})
    monkeypatch.setattr("eclip_ray.serve.config.os.cpu_count", lambda: cpus)
    assert cfg.ingress_count() == replicas
    assert cfg.model_copy(update={"ingress_replicas": 3}).ingress_count() == 3
    with pytest.raises(ValueError, match="ingress_replicas"):
        AppConfig.model_validate({"models": [{"name": "tiny-cnn"}], "ingress_replicas": 0})
