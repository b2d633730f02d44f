"""GOLD-NAS search on Ray Train: DDP over N workers, rank-0 checkpoints and MLflow.

The algorithm lives in search.py; this module only distributes it:
- each worker trains on its own 1/N of every epoch (order from (seed, epoch, rank));
- DDP averages the gradients of weights AND alphas, so every rank holds the same alphas;
  the prune decision is still made once on rank 0 and broadcast, then each rank prunes the
  same operators and rebuilds its DDP wrapper and optimizers (survivors keep momentum);
- rank 0 writes the output files, logs to MLflow and reports the full search state as a
  Ray Train checkpoint every epoch, so FailureConfig restarts continue from the last epoch.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from goldnas_ray import artifacts
from goldnas_ray.config import Config
from goldnas_ray.data import iterate_batches, load_dataset
from goldnas_ray.runner import describe_start, format_epoch, run_info
from goldnas_ray.search import EpochStats, GoldSearch


def _distributed() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    if not _distributed():
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def _all_reduce_stats(stats: EpochStats, device: torch.device) -> EpochStats:
    if not _distributed():
        return stats
    t = torch.tensor([stats.loss * stats.images, stats.accuracy * stats.images, stats.images],
                     dtype=torch.float64, device=device)
    dist.all_reduce(t)
    sec = torch.tensor([stats.seconds], dtype=torch.float64, device=device)
    dist.all_reduce(sec, op=dist.ReduceOp.MAX)
    images = int(t[2])
    return EpochStats(float(t[0]) / images, float(t[1]) / images, images, float(sec))


def _broadcast(obj: Any) -> Any:
    if not _distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _digest(search: GoldSearch) -> dict[str, Any]:
    alphas = torch.stack([a.detach().cpu() for a in search.model.arch_parameters()])
    alive = repr(search.model.alive_ops()).encode()
    return {"alive": hashlib.sha256(alive).hexdigest()[:16],
            "alphas": hashlib.sha256(alphas.numpy().tobytes()).hexdigest()[:16]}


def _check_consistency(search: GoldSearch, out: Path, rank: int) -> None:
    """Every rank must hold the same alive set and bit-identical alphas after each epoch;
    rank 0 appends all ranks' digests to .workers/consistency.jsonl and stops on a mismatch."""
    if not _distributed():
        return
    digests: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, _digest(search))
    if rank == 0:
        with open(out / ".workers" / "consistency.jsonl", "a") as f:
            f.write(json.dumps({"epoch": search.epoch, "ranks": digests}) + "\n")
    if any(d != digests[0] for d in digests):
        raise RuntimeError(f"ranks diverged after epoch {search.epoch}: {digests}")


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import ray
    import ray.train
    import ray.train.torch

    out = Path(loop_config["out"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(loop_config.get("threads_per_worker", 1))))
    pid_dir = out / ".workers"
    pid_dir.mkdir(parents=True, exist_ok=True)
    (pid_dir / f"rank-{rank}.json").write_text(json.dumps(
        {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id()}))

    checkpoint = ray.train.get_checkpoint()
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = artifacts.load_checkpoint(Path(d) / artifacts.CHECKPOINT.name)
    elif loop_config.get("resume"):
        state = artifacts.load_checkpoint(out / artifacts.CHECKPOINT)
    if state is not None:
        search = GoldSearch.from_state_dict(state, device)
    else:
        cfg = Config.from_dict(loop_config["config"])
        data_shape, classes = loop_config["input_shape"], loop_config["num_classes"]
        search = GoldSearch(cfg, tuple(data_shape), classes, device)
    cfg = search.cfg
    data = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.download)
    info = run_info(search, data.name, world)

    tracker = None
    if rank == 0:
        print(describe_start(search, data, world), flush=True)
        if loop_config.get("mlflow_uri"):
            from goldnas_ray.tracking import SearchTracker

            # a worker group restarted by FailureConfig gets the same loop_config as the first
            # attempt: the run that attempt created is the one frontier.json names
            run_id = loop_config.get("mlflow_run_id") or artifacts.read_run_id(out)
            tracker = SearchTracker(loop_config["mlflow_uri"], loop_config["experiment"],
                                    loop_config["run_name"], cfg.to_dict(), loop_config["tags"],
                                    run_id=run_id)
            info["mlflow_run_id"] = tracker.run_id
            info["mlflow_tracking_uri"] = tracker.uri

    net = _wrap(search.model, device)
    while not search.finished:
        batches = iterate_batches(data.x_train, data.y_train, cfg.data.batch_size, cfg.seed,
                                  search.epoch, rank=rank, world_size=world,
                                  cutout_size=cfg.data.cutout)
        stats = _all_reduce_stats(search.train_epoch(batches, net), device)
        prunes = _broadcast(search.decide_prunes() if rank == 0 else None)
        row = search.end_epoch(stats, prunes)
        if prunes:
            net = _wrap(search.model, device)
        metrics = {k: v for k, v in row.items() if k != "recorded"}
        _check_consistency(search, out, rank)
        if rank == 0:
            state = search.state_dict()
            artifacts.save_checkpoint(out, state)
            artifacts.write_outputs(out, state, info)
            if tracker is not None:
                tracker.log_epoch(row)
            print(format_epoch(row, cfg.search.max_epochs, search.model.full_flops), flush=True)
            # the state is serialised once, into <out>/checkpoints; Ray copies that folder to
            # its storage before report returns (SYNC upload, the local copy is kept)
            checkpoint_dir = (out / artifacts.CHECKPOINT).parent
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir))
        else:
            ray.train.report(metrics)
    if rank == 0 and tracker is not None:
        tracker.log_outputs(out)
        tracker.finish()
