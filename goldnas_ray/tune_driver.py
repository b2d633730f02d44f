"""Retrain a search's architectures from scratch on Ray Tune, one trial per (architecture, seed).

The driver checks everything first (search files, genotypes, config, data, MLflow, whether a
trial fits on a node), writes the genotypes and retrain.json, creates the MLflow parent and
child runs, then hands the trials to Tune, which runs as many at once as the cluster holds.
Each trial reports its epoch's metrics and a checkpoint; a failed trial is retried from its
last checkpoint (``max_failures``), and an interrupted retrain continues with ``resume``.
At the end the trials' histories are read back from their last checkpoints and the frontier
report is written (frontier.parquet / .csv / .png), then logged to the parent run.

    <out>/retrain.json        what is trained: source search, recipe, architectures, seeds,
                              trial keys, MLflow run ids
    <out>/genotypes/          every trained architecture (searched ones copied, random drawn)
    <out>/search/             the search's frontier.json + genotypes (with --search-run)
    <out>/trials.parquet      one row per (trial, epoch)
    <out>/frontier.*          the report (see frontier.py)
    <out>/ray/retrain/        Ray Tune's experiment: trial folders and checkpoints
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import ray.tune
import torch

from goldnas_ray import frontier as report
from goldnas_ray.artifacts import OutputDirError, _atomic_write, check_new_out_dir, load_checkpoint
from goldnas_ray.candidates import (candidates_from_manifest, load_search, random_candidates,
                                    read_manifest, save_genotypes)
from goldnas_ray.config import Config, RetrainConfig
from goldnas_ray.data import load_dataset
from goldnas_ray.ray_driver import ClusterError, connect
from goldnas_ray.retrain import Retrainer
from goldnas_ray.tracking import RetrainTracker, check_uri

EXPERIMENT_DIR = "retrain"
STATE_FILE = "trial.pt"


class RetrainError(RuntimeError):
    """Some trials did not finish; the message says which and how to continue."""


# ---- the trainable (runs in a Ray worker process) ------------------------------------------
def retrain_trial(config: dict[str, Any], specs: dict[str, dict[str, Any]]) -> None:
    """One Tune trial: train ``specs[config['key']]`` from scratch (or from its checkpoint),
    reporting metrics and a checkpoint every epoch."""
    import ray

    # the driver prints one line per trial epoch; Ray's own line per checkpoint is noise here
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    spec = specs[config["key"]]
    torch.set_num_threads(max(1, int(spec["threads"])))
    device = torch.device("cuda" if spec["use_gpu"] and torch.cuda.is_available() else "cpu")
    data = load_dataset(spec["data"]["dataset"], spec["data"]["root"], spec["data"]["download"])
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = load_checkpoint(Path(d) / STATE_FILE)
        trainer = Retrainer.from_state_dict(state, device)
    else:
        from goldnas_ray.genotype import Genotype

        trainer = Retrainer(Genotype.from_dict(spec["genotype"]), RetrainConfig(**spec["recipe"]),
                            spec["seed"], device)
    # who runs this trial and from which epoch: read by tests and by people debugging a run
    info_dir = Path(spec["out"]) / ".trials"
    info_dir.mkdir(parents=True, exist_ok=True)
    with open(info_dir / f"{config['key']}.jsonl", "a") as f:
        f.write(json.dumps({"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
                            "start_epoch": trainer.epoch, "device": str(device),
                            "time": time.time()}) + "\n")
    while not trainer.finished:
        row = trainer.train_epoch(data)
        metrics = row | {"arch_id": spec["arch_id"], "seed": spec["seed"]}
        with tempfile.TemporaryDirectory() as d:
            torch.save(trainer.state_dict(), Path(d) / STATE_FILE)
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(d))


# ---- progress and MLflow, from the driver --------------------------------------------------
class RetrainCallback(ray.tune.Callback):
    """One progress line per trial epoch; the MLflow child runs, fed from the driver. Tune
    saves it with the experiment, so a ``--resume`` gets it back."""

    def __init__(self, tracker: RetrainTracker | None, run_ids: dict[str, str], epochs: int,
                 log: Callable[[str], None] = print):
        self.tracker, self.run_ids, self.epochs, self.log = tracker, run_ids, epochs, log

    def __getstate__(self) -> dict[str, Any]:  # the log function stays behind (print on restore)
        return self.__dict__ | {"log": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.log = self.log or print

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.tracker is not None:
            self.tracker.trial_started(self.run_ids[trial.config["key"]])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        key = trial.config["key"]
        self.log(f"{key:<18} epoch {result['epoch']:>3}/{self.epochs}  test {100 * result['test_acc']:.2f}%  "
                 f"loss {result['train_loss']:.4f}  lr {result['lr']:.4f}  {result['seconds']:.1f}s")
        if self.tracker is not None:
            self.tracker.log_trial_epoch(self.run_ids[key], result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.tracker is not None:
            self.tracker.end_run(self.run_ids[trial.config["key"]], "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.tracker is not None:
            self.tracker.end_run(self.run_ids[trial.config["key"]], "FAILED")


# ---- planning ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _sigterm_as_exit():
    """Turn SIGTERM (what ``ray job stop`` sends the driver) into SystemExit, so the driver can
    mark its MLflow runs KILLED in the seconds before the SIGKILL that follows."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def trial_key(arch_id: str, seed: int) -> str:
    return f"{arch_id}-s{seed}"


def fetch_search_run(run_id: str, uri: str, dest: Path) -> Path:
    """Download frontier.json and genotypes/ of MLflow search run ``run_id`` into ``dest``."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    check_uri(uri)
    try:
        for path in ("frontier.json", "genotypes"):
            mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path,
                                                dst_path=str(dest), tracking_uri=uri)
    except (MlflowException, OSError) as exc:
        raise OutputDirError(f"cannot read the search files of MLflow run {run_id} at {uri}: {exc}") from exc
    return dest


def _check_fits(resources_needed: dict[str, float]) -> None:
    import ray

    cpu, gpu = resources_needed["CPU"], resources_needed.get("GPU", 0)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= cpu and r.get("GPU", 0) >= gpu for r in nodes):
        biggest = max(nodes, key=lambda r: r.get("CPU", 0), default={})
        raise ClusterError(f"a trial needs {cpu:g} CPUs and {gpu:g} GPUs on one node; the largest "
                           f"node has {biggest.get('CPU', 0):g} CPUs and {biggest.get('GPU', 0):g} GPUs")


def plan_retrain(out: Path, *, search_dir: Path | None = None, search_run: str | None = None,
                 config_file: Path | None = None, overrides: list[str] = (), random_k: int = 0,
                 mlflow_uri: str | None = None, tracking: bool = True) -> dict[str, Any]:
    """Check everything and decide what to train; writes nothing."""
    if (search_dir is None) == (search_run is None):
        raise OutputDirError("give exactly one of --search-dir and --search-run")
    if random_k < 0:
        raise ValueError(f"--random must be >= 0, got {random_k}")
    out = Path(out).resolve()
    check_new_out_dir(out, "retrain")
    staging = None
    if search_run is not None:
        uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise OutputDirError("--search-run needs --mlflow-uri (or MLFLOW_TRACKING_URI)")
        staging = Path(tempfile.mkdtemp(prefix="goldnas-search-"))
    try:
        if staging is not None:
            search_dir = fetch_search_run(search_run, uri, staging)
        search = load_search(Path(search_dir))
        cfg = search.config
        if config_file is not None:
            cfg.merge_yaml(config_file)
        cfg.override(list(overrides)).validate()
        data = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.download)
        if list(data.input_shape) != list(search.frontier["input_shape"]) or \
                data.num_classes != search.frontier["num_classes"]:
            raise OutputDirError(f"data {cfg.data.dataset} has images {list(data.input_shape)} and "
                                 f"{data.num_classes} classes; the search ran on "
                                 f"{search.frontier['input_shape']} and {search.frontier['num_classes']}")
        randoms = random_candidates(search, random_k, cfg.seed) if random_k else []
        uri = None
        if tracking:
            uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
                search.frontier.get("mlflow_tracking_uri") or f"sqlite:///{out / 'mlflow.db'}"
            check_uri(uri)
    except Exception:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"out": out, "search": search, "search_run": search_run or search.frontier.get("mlflow_run_id"),
            "staging": staging, "config": cfg, "candidates": search.searched + randoms,
            "mlflow_uri": uri, "dataset": data.name}


# ---- run -----------------------------------------------------------------------------------------
def run_retrain(out: Path, *, search_dir: Path | None = None, search_run: str | None = None,
                config_file: Path | None = None, overrides: list[str] = (), random_k: int = 0,
                cpus_per_trial: float = 1, gpus_per_trial: float = 0, max_failures: int = 2,
                mlflow_uri: str | None = None, experiment: str = "goldnas-retrain",
                tracking: bool = True, resume: bool = False,
                log: Callable[[str], None] = print) -> pd.DataFrame:
    """Retrain (or, with ``resume``, continue retraining) and return the frontier table."""
    out = Path(out).resolve()
    if cpus_per_trial <= 0 or gpus_per_trial < 0:
        raise ValueError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
    if resume:
        manifest = read_manifest(out)
        candidates = candidates_from_manifest(out, manifest)
        cfg = Config.from_dict(manifest["config"]).validate()
        uri = manifest.get("mlflow_tracking_uri")
        if uri:
            check_uri(uri)
        if not ray.tune.Tuner.can_restore(str(out / "ray" / EXPERIMENT_DIR)):
            raise OutputDirError(f"--resume: {out / 'ray' / EXPERIMENT_DIR} holds no Ray Tune experiment")
    else:
        plan = plan_retrain(out, search_dir=search_dir, search_run=search_run, config_file=config_file,
                            overrides=overrides, random_k=random_k, mlflow_uri=mlflow_uri,
                            tracking=tracking)
        cfg, candidates, uri = plan["config"], plan["candidates"], plan["mlflow_uri"]
    r = cfg.retrain
    seeds = [cfg.seed + i for i in range(r.seeds)]
    per_trial = {"CPU": cpus_per_trial} | ({"GPU": gpus_per_trial} if gpus_per_trial else {})
    try:
        resources = connect(log)
        _check_fits(per_trial)
    except Exception:
        if not resume and plan["staging"] is not None:
            shutil.rmtree(plan["staging"], ignore_errors=True)
        raise

    if not resume:
        out.mkdir(parents=True, exist_ok=True)
        if plan["staging"] is not None:
            shutil.copytree(plan["staging"], out / "search")
            shutil.rmtree(plan["staging"], ignore_errors=True)
        save_genotypes(out, candidates)
        manifest = {
            "format": "goldnas-ray/retrain", "version": 1,
            "search_dir": str(plan["search"].folder) if plan["staging"] is None else str(out / "search"),
            "search_run_id": plan["search_run"],
            "dataset": plan["dataset"],
            "config": cfg.to_dict(),
            "seeds": seeds,
            "architectures": [c.row() for c in candidates],
            "trials": [trial_key(c.arch_id, s) for c in candidates for s in seeds],
            "mlflow_tracking_uri": uri,
        }
        if uri:
            parent, child_ids = _create_runs(RetrainTracker(uri), experiment, out, cfg, candidates,
                                             seeds, plan, manifest["search_dir"])
            manifest |= {"mlflow_run_id": parent, "mlflow_child_run_ids": child_ids}
        _atomic_write(out / "retrain.json", json.dumps(manifest, indent=1).encode())

    tracker = RetrainTracker(uri) if uri and manifest.get("mlflow_run_id") else None
    if tracker is not None and resume:
        tracker.client.update_run(manifest["mlflow_run_id"], status="RUNNING")
    keys = manifest["trials"]
    config = cfg.to_dict()
    specs = {trial_key(c.arch_id, s): {
        "arch_id": c.arch_id, "seed": s, "genotype": c.genotype.to_dict(), "recipe": config["retrain"],
        "data": config["data"], "threads": max(1, int(cpus_per_trial)), "use_gpu": gpus_per_trial > 0,
        "out": str(out)} for c in candidates for s in seeds}
    trainable = ray.tune.with_resources(ray.tune.with_parameters(retrain_trial, specs=specs),
                                        {k.lower(): v for k, v in per_trial.items()})
    callback = RetrainCallback(tracker, manifest.get("mlflow_child_run_ids", {}), r.epochs, log)
    log(f"retraining {len(candidates)} architectures x {len(seeds)} seed(s) = {len(keys)} trials of "
        f"{r.epochs} epochs; {cpus_per_trial:g} CPU / {gpus_per_trial:g} GPU per trial, up to "
        f"{int(resources.get('CPU', 0) // cpus_per_trial)} at once on this cluster")
    for c in candidates:
        log(f"  {c.arch_id:<12} {c.kind:<9} {c.flops / 1e6:7.3f} MFLOPs {c.params:>9} params")
    started = time.perf_counter()
    # a checkpoint every epoch with num_to_keep=1 forces an experiment snapshot each time (cheap
    # here: a few KB); Tune would warn about it every epoch
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    run_config = ray.tune.RunConfig(
        name=EXPERIMENT_DIR, storage_path=str(out / "ray"), callbacks=[callback], verbose=0,
        failure_config=ray.tune.FailureConfig(max_failures=max_failures),
        checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=1))
    if resume:
        # the run config, callback included, comes back from the saved experiment
        tuner = ray.tune.Tuner.restore(str(out / "ray" / EXPERIMENT_DIR), trainable,
                                       resume_unfinished=True, resume_errored=True)
    else:
        tuner = ray.tune.Tuner(
            trainable, param_space={"key": ray.tune.grid_search(keys)},
            tune_config=ray.tune.TuneConfig(trial_name_creator=lambda t: t.config["key"],
                                            trial_dirname_creator=lambda t: t.config["key"]),
            run_config=run_config)
    try:
        with _sigterm_as_exit():
            results = tuner.fit()
    except BaseException as exc:
        if tracker is not None:  # the job was stopped, or Tune broke: say so in MLflow
            killed = isinstance(exc, (SystemExit, KeyboardInterrupt))
            try:
                tracker.end_retrain(manifest["mlflow_run_id"], "KILLED" if killed else "FAILED")
            except Exception as mlflow_exc:  # noqa: BLE001 - never hide the original error
                log(f"could not mark the MLflow runs as ended: {mlflow_exc}")
        raise

    trials, failed = _collect(results, specs, r.epochs)
    table = pd.DataFrame()
    if not trials.empty:
        trials.to_parquet(out / "trials.parquet", index=False)
        done = trials[trials["finished"]]
        if not done.empty:  # an unfinished trial's last epoch is not comparable: left out
            table = report.summarise(done, pd.DataFrame([c.row() for c in candidates]))
            report.write_report(out, table, title=f"{out.name}: {len(seeds)} seed(s), {r.epochs} epochs")
    log(f"retrain {'finished' if not failed else 'stopped'} after {time.perf_counter() - started:.0f}s "
        f"here; frontier in {out / 'frontier.csv'}")
    if not table.empty:
        log(format_table(table))
    if tracker is not None:
        summary = {}
        if not table.empty:
            front = table[table["on_front"]]
            summary = {"front_size": len(front), "best_accuracy": float(table["accuracy_mean"].max())}
        tracker.log_report(manifest["mlflow_run_id"], out, summary)
        tracker.end_run(manifest["mlflow_run_id"], "FAILED" if failed else "FINISHED")
    if failed:
        raise RetrainError(f"{len(failed)} of {len(keys)} trials did not finish: {', '.join(failed)}; "
                           f"continue with --resume --out {out}")
    return table


def _create_runs(tracker: RetrainTracker, experiment: str, out: Path, cfg: Config, candidates: list,
                 seeds: list[int], plan: dict[str, Any], search_dir: str) -> tuple[str, dict[str, str]]:
    """The MLflow parent run of a retrain and one child per trial, created before any trial."""
    recipe = {f"retrain.{k}": v for k, v in cfg.to_dict()["retrain"].items()}
    children = {
        trial_key(c.arch_id, s): (trial_key(c.arch_id, s),
                                  {"arch_id": c.arch_id, "kind": c.kind, "flops": c.flops,
                                   "params": c.params, "seed": s, **recipe},
                                  {"kind": c.kind, "arch_id": c.arch_id})
        for c in candidates for s in seeds}
    tags = {"goldnas.stage": "retrain", "goldnas.out": str(out), "dataset": plan["dataset"],
            "goldnas.search_dir": search_dir}
    if plan["search_run"]:
        tags["goldnas.search_run_id"] = plan["search_run"]
    params = {"seeds": len(seeds), "random": sum(c.kind == "random" for c in candidates),
              "architectures": len(candidates), **recipe}
    return tracker.start(experiment, out.name, params, tags, children)


def _collect(results, specs: dict[str, dict[str, Any]], epochs: int) -> tuple[pd.DataFrame, list[str]]:
    """Every trial's history, read from its last checkpoint; and the trials that did not finish."""
    rows, failed = [], []
    for result in results:
        key = result.config["key"]
        if result.checkpoint is None:
            failed.append(f"{key} ({type(result.error).__name__ if result.error else 'no checkpoint'})")
            continue
        with result.checkpoint.as_directory() as d:
            state = load_checkpoint(Path(d) / STATE_FILE)
        finished = state["epoch"] >= epochs
        if not finished:
            failed.append(f"{key} (stopped after epoch {state['epoch']})")
        spec = specs[key]
        rows += [{"key": key, "arch_id": spec["arch_id"], "seed": spec["seed"], "finished": finished} | h
                 for h in state["history"]]
    return pd.DataFrame(rows), failed


def format_table(table: pd.DataFrame) -> str:
    lines = [f"{'architecture':<13} {'kind':<9} {'MFLOPs':>8} {'params':>8} {'accuracy':>16} front"]
    for _, row in table.iterrows():
        std = "" if pd.isna(row["accuracy_std"]) else f" +- {100 * row['accuracy_std']:.2f}"
        lines.append(f"{row['arch_id']:<13} {row['kind']:<9} {row['flops'] / 1e6:>8.3f} {row['params']:>8} "
                     f"{100 * row['accuracy_mean']:>7.2f}%{std:<9} {'*' if row['on_front'] else ''}")
    return "\n".join(lines)
