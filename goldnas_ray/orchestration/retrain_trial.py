"""A retrain on Ray Tune, seen from inside: the trainable each trial runs, and the callback
through which the driver prints progress and feeds MLflow.

The trainable trains one :class:`~goldnas_ray.retrain.plan.TrialSpec` from scratch (or from
its last checkpoint after a failure) and reports metrics and a checkpoint every epoch. For
people debugging a run, it appends who ran it and from which epoch to
``<out>/.trials/<key>.jsonl``.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import ray.tune
import torch

from goldnas_ray.core.config import DataConfig, RetrainConfig
from goldnas_ray.core.genotype import Genotype
from goldnas_ray.data.from_config import load_data
from goldnas_ray.files.search_files import load_checkpoint
from goldnas_ray.files.store import Location, location
from goldnas_ray.retrain.plan import TrialSpec
from goldnas_ray.retrain.recipe import Retrainer
from goldnas_ray.tracking.retrain import RetrainTracker

STATE_FILE = "trial.pt"


def retrain_trial(config: dict[str, Any], specs: dict[str, TrialSpec]) -> None:
    """One Tune trial: train ``specs[config['key']]``, reporting every epoch."""
    import ray

    spec = specs[config["key"]]
    torch.set_num_threads(spec.threads)
    device = torch.device("cuda" if spec.use_gpu and torch.cuda.is_available() else "cpu")
    data_cfg = DataConfig.from_dict(spec.data)
    data = load_data(data_cfg)
    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer = Retrainer.from_state_dict(load_checkpoint(Path(d) / STATE_FILE), device)
    else:
        trainer = Retrainer(Genotype.from_dict(spec.genotype), RetrainConfig.from_dict(spec.recipe), spec.seed, device)
    trial_log = location(spec.out) / ".trials" / f"{spec.key}.jsonl"
    _append(trial_log, {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(),
                        "start_epoch": trainer.epoch, "device": str(device), "time": time.time()})
    while not trainer.finished:
        row = trainer.train_epoch(data, data_cfg)
        metrics = row | {"arch_id": spec.arch_id, "seed": spec.seed}
        with tempfile.TemporaryDirectory() as d:
            torch.save(trainer.state_dict(), Path(d) / STATE_FILE)
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(d))
    _append(trial_log, {"pid": os.getpid(), "finished_epoch": trainer.epoch, "time": time.time()})


def _append(path: Location, entry: dict[str, Any]) -> None:
    path.append_line(json.dumps(entry))


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
