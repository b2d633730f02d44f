"""MLflow tracking of a sweep: a parent run, one nested child per search.

The driver creates every child up front (status SCHEDULED) with the search's whole config as
params and its grid point as tags; each search then logs its epochs into its child as an
ordinary search does (``tracking.search.SearchTracker`` with the child's id), so the UI's
compare view and parallel-coordinates chart put schedule (params) against outcome. When the
sweep ends, the driver adds each search's outcome as metrics (records, FLOPs at the stop,
epochs, seconds), marks the searches that failed, and logs the summary table and the report
on the parent.
"""
from __future__ import annotations

import time
from typing import Any

import pandas as pd

from goldnas_ray.files.store import Location, location
from goldnas_ray.sweep.plan import SWEEP_FILE, Sweep
from goldnas_ray.sweep.report import CHART, POINTS_CSV, SEARCHES_CSV, UNION
from goldnas_ray.tracking.common import experiment_id, log_files, log_params
from goldnas_ray.tracking.search import run_tags

SUMMARY_TABLE = "sweep_summary.json"
OUTCOME = ("records", "first_record_flops", "last_record_flops", "flops_at_stop", "epochs", "seconds")


class SweepTracker:
    """A sweep in MLflow, written by its driver: the parent, the children's creation and their
    outcome (the searches log their epochs themselves)."""

    def __init__(self, uri: str):
        from mlflow.tracking import MlflowClient

        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)

    def start(self, experiment: str, out: Location, sweep: Sweep) -> None:
        """The parent run and one SCHEDULED child per search; ids stored in ``sweep``."""
        from goldnas_ray.core.config import Config

        exp = experiment_id(self.client, experiment)
        parent = self.client.create_run(exp, run_name=out.name, tags={
            "goldnas.stage": "sweep", "goldnas.out": location(out).uri}).info.run_id
        log_params(self.client, parent, {"grid": {k: ",".join(v) for k, v in sweep.grid.items()},
                                         "seeds": ",".join(map(str, sweep.seeds)), "searches": len(sweep.searches),
                                         "workers_per_search": sweep.workers})
        sweep.mlflow_run_id = parent
        for s in sweep.searches:
            cfg = Config.from_dict(s.config)
            tags = run_tags(cfg.space, cfg.data.dataset, sweep.workers, out / s.name) | {
                "mlflow.parentRunId": parent, "goldnas.sweep_point": str(s.point),
                "goldnas.sweep_label": s.label, "goldnas.stage": "search"}
            child = self.client.create_run(exp, run_name=f"{s.name} {s.label}", tags=tags).info.run_id
            log_params(self.client, child, s.config)
            self.client.update_run(child, status="SCHEDULED")
            s.mlflow_run_id = child

    def resumed(self, sweep: Sweep) -> None:
        self.client.update_run(sweep.mlflow_run_id, status="RUNNING")

    def end_search(self, run_id: str, outcome: dict[str, Any] | None, error: str | None) -> None:
        """A finished search's outcome as metrics (an error of an earlier try removed), or a
        failed one's error as the tag ``goldnas.error`` and status FAILED."""
        from mlflow.entities import Metric

        run = self.client.get_run(run_id)
        if outcome is not None:
            if "records" not in run.data.metrics:  # once, whichever run of the sweep saw it finish
                ts = int(time.time() * 1000)
                self.client.log_batch(run_id, metrics=[Metric(k, float(outcome[k]), ts, 0) for k in OUTCOME
                                                       if outcome.get(k) is not None and pd.notna(outcome[k])])
            if "goldnas.error" in run.data.tags:
                self.client.delete_tag(run_id, "goldnas.error")
            if run.info.status != "FINISHED":
                self.client.set_terminated(run_id, status="FINISHED")
        elif error is not None:
            self.client.set_tag(run_id, "goldnas.error", error[:5000])
            if run.info.status != "FAILED":
                self.client.set_terminated(run_id, status="FAILED")

    def end_unfinished(self, sweep: Sweep, status: str) -> None:
        """A stopped or broken sweep: its RUNNING children and the parent end with ``status``
        (children never started stay SCHEDULED; --resume runs them)."""
        for s in sweep.searches:
            if s.mlflow_run_id and self.client.get_run(s.mlflow_run_id).info.status == "RUNNING":
                self.client.set_terminated(s.mlflow_run_id, status=status)
        self.client.set_terminated(sweep.mlflow_run_id, status=status)

    def log_report(self, sweep: Sweep, out: Location, table: pd.DataFrame, failed: bool) -> None:
        log_files(self.client, sweep.mlflow_run_id, out, (SWEEP_FILE, SEARCHES_CSV, POINTS_CSV, CHART, UNION))
        if table is not None and len(table):
            self.client.log_table(sweep.mlflow_run_id, data=table, artifact_file=SUMMARY_TABLE)
        self.client.set_terminated(sweep.mlflow_run_id, status="FAILED" if failed else "FINISHED")
