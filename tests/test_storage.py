"""Runs that live in object storage: a real S3 endpoint (moto's server on 127.0.0.1), a real
two-node Ray cluster whose nodes have separate temp dirs, and a real MLflow server whose
artifacts go to the same bucket."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import BIN, kill_rank_after_report, straight_retrain, submit, trial_histories
from datafiles import pixel_digests, upload, write_imagefolder, write_parquet

from goldnas_ray.data import DataError
from goldnas_ray.files.store import StorageError, location

ROOT = Path(__file__).resolve().parents[1]


def _files(uri):
    return set(location(uri).files())


# ---- the storage layer alone ----------------------------------------------------------------
def test_location_reads_writes_and_lists_objects(s3):
    loc = location(s3["uri"]("unit/a"))
    assert loc.is_remote and not loc.exists() and loc.names() == []
    (loc / "x" / "f.json").write_text('{"k": 1}')
    (loc / "log.jsonl").append_line("one")
    (loc / "log.jsonl").append_line("two")
    (loc / "p.parquet").write(lambda tmp: pd.DataFrame({"a": [1, 2]}).to_parquet(tmp))
    assert json.loads((loc / "x" / "f.json").read_text()) == {"k": 1}
    assert (loc / "log.jsonl").read_text().splitlines() == ["one", "two"]
    assert pd.read_parquet((loc / "p.parquet").open_buffer())["a"].tolist() == [1, 2]
    assert _files(loc.uri) == {"x/f.json", "log.jsonl", "p.parquet"}
    assert loc.is_dir() and (loc / "x" / "f.json").is_file() and not (loc / "x").is_file()
    assert loc.uri.endswith("scheme=http") and str(loc) == f"s3://{s3['bucket']}/unit/a"
    loc.probe()
    assert _files(loc.uri) == {"x/f.json", "log.jsonl", "p.parquet"}  # the probe left nothing


@pytest.mark.parametrize("where, message", [
    ("ftp://host/x", "unknown storage scheme 'ftp'"),
    ("s3:///no-bucket", "no bucket named"),
])
def test_malformed_locations_are_refused(where, message):
    with pytest.raises(StorageError, match=message):
        location(where)


def test_a_missing_bucket_fails_before_any_work(s3, tmp_path):
    uri = f"s3://no-such-bucket/run?endpoint_override={s3['endpoint']}&scheme=http"
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "search.py"), "--local", "--smoke-test",
                           "--no-mlflow", "--out", uri], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 2
    assert "the bucket does not exist" in proc.stderr and "epoch" not in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_object_storage_needs_a_tracking_server_or_no_mlflow(s3, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "search.py"), "--local", "--smoke-test",
                           "--out", s3["uri"]("needs-mlflow")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120, env={k: v for k, v in os.environ.items()
                                                          if k != "MLFLOW_TRACKING_URI"})
    assert proc.returncode == 2 and "--mlflow-uri" in proc.stderr and "--no-mlflow" in proc.stderr
    assert _files(s3["uri"]("needs-mlflow")) == set()


def test_a_local_search_resumes_from_the_bucket(s3, tmp_path):
    uri = s3["uri"]("local-resume")
    out = location(uri)
    script = str(ROOT / "pipelines" / "search.py")
    settings = ["--local", "--no-mlflow", "--set", "space.num_cells=3", "--set", "space.init_channels=4",
                "--set", "data.batch_size=128", "--max-epochs", "10"]
    args = [*settings, "--out", uri]
    run = subprocess.Popen([sys.executable, script, *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and run.poll() is None and not (out / "checkpoints/latest.pt").is_file():
        time.sleep(0.1)
    run.kill()
    run.wait()
    stopped = json.loads((out / "records.json").read_text())
    assert not stopped["finished"], "the search ended before it could be interrupted"
    # a second new run into the same place is refused: earlier results are never overwritten
    again = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, cwd=tmp_path,
                           timeout=300)
    assert again.returncode == 2 and "already exists and is not empty" in again.stderr
    resumed = subprocess.run([sys.executable, script, "--local", "--no-mlflow", "--resume", "--out", uri],
                             capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {out}" in resumed.stdout
    assert list(tmp_path.iterdir()) == []  # the bucket run wrote nothing locally
    records = json.loads((out / "records.json").read_text())
    assert records["finished"] and records["epochs"] == 10
    # the same search uninterrupted, on disk: the same records and the same history
    straight = subprocess.run([sys.executable, script, *settings, "--out", str(tmp_path / "straight")],
                              capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    expected = json.loads((tmp_path / "straight" / "records.json").read_text())["architectures"]
    assert records["architectures"] == expected
    history = pd.read_parquet((out / "history.parquet").open_buffer())
    reference = pd.read_parquet(tmp_path / "straight" / "history.parquet")
    assert history["epoch"].tolist() == list(range(1, 11))
    columns = ["epoch", "lambda", "delta", "flops", "params", "alive_ops", "pruned", "loss", "accuracy"]
    assert history[columns].equals(reference[columns])


# ---- on the two-node cluster ----------------------------------------------------------------
@pytest.mark.ray
@pytest.mark.mlflow
def test_search_and_retrain_live_in_the_bucket(ray_cluster, s3, mlflow_s3_server, tmp_path):
    """Two workers on two nodes write the search only to the bucket; a retrain reads it back
    from there and writes its report there; MLflow's artifacts land in the same bucket."""
    search, retrain = s3["uri"]("ray/search"), s3["uri"]("ray/retrain")
    proc = submit(ray_cluster, "search.py", "--smoke-test", "--workers", "2", "--out", search,
                  "--mlflow-uri", mlflow_s3_server, "--experiment", "ci-s3")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    files = _files(search)
    records = json.loads((location(search) / "records.json").read_text())
    assert records["finished"] and records["workers"] == 2
    expected = {"records.json", "history.parquet", "config.yaml", "checkpoints/latest.pt",
                ".workers/rank-0.json", ".workers/rank-1.json", ".workers/consistency.jsonl"}
    expected |= {a["genotype"] for a in records["architectures"]}
    assert expected <= files, expected - files
    assert any(f.startswith("ray/") and f.endswith("latest.pt") for f in files)  # Ray Train's checkpoints
    ranks = [json.loads((location(search) / f".workers/rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["node_id"] != ranks[1]["node_id"]
    assert not (ROOT / "runs" / "search").exists()

    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=mlflow_s3_server)
    run = client.get_run(records["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["goldnas.out"] == location(search).uri
    assert any(f.startswith("mlflow/") and f.endswith("records.json") for f in _files(s3["uri"]("")))

    proc = submit(ray_cluster, "retrain.py", "--search-dir", search, "--smoke-test", "--out", retrain,
                  "--no-mlflow")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    files = _files(retrain)
    assert {"frontier.csv", "frontier.parquet", "frontier.png", "trials.parquet", "retrain.json",
            "search/records.json"} <= files
    table = pd.read_parquet((location(retrain) / "frontier.parquet").open_buffer())
    assert sorted(table["arch_id"]) == sorted(a["id"] for a in records["architectures"])


@pytest.mark.ray
def test_a_killed_worker_resumes_from_the_checkpoint_in_the_bucket(ray_cluster, s3, tmp_path):
    from test_ray_cluster import KILL_ARGS

    out = location(s3["uri"]("killed"))
    env = dict(ray_cluster["env"], RAY_ADDRESS=ray_cluster["address"])
    run = subprocess.Popen([sys.executable, str(ROOT / "pipelines" / "search.py"), *KILL_ARGS, "--no-mlflow",
                            "--out", out.uri], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           env=env, cwd=tmp_path)
    victim = kill_rank_after_report(out, 3, run)  # epoch 2's checkpoint is Ray Train's by then
    assert victim is not None, "the run ended before a worker could be killed"
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-3000:]
    assert json.loads((out / ".workers" / "rank-1.json").read_text())["pid"] != victim
    epochs = [json.loads(line)["epoch"] for line in (out / ".workers" / "consistency.jsonl").read_text().splitlines()]
    assert epochs.count(1) == 1 and sorted(set(epochs)) == list(range(1, 8)), epochs
    assert json.loads((out / "records.json").read_text())["finished"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.ray
def test_an_interrupted_retrain_resumes_from_the_bucket(ray_cluster, s3, tmp_path):
    search, out = s3["uri"]("rt-search"), location(s3["uri"]("rt-out"))
    env = dict(ray_cluster["env"], RAY_ADDRESS=ray_cluster["address"])
    script = str(ROOT / "pipelines" / "search.py")
    proc = subprocess.run([sys.executable, script, "--local", "--smoke-test", "--max-epochs", "1", "--no-mlflow",
                           "--out", search], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    job = f"s3-retrain-{int(time.time())}"
    proc = submit(ray_cluster, "retrain.py", "--search-dir", search, "--no-mlflow", "--epochs", "4",
                  "--set", "retrain.batch_size=128", "--out", out.uri, job_id=job)
    assert proc.returncode == 0, proc.stderr
    deadline = time.time() + 300
    while time.time() < deadline and not any("checkpoint_" in f for f in out.files()):
        time.sleep(0.3)
    stop = subprocess.run([str(BIN / "ray"), "job", "stop", "--address", ray_cluster["dashboard"], job],
                          capture_output=True, text=True, timeout=120, env=ray_cluster["env"])
    assert stop.returncode == 0, stop.stderr
    assert not (out / "frontier.csv").is_file(), "the retrain finished before it could be interrupted"
    # `ray job stop` is SIGTERM to the driver: one line says how far it got, no traceback
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", ray_cluster["dashboard"], job],
                          capture_output=True, text=True, timeout=120, env=ray_cluster["env"]).stdout
    stopped = [line for line in logs.splitlines() if line.startswith("stopped:")]
    assert len(stopped) == 1 and "trials finished; resume with:" in stopped[0], logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]

    proc = submit(ray_cluster, "retrain.py", "--resume", "--out", out.uri, "--no-mlflow")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    manifest = json.loads((out / "retrain.json").read_text())
    trials = pd.read_parquet((out / "trials.parquet").open_buffer())
    for key in manifest["trials"]:
        assert list(trials[trials["key"] == key]["epoch"]) == [1, 2, 3, 4], key
    starts = [json.loads(line)["start_epoch"] for key in manifest["trials"]
              for line in (out / ".trials" / f"{key}.jsonl").read_text().splitlines() if "start_epoch" in line]
    assert any(s > 0 for s in starts), f"no trial continued from a checkpoint: {starts}"
    assert trial_histories(trials) == straight_retrain(out)  # as if it had never stopped
    assert (out / "frontier.csv").is_file()


def _submit_env(cluster, script, env_vars, *args, job_id=None):
    no_wait = ["--no-wait", "--submission-id", job_id] if job_id else []
    runtime = {"excludes": [".venv", ".git", "runs", "data"], "env_vars": env_vars}
    return subprocess.run([str(BIN / "ray"), "job", "submit", "--address", cluster["dashboard"], *no_wait,
                           "--working-dir", str(ROOT), "--runtime-env-json", json.dumps(runtime), "--",
                           sys.executable, f"pipelines/{script}", *args],
                          capture_output=True, text=True, timeout=600, env=cluster["env"])


@pytest.mark.ray
def test_a_relative_out_in_a_job_needs_a_root(ray_cluster, s3):
    """A job runs in a temporary copy of --working-dir: a relative --out would vanish with it."""
    refused = submit(ray_cluster, "search.py", "--smoke-test", "--no-mlflow", "--out", "runs/vanishing")
    assert refused.returncode != 0
    assert "temporary copy" in refused.stdout + refused.stderr and "GOLDNAS_RUNS" in refused.stdout + refused.stderr
    root = s3["uri"]("roots")
    kept = _submit_env(ray_cluster, "search.py", {"GOLDNAS_RUNS": root}, "--smoke-test", "--no-mlflow",
                       "--out", "kept")
    assert kept.returncode == 0, kept.stdout[-3000:] + kept.stderr[-3000:]
    assert (location(root) / "kept" / "records.json").is_file()


@pytest.mark.ray
@pytest.mark.mlflow
def test_a_search_stopped_before_its_first_checkpoint_ends_its_mlflow_run_killed(ray_cluster, mlflow_server,
                                                                                tmp_path):
    from mlflow.tracking import MlflowClient

    out, job, experiment = tmp_path / "stopped", f"stop-{int(time.time())}", f"ci-stop-{int(time.time())}"
    # an epoch of minutes (batches of 2, 16 channels, 360 steps per worker): the job is stopped
    # a few seconds after its MLflow run opens, long before the first checkpoint
    proc = submit(ray_cluster, "search.py", "--set", "space.init_channels=16", "--set", "data.batch_size=2",
                  "--workers", "2", "--mlflow-uri", mlflow_server, "--experiment", experiment,
                  "--out", str(out), job_id=job)
    assert proc.returncode == 0, proc.stderr
    client, runs, deadline = MlflowClient(tracking_uri=mlflow_server), [], time.time() + 120
    while time.time() < deadline and not runs:
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs([exp.experiment_id]) if exp else []
        time.sleep(0.2)
    assert runs, "the search never opened its MLflow run"
    stop = subprocess.run([str(BIN / "ray"), "job", "stop", "--address", ray_cluster["dashboard"], job],
                          capture_output=True, text=True, timeout=120, env=ray_cluster["env"])
    assert stop.returncode == 0, stop.stderr
    assert not (out / "checkpoints" / "latest.pt").is_file(), "stopped too late: a checkpoint exists"
    deadline = time.time() + 30
    while time.time() < deadline and client.get_run(runs[0].info.run_id).info.status == "RUNNING":
        time.sleep(0.5)
    assert client.get_run(runs[0].info.run_id).info.status == "KILLED"


# ---- datasets in the bucket: splits found through the storage layer ---------------------------
def _split_sets(tmp_path):
    """A Parquet set with train/ and val/ (60 + 20 rows, every image its own) and an image folder
    (train/ and val/ of 3 classes), written locally first."""
    pq_root = tmp_path / "pq"
    write_parquet(pq_root / "train" / "part-0.parquet", n=60, size=(16, 16), seed=0)
    write_parquet(pq_root / "val" / "part-0.parquet", n=20, size=(16, 16), seed=1)
    folder = write_imagefolder(tmp_path / "folder", size=(16, 16))
    return pq_root, folder


def _decoded(root, split):
    """The images of a local split, read with pyarrow and Pillow alone (not the loaders under
    test): (C, H, W) uint8 arrays."""
    import io

    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    def pixels(blob):
        return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).transpose(2, 0, 1)

    files = sorted((root / split).glob("*.parquet"))
    if files:
        return [pixels(b) for f in files for b in pq.read_table(f).column("image").to_pylist()]
    return [pixels(f.read_bytes()) for f in sorted((root / split).glob("*/*"))]


@pytest.mark.s3
@pytest.mark.parametrize("dataset", ["parquet", "imagefolder"])
def test_a_set_in_the_bucket_is_split_as_on_disk_and_no_val_image_is_trained_on(s3, tmp_path, dataset):
    from goldnas_ray.core.config import DataConfig
    from goldnas_ray.data.from_config import load_data

    pq_root, folder = _split_sets(tmp_path)
    local = pq_root if dataset == "parquet" else folder
    uri = upload(local, s3["uri"](f"sets/{dataset}"))
    data = load_data(DataConfig(dataset=dataset, root=uri))
    train, val = pixel_digests(_decoded(local, "train")), pixel_digests(_decoded(local, "val"))
    assert pixel_digests(data.x_train) == train and pixel_digests(data.x_test) == val
    assert not pixel_digests(data.x_train) & val  # no validation image reaches training
    on_disk = load_data(DataConfig(dataset=dataset, root=str(local)))
    assert torch.equal(on_disk.x_train, data.x_train) and torch.equal(on_disk.y_test, data.y_test)


@pytest.mark.s3
def test_a_table_without_splits_holds_out_every_tenth_row_in_the_bucket_too(s3, tmp_path):
    from goldnas_ray.core.config import DataConfig
    from goldnas_ray.data.from_config import load_data

    table = write_parquet(tmp_path / "one" / "all.parquet", n=40, size=(8, 8))
    uri = upload(tmp_path / "one", s3["uri"]("sets/one"))
    data = load_data(DataConfig(dataset="parquet", root=uri))
    rows = _decoded_table(table)
    assert pixel_digests(data.x_test) == pixel_digests([rows[i] for i in (9, 19, 29, 39)])
    assert pixel_digests(data.x_train) == pixel_digests([r for i, r in enumerate(rows) if i % 10 != 9])
    (tmp_path / "half" / "train").mkdir(parents=True)
    write_parquet(tmp_path / "half" / "train" / "p.parquet", n=10)
    with pytest.raises(DataError, match=r"holds train/ but no val/"):
        load_data(DataConfig(dataset="parquet", root=upload(tmp_path / "half", s3["uri"]("sets/half"))))


def _decoded_table(path):
    from goldnas_ray.data.datasets import decode_image, image_bytes_of, read_parquet_table

    table = read_parquet_table(location(path))
    return [decode_image(image_bytes_of(b), "x", None) for b in table.column("image").to_pylist()]
