"""The README's commands, run as written (tests/readme_blocks.py says what is added to shrink
the work): the default run, a cluster started with `ray start`, a search and a retrain
submitted with `ray job submit`, the dashboard's token, the MLflow UI, and the cluster's stop
(run when the session's cluster is torn down, in conftest; it stops that cluster's processes
only, and a test here shows that another cluster on the machine keeps running)."""
import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import ray_nodes
from conftest import BIN, ROOT, SESSION, free_port, wait_http
from drivers import drive
from readme_blocks import blocks

pytestmark = [pytest.mark.ray]


def test_every_documented_block_is_there_and_names_the_token():
    found = blocks()
    assert {"local-run", "cluster-start", "job-search", "job-retrain", "dashboard-token", "mlflow-ui",
            "cluster-stop"} <= set(found)
    assert any(line.startswith("export RAY_AUTH_MODE=token") for line in found["cluster-start"])


def test_the_default_run_starts_its_own_ray_and_leaves_a_search(ray_cluster):
    proc = ray_cluster["local_run"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ours = [line for line in proc.stdout.splitlines() if not line.startswith("(")]
    assert ours[0].startswith("Ray: started an embedded local Ray on 127.0.0.1")
    records = json.loads((Path(ray_cluster["env"]["RUN"]).parent / "local-run" / "records.json").read_text())
    assert records["finished"] and records["architectures"]


def test_search_then_retrain_as_jobs(ray_cluster, readme_shell):
    search = readme_shell.run("job-search")
    assert search.returncode == 0, search.stdout[-4000:] + search.stderr[-4000:]
    assert "succeeded" in search.stdout.lower()
    run = Path(readme_shell.env["RUN"])
    records = json.loads((run / "search" / "records.json").read_text())
    assert records["workers"] == 2 and records["finished"] and records["architectures"]
    retrain = readme_shell.run("job-retrain")
    assert retrain.returncode == 0, retrain.stdout[-4000:] + retrain.stderr[-4000:]
    assert (run / "retrain" / "frontier.csv").is_file() and (run / "retrain" / "retrain.json").is_file()
    _every_artifact_lies_beside_the_store(run / "search", ray_cluster["temp_dirs"], readme_shell.runs.parent)

    # the MLflow UI command of the README answers on /health and shows the search's store
    server = readme_shell.start("mlflow-ui")
    try:
        port = readme_shell.mlflow_port
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120)
        query = json.dumps({"experiment_ids": [], "max_results": 10}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search",
                                     data=query, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            names = {e["name"] for e in json.loads(resp.read())["experiments"]}
        assert {"goldnas-search", "goldnas-retrain"} <= names
    finally:
        server.terminate()
        server.wait(timeout=30)


def _every_artifact_lies_beside_the_store(store, temp_dirs, scratch):
    """The jobs ran in Ray's temporary copies of the working directory (one per node): those
    received no MLflow files, and every artifact of every run in ``store``/mlflow.db lies in
    ``store``/mlartifacts, read back through MLflow's client with the copies gone."""
    import mlflow.artifacts
    from mlflow.tracking import MlflowClient

    copies = [c for d in temp_dirs for c in d.glob("**/runtime_resources/working_dir_files")]
    assert copies, f"no job working directory under {temp_dirs}"
    assert [p for c in copies for p in c.glob("*/ml*")] == []  # no mlruns/, mlartifacts/ or mlflow.db
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiments = [e for e in client.search_experiments() if e.name != "Default"]
    assert {e.name for e in experiments} == {"goldnas-search", "goldnas-retrain"}
    assert {e.artifact_location for e in experiments} == {(store / "mlartifacts").as_uri()}
    runs = client.search_runs([e.experiment_id for e in experiments])
    assert len(runs) >= 3  # the search, the retrain's parent and its children
    for c in copies:
        c.rename(c.with_name("working_dir_files.gone"))  # as when Ray removes them
    try:
        for r in runs:
            run_id = r.info.run_id
            if "mlflow.parentRunId" in r.data.tags:  # a trial: its network is a logged model of the run
                [output] = client.get_run(run_id).outputs.model_outputs
                source = client.get_logged_model(output.model_id).artifact_location
                kept = store / "mlartifacts" / "models" / output.model_id / "artifacts"
                wanted = ["MLmodel", "goldnas/weights.safetensors"]
            else:
                source, kept = r.info.artifact_uri, store / "mlartifacts" / run_id / "artifacts"
                wanted = ["frontier.csv" if r.data.tags.get("goldnas.stage") == "retrain" else "records.json"]
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(scratch / run_id),
                                                           tracking_uri=uri))
            files = sorted(str(p.relative_to(got)) for p in got.rglob("*") if p.is_file())
            assert files and files == sorted(str(p.relative_to(kept)) for p in kept.rglob("*") if p.is_file())
            assert set(wanted) <= set(files), (r.info.run_name, files)
    finally:
        for c in copies:
            c.with_name("working_dir_files.gone").rename(c)


def test_the_dashboard_token_is_the_clusters(ray_cluster, readme_shell):
    proc = readme_shell.run("dashboard-token", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    token = (Path(readme_shell.env["HOME"]) / ".ray" / "auth_token").read_text().strip()
    assert token and token in proc.stdout


def test_without_an_address_a_pipeline_never_joins_the_running_cluster(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)  # drive's env adds to this process's
    env = {k: v for k, v in ray_cluster["env"].items() if k != "RAY_ADDRESS"}
    proc = drive("search.py", "--smoke-test", "--no-mlflow", "--max-epochs", "1", "--out", str(tmp_path / "own"),
                 env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Ray: started an embedded local Ray on 127.0.0.1" in proc.stdout
    assert "Found multiple active Ray instances" not in proc.console


def test_joining_without_the_token_says_what_to_set(ray_cluster, tmp_path):
    """Refused in one line, and soon: a process that kept retrying would be killed by the timeout."""
    env = {k: v for k, v in ray_cluster["env"].items() if k != "RAY_AUTH_MODE"}
    env["RAY_ADDRESS"] = ray_cluster["address"]
    proc = subprocess.run([sys.executable, "pipelines/search.py", "--smoke-test", "--no-mlflow",
                           "--out", str(tmp_path / "x")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot join the Ray cluster") and "set RAY_AUTH_MODE=token" in last
    assert not (tmp_path / "x").exists()


def test_the_test_ports_replace_the_readmes(readme_shell):
    script = readme_shell.script("cluster-start") + readme_shell.script("job-search")
    assert f"--port {readme_shell.gcs_port}" in script and "#" not in script
    assert f"http://127.0.0.1:{readme_shell.dashboard_port}" in script and ":8265" not in script


def test_stopping_a_test_cluster_leaves_the_other_clusters_running(ray_cluster):
    """What the suite does instead of `ray stop` (which ends every Ray cluster of the user): a
    cluster started with a mark of its own is stopped by that mark, and the session's cluster,
    here the user's cluster that must survive, keeps running with both its nodes."""
    mark = f"{SESSION}-bystander"
    root = Path(f"/tmp/{mark}")
    env = dict(ray_cluster["env"], **{ray_nodes.MARKER: mark, "RAY_TMPDIR": str(root)})
    root.mkdir(exist_ok=True)
    started = subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port",
                              str(free_port()), "--num-cpus", "1", "--include-dashboard", "false",
                              "--disable-usage-stats"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stderr[-2000:]
        assert len(ray_nodes.marked(mark)) >= 2  # GCS, raylet, ...
        ray_nodes.stop(mark)
        assert ray_nodes.marked(mark) == []
        status = subprocess.run([str(BIN / "ray"), "status", "--address", ray_cluster["address"]],
                                env=ray_cluster["env"], capture_output=True, text=True, timeout=120)
        assert status.returncode == 0, status.stderr[-2000:]
        assert status.stdout.count(" node_") == 2, status.stdout  # the head and the second node
    finally:
        ray_nodes.stop(mark)
        shutil.rmtree(root, ignore_errors=True)
