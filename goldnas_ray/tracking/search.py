"""MLflow tracking of a search: one run, config as params, per-epoch metrics, artifacts.

Written by rank 0 only, through ``tracking.buffer.BufferedClient``: an outage of a tracking
server after a good start is buffered in ``<out>/.mlflow-buffer`` and replayed, never raised
into the search. Default store: ``sqlite:///<out>/mlflow.db``, its artifacts in
``<out>/mlartifacts`` (``tracking.common.artifact_root``), unless --mlflow-uri or
MLFLOW_TRACKING_URI.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from goldnas_ray.core.config import Config
from goldnas_ray.core.space import log10_space_size
from goldnas_ray.files.search_files import CONFIG, HISTORY, LATENCY, RECORDS, read_records
from goldnas_ray.files.store import Location, location
from goldnas_ray.tracking.buffer import BufferedClient
from goldnas_ray.tracking.common import experiment_id, how_to_open, log_files, log_metrics, log_params

METRICS = {  # history column -> MLflow metric name
    "lambda": "lambda",
    "delta": "delta_lambda",
    "flops": "flops",
    "params": "params",
    "supernet_params": "supernet_params",
    "alive_ops": "alive_ops",
    "pruned": "pruned_ops",
    "loss": "train_loss",
    "accuracy": "train_acc",
    "seconds": "epoch_seconds",
    "images_per_second": "images_per_second",
    "latency_ms": "latency_ms",  # cost=latency: the predicted latency after the epoch's pruning
}
OPTIONAL = {"latency_ms"}  # columns only some searches have


def run_tags(space: Any, dataset: str, workers: int, out: Path) -> dict[str, str]:
    """Tags of a search run: space size, dataset, workers and the output folder."""
    size = log10_space_size(space.num_cells, space.num_nodes, len(space.operators))
    return {"space_log10_size": f"{size:.2f}", "dataset": dataset, "workers": str(workers),
            "goldnas.out": location(out).resolved().uri}


class SearchTracker:
    def __init__(self, uri: str, experiment: str, run_name: str, config: dict[str, Any],
                 tags: dict[str, str], run_id: str | None = None, out: "Path | Location | None" = None):
        self.client = BufferedClient(uri, out)
        self.uri = uri
        if run_id is None:
            run = self.client.create_run(experiment_id(self.client, experiment), run_name=run_name,
                                         tags=tags)
            self.run_id = run.info.run_id
            log_params(self.client, self.run_id, config)
            self.logged_steps: set[int] = set()
        else:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            # none known while the server is away: the replay leaves out the epochs it holds
            self.logged_steps = {m.step for m in self.client.ask("get_metric_history", run_id, METRICS["flops"]) or []}

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Log one history row; an epoch already in the run (logged, then re-run after a
        restart from an earlier checkpoint) is not logged twice."""
        step = int(row["epoch"])
        if step in self.logged_steps:
            return
        self.client.moment = f"epoch {step}"
        log_metrics(self.client, self.run_id, {name: row[col] for col, name in METRICS.items()
                                               if col in row or col not in OPTIONAL}, step)
        self.logged_steps.add(step)

    def log_outputs(self, out: "Path | Location") -> None:
        out = location(out)
        log_files(self.client, self.run_id, out, (RECORDS, HISTORY, CONFIG) + (
            (LATENCY,) if (out / LATENCY).is_file() else ()) + tuple(
            f"plots/{name}" for name in (out / "plots").names()))
        # the recorded architectures as an MLflow table: MlflowClient.load_table(experiment_id,
        # "front.json", run_ids=[...]) returns many searches' records in one DataFrame
        archs = read_records(out).get("architectures") or []
        if archs:
            import pandas as pd
            self.client.log_table(self.run_id, data=pd.DataFrame(
                [{k: a[k] for k in ("id", "epoch", "flops", "params", "lambda", "alive_ops") if k in a}
                 for a in archs]), artifact_file="front.json")

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)
        self.client.close()  # says how many writes still wait for the server

    def page(self) -> str:
        """Where the MLflow UI shows this run among its experiment's (``common.how_to_open``)."""
        return how_to_open(self.client, self.run_id)




def search_tracker(uri: str, experiment: str, out: Path, workers: int):
    """A factory of the search's tracker (``run.loop.TrackerFactory``): a new MLflow run, or
    the one a resumed search already has."""
    def make(cfg: Config, dataset: str, run_id: str | None) -> SearchTracker:
        return SearchTracker(uri, experiment, location(out).name, cfg.to_dict(),
                             run_tags(cfg.space, dataset, workers, out), run_id=run_id, out=out)

    return make
