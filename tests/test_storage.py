"""Runs that live in object storage: a real S3 endpoint (moto's server on 127.0.0.1), a real
two-node Ray cluster whose nodes have separate temp dirs, and a real MLflow server whose
artifacts go to the same bucket."""
import contextlib
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import BIN, kill_rank_after_report, straight_retrain, submit, trial_histories
from datafiles import frontier_summary, pixel_digests, records, upload, write_imagefolder, write_parquet
from drivers import drive, stop_when

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
    proc = drive("search.py", "--local", "--smoke-test", "--no-mlflow", "--out", uri, cwd=tmp_path)
    assert proc.returncode == 2
    assert "the bucket does not exist" in proc.stderr and "epoch" not in proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_object_storage_needs_a_tracking_server_or_no_mlflow(s3, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    proc = drive("search.py", "--local", "--smoke-test", "--out", s3["uri"]("needs-mlflow"), cwd=tmp_path)
    assert proc.returncode == 2 and "--mlflow-uri" in proc.stderr and "--no-mlflow" in proc.stderr
    assert _files(s3["uri"]("needs-mlflow")) == set()


def test_a_local_search_resumes_from_the_bucket(s3, tmp_path):
    """A local search into the bucket, its driver killed (SIGKILL) once its first checkpoint
    is there: a new run into the same place is refused, --resume finishes it, and it records
    what the same search uninterrupted on disk records."""
    uri = s3["uri"]("local-resume")
    out = location(uri)
    settings = ["--local", "--no-mlflow", "--set", "space.num_cells=3", "--set", "space.init_channels=4",
                "--set", "data.batch_size=128", "--max-epochs", "6"]
    args = [*settings, "--out", uri]
    # one thread, as the test process computes the rest (conftest): the floats then agree
    run = subprocess.Popen([sys.executable, str(ROOT / "pipelines" / "search.py"), *args], cwd=tmp_path,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 240
    while time.time() < deadline and run.poll() is None and not (out / "checkpoints/latest.pt").is_file():
        time.sleep(0.1)
    run.kill()
    run.wait()
    stopped = json.loads((out / "records.json").read_text())
    assert not stopped["finished"], "the search ended before it could be interrupted"
    # a second new run into the same place is refused: earlier results are never overwritten
    again = drive("search.py", *args, cwd=tmp_path)
    assert again.returncode == 2 and "already exists and is not empty" in again.stderr
    resumed = drive("search.py", "--local", "--no-mlflow", "--resume", "--out", uri, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming {out}" in resumed.stdout
    assert list(tmp_path.iterdir()) == []  # the bucket run wrote nothing locally
    records = json.loads((out / "records.json").read_text())
    assert records["finished"] and records["epochs"] == 6
    # the same search uninterrupted, on disk: the same records and the same history
    straight = drive("search.py", *settings, "--out", str(tmp_path / "straight"), cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr[-2000:]
    expected = json.loads((tmp_path / "straight" / "records.json").read_text())["architectures"]
    assert records["architectures"] == expected
    history = pd.read_parquet((out / "history.parquet").open_buffer())
    reference = pd.read_parquet(tmp_path / "straight" / "history.parquet")
    assert history["epoch"].tolist() == list(range(1, 7))
    columns = ["epoch", "lambda", "delta", "flops", "params", "alive_ops", "pruned", "loss", "accuracy"]
    assert history[columns].equals(reference[columns])


# ---- on the two-node cluster ----------------------------------------------------------------
# the 2-worker search of this module: a smoke search of 5 epochs (n0 operators pruned every
# epoch, a record before every pruning), the same in the job and in the run whose worker is killed
SEARCH = ["--smoke-test", "--workers", "2", "--max-epochs", "5", "--seed", "5"]
EPOCHS = list(range(1, 6))


@pytest.fixture(scope="module")
def job_search(ray_cluster, s3, mlflow_s3_server):
    """The 2-worker search as one `ray job submit --working-dir` job: --out relative, under
    GOLDNAS_RUNS in the bucket; tracked in the MLflow server whose artifacts live in the bucket.
    Returns (where it lies, the submit command's outcome)."""
    root = s3["uri"]("jobs")
    proc = submit(ray_cluster, "search.py", *SEARCH, "--out", "search", "--mlflow-uri", mlflow_s3_server,
                  "--experiment", "ci-search", env_vars={"GOLDNAS_RUNS": root})
    return location(root) / "search", proc


def _history(out):
    return pd.read_parquet((out / "history.parquet").open_buffer())


@pytest.mark.mlflow
def test_a_search_job_of_two_workers_on_two_nodes_lives_in_the_bucket_and_in_mlflow(job_search, ray_cluster,
                                                                                    s3, mlflow_s3_server, tmp_path):
    """The job's relative --out lands under GOLDNAS_RUNS (a job runs in a temporary copy of its
    working directory); the two ranks ran on the two nodes with identical alive sets every
    epoch; the search's files, Ray Train's checkpoints and MLflow's artifacts all lie in the
    bucket; the MLflow run holds every epoch's metrics once, its params, tags and artifacts; a
    retrain reads the search from the bucket (--search-dir s3://...) and writes its report
    there, a frontier of every recorded architecture."""
    search, proc = job_search
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "succeeded" in proc.stdout.lower()
    found = records(search)
    archs = found["architectures"]
    assert found["finished"] and found["workers"] == 2 and archs
    files = _files(search.uri)
    expected = {"records.json", "history.parquet", "config.yaml", "checkpoints/latest.pt",
                ".workers/rank-0.json", ".workers/rank-1.json", ".workers/consistency.jsonl"}
    expected |= {a["genotype"] for a in archs}
    assert expected <= files, expected - files
    assert any(f.startswith("ray/") and f.endswith("latest.pt") for f in files)  # Ray Train's checkpoints
    assert not (ROOT / "runs" / "search").exists()

    # the two ranks ran on the two nodes, and held identical alive sets and alphas every epoch
    ranks = [json.loads((search / f".workers/rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["node_id"] != ranks[1]["node_id"]
    lines = [json.loads(line) for line in (search / ".workers/consistency.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == EPOCHS
    assert all(line["ranks"][0] == line["ranks"][1] for line in lines)
    assert len({line["ranks"][0]["alive"] for line in lines}) == len(EPOCHS)  # pruned each epoch (the smoke xi_max)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_s3_server)
    run = client.get_run(found["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["goldnas.out"] == search.uri
    assert client.get_experiment(run.info.experiment_id).name == "ci-search"
    assert run.data.params["search.max_epochs"] == "5" and run.data.params["space.num_cells"] == "3"
    assert run.data.tags["dataset"] == "digits" and run.data.tags["workers"] == "2"
    assert float(run.data.tags["space_log10_size"]) == pytest.approx(found["space_log10_size"], abs=0.01)
    for name in ("lambda", "delta_lambda", "flops", "params", "alive_ops", "pruned_ops", "train_loss",
                 "train_acc", "epoch_seconds", "images_per_second"):
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == EPOCHS, name
    flops = sorted(client.get_metric_history(run.info.run_id, "flops"), key=lambda m: m.step)
    assert [m.value for m in flops] == [float(v) for v in _history(search)["flops"]]
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"records.json", "history.parquet", "genotypes", "plots"} <= top
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {"plots/flops.png", "plots/lambda.png"}
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "genotypes")}
    # each record's genotype, its drawing and its inherited weights
    assert logged == {a["genotype"] for a in archs} | {a["genotype"].replace(".json", ".png") for a in archs} | {
        a["weights"] for a in archs}
    assert any(f.startswith("mlflow/") and f.endswith("records.json") for f in _files(s3["uri"]("")))

    retrain = location(s3["uri"]("jobs-retrain"))
    done = drive("retrain.py", "--search-dir", search.uri, "--smoke-test", "--epochs", "1", "--no-mlflow",
                 "--out", retrain.uri, cluster=ray_cluster, cwd=tmp_path)
    assert done.returncode == 0, done.console[-4000:]
    assert list(tmp_path.iterdir()) == []  # the bucket run wrote nothing locally
    assert {"frontier.csv", "frontier.parquet", "frontier.png", "trials.parquet", "retrain.json",
            "search/records.json"} <= _files(retrain.uri)
    table = pd.read_parquet((retrain / "frontier.parquet").open_buffer())
    assert sorted(table["arch_id"]) == sorted(a["id"] for a in archs)


@pytest.mark.mlflow
def test_a_killed_worker_is_replaced_and_the_search_in_the_bucket_records_what_the_job_did(
        job_search, ray_cluster, s3, mlflow_s3_server, tmp_path):
    """The job's search again, into the bucket, rank 1 SIGKILLed once epoch 2's report has
    returned (epoch 1's checkpoint is Ray Train's by then, docs/search.md): the restarted worker
    group goes on from the checkpoint in the bucket and records exactly what the job recorded
    uninterrupted, logging into the same MLflow run, each epoch once."""
    straight, _ = job_search
    out = location(s3["uri"]("killed"))
    killed = []
    done = drive("search.py", *SEARCH, "--mlflow-uri", mlflow_s3_server, "--experiment", "ci-killed",
                 "--out", out.uri, cluster=ray_cluster, cwd=tmp_path,
                 during=lambda run: killed.append(kill_rank_after_report(out, 2, run)))
    assert killed[0] is not None, "the run ended before a worker could be killed"
    assert done.returncode == 0, done.console[-3000:]
    assert list(tmp_path.iterdir()) == []  # the bucket run wrote nothing locally
    assert json.loads((out / ".workers/rank-1.json").read_text())["pid"] != killed[0], "rank 1 was not restarted"
    # the new group continued from the registered checkpoint, not from scratch: epoch 1 (done
    # before the kill) was never run again, and every epoch ran to the end at least once
    epochs = [json.loads(line)["epoch"] for line in (out / ".workers/consistency.jsonl").read_text().splitlines()]
    assert epochs.count(1) == 1 and sorted(set(epochs)) == EPOCHS, epochs
    assert records(out)["finished"] and frontier_summary(out) == frontier_summary(straight)
    a, b = _history(straight), _history(out)
    assert list(a["flops"]) == list(b["flops"]) and list(a["epoch"]) == list(b["epoch"]) == EPOCHS
    assert a["loss"].tolist() == pytest.approx(b["loss"].tolist(), rel=1e-5)

    from mlflow.tracking import MlflowClient

    found = records(out)
    client = MlflowClient(tracking_uri=mlflow_s3_server)
    runs = client.search_runs([client.get_experiment_by_name("ci-killed").experiment_id])
    assert [r.info.run_id for r in runs] == [found["mlflow_run_id"]]
    assert runs[0].info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(found["mlflow_run_id"], "flops")) == EPOCHS


@pytest.mark.ray
@pytest.mark.mlflow
def test_ctrl_c_stops_a_retrain_in_the_bucket_in_one_line_and_resume_finishes_it(ray_cluster, s3, mlflow_s3_server,
                                                                                   tmp_path):
    """A 1-epoch search in the bucket, tracked in the server whose artifacts are there; its
    retrain (--search-run: the search's files read from the MLflow run's artifacts, the retrain
    written to the bucket) gets SIGINT the moment a trial's epoch 2 of 4 is printed (the driver
    paused while the signal is sent): exit 130 with one line saying how far it got and how to
    resume, no traceback and none of Ray's own advice, every MLflow run it started KILLED;
    `--resume` then ends every trial exactly where an uninterrupted retrain does
    (conftest.straight_retrain), each epoch logged once, and writes the report to the bucket."""
    from mlflow.tracking import MlflowClient

    searched = drive("search.py", "--local", "--smoke-test", "--max-epochs", "1", "--mlflow-uri", mlflow_s3_server,
                     "--experiment", "ci-rt-search", "--out", s3["uri"]("rt-search"))
    assert searched.returncode == 0, searched.console[-3000:]
    search = records(location(s3["uri"]("rt-search")))
    out = location(s3["uri"]("rt-out"))
    env = dict(ray_cluster["env"], RAY_ADDRESS=ray_cluster["address"])
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as err:
        run = subprocess.Popen([sys.executable, "pipelines/retrain.py", "--search-run", search["mlflow_run_id"],
                                "--mlflow-uri", mlflow_s3_server, "--random", "1", "--epochs", "4",
                                "--set", "retrain.batch_size=128", "--out", out.uri],
                               stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
        printed = stop_when(run, lambda lines: re.search(r" epoch +2/4 ", lines[-1]))
        assert re.search(r" epoch +2/4 ", printed[-1]), "".join(printed)[-3000:]  # it came before the end
        rest, _ = run.communicate(timeout=120)
    console = "".join(printed) + rest + errors.read_text()
    assert run.returncode == 130, console[-3000:]
    stopped = [line for line in console.splitlines() if line.startswith("stopped:")]
    assert len(stopped) == 1 and stopped[0].endswith(f"resume with: python pipelines/retrain.py --resume --out {out.uri}")
    assert "trials finished" in stopped[0]
    for noise in ("Traceback", "Tuner.restore", "Resume experiment", "Failed to fetch metrics"):
        assert noise not in console, console[-3000:]
    assert not (out / "frontier.csv").is_file()
    manifest = json.loads((out / "retrain.json").read_text())
    client = MlflowClient(tracking_uri=mlflow_s3_server)
    assert client.get_run(manifest["mlflow_run_id"]).info.status == "KILLED"
    ended = [client.get_run(r).info.status for r in manifest["mlflow_child_run_ids"].values()]
    assert "RUNNING" not in ended and "KILLED" in ended, ended
    assert manifest["trials"] == [f"{a['id']}-s0" for a in search["architectures"]] + ["random-000-s0"]
    assert (out / "search/records.json").is_file()  # read from the MLflow run's artifacts

    resumed = drive("retrain.py", "--resume", "--out", out.uri, cluster=ray_cluster, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.console[-4000:]
    assert list(tmp_path.iterdir()) == [errors]  # the bucket run wrote nothing locally
    trials = pd.read_parquet((out / "trials.parquet").open_buffer())
    starts = [json.loads(line)["start_epoch"] for key in manifest["trials"]
              for line in (out / f".trials/{key}.jsonl").read_text().splitlines() if "start_epoch" in line]
    assert any(s > 0 for s in starts), f"no trial continued from a checkpoint: {starts}"
    # stopped and resumed, every trial ends exactly where an uninterrupted one does
    assert trial_histories(trials) == straight_retrain(out.uri)
    assert {"frontier.csv", "frontier.parquet", "frontier.png", "trials.parquet", "retrain.json",
            "search/records.json"} <= _files(out.uri)

    table = pd.read_parquet((out / "frontier.parquet").open_buffer())
    assert sorted(table["arch_id"]) == sorted([a["id"] for a in search["architectures"]] + ["random-000"])
    assert sorted(table["kind"]) == sorted(["random"] + ["searched"] * len(search["architectures"]))
    # one random architecture: FLOPs within 2% of the median (in log FLOPs) of the searched ones
    target = round(math.exp(statistics.median(math.log(a["flops"]) for a in search["architectures"])))
    rnd = table[table["kind"] == "random"].iloc[0]
    assert abs(rnd["flops"] - target) <= 0.02 * target

    parent = client.get_run(manifest["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["goldnas.search_run_id"] == search["mlflow_run_id"]
    for key, run_id in manifest["mlflow_child_run_ids"].items():
        steps = [m.step for m in client.get_metric_history(run_id, "test_acc")]
        assert sorted(steps) == [1, 2, 3, 4], (key, steps)  # every epoch once, across the restart
        assert client.get_run(run_id).info.status == "FINISHED"


@pytest.mark.ray
def test_a_relative_out_in_a_job_is_refused_in_one_line(ray_cluster):
    """A job runs in a temporary copy of --working-dir: a relative --out would vanish with it.
    Without GOLDNAS_RUNS the job fails with the one error line that says so (with it, the
    module's search job lands under that root: test_a_search_job_of_two_workers_...)."""
    refused = submit(ray_cluster, "search.py", "--smoke-test", "--no-mlflow", "--out", "runs/vanishing")
    assert refused.returncode == 1 and "failed with exit code 2" in refused.stdout, refused.stdout[-3000:]
    # the job's log, and the status message that repeats it, hold the one error line
    errors = {line for line in refused.stdout.splitlines() if line.startswith("error:")}
    assert len(errors) == 1, refused.stdout[-3000:]
    errors = sorted(errors)
    assert errors[0].startswith("error: --out runs/vanishing is relative, and this job runs in a temporary copy")
    assert "set GOLDNAS_RUNS to a root for relative names" in errors[0]
    assert "Traceback" not in refused.stdout and "epoch" not in refused.stdout


@pytest.mark.ray
@pytest.mark.mlflow
def test_a_search_job_stopped_before_its_first_checkpoint_says_so_once_and_ends_its_mlflow_run_killed(
        ray_cluster, mlflow_server, tmp_path):
    """`ray job stop` (SIGTERM to the job's driver) while rank 0 is held (SIGSTOP) from the
    moment it starts, before any epoch: no checkpoint exists, the job's log has the one stop
    line and no traceback, and the MLflow run the driver opened ends KILLED."""
    from mlflow.tracking import MlflowClient

    out, job, experiment = tmp_path / "stopped", f"stop-{int(time.time())}", f"ci-stop-{int(time.time())}"
    proc = submit(ray_cluster, "search.py", "--smoke-test", "--mlflow-uri", mlflow_server, "--experiment",
                  experiment, "--out", str(out), job_id=job)
    assert proc.returncode == 0, proc.stderr
    rank0, deadline, pid = out / ".workers" / "rank-0.json", time.time() + 300, None
    while pid is None and time.time() < deadline:
        try:
            pid = json.loads(rank0.read_text())["pid"]
        except (OSError, ValueError):
            time.sleep(0.05)
    assert pid is not None, "the search's rank 0 never started"
    os.kill(pid, signal.SIGSTOP)  # the moment rank 0 starts: it trains nothing until let go
    try:
        assert not (out / "checkpoints" / "latest.pt").is_file(), "stopped too late: a checkpoint exists"
        stop = subprocess.run([str(BIN / "ray"), "job", "stop", "--address", ray_cluster["dashboard"], job],
                              capture_output=True, text=True, timeout=120, env=ray_cluster["env"])
        assert stop.returncode == 0, stop.stderr
        assert not (out / "checkpoints" / "latest.pt").is_file()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    client = MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert [r.info.status for r in runs] == ["KILLED"]
    logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", ray_cluster["dashboard"], job],
                          capture_output=True, text=True, timeout=120, env=ray_cluster["env"]).stdout
    stopped = [line for line in logs.splitlines() if line.startswith("stopped:")]
    assert len(stopped) == 1 and stopped[0].startswith("stopped: after epoch 0 of at most 3"), logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]


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
