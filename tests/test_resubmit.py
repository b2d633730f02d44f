"""Resubmittable jobs: `--resume` on a folder (or bucket prefix) with no run in it starts one and
says so in its first line, so one command is a job's first try and every retry; from each state
a driver killed at any moment leaves (nothing yet, a start stopped before its first checkpoint,
retrain.json or sweep.json, a run to continue), the same command continues or starts cleanly,
never overwrites finished results, and refuses with one line what it cannot tell apart from
someone else's files."""
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import importlib.util
from pathlib import Path

import pytest
from drivers import drive

from goldnas_ray import cli
from goldnas_ray.cli.outputs import resumes
from goldnas_ray.core.config import ConfigError
from goldnas_ray.files.search_files import CHECKPOINT, OutputDirError
from goldnas_ray.files.store import location
from goldnas_ray.sweep.plan import Sweep, check_same_plan, not_as_planned, plan_sweep

ROOT = Path(__file__).resolve().parents[1]
SEARCH = [sys.executable, str(ROOT / "pipelines" / "search.py"), "--local", "--smoke-test", "--resume"]
LOCAL = ("--local", "--smoke-test", "--resume")  # SEARCH's arguments


def run(cmd, env=None, timeout=600):
    # the session's tracking server, which an earlier test may have put in the environment,
    # would take these runs away from the sqlite store inside --out that the tests read
    env = {k: v for k, v in (env or os.environ).items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def job(script, *argv, cluster=None):
    """What ``run`` does, with ``python pipelines/<script> argv`` run in the test process
    (drivers.drive; ``cluster``: joined to the session's): the same command is every try."""
    with pytest.MonkeyPatch.context() as env:
        for name in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
            env.delenv(name, raising=False)
        return drive(script, *argv, cluster=cluster)


def load_pipeline(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "pipelines" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def first_try(tmp_path_factory):
    """`search.py --local --smoke-test --resume --out NEW` (in the test process): the first try
    of a resubmittable job, on a folder that does not exist yet (tracked in its sqlite store)."""
    out = tmp_path_factory.mktemp("resubmit") / "s1"
    proc = job("search.py", *LOCAL, "--out", str(out))
    assert proc.returncode == 0, proc.console[-3000:]
    return out, proc


def test_resume_on_a_missing_folder_starts_the_search_and_the_same_command_then_finds_it_done(first_try):
    out, proc = first_try
    assert proc.stdout.splitlines()[0] == f"--resume: no search in {out} yet; starting a new one"
    records = json.loads((out / "records.json").read_text())
    assert records["finished"] and records["architectures"] and (out / CHECKPOINT).is_file()
    before = (out / "records.json").read_bytes()
    again = job("search.py", *LOCAL, "--out", str(out))  # the retry of a job whose first try finished
    assert again.returncode == 0, again.console[-3000:]
    assert "already finished after epoch 3; nothing to do" in again.stdout
    assert "starting a new one" not in again.stdout
    assert (out / "records.json").read_bytes() == before


def test_a_search_killed_before_its_first_checkpoint_starts_anew_beside_its_mlflow_store(first_try, tmp_path):
    """The state a driver killed in the first epoch leaves (MLflow run made, Ray Train's folder
    and the workers' notes, records.json written but not yet the checkpoint): the same command
    removes all but the MLflow store and records what an uninterrupted run records."""
    done, _ = first_try
    out = tmp_path / "s1"
    shutil.copytree(done, out)
    (out / CHECKPOINT).unlink()
    records = json.loads((out / "records.json").read_text())
    (out / "records.json").write_text(json.dumps(records | {"finished": False, "epochs": 1,
                                                            "architectures": records["architectures"][:1]}))
    (out / "ray" / "s1").mkdir(parents=True)
    (out / ".workers").mkdir()
    (out / ".workers" / "rank-0.json").write_text("{}")
    proc = job("search.py", *LOCAL, "--out", str(out))
    assert proc.returncode == 0, proc.console[-3000:]
    first = proc.stdout.splitlines()[0]
    assert first.startswith(f"--resume: no search in {out} yet; starting a new one (removed what a start stopped "
                            f"before its first checkpoint left in {out}: "), first
    assert "mlflow.db" not in first and ".workers" in first and "ray" in first
    assert not (out / ".workers").exists() and not (out / "ray").exists()
    again = json.loads((out / "records.json").read_text())
    assert again["finished"] and again["architectures"] == records["architectures"]  # as the uninterrupted run
    with sqlite3.connect(out / "mlflow.db") as db:  # the store kept: the stopped start's run and the new one
        statuses = sorted(s for (s,) in db.execute("select status from runs"))
    assert statuses == ["FINISHED", "FINISHED"]


def test_resume_refuses_what_it_cannot_tell_from_someone_elses_files(first_try, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not a run")
    proc = job("search.py", *LOCAL, "--out", str(mine))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "is not a search output folder" in proc.stderr and "notes.txt" in proc.stderr
    assert (mine / "notes.txt").read_text() == "not a run"
    # a finished search's records without its checkpoint: not overwritten by a new start
    done, _ = first_try
    kept = tmp_path / "kept"
    shutil.copytree(done, kept)
    (kept / CHECKPOINT).unlink()
    before = (kept / "records.json").read_bytes()
    with pytest.raises(OutputDirError, match="finished search's records.json"):
        resumes(location(kept), "search")
    assert (kept / "records.json").read_bytes() == before and (kept / "genotypes").is_dir()
    assert capsys.readouterr().out == ""


def test_a_retrain_killed_before_retrain_json_or_tunes_experiment_starts_anew(tmp_path, capsys):
    """Killed between writing its genotypes and retrain.json, or after retrain.json before Tune
    saved its experiment (no trial finished): nothing to continue, the leftovers go."""
    out = tmp_path / "r1"
    (out / "genotypes").mkdir(parents=True)
    (out / "genotypes" / "arch-000.json").write_text("{}")
    (out / ".mlflow-buffer").mkdir()
    # the command line cannot start one: said before anything is removed
    with pytest.raises(OutputDirError, match="starting one needs --search-dir or --search-run"):
        resumes(location(out), "retrain", needs="--search-dir or --search-run")
    assert (out / "genotypes" / "arch-000.json").is_file()
    assert resumes(location(out), "retrain") is False
    assert sorted(p.name for p in out.iterdir()) == []
    assert capsys.readouterr().out == (f"--resume: no retrain in {out} yet; starting a new one (removed what a start "
                                       f"stopped before its first checkpoint left in {out}: .mlflow-buffer, "
                                       f"genotypes)\n")
    (out / "retrain.json").write_text("{}")
    (out / "mlflow.db").write_text("")  # a store beside it stays
    assert resumes(location(out), "retrain") is False
    assert sorted(p.name for p in out.iterdir()) == ["mlflow.db"]
    # with a finished trial it is a retrain: the driver continues it (or says what is missing)
    (out / "retrain.json").write_text("{}")
    (out / ".trials").mkdir()
    (out / ".trials" / "a-s0.jsonl").write_text('{"finished_epoch": 2}\n')
    assert resumes(location(out), "retrain") is True


def test_a_probe_object_left_by_a_driver_killed_in_the_probe_is_a_leftover_not_someone_elses_file(tmp_path, capsys):
    """A driver killed between output_folder's probe write and its delete leaves
    .goldnas-probe-XXXXXXXX: the same command starts the run (and removes it), for every stage
    and for a pipeline's folder; another name is still refused."""
    from goldnas_ray.files.store import PROBE

    for stage in ("search", "retrain", "sweep"):
        out = tmp_path / stage
        out.mkdir()
        (out / f"{PROBE}0a1b2c3d").write_bytes(b"probe")
        (out / "mlflow.db").write_text("")
        assert resumes(location(out), stage) is False
        assert sorted(p.name for p in out.iterdir()) == ["mlflow.db"]
        assert f"left in {out}: {PROBE}0a1b2c3d)" in capsys.readouterr().out
        (out / ".goldnas-notes").write_text("")  # not a probe's name: someone else's
        with pytest.raises(OutputDirError, match="holds what no"):
            resumes(location(out), stage)
    pipeline = load_pipeline("pipeline")
    out = tmp_path / "p1"
    (out / "search").mkdir(parents=True)
    (out / f"{PROBE}0a1b2c3d").write_bytes(b"probe")
    (out / "search" / f"{PROBE}99887766").write_bytes(b"probe")
    assert pipeline.resume_search(location(out)) is False
    assert sorted(p.name for p in out.iterdir()) == ["search"] and not list((out / "search").iterdir())


def test_a_new_run_takes_a_folder_that_holds_only_an_mlflow_store(tmp_path):
    from goldnas_ray.files.search_files import check_new_out_dir

    (tmp_path / "mlflow.db").write_text("")
    (tmp_path / "mlartifacts").mkdir()
    check_new_out_dir(tmp_path, "search")
    (tmp_path / "records.json").write_text("{}")
    with pytest.raises(OutputDirError, match="already exists and is not empty"):
        check_new_out_dir(tmp_path, "search")


def test_a_pipeline_resumes_or_starts_from_what_its_folder_holds(tmp_path, capsys):
    pipeline = load_pipeline("pipeline")
    out = tmp_path / "p1"
    assert pipeline.resume_search(location(out)) is False
    assert capsys.readouterr().out == f"--resume: no pipeline in {out} yet; starting a new one\n"
    (out / "search").mkdir(parents=True)
    (out / "search" / "mlflow.db").write_text("")
    (out / "search" / ".workers").mkdir()
    assert pipeline.resume_search(location(out)) is False
    assert sorted(p.name for p in (out / "search").iterdir()) == ["mlflow.db"]
    (out / "retrain" / "genotypes").mkdir(parents=True)
    with pytest.raises(OutputDirError, match="holds a retrain/ but no search to continue"):
        pipeline.resume_search(location(out))
    (out / "search" / "checkpoints").mkdir()
    (out / "search" / CHECKPOINT).write_bytes(b"state")
    assert pipeline.resume_search(location(out)) is True  # its retrain: continued or started later
    (out / "elsewhere.txt").write_text("")
    with pytest.raises(OutputDirError, match="is not a pipeline output folder"):
        pipeline.resume_search(location(out))


def test_a_continued_sweep_takes_its_planning_flags_only_when_they_plan_the_same_searches(tmp_path, capsys):
    sweep_py = load_pipeline("sweep")
    flags = ["--grid", "search.lambda0=0.001,0.002", "--seeds", "0,1", "--smoke-test"]
    args = sweep_py.parse_args(["--resume", "--out", str(tmp_path), *flags])
    grid = {"search.lambda0": ["0.001", "0.002"]}  # what the first try's driver wrote in sweep.json
    Sweep(grid, [0, 1], plan_sweep(cli.sweep_base(args), grid, [0, 1])).write(tmp_path)
    check_same_plan(location(tmp_path), args, cli.sweep_base)  # the first try's command: taken
    none_given = sweep_py.parse_args(["--resume", "--out", str(tmp_path)])
    check_same_plan(location(tmp_path), none_given, cli.sweep_base)
    for other in (["--grid", "search.lambda0=0.001,0.004", "--seeds", "0,1", "--smoke-test"],
                  ["--grid", "search.lambda0=0.001,0.002", "--seeds", "0", "--smoke-test"],
                  [*flags, "--set", "search.c0=1.5"], flags[:-1]):
        with pytest.raises(ConfigError, match="was planned with other"):
            check_same_plan(location(tmp_path), sweep_py.parse_args(["--resume", "--out", str(tmp_path), *other]),
                            cli.sweep_base)
    assert resumes(location(tmp_path), "sweep") is True
    empty = tmp_path / "new"
    (empty / ".mlflow-buffer").mkdir(parents=True)
    assert resumes(location(empty), "sweep") is False and not (empty / ".mlflow-buffer").exists()


def test_a_continued_sweep_names_only_the_resource_and_mlflow_flags_that_differ_from_its_plan(tmp_path):
    """Every retry of the first try's command gives its flags again: nothing is named then;
    a flag given with another value than sweep.json's is named with it."""
    sweep_py = load_pipeline("sweep")
    first = ["--grid", "search.lambda0=0.001", "--smoke-test", "--workers-per-search", "2", "--cpus-per-worker", "2",
             "--mlflow-uri", "http://mlflow:5000", "--experiment", "mine"]
    args = sweep_py.parse_args(["--resume", "--out", str(tmp_path), *first])
    grid = {"search.lambda0": ["0.001"]}
    Sweep(grid, [0], plan_sweep(cli.sweep_base(args), grid, [0]), workers=2, cpus_per_worker=2.0,
          experiment="mine", mlflow_tracking_uri="http://mlflow:5000").write(tmp_path)
    assert not_as_planned(location(tmp_path), args) == []
    assert not_as_planned(location(tmp_path), sweep_py.parse_args(["--resume", "--out", str(tmp_path)])) == []
    other = sweep_py.parse_args(["--resume", "--out", str(tmp_path), "--workers-per-search", "2",
                                 "--cpus-per-worker", "4", "--gpus-per-worker", "1", "--no-mlflow",
                                 "--experiment", "mine", "--mlflow-uri", "http://other:5000"])
    assert not_as_planned(location(tmp_path), other) == [
        "--cpus-per-worker 4.0", "--gpus-per-worker 1.0", "--mlflow-uri http://other:5000", "--no-mlflow"]
    # a value given is named even when it is the flag's default (the plan has 2 workers, not 1)
    defaults = sweep_py.parse_args(["--resume", "--out", str(tmp_path), "--workers-per-search", "1",
                                    "--experiment", "goldnas-sweep", "--gpus-per-worker", "0"])
    assert not_as_planned(location(tmp_path), defaults) == ["--workers-per-search 1", "--experiment goldnas-sweep"]


def test_resume_on_an_empty_bucket_prefix_starts_the_search_there(s3, readme_shell):
    out = s3["uri"]("resubmit/s1")
    env = dict(readme_shell.env)
    proc = run([*SEARCH, "--no-mlflow", "--out", out], env=env)
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first.startswith("--resume: no search in s3://") and first.endswith("resubmit/s1 yet; starting a new one")
    assert json.loads((location(out) / "records.json").read_text())["finished"]
    again = run([*SEARCH, "--no-mlflow", "--out", out], env=env)
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr


def test_a_retrain_killed_between_its_genotypes_and_retrain_json_is_resubmitted_with_the_same_command(
        first_try, ray_cluster, tmp_path):
    """On the session's cluster, in the test process: the retrain's folder holds the genotypes
    a killed start wrote; the job's command (--resume with --search-dir) starts it anew and
    reports; the same command again continues the finished retrain and changes nothing."""
    search, _ = first_try
    out = tmp_path / "r1"
    shutil.copytree(search / "genotypes", out / "genotypes")
    args = ["--resume", "--search-dir", str(search), "--out", str(out), "--smoke-test", "--no-mlflow",
            "--set", "retrain.epochs=1", "--set", "retrain.latency_repeats=0"]
    proc = job("retrain.py", *args, cluster=ray_cluster)
    assert proc.returncode == 0, proc.console[-3000:]
    assert proc.stdout.splitlines()[0] == (f"--resume: no retrain in {out} yet; starting a new one (removed what a "
                                           f"start stopped before its first checkpoint left in {out}: genotypes)")
    assert (out / "retrain.json").is_file() and (out / "frontier.csv").is_file()
    before = (out / "frontier.csv").read_bytes()
    again = job("retrain.py", *args, cluster=ray_cluster)  # once more: continues the finished retrain
    assert again.returncode == 0, again.console[-3000:]
    assert "starting a new one" not in again.stdout
    assert (out / "retrain.json").is_file() and (out / "frontier.csv").read_bytes() == before


def test_a_sweep_killed_before_any_search_started_continues_with_its_first_command(ray_cluster, tmp_path):
    """sweep.json written, no search begun (the driver killed right after it): the first try's
    command, --grid and all (in the test process, on the session's cluster), continues the
    planned sweep and runs its searches."""
    sweep_py = load_pipeline("sweep")
    out = tmp_path / "sw"
    flags = ["--grid", "search.lambda0=0.001,0.002", "--smoke-test", "--no-mlflow", "--set", "search.max_epochs=1"]
    args = sweep_py.parse_args(["--resume", "--out", str(out), *flags])
    grid = {"search.lambda0": ["0.001", "0.002"]}
    out.mkdir()
    Sweep(grid, [0], plan_sweep(cli.sweep_base(args), grid, [0])).write(out)  # as its driver wrote it
    proc = job("sweep.py", "--resume", "--out", str(out), *flags, cluster=ray_cluster)
    assert proc.returncode == 0, proc.console[-3000:]
    assert "starting a new one" not in proc.stdout
    assert "2 of 2 searches finished" in proc.stdout
    for name in ("p0-s0", "p1-s0"):
        assert json.loads((out / name / "records.json").read_text())["finished"]


def test_the_pipeline_job_command_starts_on_an_empty_place_and_a_resubmission_finds_it_done(ray_cluster, tmp_path):
    """The KubeRay entrypoint's shape (pipeline.py --resume --out FIXED), its driver joined to
    the session's cluster (in the test process): the first try starts the pipeline and says
    so, the same command again redoes nothing."""
    out = tmp_path / "p1"
    args = ["--resume", "--out", str(out), "--smoke-test", "--no-mlflow", "--max-epochs", "1", "--seeds", "1",
            "--set", "retrain.epochs=1", "--set", "retrain.latency_repeats=0"]
    proc = job("pipeline.py", *args, cluster=ray_cluster)
    assert proc.returncode == 0, proc.console[-3000:]
    assert proc.stdout.splitlines()[0] == f"--resume: no pipeline in {out} yet; starting a new one"
    assert json.loads((out / "search" / "records.json").read_text())["finished"]
    report = (out / "retrain" / "frontier.csv").read_bytes()
    again = job("pipeline.py", *args, cluster=ray_cluster)
    assert again.returncode == 0, again.console[-3000:]
    assert "starting a new one" not in again.stdout and "already finished" in again.stdout
    assert (out / "retrain" / "frontier.csv").read_bytes() == report


def test_the_rayjob_entrypoint_fits_a_worker_pod_and_bounds_each_tries_wait():
    """On KubeRay the driver is never told the worker group's size, so nothing too large is
    refused at once: the shipped entrypoint's workers and trials fit a pod of its worker group,
    and its --placement-timeout, below the default, bounds the wait of every retry."""
    import shlex

    import yaml

    from goldnas_ray.orchestration.placement import PLACEMENT_TIMEOUT

    job = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayjob.yaml").read_text())["spec"]
    words = shlex.split(job["entrypoint"])
    assert words[:2] == ["python", "pipelines/pipeline.py"]
    args = load_pipeline("pipeline").parse_args(words[2:])
    assert args.resume and 0 < args.placement_timeout < PLACEMENT_TIMEOUT
    (group,) = job["rayClusterSpec"]["workerGroupSpecs"]
    pod = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    cpus, gpus = float(pod["cpu"]), float(pod["nvidia.com/gpu"])
    assert args.cpus_per_worker + 1 <= cpus and args.gpus_per_worker <= gpus  # + a streamed run's decode CPU
    assert args.cpus_per_trial <= cpus and args.gpus_per_trial <= gpus
