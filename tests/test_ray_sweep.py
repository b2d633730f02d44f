"""Sweeps for real: the two-node cluster on 127.0.0.1 and the MLflow server of conftest.py.

One module-wide sweep of 2 x 2 grid points x 2 seeds of smoke searches, where one grid value
(w_lr=1e30) makes its searches diverge; its report, its MLflow runs (on a tracking server), its
retrain; a sweep on the default sqlite store stopped mid-way and resumed, against the first
sweep's searches of the same configs, whose driver is the only process that opens the store;
and a sweep whose report fails after its trials, its MLflow runs all ended."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.mlflow]
GRID = ["--grid", "search.lambda0=1.0,0.5", "--grid", "search.w_lr=0.05,1e30"]
DIVERGED = {"p1-s0", "p1-s1", "p3-s0", "p3-s1"}  # w_lr=1e30

# pipelines/sweep.py with every Ray worker process of its job (Tune's trials, Ray Train's
# workers) and the driver itself noting in a file each sqlite3.connect to the store (the audit
# event of Python's sqlite3), a line "<pid> <role> opened"; each worker also notes "started"
AUDITED_SWEEP = """
import os, runpy, sys
STORE, OPENS = os.path.realpath(sys.argv[1]), sys.argv[2]

def audit_store(role="worker"):
    from goldnas_ray.cli import quiet_ray_worker
    quiet_ray_worker()
    def note(what):
        with open(OPENS, "a") as f:
            f.write(f"{os.getpid()} {role} {what}\\n")
    def hook(event, args):
        if event == "sqlite3.connect" and os.path.realpath(str(args[0])) == STORE:
            note("opened")
    if role == "worker":
        note("started")
    sys.addaudithook(hook)

from goldnas_ray import cli
job_env = cli.runtime_env
cli.runtime_env = lambda args: job_env(args) | {"worker_process_setup_hook": audit_store}
audit_store("driver")
sys.argv = ["pipelines/sweep.py", *sys.argv[3:]]
runpy.run_path("pipelines/sweep.py", run_name="__main__")
"""


def _env(ray_cluster):
    return dict(ray_cluster["env"], RAY_ADDRESS=ray_cluster["address"], PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def sweep(ray_cluster, mlflow_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "sw"
    proc = subprocess.run([sys.executable, "pipelines/sweep.py", "--smoke-test", "--out", str(out), *GRID,
                           "--seeds", "0,1", "--mlflow-uri", mlflow_server, "--experiment", "ci-sweep"],
                          capture_output=True, text=True, env=_env(ray_cluster), cwd=ROOT, timeout=1200)
    return out, proc


def _records(folder: Path) -> list[tuple]:
    """What a search recorded: each record's id, epoch, FLOPs and genotype file."""
    records = json.loads((folder / "records.json").read_text())
    assert records["finished"]
    return [(a["id"], a["epoch"], a["flops"], (folder / a["genotype"]).read_text()) for a in records["architectures"]]


def test_eight_searches_one_failing_grid_value_the_others_finish_and_the_sweep_says_why(sweep, mlflow_server):
    out, proc = sweep
    console = proc.stdout + proc.stderr
    assert proc.returncode == 2, console[-4000:]
    failed = ", ".join(sorted(DIVERGED))
    assert (f"error: 4 of 8 searches did not finish: {failed}; failed on their own input: {failed} (change those "
            f"grid values: --resume fails them again)") in proc.stderr
    for name in DIVERGED:
        assert re.search(rf"failed: {name} \(lambda0=\S+ w_lr=1e30 seed=\d\): SearchDiverged: epoch 1: the "
                         rf"training loss is nan", proc.stdout), console[-4000:]
    searches = pd.read_csv(out / "sweep_searches.csv")
    assert len(searches) == 8
    assert set(searches.loc[searches["status"] == "failed", "search"]) == DIVERGED
    finished = searches[searches["status"] == "finished"]
    assert set(finished["search"]) == {"p0-s0", "p0-s1", "p2-s0", "p2-s1"}
    for _, row in finished.iterrows():
        records = json.loads((out / row["search"] / "records.json").read_text())
        assert row["records"] == len(records["architectures"]) >= 1 and row["epochs"] == records["epochs"]
        assert row["last_record_flops"] == min(a["flops"] for a in records["architectures"])
    points = pd.read_csv(out / "sweep_points.csv")
    assert list(points["finished"]) == [2, 0, 2, 0] and list(points["searches"]) == [2, 2, 2, 2]
    assert (out / "sweep.png").stat().st_size > 10_000

    # the union: one entry per distinct genotype of the finished searches, each search's records in it
    union = json.loads((out / "union.json").read_text())
    distinct = {(out / s / a["genotype"]).read_text() for s in finished["search"]
                for a in json.loads((out / s / "records.json").read_text())["architectures"]}
    assert len(union) == len({json.dumps({k: v for k, v in json.loads(g).items() if k != "metadata"},
                                         sort_keys=True) for g in distinct})
    assert sum(len(u["recorded_by"]) for u in union) == finished["records"].sum()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_server)
    manifest = json.loads((out / "sweep.json").read_text())
    parent = client.get_run(manifest["mlflow_run_id"])
    assert parent.info.status == "FAILED" and parent.data.params["grid.search.w_lr"] == "0.05,1e30"
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 8
    by_id = {s["mlflow_run_id"]: s["name"] for s in manifest["searches"]}
    for child in children:
        name = by_id[child.info.run_id]
        assert child.data.params["search.w_lr"] == ("1e+30" if name in DIVERGED else "0.05")
        if name in DIVERGED:
            assert child.info.status == "FAILED" and "diverged" in child.data.tags["goldnas.error"]
        else:
            assert child.info.status == "FINISHED"
            epochs = json.loads((out / name / "records.json").read_text())["epochs"]
            # the search logged its epochs into its child run; the sweep added its outcome
            assert [m.step for m in client.get_metric_history(child.info.run_id, "flops")] == list(range(1, epochs + 1))
            assert child.data.metrics["records"] == searches.set_index("search").loc[name, "records"]
    artifacts = {f.path for f in client.list_artifacts(parent.info.run_id)}
    assert {"sweep_summary.json", "sweep_points.csv", "sweep.png", "union.json"} <= artifacts


def test_a_sweep_retrained_gives_each_grid_points_hypervolume_over_its_seeds(sweep, ray_cluster, tmp_path):
    out, _ = sweep
    union = json.loads((out / "union.json").read_text())
    retrain = tmp_path / "r"
    proc = subprocess.run([sys.executable, "pipelines/retrain.py", "--search-dir", str(out), "--union-front",
                           "--smoke-test", "--set", "retrain.epochs=1", "--set", "retrain.latency_repeats=0",
                           "--no-mlflow", "--out", str(retrain)],
                          capture_output=True, text=True, env=_env(ray_cluster), cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    manifest = json.loads((retrain / "retrain.json").read_text())
    assert len(manifest["architectures"]) == len(union)  # each distinct architecture once
    assert {a["arch_id"] for a in manifest["architectures"]} == {u["id"] for u in union}
    points = json.loads((retrain / "comparison.json").read_text())["sweep"]["points"]
    assert [p["point"] for p in points] == [0, 2]  # the grid points whose searches finished
    for p in points:
        assert p["seeds"] == 2 and 0 < p["low"] <= p["value"] <= p["high"], p
        assert f"hypervolume {p['grid_point']}" in proc.stdout

    shown = subprocess.run([sys.executable, "pipelines/compare.py", str(retrain), "--out", str(tmp_path / "c.png")],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "r: lambda0=1.0 w_lr=0.05" in shown.stdout and "r: lambda0=0.5 w_lr=0.05" in shown.stdout


def test_a_sweep_stopped_mid_way_and_resumed_records_what_an_uninterrupted_one_does(sweep, ray_cluster, tmp_path):
    """The same configs as the first sweep's p0 (lambda0=1.0, w_lr=0.05), stopped during epoch
    2 of a search, resumed: each search records exactly what the uninterrupted sweep's did.
    Both searches run at once (one per node) and log to the default sqlite store: its only
    writer is the sweep's driver, and each child run holds every epoch of its search once."""
    first, _ = sweep
    out = tmp_path / "sw"
    store, opens = out / "mlflow.db", tmp_path / "opens.txt"
    audited = [sys.executable, "-c", AUDITED_SWEEP, str(store), str(opens)]
    run = subprocess.Popen([*audited, "--smoke-test", "--out", str(out), "--grid", "search.lambda0=1.0",
                            "--seeds", "0,1"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(ray_cluster), cwd=ROOT)
    printed = []
    for line in run.stdout:
        printed.append(line)
        if re.match(r"p0-s\d +epoch +2/3", line):
            break
    assert run.poll() is None, "".join(printed)[-3000:]
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, "".join(printed)[-2000:] + err[-3000:]
    stopped = [line for line in err.splitlines() if line.startswith("stopped:")]
    assert stopped and stopped[0].endswith(f"resume with: python pipelines/sweep.py --resume --out {out}"), err
    assert not (out / "sweep_searches.csv").exists()
    done = int(re.match(r"stopped: (\d) of 2 searches finished", stopped[0]).group(1))
    assert done < 2, stopped  # stopped mid-way: --resume has a search to continue or start
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    manifest = json.loads((out / "sweep.json").read_text())
    assert client.get_run(manifest["mlflow_run_id"]).info.status == "KILLED"
    assert all(client.get_run(s["mlflow_run_id"]).info.status in ("KILLED", "SCHEDULED", "FINISHED")
               for s in manifest["searches"])
    driver = run.pid

    resumed = subprocess.Popen([*audited, "--resume", "--out", str(out)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=_env(ray_cluster), cwd=ROOT)
    stdout, stderr = resumed.communicate(timeout=900)
    assert resumed.returncode == 0, stdout[-4000:] + stderr[-4000:]
    for seed in (0, 1):
        assert _records(out / f"p0-s{seed}") == _records(first / f"p0-s{seed}")
    assert os.path.exists(out / "sweep.png")

    # the store: opened by the two drivers (the stopped one and the resumed one), by none of the
    # job's worker processes (the trials among them)
    notes = {tuple(line.split()) for line in opens.read_text().splitlines()}
    assert {(pid, role) for pid, role, what in notes if what == "opened"} == {
        (str(driver), "driver"), (str(resumed.pid), "driver")}, notes
    assert len({pid for pid, role, what in notes if role == "worker"}) >= 2, notes  # the hook ran in them
    assert "database is locked" not in err + "".join(printed) + stdout + stderr
    assert client.get_run(manifest["mlflow_run_id"]).info.status == "FINISHED"
    for s in manifest["searches"]:
        child = client.get_run(s["mlflow_run_id"])
        assert child.info.status == "FINISHED" and child.data.metrics["records"] >= 1
        history = pd.read_parquet(out / s["name"] / "history.parquet")
        for column, metric in (("flops", "flops"), ("loss", "train_loss")):
            logged = sorted((m.step, m.value) for m in client.get_metric_history(s["mlflow_run_id"], metric))
            assert logged == [(int(e), float(v)) for e, v in zip(history["epoch"], history[column])], (s, metric)
        assert {"records.json", "history.parquet", "front.json"} <= {f.path for f in client.list_artifacts(
            s["mlflow_run_id"])}


def test_searches_of_two_workers_each_are_ray_train_runs_and_a_diverging_one_fails_in_one_line(ray_cluster, tmp_path):
    """--workers-per-search 2: each search a Ray Train run over both one-CPU nodes, driven by its
    trial; a search that diverges inside the workers is reported with its own message. On the
    default sqlite store, the epochs rank 0 reports reach the child run through the driver."""
    out = tmp_path / "sw"
    proc = subprocess.run([sys.executable, "pipelines/sweep.py", "--smoke-test", "--out", str(out),
                           "--grid", "search.w_lr=0.05,1e30", "--seeds", "0", "--workers-per-search", "2"],
                          capture_output=True, text=True, env=_env(ray_cluster), cwd=ROOT, timeout=900)
    assert proc.returncode == 2, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "error: 1 of 2 searches did not finish: p1-s0; failed on their own input: p1-s0" in proc.stderr
    assert re.search(r"failed: p1-s0 \(w_lr=1e30 seed=0\): SearchDiverged: epoch 1: the training loss is nan",
                     proc.stdout), proc.stdout[-3000:]
    records = json.loads((out / "p0-s0" / "records.json").read_text())
    assert records["finished"] and records["workers"] == 2 and records["architectures"]
    ranks = [json.loads((out / "p0-s0" / ".workers" / f"rank-{r}.json").read_text())["node_id"] for r in (0, 1)]
    assert len(set(ranks)) == 2  # one worker on each node

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    manifest = json.loads((out / "sweep.json").read_text())
    finished, diverged = (s["mlflow_run_id"] for s in manifest["searches"])
    # records.json names the child run the driver logs into, as a one-worker search's does
    assert (records["mlflow_run_id"], records["mlflow_tracking_uri"]) == (finished, manifest["mlflow_tracking_uri"])
    history = pd.read_parquet(out / "p0-s0" / "history.parquet")
    assert sorted(m.step for m in client.get_metric_history(finished, "flops")) == list(history["epoch"])
    assert [client.get_run(r).info.status for r in (finished, diverged)] == ["FINISHED", "FAILED"]
    assert "database is locked" not in proc.stdout + proc.stderr


def test_a_sweep_whose_report_fails_after_its_trials_ends_every_mlflow_run_failed(ray_cluster, tmp_path):
    """A real fault after the trials: a folder where the report writes sweep_searches.csv. The
    parent and both children (one search finished, one diverged) end FAILED, none RUNNING."""
    out = tmp_path / "sw"
    run = subprocess.Popen([sys.executable, "pipelines/sweep.py", "--smoke-test", "--out", str(out),
                            "--grid", "search.w_lr=0.05,1e30", "--seeds", "0"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(ray_cluster), cwd=ROOT)
    printed = []
    for line in run.stdout:
        printed.append(line)
        if re.match(r"p0-s0 +epoch +1/3", line):  # the trials run on: the report comes after them
            (out / "sweep_searches.csv").mkdir()
            break
    rest, err = run.communicate(timeout=900)
    console = "".join(printed) + rest + err
    assert (out / "sweep_searches.csv").is_dir(), console[-4000:]
    assert run.returncode != 0 and "sweep_searches.csv" in err, console[-4000:]
    assert json.loads((out / "p0-s0" / "records.json").read_text())["finished"]  # it failed after the trials

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    manifest = json.loads((out / "sweep.json").read_text())
    runs = [manifest["mlflow_run_id"]] + [s["mlflow_run_id"] for s in manifest["searches"]]
    assert len(runs) == 3 and [client.get_run(r).info.status for r in runs] == ["FAILED"] * 3
    assert "database is locked" not in console
