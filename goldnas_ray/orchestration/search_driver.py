"""Launch a search on Ray Train (the default path of pipelines/search.py).

Everything that can be checked is checked before the trainer starts: the output folder, the
data, the MLflow URI, the Ray address and whether the cluster can ever place the workers.
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
from goldnas_ray.orchestration.cluster import ClusterError, check_capacity, connect, interruptible
from goldnas_ray.orchestration.errors import user_error
from goldnas_ray.core.search import check_stop, latency_table
from goldnas_ray.core.space import check_spatial
from goldnas_ray.data.batches import check_batches
from goldnas_ray.data.stream import stream_info
from goldnas_ray.orchestration.streaming import DECODE_CPUS, train_data_config, train_dataset
from goldnas_ray.run.ending import RunStopped, ends_tracked_run
from goldnas_ray.run.loop import load_data, read_latency, search_start
from goldnas_ray.tracking.common import check_uri, how_to_open, resolve_uri
from goldnas_ray.tracking.search import search_tracker


def run_ray(cfg: Config | None, out: "str | Path | Location", *, workers: int = 1, cpus_per_worker: float | None = None,
            gpus_per_worker: float = 0, resume: bool = False, mlflow_uri: str | None = None,
            experiment: str = "goldnas-search", max_failures: int = 2, tracking: bool = True,
            address: str | None = None, verbose: bool = False, runtime_env: dict[str, Any] | None = None,
            log: Callable[[str], None] = print, mlflow_run_id: str | None = None,
            callbacks: list[Any] | None = None, latency: LatencyTable | None = None) -> dict[str, Any]:
    """Run (or resume) a search on Ray Train; returns the content of records.json.

    ``cpus_per_worker`` None: on an embedded local Ray the workers share all its CPUs, on a
    joined cluster each gets 1. ``runtime_env``: the job's (``cli.ray_runtime_env``).
    ``mlflow_run_id``: a new search logs into this run (a sweep's child) instead of a new one;
    ``callbacks``: Ray Train's (a sweep's trial passes rank 0's reports on to Tune).
    ``latency``: a new cost=latency search's table as the caller read it (a sweep's driver),
    else read here, through the storage layer; the workers get it by value. A resumed search
    reads no table: its checkpoint holds it (``GoldSearch.state_dict``)."""
    out = location(out).resolved()
    if workers < 1:
        raise ClusterError(f"--workers must be >= 1, got {workers}")
    start = search_start(out, resume, cfg)
    if start.finished:
        log(f"search in {out} already finished after epoch {start.epochs}; nothing to do")
        return read_records(out)
    cfg, run_id = start.config, start.run_id or mlflow_run_id
    stream = stream_info(cfg.data)  # bad data fails here, before Ray starts
    data = stream if stream is not None else load_data(cfg)
    check_batches(data.num_train, workers, cfg.data.batch_size, "data.batch_size")
    check_spatial(data.input_shape[1], cfg.space.num_cells, cfg.space.stem)
    table = None  # a resumed search's table is in its checkpoint: the file is not read again
    if not start.resume:
        table = latency_table(cfg, data.input_shape, data.num_classes,  # read here, sent to the workers
                              latency if latency is not None else read_latency(cfg))
        check_stop(cfg, data.input_shape, data.num_classes, table)
    dataset = data.name
    uri = resolve_uri(out, mlflow_uri) if tracking else None
    if uri:
        check_uri(uri)
    address = address or os.environ.get("RAY_ADDRESS")
    resources = connect(address, log, runtime_env=runtime_env)
    cpus_per_worker = _worker_cpus(resources, workers, cpus_per_worker, gpus_per_worker,
                                   embedded=not address, streaming=stream is not None)
    out.mkdir()
    job = {"config": cfg.to_dict(), "out": out.uri, "resume": start.resume,
           "threads_per_worker": max(1, int(cpus_per_worker)), "mlflow_uri": uri,
           "mlflow_run_id": run_id, "experiment": experiment, "reported_to": None if tracking else mlflow_uri,
           "stream": asdict(stream) if stream is not None else None,
           "latency": table.to_dict() if table is not None else None}
    datasets = {"train": train_dataset(cfg.data, stream)} if stream is not None else None
    if stream is not None:
        log(f"data: streaming {stream.num_train} training images of {stream.name} through Ray Data")
    if uri:
        # the driver opens the run, so that a search stopped or failed before its first
        # checkpoint still ends it (KILLED / FAILED); rank 0 logs into it and ends it FINISHED
        run = search_tracker(uri, experiment, out, workers)(cfg, dataset, run_id)
        job["mlflow_run_id"] = run.run_id
    trainer = _trainer(job, out, workers, cpus_per_worker, gpus_per_worker, max_failures, verbose, datasets,
                       callbacks)
    log(f"search: {workers} worker(s) x {cpus_per_worker:g} CPU, {gpus_per_worker:g} GPU; output in {out}")
    started = time.perf_counter()
    finish = run.finish if uri else None
    import ray.train

    try:
        with ends_tracked_run(finish, log):
            interruptible(trainer.fit)  # a worker group that fails more than max_failures raises
    except ray.train.TrainingFailedError as exc:
        found = user_error(exc)  # a diverged schedule, bad data: the one line the user needs
        if found is None:
            raise
        raise found from None
    except (KeyboardInterrupt, SystemExit) as exc:
        epochs = read_records(out)["epochs"] if records_path(out) is not None else 0
        raise RunStopped(f"after epoch {epochs} of at most {cfg.search.max_epochs}", exc, out) from None
    records = read_records(out)
    log(f"search finished after {records['epochs']} epochs ({time.perf_counter() - started:.0f}s on Ray); "
        f"{len(records['architectures'])} architectures recorded in {out / RECORDS}")
    if uri:
        log(f"MLflow run {records.get('mlflow_run_id')}: open with {how_to_open(uri)}")
    return records


def _worker_cpus(resources: dict[str, float], workers: int, cpus: float | None, gpus: float,
                 embedded: bool, streaming: bool) -> float:
    """CPUs per worker, checked against the cluster: ``cpus``, or when None all of an embedded
    Ray's CPUs shared by the workers (1 each on a joined cluster), a CPU kept for Ray Data's
    decoding when the data streams."""
    spare = DECODE_CPUS if streaming else 0
    if cpus is None:
        cpus = max(1.0, (resources.get("CPU", 1) - spare) // workers) if embedded else 1.0
    check_capacity(resources, workers, cpus, gpus)
    if streaming and resources.get("CPU", 0) - workers * cpus < spare:
        # Ray Data decodes in tasks of their own: with every CPU held by a worker, none run
        raise ClusterError(f"streaming needs at least {spare:g} CPU beside the workers' for Ray Data to decode "
                           f"on; {workers} x {cpus:g} CPUs take all {resources.get('CPU', 0):g}: "
                           f"lower --cpus-per-worker")
    return cpus


def _trainer(job: dict[str, Any], out: Location, workers: int, cpus_per_worker: float, gpus_per_worker: float,
             max_failures: int, verbose: bool, datasets: dict[str, Any] | None = None,
             callbacks: list[Any] | None = None):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from goldnas_ray.orchestration.search_worker import train_loop_per_worker

    use_gpu = gpus_per_worker > 0
    storage_path, storage_fs = (out / "ray").arrow()
    per_worker = {"CPU": cpus_per_worker} | ({"GPU": gpus_per_worker} if use_gpu else {})
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=job,
        # a streamed training set is split among the workers: each decodes only its own part
        datasets=datasets,
        dataset_config=train_data_config() if datasets else None,
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            # one name per output folder: a resumed search finds Ray Train's run of the first
            # attempt (and its last checkpoint) instead of orphaning it beside a new one
            name=out.name,
            storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            # each checkpoint is the whole search state: keep the last two, not every epoch's
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            # INFO logs a line per report and per checkpoint on every epoch; --verbose shows them
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
            callbacks=callbacks,
        ),
    )
