"""MLflow tracking of a sweep: a parent run, one nested child per search.

The driver creates every child up front (status SCHEDULED) with the search's whole config as
params and its grid point as tags, so the UI's compare view and parallel-coordinates chart put
schedule (params) against outcome. Who writes a child's epochs depends on the store:

- a tracking server (or a database server) takes writes from everywhere: each search logs its
  epochs and files into its child as an ordinary search does (``tracking.search.SearchTracker``
  with the child's id), from the process that runs it;
- a file store (sqlite, a folder) takes one writer, the sweep's driver: a trial logs nothing
  (:class:`ReportedRun`), the epoch rows it reports to Tune reach the driver, which logs them
  (:meth:`SweepTracker.search_epoch`, each step once whatever restarts; a write the store fails
  there stops nothing), adds any epoch of the search's history.parquet not in the run (its
  report never arrived, or its write failed), and logs the search's files from its folder when
  the sweep ends. Which stores take one writer is ``tracking.common.store_kind``'s answer.

A sweep that fails while it creates the runs ends every run made so far; later, the running
ones (``tracking.common.ENDED``, the retrain's rule too).

The parent's writes go through ``tracking.buffer.BufferedClient`` with the sweep's output: a
tracking server that goes away after a good start is buffered and replayed (while it is away,
a search's outcome is logged without asking what its run holds, and a stopped sweep ends the
parent only). When the sweep ends, the driver adds each search's outcome as metrics (records, FLOPs at the
stop, epochs, seconds), marks the searches that failed, and logs the summary table and the
report on the parent.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from goldnas_ray.files.search_files import HISTORY
from goldnas_ray.files.store import Location, location
from goldnas_ray.sweep.plan import SWEEP_FILE, Sweep
from goldnas_ray.sweep.report import CHART, POINTS_CSV, SEARCHES_CSV, UNION
from goldnas_ray.tracking.buffer import BufferedClient
from goldnas_ray.tracking.common import (ENDED, FILE_STORES, experiment_id, log_files, log_metrics, log_params,
                                          store_kind)
from goldnas_ray.tracking.search import METRICS, SearchTracker, run_tags

SUMMARY_TABLE = "sweep_summary.json"
OUTCOME = ("records", "first_record_flops", "last_record_flops", "flops_at_stop", "epochs", "seconds")


def driver_writes(uri: str) -> bool:
    """Whether ``uri`` is a file store (sqlite, a folder), which only the sweep's driver writes;
    a tracking server or a database server takes writes from every process."""
    return store_kind(uri) in FILE_STORES


def store_errors() -> tuple[type[BaseException], ...]:
    """What a write to a store may raise that is not a bug of the caller: MLflow's own errors,
    sqlite's and SQLAlchemy's (a locked or full database), a file system's."""
    import sqlite3

    from mlflow.exceptions import MlflowException
    from sqlalchemy.exc import SQLAlchemyError

    return MlflowException, SQLAlchemyError, sqlite3.Error, OSError


class ReportedRun:
    """A search's tracker in a trial of a sweep on a file store: it writes nothing (the store
    takes one writer, the driver), and names the child run in records.json. The trial's Tune
    results carry each epoch's row to the driver; its files stay in its folder."""

    def __init__(self, uri: str, run_id: str):
        self.uri, self.run_id = uri, run_id

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Nothing: the row goes to the driver in the trial's Tune result."""

    def log_outputs(self, out: Location) -> None:
        """Nothing: the driver logs the search's files from its folder when the sweep ends."""

    def finish(self, status: str = "FINISHED") -> None:
        """Nothing: the driver ends the child run."""

    def page(self) -> str:
        """The store alone: the trial asks it nothing (the driver is its one user)."""
        return f"the sweep's MLflow store {self.uri}"


class _ChildRun(SearchTracker):
    """A search's child run written by the sweep's driver, through the driver's one
    ``BufferedClient`` (``SearchTracker``'s epochs and files; the run exists: neither created
    nor reopened here, and ended by :meth:`SweepTracker.end_search`, never by :meth:`finish`)."""

    def __init__(self, client: BufferedClient, uri: str, run_id: str):
        self.client, self.uri, self.run_id = client, uri, run_id
        self.logged_steps = {m.step for m in client.ask("get_metric_history", run_id, METRICS["flops"]) or []}

    def finish(self, status: str = "FINISHED") -> None:
        raise TypeError("a sweep's child run is ended by SweepTracker.end_search; the client is the driver's")


class SweepTracker:
    """A sweep in MLflow, written by its driver: the parent, the children's creation and their
    outcome; on a file store (``relays``) also what the searches log."""

    def __init__(self, uri: str, out: Location | None = None):
        self.uri = uri
        self.client = BufferedClient(uri, out)
        self.relays = driver_writes(uri)
        self._children: dict[str, _ChildRun] = {}
        self.stage = "start"  # which runs a failure ends (tracking.common.ENDED): until start() returns, all

    def _child(self, run_id: str) -> _ChildRun:
        if run_id not in self._children:
            self._children[run_id] = _ChildRun(self.client, self.uri, run_id)
        return self._children[run_id]

    def search_running(self, run_id: str) -> None:
        """A trial started (or restarted) the search of ``run_id``."""
        self.client.update_run(run_id, status="RUNNING")

    def search_epoch(self, run_id: str, row: dict[str, Any]) -> None:
        """One epoch's row a trial reported; a step already in the run is not logged again."""
        self._child(run_id).log_epoch(row)

    def search_history(self, run_id: str, out: Location) -> None:
        """The epochs of ``out``'s history.parquet not in the run yet: one whose trial was
        stopped between its checkpoint and its report continues after it, never reporting it."""
        if (out / HISTORY).is_file():
            for row in pd.read_parquet((out / HISTORY).open_buffer()).to_dict("records"):
                self.search_epoch(run_id, row)

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
        for s in sweep.searches:  # each id kept at once: a failure half way ends the runs made so far
            cfg = Config.from_dict(s.config)
            tags = run_tags(cfg.space, cfg.data.dataset, sweep.workers, out / s.name) | {
                "mlflow.parentRunId": parent, "goldnas.sweep_point": str(s.point),
                "goldnas.sweep_label": s.label, "goldnas.stage": "search"}
            s.mlflow_run_id = self.client.create_run(exp, run_name=f"{s.name} {s.label}", tags=tags).info.run_id
            log_params(self.client, s.mlflow_run_id, s.config)
            self.client.update_run(s.mlflow_run_id, status="SCHEDULED")
        self.stage = "trials"

    def resumed(self, sweep: Sweep) -> None:
        self.client.update_run(sweep.mlflow_run_id, status="RUNNING")
        self.stage = "trials"

    def end_search(self, run_id: str, outcome: dict[str, Any] | None, error: str | None,
                   out: Location | None = None) -> None:
        """A finished search's outcome as metrics (an error of an earlier try removed), with
        its files from ``out`` on a file store, or a failed one's error as the tag
        ``goldnas.error`` and status FAILED."""
        run = self.client.ask("get_run", run_id)  # None while a tracking server is away: write all
        metrics, tags = (run.data.metrics, run.data.tags) if run is not None else ({}, {})
        status = run.info.status if run is not None else None
        if outcome is not None:
            if "records" not in metrics:  # once, whichever run of the sweep saw it finish
                if self.relays and out is not None:
                    self._child(run_id).log_outputs(out)
                log_metrics(self.client, run_id, {k: outcome[k] for k in OUTCOME
                                                  if outcome.get(k) is not None and pd.notna(outcome[k])})
            if "goldnas.error" in tags:
                self.client.delete_tag(run_id, "goldnas.error")
            if status != "FINISHED":
                self.client.set_terminated(run_id, status="FINISHED")
        elif error is not None:
            self.client.set_tag(run_id, "goldnas.error", error[:5000])
            if status != "FAILED":
                self.client.set_terminated(run_id, status="FAILED")

    def end_unfinished(self, sweep: Sweep, status: str) -> None:
        """A stopped or broken sweep: the parent and the children :data:`ENDED` names for the
        stage it failed at end with ``status``. Failing in :meth:`start`, every run made so far
        (no sweep.json names them: nothing would run them); later the RUNNING ones (children
        never started stay SCHEDULED; --resume runs them)."""
        for s in sweep.searches:  # while a tracking server is away, the running ones are not known
            run = self.client.ask("get_run", s.mlflow_run_id) if s.mlflow_run_id else None
            if run is not None and run.info.status in ENDED[self.stage] or (
                    run is None and s.mlflow_run_id and self.stage == "start"):
                self.client.set_terminated(s.mlflow_run_id, status=status)
        if sweep.mlflow_run_id:
            self.client.set_terminated(sweep.mlflow_run_id, status=status)
        self.client.close()

    def log_report(self, sweep: Sweep, out: Location, table: pd.DataFrame, failed: bool) -> None:
        log_files(self.client, sweep.mlflow_run_id, out, (SWEEP_FILE, SEARCHES_CSV, POINTS_CSV, CHART, UNION))
        if table is not None and len(table):
            self.client.log_table(sweep.mlflow_run_id, data=table, artifact_file=SUMMARY_TABLE)
        self.client.set_terminated(sweep.mlflow_run_id, status="FAILED" if failed else "FINISHED")
        self.client.close()  # says how many writes still wait for an unreachable server
