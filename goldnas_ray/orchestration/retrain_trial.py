"""A retrain on Ray Tune, seen from inside: each trial, and the callback through which the
driver prints progress and feeds MLflow.

A trial trains one :class:`~goldnas_ray.retrain.plan.TrialSpec` (an architecture and a seed)
from scratch, or from its last checkpoint. With one worker the Tune trial trains it itself;
with N (``--workers-per-trial``) the trial is a Ray Train run: the trial function builds a
TorchTrainer of N workers and fits it (Ray Train's pattern for Train inside Tune), DDP averages
the gradients and each worker trains on its share of the data (in memory: its (seed, epoch)
share; streamed: its part of Ray Data's split, ``goldnas_ray.data.stream``). Either way one function runs the epochs
(:func:`run_trial`, the recipe's ``train_epoch`` with a no-op or torch.distributed
communicator), rank 0 reports a checkpoint every epoch, and the data comes from memory or, for
a streamed set, through Ray Data.

One layer retries (:data:`RETRIES_INSIDE_A_TRIAL`): a failed trial (any error that ends an
attempt: its process, or any worker of its Ray Train run, dying, or an error raised while it
trains) is retried by Tune (``--max-trial-failures``), from its last checkpoint: Tune's own
for one worker, else the Ray Train run's, which the retried trial's new run finds by its name.
The Ray Train run does not restart its worker group itself.

For people debugging a run, rank 0 appends who ran a trial (every rank's pid and node) and from
which epoch to ``<out>/.trials/<key>.jsonl``, and a line when the trial finishes. A trial that
log says finished, run again by a resumed Tune (a stop between Tune taking its last result and
registering its checkpoint), reports its newest stored checkpoint and trains nothing: ``--resume``
repeats no finished trial.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import ray
import ray.train
import ray.train.torch
import ray.tune
import safetensors.torch
import torch

from goldnas_ray.core.comm import Communicator, DistributedComm, LocalComm
from goldnas_ray.core.config import DataConfig, RetrainConfig
from goldnas_ray.core.genotype import Genotype
from goldnas_ray.data.from_config import load_data
from goldnas_ray.data.stream import StreamInfo, StreamSource, load_eval_split
from goldnas_ray.files.search_files import load_checkpoint
from goldnas_ray.files.store import Location, location
from goldnas_ray.orchestration.cluster import DriverOnly
from goldnas_ray.orchestration.placement import torch_trainer
from goldnas_ray.orchestration.streaming import dataset as stream_dataset
from goldnas_ray.retrain.plan import Resources, TrialSpec
from goldnas_ray.retrain.recipe import Retrainer
from goldnas_ray.tracking.retrain import RetrainTracker

STATE_FILE = "trial.pt"
TRIALS_LOG = ".trials"
EXPERIMENT_DIR = "retrain"  # <out>/ray/retrain: Tune's experiment, <key>/ a trial's folder (its checkpoints)
TRAIN_RUNS = "trials"  # <out>/ray/trials/<key>: the Ray Train run of a multi-worker trial
# A Ray Train run inside a Tune trial (a multi-worker retrain trial, a sweep's search) does not
# restart its worker group: Tune retries the whole trial, max_failures times, from its
# checkpoint. Two layers would multiply the attempts ((1 + k)^2 at k each) and hide that from
# --max-trial-failures; Tune's alone also retries a one-worker trial, which has no Ray Train run.
RETRIES_INSIDE_A_TRIAL = 0


def retrain_trial(config: dict[str, Any], specs: dict[str, TrialSpec]) -> None:
    """One Tune trial: train ``specs[config['key']]`` itself, or drive its Ray Train run; or,
    when it has finished already, report its last checkpoint (:func:`report_finished`)."""
    spec = specs[config["key"]]
    if report_finished(spec):
        return
    if spec.workers == 1:
        run_trial(spec, TuneSide(spec))
    else:
        from ray.tune.integration.ray_train import TuneReportCallback

        _train_run(spec, [TuneReportCallback()]).fit()  # the run's reports become the trial's


def report_finished(spec: TrialSpec) -> bool:
    """Whether the trial had finished: its .trials log says so (rank 0 writes that line once its
    last epoch's checkpoint is stored), yet Tune runs it again, as when a stop came between Tune
    taking the last result and registering its checkpoint. Then the newest checkpoint in storage
    (its last epoch) is reported as the trial's result, and nothing is trained again."""
    trial_log = location(spec.out) / TRIALS_LOG / f"{spec.key}.jsonl"
    epochs = RetrainConfig.from_dict(spec.recipe).epochs
    if not trial_log.is_file() or not any(json.loads(line).get("finished_epoch") == epochs
                                          for line in trial_log.read_text().splitlines() if line.strip()):
        return False
    runs = location(spec.out) / "ray" / (TRAIN_RUNS if spec.workers > 1 else EXPERIMENT_DIR) / spec.key
    saved = [n for n in runs.subfolders() if n.startswith("checkpoint_")]  # names sort in save order
    if not saved:
        return False
    newest = runs / max(saved)
    state = load_checkpoint(newest / STATE_FILE)
    if state["epoch"] < epochs:
        return False
    row = state["history"][-1] | {"arch_id": spec.arch_id, "seed": spec.seed}
    if spec.workers == 1:
        TuneSide(spec).report(row, state)
    else:  # as TuneReportCallback passes a Ray Train run's report on
        ray.tune.report(row | {"checkpoint_path": newest.arrow()[0]})
    return True


# ---- where a trial's epochs run: a Tune trial, or each worker of a Ray Train run -------------
class TuneSide:
    """A one-worker trial, trained inside its Tune trial."""

    def __init__(self, spec: TrialSpec):
        self.spec = spec

    def device(self) -> torch.device:
        return torch.device("cuda" if self.spec.use_gpu and torch.cuda.is_available() else "cpu")

    def comm(self, device: torch.device) -> Communicator:
        return LocalComm()

    def checkpoint(self):
        return ray.tune.get_checkpoint()

    def stream(self, split: str):
        """The Ray Data pipeline of ``split``, made and read here."""
        return stream_dataset(DataConfig.from_dict(self.spec.data), StreamInfo.from_dict(self.spec.stream), split)

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        with tempfile.TemporaryDirectory(prefix="goldnas-trial-") as d:
            torch.save(state, Path(d) / STATE_FILE)
            ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(d))


class TrainSide:
    """A worker of a multi-worker trial's Ray Train run."""

    def __init__(self, spec: TrialSpec):
        self.spec = spec

    def device(self) -> torch.device:
        return ray.train.torch.get_device()

    def comm(self, device: torch.device) -> Communicator:
        return DistributedComm(device)

    def checkpoint(self):
        return ray.train.get_checkpoint()

    def stream(self, split: str):
        """This worker's view of the trial's Ray Data pipeline of ``split``: its part of the
        training stream, or of the test stream (it evaluates every image of its part)."""
        return ray.train.get_dataset_shard(split)

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="goldnas-trial-") as d:
            torch.save(state, Path(d) / STATE_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def trial_worker(job: dict[str, Any]) -> None:
    """The per-worker function of a multi-worker trial's Ray Train run."""
    spec = TrialSpec(**job["spec"])
    run_trial(spec, TrainSide(spec))


def run_trial(spec: TrialSpec, side: TuneSide | TrainSide) -> None:
    """Train ``spec`` to its last epoch on ``side``, reporting every epoch (a checkpoint from
    rank 0)."""
    torch.set_num_threads(spec.threads)
    device = side.device()
    comm = side.comm(device)
    data_cfg = DataConfig.from_dict(spec.data)
    data = _data(spec, data_cfg, side)
    checkpoint = side.checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer = Retrainer.from_state_dict(load_checkpoint(Path(d) / STATE_FILE), device)
    else:
        weights = safetensors.torch.load(location(spec.weights).read_bytes()) if spec.weights else None
        trainer = Retrainer(Genotype.from_dict(spec.genotype), RetrainConfig.from_dict(spec.recipe), spec.seed,
                            device, weights)
        if weights is not None:
            trainer.calibrate(data, data_cfg, comm)
    lead = comm.rank == 0
    trial_log = location(spec.out) / TRIALS_LOG / f"{spec.key}.jsonl"
    ranks = comm.all_gather({"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()})
    if lead:
        _append(trial_log, {"pid": os.getpid(), "node_id": ranks[0]["node_id"], "start_epoch": trainer.epoch,
                            "device": str(device), "workers": comm.world_size, "ranks": ranks,
                            "time": time.time()})
    while not trainer.finished:
        row = trainer.train_epoch(data, data_cfg, comm)
        side.report(row | {"arch_id": spec.arch_id, "seed": spec.seed}, trainer.state_dict() if lead else None)
    if lead:
        _append(trial_log, {"pid": os.getpid(), "finished_epoch": trainer.epoch, "time": time.time()})


def _data(spec: TrialSpec, data_cfg: DataConfig, side: TuneSide | TrainSide):
    """The trial's data: in memory, or streamed (training split through Ray Data; the test
    split streamed too, or held in memory when it is small, by the training split's rule)."""
    if spec.stream is None:
        return load_data(data_cfg)
    info = StreamInfo.from_dict(spec.stream)
    evaluation = side.stream("val") if spec.eval_stream else load_eval_split(data_cfg, info)
    return StreamSource(side.stream("train"), info, eval_data=evaluation)


def _append(path: Location, entry: dict[str, Any]) -> None:
    path.append_line(json.dumps(entry))


def _train_run(spec: TrialSpec, callbacks: list[Any]):
    """The TorchTrainer of a multi-worker trial: N workers, DDP, a checkpoint every epoch, its
    results passed on to Tune; a failure ends it (Tune retries the trial, which continues from
    the last checkpoint)."""
    datasets = None
    if spec.stream is not None:
        side = TuneSide(spec)
        datasets = {"train": side.stream("train")} | ({"val": side.stream("val")} if spec.eval_stream else {})
    # one name per trial: a retried or resumed trial finds its checkpoints
    return torch_trainer(trial_worker, {"spec": asdict(spec)},
                         Resources(spec.workers, spec.cpus_per_worker, spec.gpus_per_worker), name=spec.key,
                         storage=location(spec.out) / "ray" / TRAIN_RUNS, max_failures=RETRIES_INSIDE_A_TRIAL,
                         keep=1, datasets=datasets, callbacks=callbacks)


def last_state(result: Any, out: Location) -> dict[str, Any] | None:
    """A finished Tune trial's last checkpoint, read back: its own (one worker) or its Ray Train
    run's, whose path the trial's metrics carry (``checkpoint_path``)."""
    checkpoint = result.checkpoint
    if checkpoint is None and result.metrics and result.metrics.get("checkpoint_path"):
        _, fs = out.arrow()
        checkpoint = ray.train.Checkpoint(result.metrics["checkpoint_path"], filesystem=fs)
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as d:
        return load_checkpoint(Path(d) / STATE_FILE)


class RetrainCallback(DriverOnly, ray.tune.Callback):
    """One progress line per trial epoch; the MLflow child runs, fed from the driver. Tune
    saves it with the experiment, so a ``--resume`` gets it back."""

    def __init__(self, tracker: RetrainTracker | None, run_ids: dict[str, str], epochs: int,
                 log: Callable[[str], None] = print):
        self.tracker, self.run_ids, self.epochs, self.log = tracker, run_ids, epochs, log

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.tracker is not None:
            self.tracker.trial_started(self.run_ids[trial.config["key"]])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        key = trial.config["key"]
        if self.tracker is not None:  # tracked before printed: a printed epoch is in MLflow
            self.tracker.log_trial_epoch(self.run_ids[key], result)
        self.log(f"{key:<18} epoch {result['epoch']:>3}/{self.epochs}  test {100 * result['test_acc']:.2f}%  "
                 f"loss {result['train_loss']:.4f}  lr {result['lr']:.4f}  {result['seconds']:.1f}s")

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self.tracker is not None:
            self.tracker.end_run(self.run_ids[trial.config["key"]], "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        if self.tracker is not None:
            self.tracker.end_run(self.run_ids[trial.config["key"]], "FAILED")
