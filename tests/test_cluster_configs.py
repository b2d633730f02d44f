"""The cluster launcher configs under cluster/ are valid for the pinned Ray."""
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "cluster").glob("*.yaml"))


@pytest.fixture(scope="module")
def schema():
    import ray

    return json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_cluster_config_is_valid_and_installs_the_pinned_requirements(path, schema):
    config = yaml.safe_load(path.read_text())
    jsonschema.validate(config, schema)
    assert any("-r requirements.txt" in cmd for cmd in config["setup_commands"])
    mounted = list(config["file_mounts"].values())
    assert mounted == ["."]  # the repository itself, so `ray up` ships the code it runs
    assert {"**/.venv", "**/.git"} <= set(config["rsync_exclude"])


def test_both_configs_exist():
    assert {p.name for p in CONFIGS} == {"aws-gpu.yaml", "onprem.yaml"}
