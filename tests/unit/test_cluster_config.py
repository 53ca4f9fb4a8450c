"""cluster.yaml is a cluster-launcher config Ray itself accepts (``ray up`` runs these same checks first)."""

from pathlib import Path

import pytest
import yaml

util = pytest.importorskip("ray.autoscaler._private.util")  # Ray's own config checks (the serve extra)

ROOT = Path(__file__).resolve().parents[2]


def _config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_prepare_and_validate():
    prepared = util.prepare_config(_config())
    util.validate_config(prepared)
    assert prepared["provider"]["type"] == "local"
    assert prepared["max_workers"] == len(prepared["provider"]["worker_ips"])


def test_rays_validation_rejects_a_misspelt_key():
    # The check above could not fail if Ray's validation accepted anything.
    bad = _config()
    bad["setup_comands"] = bad.pop("setup_commands")
    with pytest.raises(Exception, match="setup_comands"):
        util.validate_config(util.prepare_config(bad))


def test_cluster_yaml_names_files_that_exist():
    text = (ROOT / "cluster.yaml").read_text()
    for path in ("scripts/install_offline.sh", "deployments/two-gpus.yaml"):
        assert path in text and (ROOT / path).is_file(), path
