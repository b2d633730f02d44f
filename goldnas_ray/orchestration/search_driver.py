"""Launch a search on Ray Train (the default path of pipelines/search.py).

Everything that can be checked is checked before the trainer starts: the output folder, the
data, the MLflow URI, the Ray address and whether the cluster can ever place the workers
(``placement``: on an autoscaling cluster, its node types). Then the driver waits until the
cluster places the workers (an autoscaler adds nodes for them; ``--placement-timeout``), and
only then writes the output folder and starts Ray Train.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from goldnas_ray.core.config import Config
from goldnas_ray.core.latency import LatencyTable
from goldnas_ray.files.search_files import RECORDS, read_records, records_path
from goldnas_ray.files.store import Location, location
from goldnas_ray.orchestration.cluster import connect, interruptible
from goldnas_ray.orchestration.errors import user_error
from goldnas_ray.core.search import check_stop, latency_table
from goldnas_ray.core.space import check_spatial
from goldnas_ray.data.batches import check_batches
from goldnas_ray.data.stream import StreamInfo, stream_info
from goldnas_ray.orchestration.placement import PLACEMENT_TIMEOUT, Ask, check, cluster_shape, torch_trainer, \
    wait_until_placed
from goldnas_ray.orchestration.streaming import train_dataset
from goldnas_ray.retrain.plan import Resources, check_workers
from goldnas_ray.run.ending import Finish, tracked_or_stopped
from goldnas_ray.run.loop import load_data, read_latency, search_start
from goldnas_ray.tracking.common import check_uri, resolve_uri
from goldnas_ray.tracking.search import search_tracker


def run_ray(cfg: Config | None, out: "str | Path | Location", *, workers: int = 1, cpus_per_worker: float | None = None,
            gpus_per_worker: float = 0, resume: bool = False, mlflow_uri: str | None = None,
            experiment: str = "goldnas-search", max_failures: int = 2, tracking: bool = True,
            address: str | None = None, verbose: bool = False, runtime_env: dict[str, Any] | None = None,
            log: Callable[[str], None] = print, mlflow_run_id: str | None = None,
            callbacks: list[Any] | None = None, latency: LatencyTable | None = None,
            placement_timeout: float | None = PLACEMENT_TIMEOUT) -> dict[str, Any]:
    """Run (or resume) a search on Ray Train; returns the content of records.json.

    ``cpus_per_worker`` None: on an embedded local Ray the workers share all its CPUs, on a
    joined cluster each gets 1. ``runtime_env``: the job's (``cli.process.ray_runtime_env``).
    ``mlflow_run_id``: a new search logs into this run (a sweep's child) instead of a new one;
    ``callbacks``: Ray Train's (a sweep's trial passes rank 0's reports on to Tune).
    ``latency``: a new cost=latency search's table as the caller read it (a sweep's driver),
    else read here, through the storage layer; the workers get it by value. A resumed search
    reads no table: its checkpoint holds it (``GoldSearch.state_dict``). ``placement_timeout``:
    how long to wait for the cluster to place the workers (ClusterError after); None inside a
    sweep's trial, whose driver checked the cluster and waited."""
    out = location(out).resolved()
    check_workers(workers, cpus_per_worker, gpus_per_worker, "--workers, --cpus-per-worker, --gpus-per-worker")
    start = search_start(out, resume, cfg)
    if start.finished:
        log(f"search in {out} already finished after epoch {start.epochs}; nothing to do")
        return read_records(out)
    cfg, run_id = start.config, start.run_id or mlflow_run_id
    stream, data, table = _checked_input(cfg, workers, start.resume, latency)
    uri = resolve_uri(out, mlflow_uri) if tracking else None
    if uri:
        check_uri(uri)
    cpus_per_worker = _place_workers(workers, cpus_per_worker, gpus_per_worker, stream is not None, address,
                                     runtime_env, placement_timeout, log)
    out.mkdir()
    job = {"config": cfg.to_dict(), "out": out.uri, "resume": start.resume,
           "threads_per_worker": max(1, int(cpus_per_worker)), "mlflow_uri": uri,
           "mlflow_run_id": run_id, "experiment": experiment, "reported_to": None if tracking else mlflow_uri,
           "stream": asdict(stream) if stream is not None else None,
           "latency": table.to_dict() if table is not None else None}
    datasets = {"train": train_dataset(cfg.data, stream)} if stream is not None else None
    if stream is not None:
        log(f"data: streaming {stream.num_train} training images of {stream.name} through Ray Data")
    run = None
    if uri:
        # the driver opens the run, so that a search stopped or failed before its first
        # checkpoint still ends it (KILLED / FAILED); rank 0 logs into it and ends it FINISHED
        run = search_tracker(uri, experiment, out, workers)(cfg, data.name, run_id)
        job["mlflow_run_id"] = run.run_id
    trainer = _trainer(job, out, workers, cpus_per_worker, gpus_per_worker, max_failures, verbose, datasets,
                       callbacks)
    log(f"search: {workers} worker(s) x {cpus_per_worker:g} CPU, {gpus_per_worker:g} GPU; output in {out}")
    started = time.perf_counter()
    _fit(trainer, run.finish if run is not None else None, cfg, out, log)
    records = read_records(out)
    log(f"search finished after {records['epochs']} epochs ({time.perf_counter() - started:.0f}s on Ray); "
        f"{len(records['architectures'])} architectures recorded in {out / RECORDS}")
    if run is not None:
        log(f"MLflow run {run.run_id}: open {run.page()}")
    return records


def _checked_input(cfg: Config, workers: int, resume: bool, latency: LatencyTable | None
                   ) -> tuple[StreamInfo | None, Any, LatencyTable | None]:
    """(the stream's info or None, the data or that info, a new cost=latency search's table),
    checked (:func:`check_search`): bad data or a bad config fails here, before Ray starts. A
    resumed search's table is in its checkpoint: the file is not read again."""
    stream = stream_info(cfg.data)
    data = stream if stream is not None else load_data(cfg)
    table = None
    if not resume:
        table = latency_table(cfg, data.input_shape, data.num_classes,  # read here, sent to the workers
                              latency if latency is not None else read_latency(cfg))
    check_search(cfg, data, workers, table, new=not resume)
    return stream, data, table


def _place_workers(workers: int, cpus_per_worker: float | None, gpus_per_worker: float, streaming: bool,
                   address: str | None, runtime_env: dict[str, Any] | None, placement_timeout: float | None,
                   log: Callable[[str], None]) -> float:
    """Connect to Ray (``address``, else RAY_ADDRESS, else an embedded one) and, unless
    ``placement_timeout`` is None, check that the cluster can ever place the workers and wait
    until it does; returns the CPUs per worker (:func:`_worker_cpus` when not given)."""
    address = address or os.environ.get("RAY_ADDRESS")
    resources = connect(address, log, runtime_env=runtime_env)
    if cpus_per_worker is None:
        cpus_per_worker = _worker_cpus(resources, Ask(workers, 0, 0, streaming=streaming), not address)
    ask = Ask(workers, cpus_per_worker, gpus_per_worker, streaming=streaming)
    if placement_timeout is not None:
        check(cluster_shape(embedded=not address), ask)
        wait_until_placed(ask, "the search's workers", placement_timeout, log)
    return cpus_per_worker


def _fit(trainer: Any, finish: Finish | None, cfg: Config, out: Location,
         log: Callable[[str], None]) -> None:
    """Run Ray Train's ``trainer`` to its end, ending the tracked run (``finish``) as the search
    ends: a failure a user caused is raised as its one line, a stop as RunStopped."""
    import ray.train

    def progress() -> str:
        epochs = read_records(out)["epochs"] if records_path(out) is not None else 0
        return f"after epoch {epochs} of at most {cfg.search.max_epochs}"

    try:
        with tracked_or_stopped(finish, out, progress, log):
            interruptible(trainer.fit)  # a worker group that fails more than max_failures raises
    except ray.train.TrainingFailedError as exc:
        found = user_error(exc)  # a diverged schedule, bad data: the one line the user needs
        if found is None:
            raise
        raise found from None


def check_search(cfg: Config, data: Any, workers: int, table: LatencyTable | None, new: bool = True) -> None:
    """What a search's driver (and a sweep's, for each of its new searches) checks of its input
    before compute: its batches on ``workers``, its space on the input size (``data``: the data
    or a stream's info), and for a ``new`` search its stop with its latency ``table``."""
    check_batches(data.num_train, workers, cfg.data.batch_size, "data.batch_size")
    check_spatial(data.input_shape[1], cfg.space.num_cells, cfg.space.stem)
    if new:
        check_stop(cfg, data.input_shape, data.num_classes, table)


def _worker_cpus(resources: dict[str, float], ask: Ask, embedded: bool) -> float:
    """CPUs per worker when not given: all of an embedded Ray's CPUs shared by ``ask``'s workers
    (1 each on a joined cluster), less the CPU it keeps for Ray Data (``Ask.spare``)."""
    if not embedded:
        return 1.0
    return max(1.0, (resources.get("CPU", 1) - ask.spare) // ask.workers)


def _trainer(job: dict[str, Any], out: Location, workers: int, cpus_per_worker: float, gpus_per_worker: float,
             max_failures: int, verbose: bool, datasets: dict[str, Any] | None = None,
             callbacks: list[Any] | None = None):
    from goldnas_ray.orchestration.search_worker import train_loop_per_worker

    # one name per output folder: a resumed search finds Ray Train's run of the first attempt
    # (and its last checkpoint) instead of orphaning it beside a new one; each checkpoint is the
    # whole search state: the last two are kept, not every epoch's
    return torch_trainer(train_loop_per_worker, job, Resources(workers, cpus_per_worker, gpus_per_worker),
                         name=out.name, storage=out / "ray", max_failures=max_failures, keep=2, datasets=datasets,
                         callbacks=callbacks, verbose=verbose)
