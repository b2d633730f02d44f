"""The cluster launcher configs under cluster/ are valid for the pinned Ray."""
import json
import re
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
    assert mounted[0] == "."  # the repository itself, so `ray up` ships the code it runs
    assert mounted[1] == "~/.goldnas-cluster"  # the secrets cluster/make_secrets.sh makes
    assert {"**/.venv", "**/.git"} <= set(config["rsync_exclude"])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_node_requires_the_token_and_mlflow_requires_a_user(path):
    config = yaml.safe_load(path.read_text())
    assert any("~/.ray/auth_token" in cmd for cmd in config["setup_commands"])
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = [cmd for cmd in config[key] if "ray start" in cmd]
        assert start and all("RAY_AUTH_MODE=token" in cmd and "mlflow.env" in cmd and "GOLDNAS_RUNS=" in cmd
                             for cmd in start), key
    server = " ".join(config["head_setup_commands"])
    assert "--app-name basic-auth" in server and "MLFLOW_AUTH_CONFIG_PATH" in server


@pytest.mark.mlflow
def test_the_secrets_make_an_mlflow_server_that_only_its_user_can_write_to(tmp_path):
    """cluster/make_secrets.sh's files, used as the launcher configs use them: the server
    refuses a search without the user of mlflow.env, before any training, and takes it with."""
    import os
    import subprocess
    import sys

    from conftest import BIN, free_port, wait_http

    secrets = tmp_path / "secrets"
    subprocess.run([str(ROOT / "cluster" / "make_secrets.sh"), str(secrets)], check=True, capture_output=True)
    again = subprocess.run([str(ROOT / "cluster" / "make_secrets.sh"), str(secrets)], capture_output=True, text=True)
    assert again.returncode == 2 and "exists" in again.stderr  # never overwrites a cluster's secrets
    env_of = lambda name: dict(line.split("=", 1) for line in (secrets / name).read_text().split())  # noqa: E731
    port = free_port()
    server_env = dict(os.environ, MLFLOW_AUTH_CONFIG_PATH=str(secrets / "mlflow-auth.ini"), **env_of("mlflow-server.env"))
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
                             "--port", str(port), "--backend-store-uri", f"sqlite:///{tmp_path / 'm.db'}",
                             "--artifacts-destination", str(tmp_path / "art"), "--workers", "1"],
                            cwd=tmp_path, env=server_env, stdout=open(tmp_path / "server.log", "w"),
                            stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    search = [sys.executable, str(ROOT / "pipelines" / "search.py"), "--local", "--smoke-test", "--mlflow-uri", uri]
    try:
        wait_http(uri + "/health", timeout=120)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        refused = subprocess.run(search + ["--out", str(tmp_path / "s1")], capture_output=True, text=True,
                                 env=clean, timeout=300)
        assert refused.returncode == 2 and "asks for credentials" in refused.stderr
        assert not (tmp_path / "s1").exists()
        taken = subprocess.run(search + ["--out", str(tmp_path / "s2")], capture_output=True, text=True,
                               env=dict(clean, **env_of("mlflow.env")), timeout=300)
        assert taken.returncode == 0, taken.stderr[-2000:]
        assert re.search(rf"MLflow run \w+: open {re.escape(uri)}/#/experiments/\d+/runs\n", taken.stdout), taken.stdout[-2000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_both_configs_exist():
    assert {p.name for p in CONFIGS} == {"aws-gpu.yaml", "onprem.yaml"}
