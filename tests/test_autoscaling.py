"""Runs on a cluster that grows and loses nodes: Ray's fake multi-node autoscaling provider
(tests/autoscaling.py), a head of 0 CPUs and a worker type of 1 CPU from 0 to 2 nodes, the
shape of cluster/aws-gpu.yaml. Jobs are submitted with `ray job submit` (tests/autoscaling.py's
submit); the retrain and the sweep, where the job is not what is checked, run their drivers in
the test process, joined to the cluster (tests/drivers.py).

One cluster serves the module, in order: a search asks for nodes and gets them (its records
then serve the retrain, and as the uninterrupted run the killed driver's run must equal), a
wait past --placement-timeout while another driver holds the nodes, a retrain runs trials side
by side on the nodes, a sweep of 2 searches, one search cut twice: its driver killed mid-search
and the job resubmitted with --resume, then in that job a node killed mid-search (Ray Train
restarts the group from the last checkpoint once a node takes its place: one joined by hand,
since this provider never replaces a killed node), and a worker no node type holds. Most of its
time is Ray starting processes."""
import contextlib
import json
import os
import signal
import time

import pandas as pd
import pytest
from autoscaling import (alive_workers, autoscaling_cluster, holding, join_node, leave_node, job_logs,  # noqa: F401
                         job_state, kill_node, nothing_held, submit, wait_for, worker_nodes)
from datafiles import frontier_summary, records
from drivers import drive

import ray_nodes

pytestmark = [pytest.mark.ray]

SEARCH = ["--smoke-test", "--workers", "2", "--cpus-per-worker", "1", "--no-mlflow"]


def _summary(out):
    """What two runs of the same search must share: the recorded architectures and the FLOPs
    of every epoch (history.parquet)."""
    history = pd.read_parquet(out / "history.parquet")
    return frontier_summary(out), list(history["epoch"]), list(history["flops"])


def _complete(out):
    found = records(out)
    assert found["finished"] and found["workers"] == 2 and found["architectures"]
    assert all((out / a["genotype"]).is_file() for a in found["architectures"])


def _driver_pid(cluster, out) -> int | None:
    """The pid of the job's driver: the python process running pipelines/search.py for ``out``."""
    for pid in ray_nodes.marked(cluster["mark"]):
        try:
            argv = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if len(argv) > 1 and argv[1].endswith("pipelines/search.py") and str(out) in argv:
            return pid
    return None


@pytest.fixture(scope="module")
def searched(autoscaling_cluster, tmp_path_factory):
    """A 2-worker smoke search submitted to the cluster with no worker node up: (its folder, the
    job's output, the worker nodes before it)."""
    cluster = autoscaling_cluster
    before = alive_workers(cluster)
    out = tmp_path_factory.mktemp("searched") / "search"
    started = time.time()
    proc = submit(cluster, "search.py", *SEARCH, "--out", str(out), timeout=900)
    print(f"search job: {time.time() - started:.0f}s")
    return out, proc, before


def test_a_search_job_asks_for_nodes_and_records(autoscaling_cluster, searched):
    out, proc, before = searched
    assert before == []
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # the driver waited for what the autoscaler was adding, and said so
    assert "placement: waiting for" in proc.stdout, proc.stdout[-4000:]
    assert len(worker_nodes(autoscaling_cluster)) >= 2
    _complete(out)
    ranks = [json.loads((out / ".workers" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["node_id"] != ranks[1]["node_id"]  # one worker per 1-CPU node
    assert all(r["node_id"] in worker_nodes(autoscaling_cluster) for r in ranks)  # nodes it was given


def test_a_wait_past_the_placement_timeout_names_what_never_came(autoscaling_cluster, searched, tmp_path):
    """Once the search job has ended, nothing of it holds the cluster (so idle nodes can go);
    then, with every worker node the cluster may have held by another driver, a search's 2
    workers cannot be placed and it gives up at --placement-timeout, naming them."""
    cluster = autoscaling_cluster
    assert wait_for(lambda: nothing_held(cluster), timeout=180), "a finished job's groups or CPUs still held"
    out = tmp_path / "late"
    with holding(cluster, nodes=2):  # max_workers: no node can be added for the search
        proc = submit(cluster, "search.py", *SEARCH, "--placement-timeout", "1", "--out", str(out), timeout=300)
    assert proc.returncode != 0
    assert "gave up after 1s (--placement-timeout) waiting for" in proc.stdout, proc.stdout[-3000:]
    line = proc.stdout.split("gave up after")[1].splitlines()[0]
    assert "2 worker(s) x (1 CPU, 0 GPU) never placed" in line, line
    assert "failed with exit code 2" in proc.stdout
    assert not (out / "records.json").exists()


def test_a_retrain_runs_trials_side_by_side_on_the_added_nodes(autoscaling_cluster, searched, tmp_path):
    """Its driver in the test process, joined to the cluster (the job boundary is not what this checks)."""
    search, _, _ = searched
    out = tmp_path / "retrain"
    done = drive("retrain.py", "--search-dir", str(search), "--out", str(out), "--smoke-test", "--no-mlflow",
                 "--cpus-per-trial", "1", "--set", "retrain.latency_repeats=0", cluster=autoscaling_cluster)
    assert done.returncode == 0, done.console[-4000:]
    trials = pd.read_parquet(out / "trials.parquet")
    keys = sorted(set(trials["key"]))
    assert len(keys) == len(records(search)["architectures"]) >= 2
    spans, nodes = [], set()
    for key in keys:
        log = [json.loads(line) for line in (out / ".trials" / f"{key}.jsonl").read_text().splitlines()]
        start = min(line["time"] for line in log if "start_epoch" in line)
        end = max(line["time"] for line in log if "finished_epoch" in line)
        spans.append((start, end))
        nodes |= {line["node_id"] for line in log if "node_id" in line}
    # two trials ran at once (their intervals overlap), on two nodes
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if a[0] < b[1] and b[0] < a[1]]
    assert overlapping, spans
    assert len(nodes) >= 2


def test_a_sweep_of_two_searches_finishes(autoscaling_cluster, tmp_path):
    """Its driver in the test process, joined to the cluster (the job boundary is not what this checks)."""
    out = tmp_path / "sweep"
    done = drive("sweep.py", "--smoke-test", "--out", str(out), "--grid", "search.lambda0=1.0,0.5",
                 "--workers-per-search", "1", "--cpus-per-worker", "1", "--no-mlflow", cluster=autoscaling_cluster)
    assert done.returncode == 0, done.console[-4000:]
    folders = sorted(p for p in out.iterdir() if p.is_dir() and (p / "records.json").is_file())
    assert len(folders) == 2
    assert all(records(p)["finished"] and records(p)["architectures"] for p in folders)
    assert (out / "sweep_searches.csv").is_file()


def test_a_killed_driver_resubmitted_then_a_node_lost_ends_as_an_uninterrupted_run(autoscaling_cluster, searched,
                                                                                   tmp_path):
    """One search, its job's command the same for the first try and the retry (--resume): its
    driver killed after the first checkpoint (the process running pipelines/search.py, as a lost
    head takes it), the job submitted again, and in that job a node killed mid-search (Ray Train
    restarts the group from its last checkpoint once a node takes its place: one joined by hand,
    since this provider never replaces a killed node). It ends as the uninterrupted run: the
    same records, every epoch run, the first once."""
    cluster = autoscaling_cluster
    straight, _, _ = searched
    out = tmp_path / "cut"
    workers = out / ".workers"
    args = [*SEARCH, "--resume", "--out", str(out)]  # one command for the first try and the retry
    first = f"killed-{os.getpid()}-{int(time.time())}"
    sent = submit(cluster, "search.py", *args, job_id=first)
    assert sent.returncode == 0, sent.stderr[-3000:]
    pid = wait_for(lambda: (out / "checkpoints" / "latest.pt").is_file() and (workers / "rank-0.json").is_file()
                   and _driver_pid(cluster, out), timeout=600, every=0.1)
    assert pid, job_logs(cluster, first)[-3000:]
    # its rank 0 held (SIGSTOP) first, so that it writes nothing more while the driver dies: the
    # first try ends at the last checkpoint it had written by then (the first epoch's or a later one)
    rank0 = json.loads((workers / "rank-0.json").read_text())["pid"]
    os.kill(rank0, signal.SIGSTOP)
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: job_state(cluster, first) == "failed", timeout=120), job_state(cluster, first)
    with contextlib.suppress(ProcessLookupError):  # nothing of the killed job goes on
        os.kill(rank0, signal.SIGKILL)
    assert not (out / "records.json").is_file() or not records(out)["finished"]  # it was cut short
    # what the first try left: reports.jsonl is only appended to, and rank-1.json describes the
    # first try's rank 1 until the new group's rank 1 rewrites it
    reports, rank1 = workers / "reports.jsonl", workers / "rank-1.json"
    seen = len(reports.read_text().splitlines()) if reports.is_file() else 0
    first_rank1 = json.loads(rank1.read_text())["pid"] if rank1.is_file() else None

    again = f"resubmitted-{os.getpid()}-{int(time.time())}"
    sent = submit(cluster, "search.py", *args, job_id=again)
    assert sent.returncode == 0, sent.stderr[-3000:]

    def new_group_past_epoch_2():
        """The node of the resubmitted job's rank 1 once that job's rank 0 has reported an epoch
        >= 2 (Ray Train then holds a checkpoint of this try: kill_rank_after_report), else None."""
        if not (reports.is_file() and rank1.is_file()):
            return None
        now = json.loads(rank1.read_text())
        new = [json.loads(line)["epoch"] for line in reports.read_text().splitlines()[seen:] if line.strip()]
        return now["node_id"] if now["pid"] != first_rank1 and any(e >= 2 for e in new) else None
    node = wait_for(new_group_past_epoch_2, timeout=600, every=0.1)
    assert node, job_logs(cluster, again)[-3000:]
    kill_node(node, cluster["mark"])  # the node is gone, as a preempted instance
    # a node comes in its place (by hand: this provider does not replace a killed node itself),
    # started while the cluster finds the other one gone
    assert job_state(cluster, again) == "running"
    join_node(cluster, "replacement")
    try:
        assert wait_for(lambda: worker_nodes(cluster).get(node) is False, timeout=120), worker_nodes(cluster)
        assert wait_for(lambda: job_state(cluster, again) in ("succeeded", "failed"), timeout=900)
    finally:  # a node the autoscaler did not launch is never scaled down: removed by hand
        assert leave_node(cluster, "replacement")
    assert job_state(cluster, again) == "succeeded", job_logs(cluster, again)[-4000:]
    _complete(out)
    assert json.loads(rank1.read_text())["node_id"] != node  # the group was restarted elsewhere
    assert _summary(out) == _summary(straight)
    # each time from the last checkpoint: the first epoch ran once, every epoch ran
    epochs = [json.loads(line)["epoch"] for line in (workers / "consistency.jsonl").read_text().splitlines()]
    assert epochs.count(1) == 1 and sorted(set(epochs)) == [1, 2, 3], epochs


def test_a_worker_no_node_type_holds_is_refused_at_once(autoscaling_cluster, tmp_path):
    out = tmp_path / "big"
    started = time.time()
    proc = submit(autoscaling_cluster, "search.py", "--smoke-test", "--workers", "2", "--cpus-per-worker", "4",
                  "--no-mlflow", "--out", str(out), timeout=300)
    waited = time.time() - started
    assert proc.returncode != 0 and "failed with exit code 2" in proc.stdout, proc.stdout[-3000:]
    assert "needs 4 CPUs and 0 GPUs on one node; the largest node type the cluster can have has 1 CPUs" in (
        proc.stdout), proc.stdout[-3000:]
    assert "placement: waiting" not in proc.stdout
    assert not (out / "records.json").exists()
    print(f"refused after {waited:.0f}s")
