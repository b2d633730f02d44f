"""The product path, for real: a local Ray cluster of two nodes on 127.0.0.1, a real MLflow
server, and the search submitted with the `ray job submit --working-dir .` CLI."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import free_port, kill_rank_after_report, submit

from goldnas_ray.files.store import location

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray]


@pytest.mark.mlflow
def test_job_submit_two_workers_two_nodes_tracked_in_mlflow(ray_cluster, mlflow_server, tmp_path):
    out = tmp_path / "search"
    proc = submit(ray_cluster, "search.py", "--smoke-test", "--workers", "2", "--out", str(out),
                  "--mlflow-uri", mlflow_server, "--experiment", "ci-search")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "succeeded" in proc.stdout.lower()

    records = json.loads((out / "records.json").read_text())
    archs = records["architectures"]
    assert records["finished"] and records["workers"] == 2 and archs
    assert all((out / a["genotype"]).is_file() for a in archs)
    assert (out / "history.parquet").is_file() and (out / "checkpoints" / "latest.pt").is_file()

    # the two ranks ran on the two nodes, and held identical alive sets and alphas every epoch
    ranks = [json.loads((out / ".workers" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["node_id"] != ranks[1]["node_id"]
    lines = [json.loads(line) for line in (out / ".workers" / "consistency.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert all(line["ranks"][0] == line["ranks"][1] for line in lines)
    assert len({line["ranks"][0]["alive"] for line in lines}) == 3  # pruned each epoch (the smoke xi_max)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(records["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "ci-search"
    assert run.data.params["search.max_epochs"] == "3" and run.data.params["space.num_cells"] == "3"
    assert run.data.tags["dataset"] == "digits" and run.data.tags["workers"] == "2"
    assert float(run.data.tags["space_log10_size"]) == pytest.approx(records["space_log10_size"], abs=0.01)
    for name in ("lambda", "delta_lambda", "flops", "params", "alive_ops", "pruned_ops", "train_loss",
                 "train_acc", "epoch_seconds", "images_per_second"):
        history = client.get_metric_history(run.info.run_id, name)
        assert sorted(m.step for m in history) == [1, 2, 3], name
    flops = sorted(client.get_metric_history(run.info.run_id, "flops"), key=lambda m: m.step)
    assert [m.value for m in flops] == [float(v) for v in
                                       pd.read_parquet(out / "history.parquet")["flops"]]
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"records.json", "history.parquet", "genotypes", "plots"} <= top
    assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} == {"plots/flops.png", "plots/lambda.png"}
    logged = {a.path for a in client.list_artifacts(run.info.run_id, "genotypes")}
    assert logged == {a["genotype"] for a in archs} | {a["genotype"].replace(".json", ".png") for a in archs}


def test_more_workers_than_the_cluster_can_place_fails_before_training(ray_cluster, tmp_path):
    env = dict(ray_cluster["env"], RAY_ADDRESS=ray_cluster["address"])
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "search.py"), "--smoke-test",
                           "--workers", "3", "--out", str(tmp_path / "x"), "--no-mlflow"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 2
    assert "could never all be placed" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_unreachable_addresses_fail_fast(tmp_path):
    script = str(ROOT / "pipelines" / "search.py")
    env = dict(os.environ, RAY_ADDRESS=f"127.0.0.1:{free_port()}")
    proc = subprocess.run([sys.executable, script, "--smoke-test", "--out", str(tmp_path / "a"), "--no-mlflow"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "unreachable" in proc.stderr
    env.pop("RAY_ADDRESS")
    proc = subprocess.run([sys.executable, script, "--smoke-test", "--out", str(tmp_path / "b"),
                           "--mlflow-uri", f"http://127.0.0.1:{free_port()}"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2 and "MLflow tracking server" in proc.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


KILL_ARGS = ["--set", "space.num_cells=3", "--set", "space.init_channels=4", "--set", "data.batch_size=128",
             "--set", "search.max_epochs=7", "--set", "search.lambda0=0.3", "--set", "search.t0=1",
             "--set", "search.flops_min_ratio=0.05", "--workers", "2", "--seed", "5"]


def _frontier_summary(out):
    records = json.loads((out / "records.json").read_text())
    return [(a["id"], a["epoch"], a["flops"], a["params"]) for a in records["architectures"]]


def test_a_killed_worker_is_replaced_and_the_search_records_the_same_architectures(ray_cluster, tmp_path):
    env = dict(ray_cluster["env"], RAY_ADDRESS=ray_cluster["address"])
    script = str(ROOT / "pipelines" / "search.py")
    straight = tmp_path / "straight"
    proc = subprocess.run([sys.executable, script, *KILL_ARGS, "--no-mlflow", "--out", str(straight)],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]

    killed = tmp_path / "killed"
    run = subprocess.Popen([sys.executable, script, *KILL_ARGS, "--out", str(killed)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    # once epoch 3's report has returned, epoch 2's checkpoint is Ray Train's (docs/search.md)
    victim = kill_rank_after_report(location(killed), 3, run)
    assert victim is not None, "the run ended before a worker could be killed"
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-3000:]
    new_pid = json.loads((killed / ".workers" / "rank-1.json").read_text())["pid"]
    assert new_pid != victim, "rank 1 was not restarted"
    # the new group continued from the registered checkpoint, not from scratch: epoch 1 (done
    # before the kill) was never run again, and every epoch ran to the end at least once
    epochs = [json.loads(line)["epoch"] for line in
              (killed / ".workers" / "consistency.jsonl").read_text().splitlines()]
    assert epochs.count(1) == 1 and sorted(set(epochs)) == list(range(1, 8)), epochs
    assert _frontier_summary(killed) == _frontier_summary(straight)
    a, b = pd.read_parquet(straight / "history.parquet"), pd.read_parquet(killed / "history.parquet")
    assert list(a["flops"]) == list(b["flops"]) and list(a["epoch"]) == list(b["epoch"])
    assert a["loss"].tolist() == pytest.approx(b["loss"].tolist(), rel=1e-5)

    # the restarted worker group went on logging into the same MLflow run, each epoch once
    from mlflow.tracking import MlflowClient

    records = json.loads((killed / "records.json").read_text())
    client = MlflowClient(tracking_uri=records["mlflow_tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("goldnas-search").experiment_id])
    assert [r.info.run_id for r in runs] == [records["mlflow_run_id"]]
    assert runs[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(records["mlflow_run_id"], "flops")]
    assert sorted(steps) == list(range(1, 8))


def test_resume_on_ray_continues_a_local_search_to_the_same_result(ray_cluster, tmp_path):
    """2 epochs in-process, interrupted; --resume on Ray (1 worker) must end exactly where an
    uninterrupted in-process run ends: same recorded architectures, same history."""
    from conftest import tiny_config
    from goldnas_ray.files.search_files import save_checkpoint, write_outputs
    from goldnas_ray.data import iterate_batches, load_digits
    from goldnas_ray.run.loop import run_local
    from goldnas_ray.core.search import GoldSearch

    cfg = tiny_config(lambda0=0.3, t0=1, max_epochs=5, flops_min_ratio=0.05)
    run_local(cfg, tmp_path / "straight", log=lambda _: None)

    data = load_digits()
    partial = GoldSearch(tiny_config(lambda0=0.3, t0=1, max_epochs=5, flops_min_ratio=0.05), data.input_shape, 10)
    for _ in range(2):
        partial.end_epoch(partial.train_epoch(iterate_batches(
            data.x_train, data.y_train, cfg.data.batch_size, cfg.seed, partial.epoch)))
    out = tmp_path / "resumed"
    out.mkdir()
    save_checkpoint(out, partial.state_dict())
    write_outputs(out, partial, {})

    env = dict(ray_cluster["env"], RAY_ADDRESS=ray_cluster["address"])
    proc = subprocess.run([sys.executable, str(ROOT / "pipelines" / "search.py"), "--resume", "--out", str(out),
                           "--no-mlflow", "--cpus-per-worker", "1"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _frontier_summary(out) == _frontier_summary(tmp_path / "straight")
    # Ray Train's run folder is named after the output folder, resumed or not: a later resume
    # finds it (and its checkpoints) again instead of starting a new one beside it
    assert [p.name for p in (out / "ray").iterdir() if p.is_dir()] == ["resumed"]
    a, b = pd.read_parquet(tmp_path / "straight" / "history.parquet"), pd.read_parquet(out / "history.parquet")
    assert list(a["epoch"]) == list(b["epoch"]) == [1, 2, 3, 4, 5]
    assert list(a["flops"]) == list(b["flops"])
    assert a["loss"].tolist() == pytest.approx(b["loss"].tolist(), rel=1e-5)
