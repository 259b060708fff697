"""cluster.yaml passes Ray's own cluster-config validation (offline)."""
from __future__ import annotations

from pathlib import Path

import yaml

CLUSTER = Path(__file__).parents[3] / "cluster.yaml"


def test_cluster_yaml_validates_with_ray():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load(CLUSTER.read_text()))
    validate_config(config)  # raises on a schema violation
    assert config["provider"]["type"] == "aws"
    workers = config["available_node_types"]["gpu_worker"]
    assert workers["min_workers"] == 0 and workers["max_workers"] >= 1
    assert config["idle_timeout_minutes"] > 0
    assert any("pip install" in cmd and "-e ." in cmd for cmd in config["setup_commands"])
