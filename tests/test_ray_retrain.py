"""Retraining on Ray Tune, for real: the two-node cluster on 127.0.0.1 and the MLflow server of
conftest.py, the pipelines' drivers run in the test process (tests/drivers.py). (A retrain
stopped by Ctrl-C and resumed: tests/test_storage.py.)"""
import json
import os
import signal
import shutil

import pandas as pd
import pytest
from conftest import trial_histories
from ddp_reference import straight_retrain_ddp
from drivers import drive

pytestmark = [pytest.mark.ray, pytest.mark.mlflow]


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def test_pipeline_retrains_the_front_concurrently_and_reports_it(pipeline, mlflow_server):
    out, stdout, together = pipeline
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

    # trials ran at the same time (two started and unfinished at one moment), on both nodes
    assert together == 2
    nodes = {json.loads((retrain / ".trials" / f"{key}.jsonl").read_text().splitlines()[0])["node_id"]
             for key in manifest["trials"]}
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


def test_a_two_worker_trial_spans_both_nodes_and_survives_a_killed_worker(pipeline, ray_cluster, tmp_path):
    """One architecture retrained by a trial of 2 workers (DDP, 1 CPU each): one on each node of
    the two-node cluster. Rank 1 killed once the driver printed epoch 2: the trial's Ray Train
    run fails (it does not restart its workers itself), Tune retries the trial (one retry layer), its new
    run continues from the last checkpoint, and the trial ends with exactly the rows an
    uninterrupted 2-worker trial gives (computed here on 2 gloo processes)."""
    search = tmp_path / "search"
    shutil.copytree(pipeline[0] / "search", search, ignore=shutil.ignore_patterns("checkpoints", "ray", "mlflow.db"))
    records = json.loads((search / "records.json").read_text())
    records["architectures"] = records["architectures"][-1:]  # one trial: it needs both CPUs
    (search / "records.json").write_text(json.dumps(records))
    key = f"{records['architectures'][0]['id']}-s0"
    out = tmp_path / "r"
    seen = {}

    def kill_rank_1(run):
        if run.wait_for(r" epoch +2/4 ") and (out / ".trials" / f"{key}.jsonl").is_file():
            seen["start"] = json.loads((out / ".trials" / f"{key}.jsonl").read_text().splitlines()[0])
            os.kill(seen["start"]["ranks"][1]["pid"], signal.SIGKILL)

    done = drive("retrain.py", "--search-dir", str(search), "--no-mlflow", "--epochs", "4",
                 "--set", "retrain.batch_size=64", "--workers-per-trial", "2", "--cpus-per-worker", "1",
                 "--out", str(out), cluster=ray_cluster, during=kill_rank_1)
    assert done.returncode == 0 and "start" in seen, done.console[-4000:]
    start = seen["start"]
    assert start["workers"] == 2 and len({r["node_id"] for r in start["ranks"]}) == 2  # both nodes
    log = [json.loads(line) for line in (out / ".trials" / f"{key}.jsonl").read_text().splitlines()]
    starts = [entry for entry in log if "start_epoch" in entry]
    # the trial retried once, from a checkpoint of epoch 2 or later, with a new rank 1
    assert [s["start_epoch"] for s in starts][0] == 0 and len(starts) == 2 and starts[1]["start_epoch"] >= 2
    assert (out / "ray" / "retrain" / key / "error.txt").is_file()  # by Tune: it saw the trial fail
    assert starts[1]["ranks"][1]["pid"] != start["ranks"][1]["pid"]
    trials = pd.read_parquet(out / "trials.parquet")
    assert list(trials["epoch"]) == [1, 2, 3, 4]
    assert trial_histories(trials) == straight_retrain_ddp(out, workers=2)


def test_bad_genotypes_are_refused_before_any_trial(pipeline, ray_cluster, tmp_path):
    """arch-000's genotype (every search records it) truncated, then not the network its
    record describes: refused, naming the file, before anything is written."""
    source = pipeline[0] / "search"

    def attempt(name, edit):
        copy = tmp_path / name
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("checkpoints", "ray", "mlflow.db"))
        edit(copy / "genotypes" / "arch-000.json")
        out = tmp_path / f"{name}-out"
        done = drive("retrain.py", "--search-dir", str(copy), "--out", str(out), "--no-mlflow", cluster=ray_cluster)
        assert done.returncode == 2, done.stderr[-3000:]
        assert not out.exists()  # nothing written, no trial started
        return done.stderr

    err = attempt("truncated", lambda p: p.write_text(p.read_text()[:100]))
    assert "arch-000.json is not valid JSON" in err

    def drop_operator(path):
        raw = json.loads(path.read_text())  # the last cell is always live: its FLOPs count
        edges = sorted(raw["cells"][-1]["edges"], key=lambda e: -len(e["ops"]))
        edge = next(e for e in edges if "sep_conv_3x3" in e["ops"])
        edge["ops"].remove("sep_conv_3x3")
        edge["ops"] = edge["ops"] or ["skip_connect"]
        path.write_text(json.dumps(raw))

    err = attempt("mismatched", drop_operator)
    assert "arch-000.json: its network has" in err and "records.json records" in err


def test_an_unknown_search_run_is_refused(mlflow_server, tmp_path):
    out = tmp_path / "x"
    done = drive("retrain.py", "--search-run", "0" * 32, "--mlflow-uri", mlflow_server, "--out", str(out))
    assert done.returncode == 2
    assert f"cannot read the search files of MLflow run {'0' * 32}" in done.stderr
    assert not out.exists()
