"""Where MLflow artifacts go (tracking/common.py: one rule for every tracker): beside the store,
never into the folder a run starts in; an experiment whose location may vanish is named in one
line. And a retrain whose report fails after its trials ends every run it started."""
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from goldnas_ray.tracking.common import TrackingError, artifact_root, experiment_id

ROOT = Path(__file__).resolve().parents[1]


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
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "search.py"), "--local", "--smoke-test",
                           "--max-epochs", "1", "--out", str(out)],
                          cwd=start, capture_output=True, text=True, timeout=600)
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
