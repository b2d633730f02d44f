"""MLflow tracking of a search: one run, config as params, per-epoch metrics, artifacts.

Written by rank 0 only, through ``MlflowClient`` (no global fluent state on the workers).
Default store: ``sqlite:///<out>/mlflow.db``, unless --mlflow-uri or MLFLOW_TRACKING_URI.
"""
from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

METRICS = {  # history column -> MLflow metric name
    "lambda": "lambda",
    "delta": "delta_lambda",
    "flops": "flops",
    "params": "params",
    "alive_ops": "alive_ops",
    "pruned": "pruned_ops",
    "loss": "train_loss",
    "accuracy": "train_acc",
    "seconds": "epoch_seconds",
    "images_per_second": "images_per_second",
}


class TrackingError(ValueError):
    """The MLflow tracking URI cannot be used."""


def resolve_uri(out: Path, uri: str | None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{(Path(out) / 'mlflow.db').resolve()}"


def check_uri(uri: str, timeout: float = 5.0) -> None:
    """Fail fast when an http(s) tracking server does not answer."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
                if resp.status != 200:
                    raise TrackingError(f"MLflow server {uri} answered {resp.status} on /health")
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingError(f"MLflow tracking server {uri} is unreachable: {exc}") from exc


def run_tags(space: Any, dataset: str, workers: int, out: Path) -> dict[str, str]:
    """Tags of a search run: space size, dataset, workers and the output folder."""
    from goldnas_ray.space import log10_space_size

    size = log10_space_size(space.num_cells, space.num_nodes, len(space.operators))
    return {"space_log10_size": f"{size:.2f}", "dataset": dataset, "workers": str(workers),
            "goldnas.out": str(Path(out).resolve())}


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(_flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = str(v)
    return flat


def _experiment_id(client, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp else client.create_experiment(name)


def _log_params(client, run_id: str, params: dict[str, Any]) -> None:
    """Flattened params (``section.key``), in batches of the 100 MLflow accepts at once."""
    from mlflow.entities import Param

    items = [Param(k, v[:6000]) for k, v in _flatten(params).items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def _log_files(client, run_id: str, out: Path, names: tuple[str, ...]) -> None:
    """The named files of ``out`` that exist, and its genotypes/ folder, as artifacts."""
    for name in names:
        if (out / name).is_file():
            client.log_artifact(run_id, str(out / name))
    if (out / "genotypes").is_dir():
        client.log_artifacts(run_id, str(out / "genotypes"), "genotypes")


class SearchTracker:
    def __init__(self, uri: str, experiment: str, run_name: str, config: dict[str, Any],
                 tags: dict[str, str], run_id: str | None = None):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=uri)
        self.uri = uri
        if run_id is None:
            run = self.client.create_run(_experiment_id(self.client, experiment), run_name=run_name,
                                         tags=tags)
            self.run_id = run.info.run_id
            _log_params(self.client, self.run_id, config)
            self.logged_steps: set[int] = set()
        else:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
            self.logged_steps = {m.step for m in self.client.get_metric_history(run_id, METRICS["flops"])}

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Log one history row; an epoch already in the run (logged, then re-run after a
        restart from an earlier checkpoint) is not logged twice."""
        from mlflow.entities import Metric

        step = int(row["epoch"])
        if step in self.logged_steps:
            return
        ts = int(time.time() * 1000)
        metrics = [Metric(name, float(row[col]), ts, step) for col, name in METRICS.items()]
        self.client.log_batch(self.run_id, metrics=metrics)
        self.logged_steps.add(step)

    def log_outputs(self, out: Path) -> None:
        out = Path(out)
        _log_files(self.client, self.run_id, out, ("frontier.json", "history.parquet", "config.yaml"))
        for png in write_plots(out):
            self.client.log_artifact(self.run_id, str(png), "plots")

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


def write_plots(out: Path) -> list[Path]:
    """lambda and FLOPs over epochs, recorded architectures marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    hist_path = Path(out) / "history.parquet"
    if not hist_path.is_file():
        return []
    hist = pd.read_parquet(hist_path)
    rec = hist[hist["recorded"].astype(str) != ""]
    paths = []
    for col, label, fname, log in (("lambda", "lambda", "lambda.png", True),
                                   ("flops", "MFLOPs per image", "flops.png", False)):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        scale = 1e-6 if col == "flops" else 1.0
        ax.plot(hist["epoch"], hist[col] * scale, lw=1.5)
        ax.scatter(rec["epoch"], rec[col] * scale, color="C3", zorder=3, label="recorded architecture")
        if log and (hist[col] > 0).any():
            ax.set_yscale("symlog", linthresh=max(float(hist[col][hist[col] > 0].min()), 1e-6))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.legend(loc="best")
        fig.tight_layout()
        path = Path(out) / "plots" / fname
        path.parent.mkdir(exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


TRIAL_METRICS = ("test_acc", "train_loss", "train_acc", "lr", "drop_path", "seconds", "images_per_second")


class RetrainTracker:
    """A retrain in MLflow: one parent run, one nested child run per (architecture, seed).

    Everything is written from the driver (the Ray Tune callback sees every trial's results),
    so concurrent trials never write to the store at once and a sqlite store is safe. Child
    runs are created up front, status SCHEDULED, and their ids kept in retrain.json: a trial
    restored after a failure or a ``--resume`` logs into its own run, each epoch once.
    """

    def __init__(self, uri: str):
        self.uri = uri
        self._client = None
        self._logged: dict[str, set[int]] = {}

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def __getstate__(self) -> dict[str, Any]:  # Tune may pickle its callbacks
        return {"uri": self.uri, "_client": None, "_logged": {}}

    def start(self, experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str],
              children: dict[str, tuple[str, dict[str, Any], dict[str, str]]]) -> tuple[str, dict[str, str]]:
        """Create the parent run and one child per entry of ``children`` (key -> (name,
        params, tags)); returns (parent id, key -> child id)."""
        from mlflow.entities import Metric

        exp_id = _experiment_id(self.client, experiment)
        parent = self.client.create_run(exp_id, run_name=run_name, tags=tags).info.run_id
        _log_params(self.client, parent, params)
        child_ids = {}
        for key, (name, child_params, child_tags) in children.items():
            run = self.client.create_run(exp_id, run_name=name,
                                         tags=child_tags | {"mlflow.parentRunId": parent})
            child_ids[key] = run.info.run_id
            _log_params(self.client, run.info.run_id, child_params)
            # FLOPs and parameters as metrics too, so the UI can put them on a chart axis
            ts = int(time.time() * 1000)
            self.client.log_batch(run.info.run_id, metrics=[
                Metric(n, float(child_params[n]), ts, 0) for n in ("flops", "params")])
            self.client.update_run(run.info.run_id, status="SCHEDULED")
        return parent, child_ids

    def trial_started(self, run_id: str) -> None:
        self.client.update_run(run_id, status="RUNNING")
        if run_id not in self._logged:
            history = self.client.get_metric_history(run_id, "test_acc")
            self._logged[run_id] = {m.step for m in history}

    def log_trial_epoch(self, run_id: str, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        if run_id not in self._logged:
            self.trial_started(run_id)
        step = int(row["epoch"])
        if step in self._logged[run_id]:
            return
        ts = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(n, float(row[n]), ts, step)
                                               for n in TRIAL_METRICS if n in row])
        self._logged[run_id].add(step)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def end_retrain(self, parent_id: str, status: str) -> None:
        """End the parent and every child still RUNNING with ``status`` (KILLED when the job was
        stopped, FAILED after an error); children never started stay SCHEDULED. --resume sets
        them running again."""
        exp = self.client.get_run(parent_id).info.experiment_id
        for run in self.client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent_id}'"):
            if run.info.status == "RUNNING":
                self.client.set_terminated(run.info.run_id, status=status)
        self.client.set_terminated(parent_id, status=status)

    def log_report(self, parent_id: str, out: Path, summary: dict[str, float]) -> None:
        from mlflow.entities import Metric

        _log_files(self.client, parent_id, Path(out),
                   ("frontier.parquet", "frontier.csv", "frontier.png", "trials.parquet", "retrain.json"))
        ts = int(time.time() * 1000)
        self.client.log_batch(parent_id, metrics=[Metric(k, float(v), ts, 0) for k, v in summary.items()])
