"""Retrain a search's architectures from scratch on Ray Tune, one trial per (architecture, seed).

The driver checks everything first (``retrain.plan``: search files, genotypes, config, data;
here: MLflow, whether a trial could ever be placed, ``placement``), waits until the cluster places
the first trial (an autoscaler adds nodes for it; ``--placement-timeout``; not when every trial of
a resumed retrain has finished), writes the genotypes
and retrain.json, creates the MLflow parent and child runs, then hands the trials to Tune, which
runs as many at once as the cluster can grow to hold (its node types at their max counts;
unknown: every trial queues on its placement group). A failed trial is retried from its last checkpoint (``max_failures``);
an interrupted retrain continues with ``resume``. At the end the trials' histories are read
back from their last checkpoints and the report is written, then logged to the parent run.

    <out>/retrain.json        what is trained (retrain.plan.Manifest)
    <out>/genotypes/          every trained architecture (searched ones copied, random drawn)
    <out>/search/             the search's records.json + genotypes (with --search-run)
    <out>/trials.parquet      one row per (trial, epoch)
    <out>/frontier.*          the accuracy/FLOPs report (retrain.report)
    <out>/ray/retrain/        Ray Tune's experiment: trial folders and checkpoints
"""
from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import ray.tune

from goldnas_ray.core.config import ConfigError
from goldnas_ray.files.store import INFRASTRUCTURE, Location, location
from goldnas_ray.files.search_files import RECORDS, OutputDirError, read_records, records_path
from goldnas_ray.data.batches import check_batches
from goldnas_ray.data.from_config import load_data
from goldnas_ray.models.saved import MODELS, dataset_info, load_model, save_model
from goldnas_ray.orchestration.cluster import connect, interruptible
from goldnas_ray.orchestration.placement import (PLACEMENT_TIMEOUT, ask_of, at_once_line, place_first,
                                                 trial_resources)
from goldnas_ray.orchestration.retrain_trial import (EXPERIMENT_DIR, TRIALS_LOG, RetrainCallback, last_state,
                                                     retrain_trial)
from goldnas_ray.retrain import report, stats
from goldnas_ray.retrain.recipe import Retrainer
from goldnas_ray.run.ending import ends_tracked_run, tracked_or_stopped
from goldnas_ray.retrain.candidates import save_genotypes
from goldnas_ray.retrain.plan import (Manifest, Resources, RetrainError, TrialSpec, check_workers, plan_retrain,
                                      trial_key)
from goldnas_ray.sweep.plan import Sweep, is_sweep
from goldnas_ray.sweep.retrain import describe_points, load_sweep, point_hypervolumes
from goldnas_ray.tracking.common import check_uri, how_to_open, resolve_uri
from goldnas_ray.tracking.retrain import RetrainTracker, fetch_search_run

COMPARISON = "comparison.json"  # searched against random (retrain/stats.py)


def run_retrain(out: "str | Path | Location", *, search_dir: "str | Path | Location | None" = None,
                search_run: str | None = None,
                config_file: Location | None = None, overrides: Sequence[str] = (), random_k: int = 0,
                trial: Resources = Resources(), max_failures: int = 2,
                mlflow_uri: str | None = None, experiment: str = "goldnas-retrain",
                tracking: bool = True, resume: bool = False, address: str | None = None,
                runtime_env: dict[str, Any] | None = None, log: Callable[[str], None] = print,
                union_front: bool = False, placement_timeout: float = PLACEMENT_TIMEOUT) -> pd.DataFrame:
    """Retrain (or, with ``resume``, continue retraining) and return the report table.
    ``search_dir`` may be a sweep's folder (``union_front``: its records' union, once each).
    ``trial``: what each trial holds (one worker: the Tune trial trains; more: a Ray Train run
    of that many workers). ``runtime_env``: the Ray job's (``cli.process.ray_runtime_env``).
    ``placement_timeout``: how long to wait for the cluster to place the first trial."""
    out = location(out).resolved()
    search_dir = location(search_dir) if search_dir is not None else None
    check_workers(trial.workers, trial.cpus, trial.gpus, "--workers-per-trial, --cpus-per-trial or --cpus-per-worker, "
                  "--gpus-per-trial or --gpus-per-worker")
    with _staging(search_run is not None or (search_dir is not None and search_dir.is_remote)) as staging:
        if resume:
            manifest, trial = _resumed(out, trial, log)
        else:
            manifest = _plan(out, search_dir, search_run, staging, config_file, overrides, random_k,
                             mlflow_uri, tracking, union_front)
            manifest.resources = trial
        check_batches(manifest.num_train, trial.workers, manifest.config.retrain.batch_size, "retrain.batch_size")
        connect(address, log, runtime_env=runtime_env)
        todo = not resume or not finished_trials(out) >= set(manifest.trials)  # all finished: no wait
        at_once = place_first(ask_of(trial, manifest.stream is not None), "a trial",
                              embedded=not (address or os.environ.get("RAY_ADDRESS")),
                              timeout=placement_timeout if todo else None, log=log)
        if not resume:
            _start(out, manifest, staging, experiment)
    tracker = RetrainTracker(manifest.mlflow_tracking_uri, out) if manifest.mlflow_run_id else None
    with _ending(tracker, manifest, out, log, "trials"):
        if tracker is not None and resume:
            tracker.client.update_run(manifest.mlflow_run_id, status="RUNNING")
        specs = manifest.specs(out, trial)
        epochs = manifest.config.retrain.epochs
        _announce(out, manifest, specs, trial, at_once_line(at_once) if not resume
                  else "as many at once as when it started (Tune keeps that)", log)
        started = time.perf_counter()
        tuner = _tuner(out, manifest, specs, trial, at_once, max_failures, resume,
                       RetrainCallback(tracker, manifest.mlflow_child_run_ids, epochs, log))
        results = interruptible(tuner.fit)
    with _ending(tracker, manifest, out, log, "report"):
        trials, failed, finished = _collect(results, specs, epochs, out)
        table, comparison = _write_report(out, trials, manifest, log)
        _save_models(out, manifest, finished, log)  # after the report: a data error here loses no table
        log(f"retrain {'finished' if not failed else 'stopped'} after {time.perf_counter() - started:.0f}s "
            f"here; report in {out / 'frontier.csv'}")
        for line in ([report.format_table(table)] if not table.empty else []) + _described(comparison):
            log(line)
        if tracker is not None:
            _track_report(tracker, out, manifest, trials, table, comparison, finished, failed, log)
    if failed:
        raise RetrainError(f"{len(failed)} of {len(specs)} trials did not finish: {', '.join(failed)}; "
                           f"continue with --resume --out {out}", INFRASTRUCTURE)
    return table


def _resumed(out: Location, trial: Resources, log: Callable[[str], None]) -> tuple[Manifest, Resources]:
    """--resume: the retrain's manifest and what each of its trials holds (what it held when the
    retrain started, whatever the flags say now)."""
    manifest = Manifest.read(out)
    if manifest.resources is not None and manifest.resources != trial:
        log(f"--resume: each trial holds what it held when the retrain started: "
            f"{manifest.resources.workers} worker(s) x {manifest.resources.cpus:g} CPU / "
            f"{manifest.resources.gpus:g} GPU (the flags given now are not used)")
    if manifest.mlflow_tracking_uri:
        check_uri(manifest.mlflow_tracking_uri)
    if not tune_saved(out):
        raise OutputDirError(f"--resume: {out / 'ray' / EXPERIMENT_DIR} holds no Ray Tune experiment")
    return manifest, manifest.resources or trial


def _announce(out: Location, manifest: Manifest, specs: dict[str, TrialSpec], trial: Resources,
              at_once: str, log: Callable[[str], None]) -> None:
    """The retrain's opening lines: its trials, what each holds and how many run at once, its
    data and its architectures."""
    shape = f"{trial.workers} worker(s) x " if trial.workers > 1 else ""
    log(f"retraining {len(manifest.candidates)} architectures x {len(manifest.seeds)} seed(s) = "
        f"{len(specs)} trials of {manifest.config.retrain.epochs} epochs; {shape}{trial.cpus:g} CPU / "
        f"{trial.gpus:g} GPU per trial, {at_once}; output in {out}")
    if manifest.stream is not None:
        test = "streamed" if next(iter(specs.values())).eval_stream else "held in memory"
        log(f"data: streaming {manifest.stream.num_train} training images of {manifest.stream.name} through "
            f"Ray Data (test split {test})")
    for c in manifest.candidates:
        log(f"  {c.arch_id:<12} {c.kind:<9} {c.flops / 1e6:7.3f} MFLOPs {c.params:>9} params"
            f"  {'inherited weights' if c.weights else 'from scratch'}")


def tune_saved(out: Location) -> bool:
    """Whether Tune saved a retrain's experiment in <out>/ray/retrain that ``Tuner.restore``
    continues: tuner.pkl and an experiment_state-*.json. Tune writes tuner.pkl first, so a
    retrain stopped between the two leaves only it (``Tuner.can_restore`` looks no further)."""
    names = (out / "ray" / EXPERIMENT_DIR).names()
    return "tuner.pkl" in names and any(fnmatch.fnmatch(n, "experiment_state-*.json") for n in names)


@contextlib.contextmanager
def _staging(needed: bool) -> Iterator[Path | None]:
    """A temporary folder for a search fetched from MLflow or object storage, removed whatever
    happens; None when the search is read where it lies."""
    if not needed:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="goldnas-search-", ignore_cleanup_errors=True) as folder:
        yield Path(folder)


def _plan(out: Location, search_dir: Location | None, search_run: str | None, staging: Path | None,
          config_file: Location | None, overrides: Sequence[str], random_k: int,
          mlflow_uri: str | None, tracking: bool, union_front: bool = False) -> Manifest:
    """Check everything a new retrain depends on; writes nothing."""
    if (search_dir is None) == (search_run is None):
        raise OutputDirError("give exactly one of --search-dir and --search-run")
    env_uri = os.environ.get("MLFLOW_TRACKING_URI")
    if search_run is not None:
        if not (mlflow_uri or env_uri):
            raise OutputDirError("--search-run needs --mlflow-uri (or MLFLOW_TRACKING_URI)")
        search_dir = fetch_search_run(search_run, mlflow_uri or env_uri, staging)
    elif search_dir.is_remote:
        if is_sweep(search_dir):
            raise OutputDirError(f"--search-dir {search_dir} is a sweep in object storage: retrain it from a "
                                 f"local or shared-filesystem copy of the folder")
        search_dir = _fetch_search_dir(search_dir, staging)
    else:
        search_dir = search_dir.local
    sweep = load_sweep(search_dir, union_front) if is_sweep(search_dir) else None
    if union_front and sweep is None:
        raise ConfigError("--union-front merges the records of a sweep's searches: --search-dir must be a "
                          "sweep's folder (pipelines/sweep.py)")
    manifest = plan_retrain(out, search_dir, search_run_id=search_run, config_file=config_file,
                            overrides=overrides, random_k=random_k, sweep=sweep)
    if tracking:
        manifest.mlflow_tracking_uri = resolve_uri(out, mlflow_uri or env_uri or _search_uri(search_dir))
        check_uri(manifest.mlflow_tracking_uri)
    return manifest


def _search_uri(search_dir: Path) -> str | None:
    if is_sweep(search_dir):
        return Sweep.read(search_dir).mlflow_tracking_uri
    return read_records(search_dir).get("mlflow_tracking_uri")


def _fetch_search_dir(search_dir: Location, staging: Path) -> Path:
    """What a retrain reads of a search in object storage (records, genotypes, config), copied
    into ``staging``; the checkpoints stay there."""
    if records_path(search_dir) is None:
        raise OutputDirError(f"--search-dir {search_dir} holds no {RECORDS}; is it a search output folder?")
    for rel in search_dir.files():
        if rel.split("/")[0] in ("checkpoints", "ray", ".workers"):
            continue
        target = staging / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((search_dir / rel).read_bytes())
    return staging


def _start(out: Location, manifest: Manifest, staging: Path | None, experiment: str) -> None:
    """Write what a new retrain starts from: the search copy, genotypes, MLflow runs, manifest."""
    out.mkdir()
    if staging is not None:
        (out / "search").upload(staging)
        manifest.search_dir = (out / "search").uri
    save_genotypes(out, manifest.candidates)
    if not manifest.mlflow_tracking_uri:
        manifest.write(out)
        return
    tracker = RetrainTracker(manifest.mlflow_tracking_uri, out)
    tracker.start_retrain(experiment, out, manifest)
    # without retrain.json nothing can resume these runs: a failure to write it ends them all
    with ends_tracked_run(lambda status: tracker.end_retrain(manifest.mlflow_run_id, status, "start")):
        manifest.write(out)


def _tuner(out: Location, manifest: Manifest, specs: dict[str, TrialSpec], trial: Resources, at_once: int | None,
           max_failures: int, resume: bool, callback: RetrainCallback) -> ray.tune.Tuner:
    # one worker: the trial trains in its own process; more: it drives a Ray Train run
    resources = trial_resources(trial, runs_train=trial.workers > 1)
    trainable = ray.tune.with_resources(ray.tune.with_parameters(retrain_trial, specs=specs), resources)
    if resume:  # the run config, callback included, comes back from the saved experiment
        path, fs = (out / "ray" / EXPERIMENT_DIR).arrow()
        return ray.tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True,
                                      storage_filesystem=fs)
    path, fs = (out / "ray").arrow()
    run_config = ray.tune.RunConfig(
        name=EXPERIMENT_DIR, storage_path=path, storage_filesystem=fs, callbacks=[callback], verbose=0,
        failure_config=ray.tune.FailureConfig(max_failures=max_failures),
        checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=1))
    return ray.tune.Tuner(
        trainable, param_space={"key": ray.tune.grid_search(manifest.trials)},
        tune_config=ray.tune.TuneConfig(trial_name_creator=lambda t: t.config["key"],
                                        trial_dirname_creator=lambda t: t.config["key"],
                                        max_concurrent_trials=at_once,
                                        # a finished trial's process takes the next trial: a
                                        # new one would import torch and Ray Train again (about
                                        # 4 s a trial on 2 cores; trials all ask the same resources)
                                        reuse_actors=True),
        run_config=run_config)


@contextlib.contextmanager
def _ending(tracker: RetrainTracker | None, manifest: Manifest, out: Location, log: Callable[[str], None],
            stage: str):
    """Run the block (``stage``: "trials", up to the end of Tune's fit; "report", what follows
    it); when it raises, end the retrain's MLflow runs KILLED or FAILED
    (``RetrainTracker.end_retrain`` at that stage), so none stays RUNNING. A stop (Ctrl-C,
    ``ray job stop``) becomes RunStopped: how many trials finished."""
    finish = (lambda status: tracker.end_retrain(manifest.mlflow_run_id, status, stage)) if tracker else None
    unwritten = "; the report was not written" if stage == "report" else ""
    with tracked_or_stopped(finish, out, lambda: f"{len(finished_trials(out))} of {len(manifest.trials)} trials "
                                                 f"finished{unwritten}", log):
        yield


def finished_trials(out: Location) -> set[str]:
    """The trials whose last epoch is done, from <out>/.trials/ (each trial's rank 0 writes a
    line when it finishes)."""
    logs = out / TRIALS_LOG
    done = set()
    for name in logs.names():
        if name.endswith(".jsonl") and '"finished_epoch"' in (logs / name).read_text():
            done.add(name.removesuffix(".jsonl"))
    return done


def _collect(results, specs: dict[str, TrialSpec], epochs: int, out: Location
             ) -> tuple[pd.DataFrame, list[str], dict[str, dict[str, Any]]]:
    """Every trial's history, read from its last checkpoint; the trials that did not finish;
    and each finished trial's last state (key -> Retrainer state)."""
    rows, failed, finished_states = [], [], {}
    for result in results:
        key = result.config["key"]
        state = last_state(result, out)
        if state is None:
            failed.append(f"{key} ({type(result.error).__name__ if result.error else 'no checkpoint'})")
            continue
        finished = state["epoch"] >= epochs
        if not finished:
            failed.append(f"{key} (stopped after epoch {state['epoch']})")
        else:
            finished_states[key] = state
        spec = specs[key]
        rows += [{"key": key, "arch_id": spec.arch_id, "seed": spec.seed, "finished": finished} | h
                 for h in state["history"]]
    return pd.DataFrame(rows), failed, finished_states


def _save_models(out: Location, manifest: Manifest, finished: dict[str, dict[str, Any]],
                 log: Callable[[str], None]) -> None:
    """<out>/models/<key>/ for every finished trial (``models.saved``): its trained network as
    safetensors, its genotype, and model.json (data and normalisation, accuracy, costs, origin).
    A folder already complete (model.json is written last) came from the same final checkpoint
    in an earlier report: it is kept as it is."""
    todo = {key: state for key, state in finished.items() if not (out / MODELS / key / "model.json").is_file()}
    if todo:
        data_cfg = manifest.data()
        dataset = dataset_info(data_cfg, manifest.stream or load_data(data_cfg))
    trained = {trial_key(c.arch_id, s): (c, s) for c in manifest.candidates for s in manifest.seeds}
    for key, state in todo.items():
        trainer, (c, seed) = Retrainer.from_state_dict(state, "cpu"), trained[key]
        save_model(out / MODELS / key, trainer.model, trainer.geno, {
            "arch_id": c.arch_id, "seed": seed, "kind": c.kind, "init": "inherited" if c.weights else "scratch",
            "dataset": dataset, "metrics": {"test_acc": trainer.history[-1]["test_acc"], "epochs": trainer.epoch},
            "flops": trainer.flops, "params": trainer.params, "search": manifest.search_dir,
            "search_run_id": manifest.search_run_id, "retrain": out.uri,
            "mlflow_run_id": manifest.mlflow_child_run_ids.get(key)})
    if not finished:
        return
    log(f"model folders: {out / MODELS}/<arch>-s<seed> ({len(finished)} trained networks; "
        f"goldnas_ray.load_model(folder) reads one, docs/genotypes.md)")


def _described(comparison: dict[str, Any] | None) -> list[str]:
    """The report's lines on the searched-vs-random comparison and a sweep's grid points."""
    described = []
    if comparison and "hypervolume" in comparison:
        described += stats.describe(comparison) + (stats.describe(comparison["latency"])
                                                   if "latency" in comparison else [])
    if comparison and "sweep" in comparison:
        described += describe_points(comparison["sweep"])
    return described


def _track_report(tracker: RetrainTracker, out: Location, manifest: Manifest, trials: pd.DataFrame,
                  table: pd.DataFrame, comparison: dict[str, Any] | None, finished: dict[str, dict[str, Any]],
                  failed: list[str], log: Callable[[str], None]) -> None:
    """Every epoch the checkpoints hold in its child run, the finished trials' networks as
    MLflow logged models with their model folders, the runs' dataset inputs, the front in the
    model registry (``RetrainTracker.log_front``), the report on the parent run, and the
    parent's end."""
    if not trials.empty:
        for key, rows in trials.groupby("key", sort=False):
            if key in manifest.mlflow_child_run_ids:
                tracker.log_history(manifest.mlflow_child_run_ids[key], rows.to_dict("records"))
    networks = {}  # each finished trial's network as its model folder holds it (_save_models wrote them)
    for key in (k for k in finished if k in manifest.mlflow_child_run_ids):
        net = load_model(out / MODELS / key)
        g = net.genotype
        networks[manifest.mlflow_child_run_ids[key]] = (net, (g.in_channels, g.input_size, g.input_size))
    tracker.log_front(out, manifest, networks, log)
    summary, verdicts = stats.summary(comparison or {})
    tracker.log_report(manifest.mlflow_run_id, out, report.front_summary(table) | summary, table, verdicts)
    tracker.end_run(manifest.mlflow_run_id, "FAILED" if failed else "FINISHED")
    where = how_to_open(tracker.client, manifest.mlflow_run_id)
    tracker.client.close()  # says how many writes still wait for an unreachable server
    log(f"MLflow run {manifest.mlflow_run_id}: open {where}")


def _write_report(out: Location, trials: pd.DataFrame, manifest: Manifest, log: Callable[[str], None] = print
                  ) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """trials.parquet and the frontier report of the finished trials (an unfinished trial's
    last epoch is not comparable: left out), with the searched-vs-random comparison when both
    kinds were trained; returns the report table and that comparison."""
    if trials.empty:
        return pd.DataFrame(), None
    (out / "trials.parquet").write(lambda tmp: trials.to_parquet(tmp, index=False))
    done = trials[trials["finished"]]
    if done.empty:
        return pd.DataFrame(), None
    archs = pd.DataFrame([c.row() for c in manifest.candidates])
    recipe = manifest.config.retrain
    if recipe.latency_repeats > 0:  # every trained architecture timed here, on this CPU
        trained = {c.arch_id: c.genotype for c in manifest.candidates if c.arch_id in set(done["arch_id"])}
        log(f"timing {len(trained)} networks end to end on this CPU (batch 1 and {recipe.batch_size}, "
            f"{recipe.latency_repeats} passes each; retrain.latency_repeats=0 skips it)")
        try:
            archs = archs.merge(report.measured_latency(trained, recipe.batch_size, recipe.latency_repeats,
                                                        "cpu", recipe.channels_last), on="arch_id", how="left")
        except (RuntimeError, MemoryError) as exc:  # the report is written without latencies
            log(f"latency not measured: {exc}")
    table = report.summarise(done, archs)
    kind = "quick front: inherited weights fine-tuned for " if recipe.quick else ""
    report.write_report(out, table, title=f"{out.name}: {len(manifest.seeds)} seed(s), {kind}{recipe.epochs} epochs")
    if recipe.quick:
        log(f"a quick front: inherited weights fine-tuned for {recipe.epochs} epochs (a tenth of the recipe's); "
            f"start_test_acc is each network's accuracy before the first step")
    comparison = None
    if {"searched", "random"} <= set(table["kind"]):
        last = report.last_epochs(done)
        comparison = stats.compare_fronts(last, archs)
        comparison["init"] = {"searched": manifest.config.retrain.init, "random": "scratch"}
        if report.has_latency(table):  # the same comparison with measured latency on the axis
            comparison["latency"] = stats.compare_fronts(last, archs, column="latency_ms")
    if manifest.sweep:  # which grid point's searches gave the better fronts, over their seeds
        comparison = (comparison or {}) | {"sweep": point_hypervolumes(report.last_epochs(done), archs, manifest.sweep)}
    if comparison:
        (out / COMPARISON).write_text(json.dumps(comparison, indent=1))
    return table, comparison
