"""Stops that end the same way whenever they come: a retrain stopped five times at different
moments with a second CPU load beside it (the first Ctrl-C while its trials start on its
embedded Ray, where the terminal's signal reaches Ray's own processes too; the other four on a
driver joined to the session's cluster, which stays up), and a
search on Ray Train on its embedded Ray, each ending through Tune's or Train's own graceful stop
(cli.process.fit_until_stopped): exit 130 (143 after SIGTERM), the console's last line the one stop
line, nothing of Ray's own processes on it, and `--resume` (in the test process, on the
session's cluster: no signal in it) training no trial that had finished again;
and a retrain stopped before Tune's first experiment snapshot, which --resume starts anew.

Each moment is caught as it happens: the driver is paused (SIGSTOP) the instant its console or
its output folder shows the moment, the stop signal sent, and the driver let go (SIGCONT), so
the stop lands where the test says whatever the load."""
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch
from drivers import drive, signal_paused

import ray_nodes

ROOT = Path(__file__).resolve().parents[1]
from goldnas_ray.cli.outputs import resumes
from goldnas_ray.files.store import location
from goldnas_ray.orchestration.retrain_driver import tune_saved

NOISE = ("Traceback", "autoscaler failed", "Terminated with signal", "Tuner.restore", "Resume experiment",
         "Trials did not complete", "Gracefully aborting")


@pytest.fixture
def busy():
    """A second CPU load beside the run: a busy loop."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield
    proc.kill()
    proc.wait()


def _run(script: str, args: list[str], moment=None, sig=signal.SIGINT, timeout: float = 600, cluster=None):
    """``python pipelines/<script> args`` on an embedded Ray (joined to ``cluster``, the
    session's, when given), in a session of its own as from a terminal; when ``moment(line)`` is
    true for a console line (or for None, polled while the run waits for its next line), the
    stop ``sig`` goes to it: SIGINT to its process group, as Ctrl-C does, SIGTERM to the driver
    alone. Returns (exit status, console, whether the stop was sent)."""
    if cluster is None:
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    else:
        env = dict(cluster["env"], RAY_ADDRESS=cluster["address"])
    env["PYTHONUNBUFFERED"] = "1"
    run = subprocess.Popen([sys.executable, f"pipelines/{script}", *args], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT, start_new_session=True)
    watchdog = threading.Timer(timeout, lambda: os.killpg(run.pid, signal.SIGKILL))
    watchdog.start()
    lines, sent = [], threading.Event()

    def stop():
        if sent.is_set() or run.poll() is not None:
            return
        sent.set()
        # Ctrl-C: the terminal's whole process group; `kill`, `ray job stop`: the driver alone
        # (a job's driver holds none of Ray's processes)
        signal_paused(run.pid, sig, group=sig == signal.SIGINT)

    if moment is not None:
        def poll():
            while run.poll() is None and not sent.is_set():
                if moment(None):
                    stop()
                time.sleep(0.01)
        threading.Thread(target=poll, daemon=True).start()
    try:
        for line in run.stdout:
            lines.append(line)
            if moment is not None and moment(line):
                stop()
        run.wait()
    finally:
        watchdog.cancel()
    return run.returncode, "".join(lines), sent.is_set()


def _stopped(console: str, code: int, rc: int, script: str, out: Path) -> str:
    """The checks every stop passes; returns the stop line."""
    assert rc == code, console[-3000:]
    lines = [line for line in console.splitlines() if line.strip()]
    stops = [line for line in lines if line.startswith("stopped")]
    assert len(stops) == 1 and lines[-1] == stops[0], console[-3000:]
    assert stops[0].endswith(f"; resume with: python pipelines/{script} --resume --out {out}"), stops[0]
    for noise in NOISE:
        assert noise not in console, console[-3000:]
    return stops[0]


def _daemons(cluster) -> set[int]:
    """The pids of the cluster's GCS server and raylets."""
    pids = ray_nodes.marked(cluster["env"][ray_nodes.MARKER])
    return {pid for pid, said in zip(pids, ray_nodes.describe(pids)) if "raylet/raylet" in said or "gcs_server" in said}


def _trial_logs(out: Path) -> dict[str, list[dict]]:
    return {p.stem: [json.loads(line) for line in p.read_text().splitlines()] for p in (out / ".trials").glob("*.jsonl")}


def test_a_retrain_stopped_before_tunes_first_snapshot_is_started_anew(tmp_path):
    """Tune writes tuner.pkl before its first experiment_state-*.json; a retrain stopped between
    the two cannot be restored (Tuner.can_restore says it can), so --resume starts it anew."""
    out = tmp_path / "r"
    (out / "ray" / "retrain").mkdir(parents=True)
    (out / "ray" / "retrain" / "tuner.pkl").write_bytes(b"saved first")
    (out / "retrain.json").write_text("{}")
    assert not tune_saved(location(out))
    (out / "ray" / "retrain" / "experiment_state-2026-12-03_13-00-00.json").write_text("{}")
    assert tune_saved(location(out))
    (out / "ray" / "retrain" / "experiment_state-2026-12-03_13-00-00.json").unlink()
    said = []
    assert resumes(location(out), "retrain", said.append) is False  # a new run, not a restore that fails
    assert said and not (out / "ray").exists() and not (out / "retrain.json").exists(), said


@pytest.mark.ray
@pytest.mark.services
def test_a_trial_whose_log_says_it_finished_reports_its_stored_checkpoint_and_trains_nothing(tmp_path):
    """A stop between Tune taking a trial's last result and registering its checkpoint leaves
    Tune with the epoch before: run again, the trial reports its newest stored checkpoint (the
    last epoch) and trains nothing (its genotype here could not even be built)."""
    out, key = tmp_path / "r", "a-s0"
    for epoch in (1, 2):
        folder = out / "ray" / "retrain" / key / f"checkpoint_{epoch - 1:06d}"
        folder.mkdir(parents=True)
        history = [{"epoch": e, "test_acc": 0.5, "train_loss": 1.0, "lr": 0.1, "seconds": 1.0} for e in range(1, epoch + 1)]
        torch.save({"epoch": epoch, "history": history}, folder / "trial.pt")
    (out / ".trials").mkdir()
    (out / ".trials" / f"{key}.jsonl").write_text('{"start_epoch": 0}\n{"finished_epoch": 2}\n')
    script = tmp_path / "trial.py"
    script.write_text(textwrap.dedent(f"""
        import ray.tune
        from goldnas_ray.core.config import RetrainConfig
        from goldnas_ray.files.store import location
        from goldnas_ray.orchestration.cluster import connect
        from goldnas_ray.orchestration.retrain_trial import last_state, retrain_trial
        from goldnas_ray.retrain.plan import TrialSpec
        connect(num_cpus=1)
        spec = TrialSpec({key!r}, "a", 0, {{}}, RetrainConfig(epochs=2).model_dump(), {{}}, {str(out)!r})
        tuner = ray.tune.Tuner(ray.tune.with_parameters(retrain_trial, specs={{{key!r}: spec}}),
                               param_space={{"key": {key!r}}},
                               run_config=ray.tune.RunConfig(storage_path={str(tmp_path / "tune")!r}, verbose=0))
        result = tuner.fit()[0]
        print("result:", result.error, result.metrics.get("epoch"), last_state(result, location({str(out)!r}))["epoch"])
    """))
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "result: None 2 2" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(_trial_logs(out)[key]) == 2  # no start_epoch line: nothing trained


@pytest.fixture(scope="module")
def search_dir(tmp_path_factory):
    """A 1-epoch search on digits, in the test process (--local: no Ray): 2 recorded architectures."""
    out = tmp_path_factory.mktemp("stops") / "search"
    done = drive("search.py", "--local", "--smoke-test", "--max-epochs", "1", "--no-mlflow", "--out", str(out))
    assert done.returncode == 0, done.console[-3000:]
    return out


@pytest.mark.ray
@pytest.mark.services
def test_a_retrain_stopped_five_times_under_load_ends_the_same_way_and_resumes_without_retraining(
        search_dir, busy, ray_cluster, tmp_path):
    """3 trials x 2 epochs, 2 at once, stopped: as the first trial starts (Ctrl-C, on its
    embedded Ray), then joined to the session's cluster: in a first epoch, as the driver prints
    a trial's last epoch (SIGTERM: 143), the instant a trial's process writes that it finished
    (before Tune may have registered its last checkpoint), and while the report is written;
    each a clean stop,
    and the cluster the stopped drivers joined still up after them (its daemons are in sessions
    of their own, so no signal here is sent to them: what this guards is a driver's stop path
    ending the cluster it joined); the last --resume finishes, and no trial starts again once
    its log says it finished."""
    out = tmp_path / "r"
    first = ["--search-dir", str(search_dir), "--no-mlflow", "--random", "1", "--epochs", "2",
             "--set", "retrain.batch_size=128", "--out", str(out)]
    resume = ["--resume", "--out", str(out)]

    def line(pattern):
        return lambda: lambda text: text is not None and re.search(pattern, text) is not None

    def finished_lines():
        return sum(p.read_text().count('"finished_epoch"') for p in (out / ".trials").glob("*.jsonl"))

    def another_finishes():  # made as the run starts: a finished line more than then
        before = finished_lines()
        return lambda text: finished_lines() > before

    joined = ray_cluster
    moments = [(first, lambda: lambda text: any((out / ".trials").glob("*.jsonl")), signal.SIGINT,
                "as a trial starts", None),
               (resume, line(r" epoch +1/2 "), signal.SIGINT, "in a first epoch", joined),
               (resume, line(r" epoch +2/2 "), signal.SIGTERM, "as the driver prints a trial's last epoch", joined),
               (resume, another_finishes, signal.SIGINT, "as a trial's process writes that it finished", joined),
               (resume, lambda: lambda text: (out / "trials.parquet").exists(), signal.SIGINT, "writing the report",
                joined)]
    progress = []
    daemons = _daemons(ray_cluster)
    assert len(daemons) >= 3, daemons  # its GCS server, a raylet on each of its 2 nodes
    for args, moment, sig, when, cluster in moments:
        rc, console, sent = _run("retrain.py", args, moment(), sig, cluster=cluster)
        assert sent, f"{when}: the run ended before the moment came\n{console[-3000:]}"
        stop = _stopped(console, 128 + sig, rc, "retrain.py", out)
        progress.append(int(re.match(r"stopped: (\d) of 3 trials finished", stop).group(1)))
    assert progress[-1] == 3 and "the report was not written" in stop, progress
    assert not (out / "frontier.csv").exists()
    assert daemons <= set(ray_nodes.marked(ray_cluster["env"][ray_nodes.MARKER])), "a stopped driver ended the cluster"

    done = drive("retrain.py", *resume, cluster=ray_cluster)
    assert done.returncode == 0, done.console[-3000:]
    assert (out / "frontier.csv").is_file()
    logs = _trial_logs(out)
    assert len(logs) == 3
    for key, entries in logs.items():
        done = [i for i, e in enumerate(entries) if "finished_epoch" in e]
        assert done, (key, entries)
        # once its log says it finished, a trial never starts training again, from any epoch
        assert not [e for e in entries[done[0]:] if "start_epoch" in e], (key, entries)


@pytest.mark.ray
@pytest.mark.services
def test_a_search_on_ray_train_stops_and_resumes(ray_cluster, tmp_path):
    """A search on Ray Train on its embedded Ray, Ctrl-C after its first epoch: Train aborts its
    workers, exit 130, the one stop line, the records of the epochs done; --resume (in the test
    process, on the session's cluster) finishes it."""
    out = tmp_path / "s"
    rc, console, sent = _run("search.py", ["--smoke-test", "--max-epochs", "4", "--no-mlflow", "--out", str(out)],
                             lambda text: text is not None and " epoch   1/4 " in text)
    assert sent, console[-3000:]
    stop = _stopped(console, 130, rc, "search.py", out)
    epochs = int(re.match(r"stopped: after epoch (\d) of at most 4", stop).group(1))
    assert 1 <= epochs < 4 and json.loads((out / "records.json").read_text())["epochs"] == epochs, stop
    done = drive("search.py", "--resume", "--no-mlflow", "--out", str(out), cluster=ray_cluster)
    assert done.returncode == 0, done.console[-3000:]
    assert json.loads((out / "records.json").read_text())["epochs"] == 4
