"""The per-worker function of a search on Ray Train: the shared search loop, distributed.

Each worker trains on its own 1/N of every epoch (in memory: its (seed, epoch) share; streamed:
its part of Ray Data's split of the training stream, the only part decoded for it,
``goldnas_ray.data.stream``) through ``run.loop.search_loop`` with a ``DistributedComm`` (DDP,
prunes decided on rank 0 and broadcast). Rank 0 writes the output files, logs to MLflow and reports the whole search
state as a Ray Train checkpoint every epoch, so FailureConfig restarts continue from the
last epoch. The Ray calls of a search live here and nowhere else.

For people debugging a run, ``<out>/.workers/`` holds ``rank-N.json`` (pid and node of each
rank, rewritten when a worker group restarts), ``reports.jsonl`` (each epoch rank 0 reported
to Ray Train, with its pid and the time the report returned) and, with more than one worker,
``consistency.jsonl`` (each epoch, every rank's digest of its alive set and alphas). Ray Train
holds one report per worker until its controller takes it, so once the report of epoch e has
returned, the checkpoint of epoch e - 1 is the controller's: a worker group that fails after
that continues from epoch e - 1 or later.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from goldnas_ray.core.comm import DistributedComm
from goldnas_ray.core.latency import LatencyTable
from goldnas_ray.files.search_files import CHECKPOINT, load_checkpoint, read_run_id
from goldnas_ray.files.store import Location, location
from goldnas_ray.data.stream import StreamInfo, StreamSource
from goldnas_ray.run.console import describe_start
from goldnas_ray.run.loop import load_or_create, run_info, search_loop
from goldnas_ray.tracking.search import search_tracker

WORKER_LOG = ".workers"


def _print(line: str) -> None:
    # not print(): Ray Train patches it on workers to send each line to the console twice
    # (its logger and the original stream)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _restored_state(out: Location, resume: bool) -> dict[str, Any] | None:
    """The state to continue from, None for a new search: the later of Ray Train's last
    registered checkpoint (a worker group restarted, or a run of the same name resumed) and
    ``out``'s own (rank 0 writes it before reporting, so it can be an epoch ahead of Ray's; on
    --resume after a --local run it is the only one)."""
    found, broken = [], []

    # a copy that cannot be read (torn by a worker killed while it was written, or replaced
    # while it was read) leaves the other one
    def load(where: Any) -> None:
        try:
            found.append(load_checkpoint(where))
        except (RuntimeError, OSError, EOFError) as exc:
            broken.append(f"{where}: {exc}")
            print(f"checkpoint {where} could not be read ({exc}); using the other copy", file=sys.stderr)

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            load(Path(d) / CHECKPOINT.name)
    if (resume or checkpoint is not None) and (out / CHECKPOINT).is_file():
        load(out / CHECKPOINT)
    if broken and not found:
        raise RuntimeError(f"no checkpoint could be read: {'; '.join(broken)}")
    return max(found, key=lambda state: state["epoch"]) if found else None


def train_loop_per_worker(job: dict[str, Any]) -> None:
    from goldnas_ray.core.config import Config

    out = location(job["out"])
    device = ray.train.torch.get_device()
    torch.set_num_threads(max(1, int(job["threads_per_worker"])))
    comm = DistributedComm(device)
    workers = out / WORKER_LOG
    (workers / f"rank-{comm.rank}.json").write_text(json.dumps(
        {"pid": os.getpid(), "node_id": ray.get_runtime_context().get_node_id(), "device": str(device),
         "backend": comm.backend}))

    state = _restored_state(out, job["resume"])
    data_for = None
    if job.get("stream"):
        info = StreamInfo.from_dict(job["stream"])
        data_for = lambda cfg: StreamSource(ray.train.get_dataset_shard("train"), info)  # noqa: E731
    latency = LatencyTable.from_dict(job["latency"]) if job.get("latency") else None
    search, data = load_or_create(Config.from_dict(job["config"]), device, state, data_for, latency)
    info = run_info(search, data.name, comm.world_size)
    tracker = None
    if comm.rank == 0:
        _print(describe_start(search, data.name, comm.world_size))
        if job.get("mlflow_uri"):
            # a worker group restarted by FailureConfig gets the same job as the first attempt:
            # the run that attempt created is the one records.json names
            run_id = job.get("mlflow_run_id") or read_run_id(out)
            tracker = search_tracker(job["mlflow_uri"], job["experiment"], out, comm.world_size)(
                search.cfg, data.name, run_id)
            info |= {"mlflow_run_id": tracker.run_id, "mlflow_tracking_uri": tracker.uri}
        elif job.get("mlflow_run_id"):  # logged by a sweep's driver (a file store): named as a one-worker search does
            info |= {"mlflow_run_id": job["mlflow_run_id"], "mlflow_tracking_uri": job.get("reported_to")}

    def report(row: dict[str, Any], state: bytes | None) -> None:
        metrics = {k: v for k, v in row.items() if k != "recorded"}
        if comm.rank == 0:
            # a local <out>/checkpoints already holds the state: Ray copies that folder to its
            # storage before report returns. With <out> in object storage the same bytes go
            # into a local folder for Ray to upload
            if out.local is not None:
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(
                    str((out.local / CHECKPOINT).parent)))
            else:
                with tempfile.TemporaryDirectory(prefix="goldnas-ckpt-") as d:
                    (Path(d) / CHECKPOINT.name).write_bytes(state)
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
            (workers / "reports.jsonl").append_line(json.dumps(
                {"epoch": row["epoch"], "pid": os.getpid(), "time": time.time()}))
        else:
            ray.train.report(metrics)

    search_loop(search, data, out, info, comm=comm, tracker=tracker, log=_print, report=report,
                worker_log=workers / "consistency.jsonl" if comm.world_size > 1 else None)
