"""A sweep of searches on Ray Tune: every (grid point, seed) is one Tune trial that runs an
ordinary search into ``<sweep>/p<point>-s<seed>``.

A search of one worker runs inside its trial's process (the trial holds its CPUs and GPUs);
one of N workers, or one whose data streams, is a Ray Train run the trial builds and fits (the
pattern of multi-worker retrain trials: the trial holds nothing, the run's workers hold the
resources). Either way the
search is the one ``pipelines/search.py`` runs, with its files, checkpoints and MLflow run (a
child of the sweep's). A trial that is retried (Tune's FailureConfig), and every search of a
``--resume``, continues from its folder's checkpoint; finished searches are kept as they are.

Before anything is written the driver refuses a search no node type of the cluster could hold
and waits until the cluster places the first one (``placement``); the searches run as many at
once as the cluster can grow to hold, the others queued by Tune.

A search that fails does not stop the others: an error of its input or a diverged schedule is
reported and not retried; any other error (a lost worker or node, a storage outage) is retried
``max_failures`` times by Tune, each try continuing from the search's checkpoint (a search on
Ray Train does not restart its worker group itself: one layer retries). The report
(``sweep.report``) is written whatever finished.

Each search has an MLflow child run. With a tracking server, each search logs its epochs into
it from the process that runs it. A file store (sqlite, a folder) has one writer, this
driver: a trial logs nothing, its Tune results (each epoch's history row) reach
:class:`SweepCallback` here, which logs them (a write the store fails is said once and ends no
search); the epochs a stopped trial never reported or the store missed, and the searches'
files, are logged from their folders when the sweep ends (``tracking.sweep``). From the
parent's creation on, whatever fails (creating the runs, the trials, the report, a stop)
still ends every run the sweep started: FINISHED, FAILED or KILLED.
"""
from __future__ import annotations

import os
import shutil
import time
from typing import Any, Callable

import ray
import ray.tune
import torch

from goldnas_ray.core.config import Config
from goldnas_ray.core.latency import LatencyTable
from goldnas_ray.data.stream import stream_info
from goldnas_ray.orchestration.errors import USER_ERRORS, error_kind, user_error
from goldnas_ray.files.search_files import check_new_out_dir
from goldnas_ray.files.store import INPUT, Location, location
from goldnas_ray.orchestration.cluster import DriverOnly, connect, interruptible
from goldnas_ray.orchestration.placement import PLACEMENT_TIMEOUT, ask_of, at_once_line, place_first, trial_resources
from goldnas_ray.orchestration.retrain_trial import RETRIES_INSIDE_A_TRIAL
from goldnas_ray.orchestration.search_driver import check_search
from goldnas_ray.retrain.plan import Resources, check_workers
from goldnas_ray.run.ending import tracked_or_stopped
from goldnas_ray.run.loop import load_data, read_latency
from goldnas_ray.sweep import report
from goldnas_ray.sweep.plan import SearchPlan, Sweep, plan_sweep, search_state
from goldnas_ray.tracking.common import check_uri, how_to_open, resolve_uri
from goldnas_ray.tracking.sweep import ReportedRun, SweepTracker, driver_writes, store_errors

TUNE_DIR = "ray"


def run_sweep(out: "str | Location", *, base: Config | None = None, grid: dict[str, list[str]] | None = None,
              seeds: list[int] | None = None, resume: bool = False, workers: int = 1,
              cpus_per_worker: float | None = None, gpus_per_worker: float = 0.0, mlflow_uri: str | None = None,
              tracking: bool = True, experiment: str = "goldnas-sweep", max_failures: int = 2,
              address: str | None = None, runtime_env: dict[str, Any] | None = None, verbose: bool = False,
              log: Callable[[str], None] = print, placement_timeout: float = PLACEMENT_TIMEOUT) -> Sweep:
    """Run (or, with ``resume``, continue) a sweep into ``out``; returns its manifest, whose
    ``failed`` names the searches that did not finish and why. ``placement_timeout``: how long to
    wait for the cluster to place the first search."""
    out = location(out).resolved()
    sweep = _open_sweep(out, resume, base, grid, seeds, workers, cpus_per_worker, gpus_per_worker,
                        tracking, mlflow_uri, experiment)
    states = {s.name: search_state(out / s.name) for s in sweep.searches}
    todo = [s for s in sweep.searches if states[s.name] != "finished"]
    tables = _latency_tables(todo, {s.name for s in todo if states[s.name] == "new"})
    streams = _check_searches(todo, {s.name for s in todo if states[s.name] == "new"}, sweep.workers, tables)
    per_search = Resources(sweep.workers, sweep.cpus_per_worker, sweep.gpus_per_worker)
    connect(address, log, runtime_env=runtime_env)
    at_once = place_first(ask_of(per_search, any(streams.values())), "a search",
                          embedded=not (address or os.environ.get("RAY_ADDRESS")),
                          timeout=placement_timeout if todo else None, log=log)
    tracker = None
    if sweep.mlflow_tracking_uri:
        tracker = SweepTracker(sweep.mlflow_tracking_uri, out)
    if not resume:
        out.mkdir()
    finish = (lambda status: tracker.end_unfinished(sweep, status)) if tracker is not None else None
    done = lambda: sum(search_state(out / s.name) == "finished" for s in sweep.searches)  # noqa: E731
    # from the parent's creation on, every run ends; a stop says how many searches finished
    with tracked_or_stopped(finish, out, lambda: f"{done()} of {len(sweep.searches)} searches finished", log):
        if tracker is not None and not resume:
            tracker.start(experiment, out, sweep)
        elif tracker is not None:
            tracker.resumed(sweep)
        sweep.failed, sweep.failed_kinds = {}, {}
        sweep.write(out)
        _announce(out, sweep, states, at_once, resume, log)
        started = time.perf_counter()
        if todo:
            jobs = {s.name: _job(s, out, sweep, max_failures, streams[s.name], verbose, tables[s.name])
                    for s in todo}
            relay = tracker if tracker is not None and tracker.relays else None
            tuner = _tuner(out, jobs, per_search, at_once, max_failures, SweepCallback(jobs, log, relay))
            _note_failures(out, sweep, interruptible(tuner.fit))
        _report(out, sweep, tracker, started, log)
    return sweep


def _open_sweep(out: Location, resume: bool, base: Config | None, grid: dict[str, list[str]] | None,
                seeds: list[int] | None, workers: int, cpus_per_worker: float | None, gpus_per_worker: float,
                tracking: bool, mlflow_uri: str | None, experiment: str) -> Sweep:
    """The sweep stored in ``out`` (``resume``), its tracking URI checked, or a new one planned
    from ``base``, ``grid`` and ``seeds`` into the new folder ``out``, with ``tracking`` at
    ``mlflow_uri`` (tracking.common.resolve_uri); nothing is written."""
    if resume:
        sweep = Sweep.read(out)
        if sweep.mlflow_tracking_uri:
            check_uri(sweep.mlflow_tracking_uri)
        return sweep
    check_new_out_dir(out, "sweep")
    check_workers(workers, cpus_per_worker, gpus_per_worker,
                  "--workers-per-search, --cpus-per-worker, --gpus-per-worker")
    sweep = Sweep(grid or {}, list(seeds or []), plan_sweep(base or Config(), grid or {}, seeds or []),
                  workers, cpus_per_worker if cpus_per_worker is not None else 1.0, gpus_per_worker, experiment)
    if tracking:
        sweep.mlflow_tracking_uri = resolve_uri(out, mlflow_uri)
        check_uri(sweep.mlflow_tracking_uri)
    return sweep


def _announce(out: Location, sweep: Sweep, states: dict[str, str], at_once: int | None, resume: bool,
              log: Callable[[str], None]) -> None:
    """The sweep's first lines: its searches, their resources, how many run at once."""
    finished = sum(state == "finished" for state in states.values())
    log(f"sweep: {len(sweep.points)} grid point(s) x {len(sweep.seeds)} seed(s) = {len(sweep.searches)} "
        f"searches{f', {finished} finished before' if resume else ''}; "
        f"{sweep.workers} worker(s) x {sweep.cpus_per_worker:g} CPU / {sweep.gpus_per_worker:g} GPU per "
        f"search, {at_once_line(at_once)}; output in {out}")
    for s in sweep.searches:
        log(f"  {s.name:<8} {s.label}" + ("  (finished)" if states[s.name] == "finished" else ""))


def _note_failures(out: Location, sweep: Sweep, results: Any) -> None:
    """Each search of Tune's ``results`` that did not finish, failed in ``sweep`` with why: the
    trial's own report of an input error, what Tune gave up retrying, or a trial that ended
    without a finished search in ``out`` (a folder the nodes do not share)."""
    for result in results:
        name = result.config["name"]
        why = (result.metrics or {}).get("failed") or (_error_line(result.error) if result.error else None)
        if why is None and search_state(out / name) != "finished":
            why = (f"its trial ended, but {out / name} holds no finished search here: on a cluster of "
                   f"several nodes --out must be storage they all share")
        if why:
            sweep.fail(name, why, (result.metrics or {}).get("failed_kind")
                       or (error_kind(result.error) if result.error else None))


def _report(out: Location, sweep: Sweep, tracker: Any, started: float, log: Callable[[str], None]) -> None:
    """The report, on the console and in MLflow (each search's outcome, the parent's files)."""
    sweep.write(out)
    if tracker is not None and tracker.relays:  # the epochs whose report never reached this driver
        for s in sweep.searches:
            tracker.search_history(s.mlflow_run_id, out / s.name)
    searches, points = report.write_report(out, sweep)
    log(f"sweep {'finished' if not sweep.failed else 'ended'} after {time.perf_counter() - started:.0f}s "
        f"here; {(searches['status'] == 'finished').sum()} of {len(searches)} searches finished")
    log(report.format_points(points))
    for name, why in sweep.failed.items():
        log(f"failed: {name} ({sweep.by_name()[name].label}): {why}")
    log(f"report: {out / report.POINTS_CSV}, {out / report.SEARCHES_CSV}, {out / report.CHART}, "
        f"{out / report.UNION}")
    if tracker is not None:
        for _, row in searches.iterrows():  # each outcome once, whichever run saw it finish
            plan = sweep.by_name()[row["search"]]
            outcome = row.to_dict() if row["status"] == "finished" else None
            tracker.end_search(plan.mlflow_run_id, outcome, sweep.failed.get(row["search"]), out / plan.name)
        tracker.log_report(sweep, out, points, failed=bool(sweep.failed))
        log(f"MLflow run {sweep.mlflow_run_id}: open {how_to_open(tracker.client, sweep.mlflow_run_id)}")


def _error_line(error: BaseException) -> str:
    """The last line of a trial's error (Tune wraps the search's own in its traceback)."""
    text = str(error).strip().splitlines()
    return (text[-1] if text else type(error).__name__)[:500]


def _latency_tables(searches: list[SearchPlan], new: set[str]) -> dict[str, LatencyTable | None]:
    """Each ``new`` cost=latency search's table, read here (through the storage layer) once per
    file: the trials get it by value, wherever they run. A resumed search's table is in its
    checkpoint (None here: the file is not read again). An error names the search."""
    read: dict[str, LatencyTable | None] = {}
    tables = {}
    for s in searches:
        cfg = Config.from_dict(s.config)
        path = cfg.search.latency_table if cfg.search.cost == "latency" and s.name in new else None
        try:
            if path not in read:
                read[path] = read_latency(cfg) if path is not None else None
        except USER_ERRORS as exc:
            named = type(exc)(f"search {s.name} ({s.label}): {exc}")
            named.kind = error_kind(exc)  # a store's outage stays one
            raise named from exc
        tables[s.name] = read[path]
    return tables


def _check_searches(searches: list[SearchPlan], new: set[str], workers: int,
                    tables: dict[str, LatencyTable | None]) -> dict[str, bool]:
    """Whether each search's data streams; and for the ``new`` ones, what a search's driver
    checks before compute (its batches on ``workers``, its space on the input size, its stop
    with its latency table of ``tables``). Each distinct data config is read once."""
    data_of: dict[str, tuple[Any, bool]] = {}
    streams = {}
    for s in searches:
        cfg = Config.from_dict(s.config)
        key = cfg.data.model_dump_json()
        try:
            if key not in data_of:
                info = stream_info(cfg.data)  # metadata only for a streamed set
                data_of[key] = (info, info is not None)
            info, streams[s.name] = data_of[key]
            if s.name not in new:
                continue
            if info is None:  # an in-memory set: read once, for its shape
                info = load_data(cfg)
                data_of[key] = (info, False)
            check_search(cfg, info, workers, tables[s.name])
        except USER_ERRORS as exc:
            raise type(exc)(f"search {s.name} ({s.label}): {exc}") from None
    return streams


def _job(s: SearchPlan, out: Location, sweep: Sweep, max_failures: int, streams: bool,
         verbose: bool, latency: LatencyTable | None = None) -> dict[str, Any]:
    return {"name": s.name, "label": s.label, "config": s.config, "out": (out / s.name).uri,
            "latency": latency.to_dict() if latency is not None else None,  # read once, by the driver
            # a search of one worker runs in its trial's process, unless its data streams
            # (Ray Data reaches a search through Ray Train)
            "runs_train": sweep.workers > 1 or streams,
            "workers": sweep.workers, "cpus_per_worker": sweep.cpus_per_worker,
            "gpus_per_worker": sweep.gpus_per_worker, "mlflow_uri": sweep.mlflow_tracking_uri,
            # a file store is written by the driver only: the trial reports, the driver logs
            "driver_logs": bool(sweep.mlflow_tracking_uri) and driver_writes(sweep.mlflow_tracking_uri),
            "mlflow_run_id": s.mlflow_run_id, "experiment": sweep.experiment, "max_failures": max_failures,
            "max_epochs": Config.from_dict(s.config).search.max_epochs, "verbose": verbose}


def sweep_trial(config: dict[str, Any], jobs: dict[str, dict[str, Any]]) -> None:
    """One Tune trial: run (or continue) one search of the sweep. An error of its input (or a
    diverged schedule) is reported as the search's failure, not retried."""
    job = jobs[config["name"]]
    out = location(job["out"])
    state = search_state(out)
    if state == "new" and out.exists():  # a try that failed before its first checkpoint: no results
        _clear(out)
    cfg = None if state != "new" else Config.from_dict(job["config"])
    latency = LatencyTable.from_dict(job["latency"]) if job.get("latency") else None
    try:
        if not job["runs_train"]:
            _search_here(job, cfg, out, resume=state != "new", latency=latency)
        else:
            from goldnas_ray.orchestration.search_driver import run_ray
            from ray.tune.integration.ray_train import TuneReportCallback

            run_ray(cfg, out, workers=job["workers"], cpus_per_worker=job["cpus_per_worker"],
                    gpus_per_worker=job["gpus_per_worker"], resume=state != "new", mlflow_uri=job["mlflow_uri"],
                    experiment=job["experiment"], max_failures=RETRIES_INSIDE_A_TRIAL,
                    tracking=bool(job["mlflow_uri"]) and not job["driver_logs"], verbose=job["verbose"],
                    log=lambda line: None,
                    mlflow_run_id=job["mlflow_run_id"], callbacks=[TuneReportCallback()], latency=latency,
                    placement_timeout=None)  # the sweep's driver checked the cluster and waited
    except Exception as exc:  # noqa: BLE001 - sorted: the search's own input, or retried by Tune
        if error_kind(exc) != INPUT:
            raise
        found = user_error(exc)
        ray.tune.report({"failed": f"{type(found).__name__}: {found}", "failed_kind": INPUT})


def _clear(out: Location) -> None:
    if out.local is not None:
        shutil.rmtree(out.local, ignore_errors=True)
    else:
        for rel in out.files():
            (out / rel).delete()


def _search_here(job: dict[str, Any], cfg: Config | None, out: Location, resume: bool,
                 latency: LatencyTable | None = None) -> None:
    """A one-worker search in this trial's process, its epochs reported to Tune."""
    from goldnas_ray.run.loop import run_local

    torch.set_num_threads(max(1, int(job["cpus_per_worker"])))
    tracker = None
    if job["driver_logs"]:  # its rows go to the driver in its Tune results
        tracker = lambda cfg, dataset, run_id: ReportedRun(job["mlflow_uri"], run_id or job["mlflow_run_id"])  # noqa: E731
    elif job["mlflow_uri"]:
        from goldnas_ray.tracking.search import search_tracker

        make = search_tracker(job["mlflow_uri"], job["experiment"], out, 1)
        # a new search logs into its child run (made by the sweep), a resumed one into its own
        tracker = lambda cfg, dataset, run_id: make(cfg, dataset, run_id or job["mlflow_run_id"])  # noqa: E731

    def report(row: dict[str, Any], checkpoint: bytes | None) -> None:
        ray.tune.report({k: v for k, v in row.items() if isinstance(v, (int, float)) and k != "end_time"})

    run_local(cfg, out, resume=resume, log=lambda line: None, tracker=tracker, report=report,
              device="cuda" if job["gpus_per_worker"] > 0 else "cpu", latency=latency)


class SweepCallback(DriverOnly, ray.tune.Callback):
    """One progress line per search epoch, and one when a search ends or fails. With a
    ``tracker`` (a file store's, ``SweepTracker.relays``), each epoch a trial reports is
    logged into its search's child run here, in the driver. A store that fails such a write (a
    locked or full database) ends no search: it is said once, and the epochs it missed are
    logged from the searches' history.parquet when the sweep ends."""

    DRIVER_ONLY = ("log", "tracker")

    def __init__(self, jobs: dict[str, dict[str, Any]], log: Callable[[str], None] = print, tracker: Any = None):
        self.jobs, self.log, self.tracker = jobs, log, tracker
        self.store_failed = False

    def _relay(self, method: str, run_id: str, *args: Any) -> None:
        try:
            getattr(self.tracker, method)(run_id, *args)
        except store_errors() as exc:
            if not self.store_failed:
                self.log(f"MLflow store {self.tracker.uri} failed a write ({type(exc).__name__}: {exc}); the "
                         f"searches go on, their epochs missing from MLflow logged from their folders at the end")
            self.store_failed = True

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.tracker is not None:
            self._relay("search_running", self.jobs[trial.config["name"]]["mlflow_run_id"])

    def on_trial_result(self, iteration, trials, trial, result, **info):
        job = self.jobs[trial.config["name"]]
        if "failed" in result:
            self.log(f"{job['name']:<8} failed: {result['failed']}")
            return
        if "epoch" not in result or "flops" not in result:
            return
        if self.tracker is not None:
            self._relay("search_epoch", job["mlflow_run_id"], result)
        self.log(f"{job['name']:<8} epoch {int(result['epoch']):>3}/{job['max_epochs']}  "
                 f"MFLOPs {result['flops'] / 1e6:.3f}  lambda {result.get('lambda', 0):.3g}  "
                 f"loss {result.get('loss', float('nan')):.4f}  {job['label']}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.log(f"{trial.config['name']:<8} failed: {_error_line(trial.error) if trial.error else 'error'}")


def _tuner(out: Location, jobs: dict[str, dict[str, Any]], per_search: Resources, at_once: int | None,
           max_failures: int, callback: SweepCallback) -> ray.tune.Tuner:
    own, driving = trial_resources(per_search, runs_train=False), trial_resources(per_search, runs_train=True)

    def resources(config: dict[str, Any]) -> Any:
        return driving if jobs[config["name"]]["runs_train"] else own

    trainable = ray.tune.with_resources(ray.tune.with_parameters(sweep_trial, jobs=jobs), resources)
    path, fs = (out / TUNE_DIR).arrow()
    return ray.tune.Tuner(
        trainable, param_space={"name": ray.tune.grid_search(list(jobs))},
        tune_config=ray.tune.TuneConfig(trial_name_creator=lambda t: t.config["name"],
                                        trial_dirname_creator=lambda t: t.config["name"],
                                        max_concurrent_trials=at_once, reuse_actors=True),
        run_config=ray.tune.RunConfig(
            name=time.strftime("sweep-%Y%m%d-%H%M%S"), storage_path=path, storage_filesystem=fs,
            callbacks=[callback], verbose=0, failure_config=ray.tune.FailureConfig(max_failures=max_failures)))
