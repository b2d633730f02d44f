"""Retraining on Ray Tune, for real: the two-node cluster on 127.0.0.1 and the MLflow server of
conftest.py, jobs submitted with `ray job submit`."""
import json
import math
import os
import re
import signal
import shutil
import statistics
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from conftest import straight_retrain, submit, trial_histories
from ddp_reference import straight_retrain_ddp


ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.mlflow]


@pytest.fixture(scope="module")
def pipeline(ray_cluster, mlflow_server, tmp_path_factory):
    """pipelines/pipeline.py as one job: a 1-epoch smoke search (it records its final
    architecture, and the one before the epoch's pruning when that pruning lowered the FLOPs:
    the float trajectory decides), then their retrain beside one random architecture of matched
    FLOPs: 2 or 3 trials x 2 epochs, one CPU each on a cluster of 2 one-CPU nodes."""
    out = tmp_path_factory.mktemp("pipeline") / "p"
    proc = submit(ray_cluster, "pipeline.py", "--smoke-test", "--max-epochs", "1", "--random", "1",
                  "--out", str(out), "--mlflow-uri", mlflow_server, "--experiment", "ci-pipe-search",
                  "--retrain-experiment", "ci-pipe-retrain")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, proc.stdout


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_pipeline_retrains_the_front_concurrently_and_reports_it(pipeline, mlflow_server):
    out, stdout = pipeline
    search = json.loads((out / "search" / "records.json").read_text())
    ids = [a["id"] for a in search["architectures"]]
    assert ids in (["arch-000"], ["arch-000", "arch-001"])
    retrain = out / "retrain"
    manifest = json.loads((retrain / "retrain.json").read_text())
    assert manifest["trials"] == [f"{i}-s0" for i in ids] + ["random-000-s0"]

    # the report agrees with the search's records and with the trials' last epochs
    table = pd.read_parquet(retrain / "frontier.parquet")
    assert list(pd.read_csv(retrain / "frontier.csv")["arch_id"]) == list(table["arch_id"])
    assert (retrain / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    # every trained network timed by the driver: a batch takes longer than one image
    assert (retrain / "frontier_latency.png").read_bytes()[:4] == b"\x89PNG"
    assert (table["latency_ms"] > 0).all() and (table["latency_ms_batch"] > table["latency_ms"]).all()
    assert table["latency_device"].str.contains("cpu, ").all()
    comparison = json.loads((retrain / "comparison.json").read_text())
    assert comparison["latency"]["axis"] == "latency_ms" and "searched" in comparison["latency"]["hypervolume"]
    recorded = {a["id"]: a for a in search["architectures"]} | {
        a["arch_id"]: a for a in manifest["architectures"] if a["kind"] == "random"}
    assert sorted(table["arch_id"]) == sorted(recorded)
    trials = pd.read_parquet(retrain / "trials.parquet")
    for _, row in table.iterrows():
        assert row["kind"] == ("random" if row["arch_id"] == "random-000" else "searched")
        assert row["epochs"] == 2 and row["seeds"] == 1
        assert row["flops"] == recorded[row["arch_id"]]["flops"]
        assert row["params"] == recorded[row["arch_id"]]["params"]
        mine = trials[trials["arch_id"] == row["arch_id"]].sort_values("epoch")
        assert list(mine["epoch"]) == [1, 2]
        assert row["accuracy_mean"] == mine["test_acc"].iloc[-1]
    # on the front: no other architecture has FLOPs <= and accuracy >=, one of them strictly
    rows = table[["flops", "accuracy_mean"]].to_records(index=False).tolist()
    dominated = [any(f <= f0 and a >= a0 and (f < f0 or a > a0) for f, a in rows) for f0, a0 in rows]
    assert list(table["on_front"]) == [not d for d in dominated]
    assert "arch-000" in stdout and "retrain finished" in stdout

    # trials ran at the same time, on both nodes
    spans, nodes = [], set()
    for key in manifest["trials"]:
        first = json.loads((retrain / ".trials" / f"{key}.jsonl").read_text().splitlines()[0])
        spans.append((first["time"], trials[trials["key"] == key]["end_time"].max()))
        nodes.add(first["node_id"])
    assert any(s2 < e1 and s1 < e2 for i, (s1, e1) in enumerate(spans) for s2, e2 in spans[i + 1:]), spans
    assert len(nodes) == 2

    # MLflow: a parent run linked to the search run, one child per trial with its history
    client = _client(mlflow_server)
    parent = client.get_run(manifest["mlflow_run_id"])
    assert parent.info.status == "FINISHED"
    assert client.get_experiment(parent.info.experiment_id).name == "ci-pipe-retrain"
    for exp in (parent.info.experiment_id, client.get_run(search["mlflow_run_id"]).info.experiment_id):
        assert client.get_experiment(exp).tags["mlflow.experimentKind"] == "custom_model_development"
    assert parent.data.tags["goldnas.search_run_id"] == search["mlflow_run_id"]
    assert client.get_run(search["mlflow_run_id"]).info.status == "FINISHED"
    assert {"frontier.csv", "frontier.parquet", "frontier.png", "frontier_latency.png", "trials.parquet"} <= \
        {a.path for a in client.list_artifacts(parent.info.run_id)}
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(r.info.run_name for r in children) == manifest["trials"]
    for child in children:
        p = child.data.params
        assert child.info.status == "FINISHED"
        assert p["kind"] == recorded[p["arch_id"]].get("kind", "searched")
        assert p["seed"] == "0" and p["retrain.epochs"] == "2"
        assert int(p["flops"]) == recorded[p["arch_id"]]["flops"]
        history = sorted(client.get_metric_history(child.info.run_id, "test_acc"), key=lambda m: m.step)
        mine = trials[trials["arch_id"] == p["arch_id"]].sort_values("epoch")
        assert [m.step for m in history] == [1, 2]
        assert [m.value for m in history] == pytest.approx(list(mine["test_acc"]))
        assert [m.step for m in client.get_metric_history(child.info.run_id, "train_loss")] == [1, 2]

    # the fronts as MLflow tables, the search's and the retrain's in one DataFrame
    import mlflow
    import mlflow.pytorch
    import torch

    mlflow.set_tracking_uri(mlflow_server)
    fronts = {}
    for run_id in (search["mlflow_run_id"], parent.info.run_id):
        table = client.load_table(client.get_run(run_id).info.experiment_id, "front.json", run_ids=[run_id],
                                  extra_columns=["run_id"])
        assert set(table["run_id"]) == {run_id}
        fronts[run_id] = table
    assert sorted(fronts[search["mlflow_run_id"]]["id"]) == ids
    assert sorted(fronts[parent.info.run_id]["arch_id"]) == sorted(recorded)
    # each retrained network is an MLflow model in its child run; loaded back, it scores on the
    # test split exactly the accuracy its trial reported for its last epoch
    from goldnas_ray.core.config import Config
    from goldnas_ray.data.from_config import eval_augment, load_data

    data_cfg = Config().data
    data = load_data(data_cfg)
    for child in children:
        model = mlflow.pytorch.load_model(f"runs:/{child.info.run_id}/model")
        correct = total = 0
        with torch.no_grad():
            for xb, yb in data.eval_batches(512, eval_augment(data_cfg)):
                correct += int((model(xb).argmax(1) == yb).sum())
                total += len(yb)
        last = client.get_metric_history(child.info.run_id, "test_acc")
        assert correct / total == pytest.approx(max(last, key=lambda m: m.step).value, abs=1e-9)


def _read_until(run: subprocess.Popen, pattern: str, timeout: float = 300) -> list[str]:
    """The lines ``run`` prints up to the first matching ``pattern`` (all of them if it ends
    first); ``run`` is killed after ``timeout`` seconds, so a hang fails instead of waiting."""
    watchdog = threading.Timer(timeout, run.kill)
    watchdog.start()
    lines = []
    try:
        for line in run.stdout:
            lines.append(line)
            if re.search(pattern, line):
                break
    finally:
        watchdog.cancel()
    return lines


def test_ctrl_c_stops_a_retrain_in_one_line_and_resume_finishes_it(pipeline, ray_cluster, mlflow_server,
                                                                    tmp_path):
    """SIGINT to `pipelines/retrain.py` mid-trial: exit 130 with one line saying how far it got
    and how to resume, no traceback and none of Ray's own advice, every MLflow run it started
    KILLED; `--resume` then ends every trial exactly where an uninterrupted retrain does."""
    search = json.loads((pipeline[0] / "search" / "records.json").read_text())
    out = tmp_path / "r"
    env = dict(ray_cluster["env"], RAY_ADDRESS=ray_cluster["address"])
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as err:
        run = subprocess.Popen([sys.executable, "pipelines/retrain.py", "--search-run", search["mlflow_run_id"],
                                "--mlflow-uri", mlflow_server, "--random", "1", "--epochs", "4",
                                "--set", "retrain.batch_size=128", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=ROOT)
        printed = _read_until(run, r" epoch +2/4 ")
        assert run.poll() is None, "".join(printed)[-3000:]
        run.send_signal(signal.SIGINT)
        rest, _ = run.communicate(timeout=120)
    console = "".join(printed) + rest + errors.read_text()
    assert run.returncode == 130, console[-3000:]
    stopped = [line for line in console.splitlines() if line.startswith("stopped:")]
    assert len(stopped) == 1 and stopped[0].endswith(f"resume with: python pipelines/retrain.py --resume --out {out}")
    assert "trials finished" in stopped[0]
    for noise in ("Traceback", "Tuner.restore", "Resume experiment", "Failed to fetch metrics"):
        assert noise not in console, console[-3000:]
    assert not (out / "frontier.csv").exists()
    manifest = json.loads((out / "retrain.json").read_text())
    client = _client(mlflow_server)
    assert client.get_run(manifest["mlflow_run_id"]).info.status == "KILLED"
    ended = [client.get_run(r).info.status for r in manifest["mlflow_child_run_ids"].values()]
    assert "RUNNING" not in ended and "KILLED" in ended, ended
    assert manifest["trials"] == [f"{a['id']}-s0" for a in search["architectures"]] + ["random-000-s0"]
    assert (out / "search" / "records.json").is_file()  # read from the MLflow run's artifacts

    proc = subprocess.run([sys.executable, "pipelines/retrain.py", "--resume", "--out", str(out)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    trials = pd.read_parquet(out / "trials.parquet")
    starts = [json.loads(line)["start_epoch"] for key in manifest["trials"]
              for line in (out / ".trials" / f"{key}.jsonl").read_text().splitlines() if "start_epoch" in line]
    assert any(s > 0 for s in starts), f"no trial continued from a checkpoint: {starts}"
    # stopped and resumed, every trial ends exactly where an uninterrupted one does
    assert trial_histories(trials) == straight_retrain(out)

    table = pd.read_parquet(out / "frontier.parquet")
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


def test_a_two_worker_trial_spans_both_nodes_and_survives_a_killed_worker(pipeline, ray_cluster, tmp_path):
    """One architecture retrained by a trial of 2 workers (DDP, 1 CPU each): one on each node of
    the two-node cluster. Rank 1 killed after epoch 2's report: the trial's Ray Train run fails
    (it does not restart its workers itself), Tune retries the trial (one retry layer), its new
    run continues from the last checkpoint, and the trial ends with exactly the rows an
    uninterrupted 2-worker trial gives (computed here on 2 gloo processes)."""
    search = tmp_path / "search"
    shutil.copytree(pipeline[0] / "search", search, ignore=shutil.ignore_patterns("checkpoints", "ray", "mlflow.db"))
    records = json.loads((search / "records.json").read_text())
    records["architectures"] = records["architectures"][-1:]  # one trial: it needs both CPUs
    (search / "records.json").write_text(json.dumps(records))
    key = f"{records['architectures'][0]['id']}-s0"
    out = tmp_path / "r"
    env = dict(ray_cluster["env"], RAY_ADDRESS=ray_cluster["address"])
    run = subprocess.Popen([sys.executable, "pipelines/retrain.py", "--search-dir", str(search), "--no-mlflow",
                            "--epochs", "5", "--set", "retrain.batch_size=64", "--workers-per-trial", "2",
                            "--cpus-per-worker", "1", "--out", str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    printed = _read_until(run, r" epoch +2/5 ")
    assert run.poll() is None and (out / ".trials" / f"{key}.jsonl").is_file(), "".join(printed)[-3000:]
    start = json.loads((out / ".trials" / f"{key}.jsonl").read_text().splitlines()[0])
    assert start["workers"] == 2 and len({r["node_id"] for r in start["ranks"]}) == 2  # both nodes
    os.kill(start["ranks"][1]["pid"], signal.SIGKILL)
    rest, _ = run.communicate(timeout=900)
    assert run.returncode == 0, ("".join(printed) + rest)[-4000:]

    log = [json.loads(line) for line in (out / ".trials" / f"{key}.jsonl").read_text().splitlines()]
    starts = [entry for entry in log if "start_epoch" in entry]
    # the trial retried once, from a checkpoint of epoch 2 or later, with a new rank 1
    assert [s["start_epoch"] for s in starts][0] == 0 and len(starts) == 2 and starts[1]["start_epoch"] >= 2
    assert (out / "ray" / "retrain" / key / "error.txt").is_file()  # by Tune: it saw the trial fail
    assert starts[1]["ranks"][1]["pid"] != start["ranks"][1]["pid"]
    trials = pd.read_parquet(out / "trials.parquet")
    assert list(trials["epoch"]) == [1, 2, 3, 4, 5]
    assert trial_histories(trials) == straight_retrain_ddp(out, workers=2)


def test_bad_genotypes_are_refused_before_any_trial(pipeline, ray_cluster, tmp_path):
    env = dict(ray_cluster["env"], RAY_ADDRESS=ray_cluster["address"])
    script = str(ROOT / "pipelines" / "retrain.py")
    source = pipeline[0] / "search"

    def attempt(name, edit):
        copy = tmp_path / name
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("checkpoints", "ray", "mlflow.db"))
        edit(copy / "genotypes" / "arch-001.json")
        out = tmp_path / f"{name}-out"
        proc = subprocess.run([sys.executable, script, "--search-dir", str(copy), "--out", str(out),
                               "--no-mlflow"], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert not out.exists()  # nothing written, no trial started
        return proc.stderr

    err = attempt("truncated", lambda p: p.write_text(p.read_text()[:100]))
    assert "arch-001.json is not valid JSON" in err

    def drop_operator(path):
        raw = json.loads(path.read_text())  # the last cell is always live: its FLOPs count
        edges = sorted(raw["cells"][-1]["edges"], key=lambda e: -len(e["ops"]))
        edge = next(e for e in edges if "sep_conv_3x3" in e["ops"])
        edge["ops"].remove("sep_conv_3x3")
        edge["ops"] = edge["ops"] or ["skip_connect"]
        path.write_text(json.dumps(raw))

    err = attempt("mismatched", drop_operator)
    assert "arch-001.json: its network has" in err and "records.json records" in err


def test_an_unknown_search_run_is_refused(mlflow_server, tmp_path):
    out = tmp_path / "x"
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "retrain.py"), "--search-run", "0" * 32,
                           "--mlflow-uri", mlflow_server, "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2
    assert f"cannot read the search files of MLflow run {'0' * 32}" in proc.stderr
    assert not out.exists()
