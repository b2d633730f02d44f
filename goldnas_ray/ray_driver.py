"""Launch a search on Ray Train (the default path of pipelines/search.py).

Joins the cluster named by RAY_ADDRESS (set by ``ray job submit``), or starts an embedded
local Ray on 127.0.0.1. Everything that can be checked is checked before the trainer starts:
the output folder, the data, the MLflow URI, the Ray address and whether the cluster can ever
place the requested workers.
"""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

from goldnas_ray import artifacts
from goldnas_ray.config import Config
from goldnas_ray.data import load_dataset
from goldnas_ray.tracking import check_uri, resolve_uri, run_tags


class ClusterError(RuntimeError):
    """Ray cannot be reached or cannot host the requested workers."""


def connect(log: Callable[[str], None] = print) -> dict[str, float]:
    """ray.init on RAY_ADDRESS or a new local instance; returns the cluster's resources."""
    import ray

    if ray.is_initialized():  # a pipeline that searches, then retrains, connects once
        return ray.cluster_resources()
    address = os.environ.get("RAY_ADDRESS")
    if address:
        check_address(address)
    try:
        if address:
            ray.init(address=address, log_to_driver=True)
        else:
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ClusterError(f"cannot connect to Ray at {address or 'a new local instance'}: {exc}") from exc
    resources = ray.cluster_resources()
    log(f"Ray: {'joined ' + address if address else 'started locally'}; cluster has "
        f"{resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs")
    return resources


def check_address(address: str, timeout: float = 5.0) -> None:
    """A plain TCP connect to the GCS first: ray.init would otherwise retry for minutes."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"RAY_ADDRESS {address!r} is not of the form host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ClusterError(f"Ray cluster at RAY_ADDRESS={address} is unreachable: {exc}") from exc


def check_capacity(resources: dict[str, float], workers: int, cpus: float, gpus: float) -> None:
    need_cpu, need_gpu = workers * cpus, workers * gpus
    if need_cpu > resources.get("CPU", 0) or need_gpu > resources.get("GPU", 0):
        raise ClusterError(
            f"{workers} workers x ({cpus:g} CPU, {gpus:g} GPU) need {need_cpu:g} CPUs and "
            f"{need_gpu:g} GPUs; the cluster has {resources.get('CPU', 0):g} CPUs and "
            f"{resources.get('GPU', 0):g} GPUs, so they could never all be placed")


def run_ray(cfg: Config | None, out: Path, *, workers: int = 1, cpus_per_worker: float = 1,
            gpus_per_worker: float = 0, resume: bool = False, mlflow_uri: str | None = None,
            experiment: str = "goldnas-search", max_failures: int = 2, tracking: bool = True,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) a search on Ray Train; returns the frontier.json content."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from goldnas_ray.ray_search import train_loop_per_worker

    out = Path(out).resolve()
    if workers < 1:
        raise ClusterError(f"--workers must be >= 1, got {workers}")
    artifacts.check_out_dir(out, resume)
    run_id = None
    if resume:
        state = artifacts.load_checkpoint(out / artifacts.CHECKPOINT)
        cfg = Config.from_dict(state["config"])
        run_id = artifacts.read_run_id(out)
        if state["finished"]:
            log(f"search in {out} already finished after epoch {state['epoch']}; nothing to do")
            return artifacts.read_frontier(out)
    assert cfg is not None
    cfg.validate()
    data = load_dataset(cfg.data.dataset, cfg.data.root, cfg.data.download)  # fail before Ray
    uri = resolve_uri(out, mlflow_uri) if tracking else None
    if uri:
        check_uri(uri)
    resources = connect(log)
    check_capacity(resources, workers, cpus_per_worker, gpus_per_worker)
    out.mkdir(parents=True, exist_ok=True)
    use_gpu = gpus_per_worker > 0
    per_worker = {"CPU": cpus_per_worker} | ({"GPU": gpus_per_worker} if use_gpu else {})
    loop_config = {
        "config": cfg.to_dict(),
        "out": str(out),
        "input_shape": list(data.input_shape),
        "num_classes": data.num_classes,
        "resume": resume,
        "threads_per_worker": max(1, int(cpus_per_worker)),
        "mlflow_uri": uri,
        "mlflow_run_id": run_id,
        "experiment": experiment,
        "run_name": out.name,
        "tags": run_tags(cfg.space, data.name, workers, out),
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=f"{out.name}-{int(time.time())}" if resume else out.name,
            storage_path=str(out / "ray"),
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            # each checkpoint is the whole search state: keep the last two, not every epoch's
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    started = time.perf_counter()
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"search failed: {result.error}") from result.error
    frontier = artifacts.read_frontier(out)
    log(f"search finished after {frontier['epochs']} epochs ({time.perf_counter() - started:.0f}s on Ray); "
        f"{len(frontier['architectures'])} architectures recorded in {out / artifacts.FRONTIER}")
    return frontier
