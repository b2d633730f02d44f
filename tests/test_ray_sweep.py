"""Sweeps for real: the two-node cluster on 127.0.0.1 and the MLflow server of conftest.py, the
drivers run in the test process (tests/drivers.py) but where a stop signal is what is tested.

One module-wide sweep of 2 x 2 grid points x 2 seeds of smoke searches, where one grid value
(w_lr=1e30) makes its searches diverge; its report, its MLflow runs (on a tracking server), its
retrain; a sweep of one-worker searches stopped mid-way and resumed, against the first sweep's
searches of the same configs; a sweep of two-worker searches (Ray Train runs over both nodes)
on the default sqlite store, stopped mid-way and resumed, against an uninterrupted two-worker
search of the same config, whose drivers are the only processes that open the store; and a
sweep whose report fails after its trials, its MLflow runs all ended."""
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from drivers import drive, stop_when

from goldnas_ray import cli

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.ray, pytest.mark.mlflow]
GRID = ["--grid", "search.lambda0=1.0,0.5", "--grid", "search.w_lr=0.05,1e30"]
DIVERGED = {"p1-s0", "p1-s1", "p3-s0", "p3-s1"}  # w_lr=1e30

# a worker setup hook noting in the file OPENS each sqlite3.connect to the store STORE (the
# audit event of Python's sqlite3), a line "<pid> <role> opened"; each worker also notes
# "started". Made outside any importable module, so that Ray sends it to the workers by value
AUDIT = """
import os, sys

def audit_store(role="worker"):
    from goldnas_ray.cli.process import quiet_ray_worker
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
"""
# pipelines/sweep.py with every Ray worker process of its job (Tune's trials, Ray Train's
# workers) and the driver itself auditing the store
AUDITED_SWEEP = """
import os, runpy, sys
STORE, OPENS = os.path.realpath(sys.argv[1]), sys.argv[2]
""" + AUDIT + """
from goldnas_ray import cli
job_env = cli.runtime_env
cli.runtime_env = lambda args: job_env(args) | {"worker_process_setup_hook": audit_store}
audit_store("driver")
sys.argv = ["pipelines/sweep.py", *sys.argv[3:]]
runpy.run_path("pipelines/sweep.py", run_name="__main__")
"""


@pytest.fixture(scope="module")
def sweep(ray_cluster, mlflow_server, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "sw"
    done = drive("sweep.py", "--smoke-test", "--out", str(out), *GRID, "--seeds", "0,1", "--mlflow-uri",
                 mlflow_server, "--experiment", "ci-sweep", cluster=ray_cluster)
    return out, done


def _records(folder: Path) -> list[tuple]:
    """What a search recorded: each record's id, epoch, FLOPs and genotype (its metadata aside)."""
    records = json.loads((folder / "records.json").read_text())
    assert records["finished"]
    return [(a["id"], a["epoch"], a["flops"], {k: v for k, v in json.loads((folder / a["genotype"]).read_text()).items()
                                              if k != "metadata"}) for a in records["architectures"]]


def _interrupted(run: subprocess.Popen, enough) -> tuple[list[str], str]:
    """The lines ``run`` prints until ``enough(lines)`` holds, when it gets SIGINT (the driver
    paused while it is sent); with what it wrote on stderr once it ended."""
    printed = stop_when(run, enough)
    assert enough(printed), "".join(printed)[-3000:]  # the moment came before the run ended
    _, err = run.communicate(timeout=120)
    return printed, err


def _epoch_lines(lines: list[str], epoch: int) -> set[str]:
    """The searches that printed their line of epoch ``epoch`` (of 3) among ``lines``."""
    return {m.group(1) for line in lines if (m := re.match(rf"(p\d-s\d) +epoch +{epoch}/3", line))}


def test_eight_searches_one_failing_grid_value_the_others_finish_and_the_sweep_says_why(sweep, mlflow_server):
    out, proc = sweep
    console = proc.console
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


def _hypervolume(points: list[tuple[float, float]], reference: tuple[float, float]) -> float:
    """The area that (error, log10 FLOPs) points dominate up to ``reference``, both minimised:
    the staircase of the front, summed strip by strip along the error axis."""
    area, best = 0.0, reference[1]
    ordered = sorted(p for p in points if p[0] < reference[0] and p[1] < reference[1])
    for i, (error, flops) in enumerate(ordered):
        best = min(best, flops)
        following = ordered[i + 1][0] if i + 1 < len(ordered) else reference[0]
        area += (following - error) * (reference[1] - best)
    return area


def test_a_sweep_retrained_gives_each_grid_points_hypervolume_over_its_seeds(sweep, ray_cluster, tmp_path):
    """Every distinct architecture of the finished searches retrained once (--union-front); each
    search's front hypervolume recomputed here from the retrained accuracies, each grid point's
    value their mean over its 2 seeds and its bootstrap interval exactly [lower, higher] of the
    two (the means of resamples of two values lie between them, and a quarter of them are each
    value itself)."""
    out, _ = sweep
    union = json.loads((out / "union.json").read_text())
    retrain = tmp_path / "r"
    done = drive("retrain.py", "--search-dir", str(out), "--union-front", "--smoke-test", "--set", "retrain.epochs=1",
                 "--set", "retrain.latency_repeats=0", "--no-mlflow", "--out", str(retrain), cluster=ray_cluster)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    manifest = json.loads((retrain / "retrain.json").read_text())
    assert len(manifest["architectures"]) == len(union)  # each distinct architecture once
    assert {a["arch_id"] for a in manifest["architectures"]} == {u["id"] for u in union}
    stats = json.loads((retrain / "comparison.json").read_text())["sweep"]
    table = pd.read_parquet(retrain / "frontier.parquet")
    reference = (1.0, math.log10(1.1 * table["flops"].max()))
    assert (stats["reference"]["error"], stats["reference"]["log10_flops"]) == pytest.approx(reference)
    mine = {name: _hypervolume([(1 - row.accuracy_mean, math.log10(row.flops)) for row in table.itertuples()
                                if name in list(row.sources)], reference)
            for name in ("p0-s0", "p0-s1", "p2-s0", "p2-s1")}
    assert stats["searches"] == pytest.approx(mine)
    points = stats["points"]
    assert [p["point"] for p in points] == [0, 2]  # the grid points whose searches finished
    for p in points:
        seeds = [mine[f"p{p['point']}-s{seed}"] for seed in (0, 1)]
        half = 12.7062 * abs(seeds[0] - seeds[1]) / 2  # Student-t, 1 degree of freedom: t(0.975, 1) = 12.7062
        assert p["seeds"] == 2 and p["hypervolume"]["n"] == 2, (p, seeds)
        assert p["hypervolume"]["method"] == "student-t over 2 search seeds", p
        assert [p["hypervolume"][k] for k in ("value", "low", "high")] == pytest.approx(
            [sum(seeds) / 2, sum(seeds) / 2 - half, sum(seeds) / 2 + half], rel=1e-5), (p, seeds)
        assert f"hypervolume {p['grid_point']}" in done.stdout

    shown = drive("compare.py", str(retrain), "--out", str(tmp_path / "c.png"))
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert "r: lambda0=1.0 w_lr=0.05" in shown.stdout and "r: lambda0=0.5 w_lr=0.05" in shown.stdout


def test_a_sweep_of_one_worker_searches_stopped_mid_way_and_resumed_records_what_the_first_sweep_did(
        sweep, ray_cluster, tmp_path):
    """The first sweep's p0 and p2 configs (lambda0=1.0 and 0.5, the default w_lr=0.05, seed 0), one search
    each, one trial per node: stopped (SIGINT, the driver paused while it is sent) once both
    have printed their first epoch, one at least unfinished then; resumed in this
    process (each search continued from its checkpoint in its trial): status 0, sweep.png
    written, and each search records exactly what the first sweep's did."""
    first, _ = sweep
    out = tmp_path / "sw"
    env = dict(ray_cluster["env"], RAY_ADDRESS=ray_cluster["address"], PYTHONUNBUFFERED="1")
    run = subprocess.Popen([sys.executable, "pipelines/sweep.py", "--smoke-test", "--out", str(out), "--grid",
                            "search.lambda0=1.0,0.5", "--seeds", "0"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    printed, err = _interrupted(run, lambda lines: _epoch_lines(lines, 1) == {"p0-s0", "p1-s0"})
    assert run.returncode == 130, "".join(printed)[-2000:] + err[-3000:]
    assert "resume with: python pipelines/sweep.py --resume --out" in err, err
    # the later of the two had just ended its first of three epochs: it at least is unfinished
    # (pausing the driver does not pause the searches' workers: the other may have finished)
    unfinished = [name for name in ("p0-s0", "p1-s0")
                  if not json.loads((out / name / "records.json").read_text())["finished"]]
    assert unfinished, printed[-20:]
    assert not (out / "sweep.png").exists()

    resumed = drive("sweep.py", "--resume", "--out", str(out), cluster=ray_cluster)
    assert resumed.returncode == 0, resumed.console[-4000:]
    assert (out / "sweep.png").stat().st_size > 10_000
    assert _records(out / "p0-s0") == _records(first / "p0-s0")  # lambda0=1.0
    assert _records(out / "p1-s0") == _records(first / "p2-s0")  # lambda0=0.5


def test_a_sweep_of_two_worker_searches_stopped_mid_way_and_resumed_records_what_an_uninterrupted_one_does(
        ray_cluster, monkeypatch, tmp_path):
    """--workers-per-search 2: each search a Ray Train run over both one-CPU nodes, driven by its
    trial, on the default sqlite store; one grid value (w_lr=1e30) diverges inside the workers.
    Stopped (SIGINT, the driver paused while it is sent) during epoch 2 of the other search: exit
    130, one stop line with the command that resumes it, that search unfinished, every MLflow run
    KILLED, not started or (the diverged one) FAILED. Resumed: the diverged search is
    reported with its own message (status 2), the other records exactly what an uninterrupted
    two-worker search of its config does, and its child run holds every epoch of it once. The
    store's only writer is a sweep's driver: no worker process of either run opens it (each run's
    workers noted in a file of its own), the epochs rank 0 reports reach the child run through
    the driver."""
    out = tmp_path / "sw"
    store, opens = out / "mlflow.db", tmp_path / "opens.txt"
    plan = ["--smoke-test", "--grid", "search.w_lr=0.05,1e30", "--seeds", "0", "--workers-per-search", "2"]
    env = dict(ray_cluster["env"], RAY_ADDRESS=ray_cluster["address"], PYTHONUNBUFFERED="1")
    run = subprocess.Popen([sys.executable, "-c", AUDITED_SWEEP, str(store), str(opens), *plan, "--out", str(out)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    printed, err = _interrupted(run, lambda lines: "p0-s0" in _epoch_lines(lines, 1))
    assert run.returncode == 130, "".join(printed)[-2000:] + err[-3000:]
    stopped = [line for line in err.splitlines() if line.startswith("stopped:")]
    assert stopped and stopped[0].endswith(f"resume with: python pipelines/sweep.py --resume --out {out}"), err
    done = int(re.match(r"stopped: (\d) of 2 searches finished", stopped[0]).group(1))
    assert done < 2, stopped  # the diverged search never finishes
    # p0-s0 may have finished its last epoch before the stop reached its workers (pausing the
    # driver does not pause them): the one-worker test above is the one that stops mid-search
    assert not (out / "sweep_searches.csv").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store}")
    manifest = json.loads((out / "sweep.json").read_text())
    assert client.get_run(manifest["mlflow_run_id"]).info.status == "KILLED"
    assert all(client.get_run(s["mlflow_run_id"]).info.status in ("KILLED", "SCHEDULED", "FAILED")
               for s in manifest["searches"])  # FAILED: the diverged search, when it came first

    # resumed in this process, its workers audited as the stopped run's were
    reopens = tmp_path / "opens-resumed.txt"
    audit = {"__name__": "sweep_audit", "STORE": str(store.resolve()), "OPENS": str(reopens)}
    exec(AUDIT, audit)  # noqa: S102 - a function of no importable module: sent to the workers by value
    hook = audit["audit_store"]
    monkeypatch.setattr(cli, "runtime_env", lambda args, job_env=cli.runtime_env: job_env(args) | {
        "worker_process_setup_hook": hook})
    resumed = drive("sweep.py", "--resume", "--out", str(out), cluster=ray_cluster)
    assert resumed.returncode == 2, resumed.console[-4000:]
    assert "error: 1 of 2 searches did not finish: p1-s0; failed on their own input: p1-s0" in resumed.stderr
    assert re.search(r"failed: p1-s0 \(w_lr=1e30 seed=0\): SearchDiverged: epoch 1: the training loss is nan",
                     resumed.stdout), resumed.stdout[-3000:]
    records = json.loads((out / "p0-s0" / "records.json").read_text())
    assert records["finished"] and records["workers"] == 2 and records["architectures"]
    ranks = [json.loads((out / "p0-s0" / ".workers" / f"rank-{r}.json").read_text())["node_id"] for r in (0, 1)]
    assert len(set(ranks)) == 2  # one worker on each node
    straight = tmp_path / "straight"
    alone = drive("search.py", "--smoke-test", "--workers", "2", "--no-mlflow", "--out", str(straight),
                  cluster=ray_cluster)
    assert alone.returncode == 0, alone.console[-3000:]
    assert _records(out / "p0-s0") == _records(straight)

    # the store: opened by the stopped driver, by none of either run's worker processes (the
    # trials and the searches' Ray Train workers among them: a trial and two workers at least)
    notes = {tuple(line.split()) for line in opens.read_text().splitlines()}
    assert {(pid, role) for pid, role, what in notes if what == "opened"} == {(str(run.pid), "driver")}, notes
    assert len({pid for pid, role, what in notes if role == "worker"}) >= 3, notes  # the hook ran in them
    renotes = [line.split() for line in reopens.read_text().splitlines()]
    assert not [n for n in renotes if n[2] == "opened"], renotes
    assert len({pid for pid, role, what in renotes if role == "worker"}) >= 3, renotes
    assert "database is locked" not in err + "".join(printed) + resumed.console
    assert client.get_run(manifest["mlflow_run_id"]).info.status == "FAILED"
    finished, diverged = (s["mlflow_run_id"] for s in manifest["searches"])
    # records.json names the child run the driver logs into, as a one-worker search's does
    assert (records["mlflow_run_id"], records["mlflow_tracking_uri"]) == (finished, manifest["mlflow_tracking_uri"])
    assert [client.get_run(r).info.status for r in (finished, diverged)] == ["FINISHED", "FAILED"]
    assert client.get_run(finished).data.metrics["records"] >= 1
    history = pd.read_parquet(out / "p0-s0" / "history.parquet")
    for column, metric in (("flops", "flops"), ("loss", "train_loss")):
        logged = sorted((m.step, m.value) for m in client.get_metric_history(finished, metric))
        assert logged == [(int(e), float(v)) for e, v in zip(history["epoch"], history[column])], metric
    assert {"records.json", "history.parquet", "front.json"} <= {f.path for f in client.list_artifacts(finished)}


def test_a_sweep_whose_report_fails_after_its_trials_ends_every_mlflow_run_failed(ray_cluster, tmp_path):
    """A real fault after the trials: a folder where the report writes sweep_searches.csv. The
    parent and both children (one search finished, one diverged) end FAILED, none RUNNING."""
    out = tmp_path / "sw"

    def fault(run):
        if run.wait_for(r"^p0-s0 +epoch +1/3"):  # the trials run on: the report comes after them
            (out / "sweep_searches.csv").mkdir()

    done = drive("sweep.py", "--smoke-test", "--out", str(out), "--grid", "search.w_lr=0.05,1e30", "--seeds", "0",
                 cluster=ray_cluster, during=fault)
    console = done.console
    assert (out / "sweep_searches.csv").is_dir(), console[-4000:]
    assert done.returncode != 0 and "sweep_searches.csv" in done.stderr, console[-4000:]
    assert json.loads((out / "p0-s0" / "records.json").read_text())["finished"]  # it failed after the trials

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    manifest = json.loads((out / "sweep.json").read_text())
    runs = [manifest["mlflow_run_id"]] + [s["mlflow_run_id"] for s in manifest["searches"]]
    assert len(runs) == 3 and [client.get_run(r).info.status for r in runs] == ["FAILED"] * 3
    assert "database is locked" not in console
