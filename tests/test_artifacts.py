"""Where MLflow artifacts go (tracking/common.py: one rule for every tracker): beside the store,
never into the folder a run starts in; an experiment whose location may vanish is named in one
line. And a retrain whose report fails after its trials ends every run it started."""
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from conftest import tiny_config
from drivers import drive

from goldnas_ray.run.loop import run_local
from goldnas_ray.tracking.common import TrackingError, artifact_root, experiment_id, resolve_uri


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _artifact_files(client, run_id, path=None):
    """Every artifact file of a run, listed through MLflow's client."""
    found = []
    for item in client.list_artifacts(run_id, path):
        found += _artifact_files(client, run_id, item.path) if item.is_dir else [item.path]
    return found


def test_a_search_started_elsewhere_keeps_its_artifacts_inside_out(tmp_path):
    start, out = tmp_path / "start", tmp_path / "out"
    start.mkdir()
    proc = drive("search.py", "--local", "--smoke-test", "--max-epochs", "1", "--out", str(out), cwd=start)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert list(start.iterdir()) == []  # no mlruns/, nothing at all
    records = json.loads((out / "records.json").read_text())
    client = _client(f"sqlite:///{out / 'mlflow.db'}")
    run = client.get_run(records["mlflow_run_id"])
    assert client.get_experiment(run.info.experiment_id).artifact_location == (out / "mlartifacts").as_uri()
    files = _artifact_files(client, run.info.run_id)
    assert {"records.json", "history.parquet", "config.yaml", "front.json"} <= set(files)
    assert {f"genotypes/{Path(a['genotype']).name}" for a in records["architectures"]} <= set(files)
    stored = out / "mlartifacts" / run.info.run_id / "artifacts"
    assert sorted(files) == sorted(str(p.relative_to(stored)) for p in stored.rglob("*") if p.is_file())


def test_the_rule_puts_artifacts_beside_the_store(tmp_path):
    assert artifact_root(f"sqlite:///{tmp_path}/db/mlflow.db") == (tmp_path / "db" / "mlartifacts").as_uri()
    assert artifact_root("http://127.0.0.1:5000") is None  # the server's artifact store
    assert artifact_root(f"file://{tmp_path}/store") is None  # inside the file store, MLflow's own default
    with pytest.raises(TrackingError, match="no folder to keep the runs' artifacts beside"):
        artifact_root("postgresql://user@db.example/mlflow")


def test_a_store_in_a_jobs_working_copy_is_refused(tmp_path, monkeypatch):
    """What `ray job submit --working-dir` sets in its entrypoint: a store named relative to the
    copy would vanish with it, its artifacts too."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_1"}}))
    for uri in ("sqlite:///mlflow.db", "mlruns", f"file://{tmp_path}/mlruns"):
        with pytest.raises(TrackingError, match="temporary copy of its working directory"):
            resolve_uri(tmp_path / "out", uri)
    elsewhere = tmp_path.parent / "kept.db"
    assert resolve_uri(tmp_path / "out", f"sqlite:///{elsewhere}") == f"sqlite:///{elsewhere}"
    assert resolve_uri(tmp_path / "out", "http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_an_existing_experiment_in_a_place_that_may_vanish_is_named_in_one_line(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = _client(uri)
    job_copy = tmp_path / "ray" / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1" / "mlruns"
    made = {name: client.create_experiment(name, artifact_location=where) for name, where in
            (("in-a-job", job_copy.as_uri()), ("relative", str(tmp_path / "x")), ("beside", artifact_root(uri)))}
    # MLflow makes a location absolute when it creates an experiment; older stores hold relative ones
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        db.execute("UPDATE experiments SET artifact_location = 'mlruns/2' WHERE name = 'relative'")
    capsys.readouterr()
    for name, exp in made.items():
        assert experiment_id(client, name) == exp
        printed = capsys.readouterr().out.splitlines()
        if name == "beside":
            assert printed == []
        else:
            assert len(printed) == 1 and printed[0].startswith(f"warning: MLflow experiment '{name}' keeps")
            assert (str(job_copy.as_uri()) if name == "in-a-job" else "mlruns/2") in printed[0]


def test_a_retrain_whose_report_fails_after_the_trials_ends_every_run_failed(ray_cluster, tmp_path):
    """The trials finish, then the report cannot be written (trials.parquet is a folder, made
    while the trials run): the parent and every child end FAILED, none RUNNING; with the fault
    gone, --resume writes the report and ends them FINISHED."""
    search, out = tmp_path / "search", tmp_path / "retrain"
    run_local(tiny_config(max_epochs=1, lambda0=1.0, xi_max=0.5, t0=0, record_gap=0.02, record_min_gap=0.0),
              search, log=lambda _: None)

    def fault():  # once the trials are planned; they run for seconds more: the report is not written yet
        while not (out / "retrain.json").is_file() and not done.is_set():
            time.sleep(0.05)
        if not done.is_set():
            (out / "trials.parquet").mkdir()

    done = threading.Event()
    watcher = threading.Thread(target=fault, daemon=True)
    watcher.start()
    run = drive("retrain.py", "--search-dir", str(search), "--epochs", "1", "--set", "retrain.batch_size=128",
                "--set", "retrain.latency_repeats=0", "--out", str(out), cluster=ray_cluster)
    done.set()
    watcher.join()
    console = run.console
    assert (out / "trials.parquet").is_dir(), console[-3000:]
    assert run.returncode != 0 and "IsADirectoryError" in console, console[-3000:]
    assert "trials.parquet" in console and not (out / "frontier.csv").exists()
    manifest = json.loads((out / "retrain.json").read_text())
    client = _client(f"sqlite:///{out / 'mlflow.db'}")  # a search tracked nowhere: the retrain's own store
    parent = client.get_run(manifest["mlflow_run_id"])
    assert client.get_experiment(parent.info.experiment_id).artifact_location == (out / "mlartifacts").as_uri()
    children = manifest["mlflow_child_run_ids"].values()
    assert parent.info.status == "FAILED"
    assert [client.get_run(c).info.status for c in children] == ["FAILED"] * len(children)

    (out / "trials.parquet").rmdir()
    proc = drive("retrain.py", "--resume", "--out", str(out), cluster=ray_cluster)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "frontier.csv").is_file()
    assert client.get_run(manifest["mlflow_run_id"]).info.status == "FINISHED"
    for child in children:
        assert client.get_run(child).info.status == "FINISHED"
        [output] = client.get_run(child).outputs.model_outputs  # its network: a logged model beside the store
        kept = out / "mlartifacts" / "models" / output.model_id / "artifacts"
        assert client.get_logged_model(output.model_id).artifact_location == kept.as_uri()
        assert (kept / "MLmodel").is_file() and (kept / "goldnas" / "weights.safetensors").is_file()
