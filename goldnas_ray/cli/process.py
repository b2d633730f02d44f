"""A pipeline's process: the error convention, the stops, and the process-wide settings of a
pipeline's process and of the Ray processes it starts.

A user error (a bad config value, missing or malformed data or genotype files, an unusable
output folder, an unreachable or too small cluster, an unreachable MLflow server, trials left
unfinished) is printed as one line ``error: ...`` with exit status 2, before compute is spent
where it can be found then. Anything else is a bug: its traceback is kept and the status is 1.

This module is the only place of the package that sets process-wide state (environment
variables, logger levels): :func:`configure_process` for the pipeline's own process, called by
:func:`run_main` before the pipeline's body, and :func:`ray_runtime_env` for the processes Ray
starts for it (given to ``ray.init`` as the job's runtime_env, so it reaches the Ray Train
workers, the Tune trials and Ray's own actors of this job, and nothing else). Everything below
``cli`` leaves the process as it found it: no environment variables, logger levels, global
RNG seeds or plotting backends are set there (tests/test_side_effects.py checks it).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import signal
import sys
import threading
import time
from typing import Any, Callable

from goldnas_ray.cli.outputs import resume_line, resume_with
from goldnas_ray.orchestration.errors import USER_ERRORS
from goldnas_ray.run.ending import GRACEFUL, RunStopped


def run_main(body: Callable[[], object], verbose: bool = False) -> int:
    """Run a pipeline's body in a process set up by :func:`configure_process`; a user error
    becomes ``error: ...`` on stderr and status 2. A stop (Ctrl-C, or SIGTERM from ``ray job
    stop``) ends Ray Tune's or Train's work through their own graceful stop
    (:func:`fit_until_stopped`), the tracked runs KILLED, then this process's Ray (an embedded
    one shut down, a joined cluster left), then one line on stderr, how far the run got and
    the command that continues it, the last line printed; status 130 (143 for SIGTERM),
    without a traceback. A stop before the run's work began (a wait for the cluster to place
    its workers) prints "stopped", with the command that resumes it when its folder holds one."""
    configure_process(verbose)
    try:
        body()
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RunStopped as exc:
        _shutdown_ray()
        print(f"stopped: {exc.progress}{resume_with(exc.out) if exc.out else ''}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:  # before the run's work began (the wait for the cluster's placement)
        _shutdown_ray()
        print(f"stopped{resume_line()}", file=sys.stderr)
        return 130
    except SystemExit as exc:
        # ours (configure_process) exits 143; Ray's driver handler, once Ray is up, exits 15
        if exc.code in (128 + signal.SIGTERM, signal.SIGTERM):
            _shutdown_ray()
            print(f"stopped{resume_line()}", file=sys.stderr)
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    return 0


def _shutdown_ray() -> None:
    """Disconnect from Ray, from the main thread, once a stop has ended the run's work: an
    embedded Ray's processes end with it, before the stop line is printed (nothing of theirs
    follows it); a joined cluster ends this job's actors."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


# ---- process-wide settings: this process, and the Ray processes of its job ------------------
# Beside these, two process-wide things are set on purpose, in processes Ray starts for this
# job alone: a search worker, a retrain trial and a sweep's trial call torch.set_num_threads
# with the CPUs Ray gave them (orchestration/search_worker.py, orchestration/retrain_trial.py,
# orchestration/sweep_driver.py), and a process
# caches its normalisation constants per device (data/batches.py, _CONSTANTS). The library
# itself sets nothing else process-wide (tests/test_side_effects.py).
def configure_process(verbose: bool = False) -> None:
    """What a pipeline's own process needs set before it imports MLflow or starts Ray Tune.

    - MLFLOW_LOGGING_LEVEL=WARNING (unless --verbose): a new sqlite store announces its tables
      at INFO, read by MLflow when it is imported;
    - the ``ray.tune.tune`` logger at WARNING (unless --verbose): Tune logs each sync of its
      experiment state to remote storage, one line per epoch;
    - RAY_AIR_NEW_OUTPUT=0 (unless --verbose): Tune's console reporter, which prints a box of
      its configuration and where its files are whatever the run's verbosity; the retrain
      prints its own line per trial epoch;
    - RAY_DISABLE_FAILURE_SIGNAL_HANDLER=1 (unless --verbose): Ray's native handler prints a
      stack for every SIGTERM, which is how ``ray job stop`` stops a run;
    - RAY_DATA_DISABLE_PROGRESS_BARS=1 and RAY_DATA_LOG_LEVEL=ERROR (unless --verbose): a
      streamed set's pipelines are made here (they keep the settings current when they are
      made) and would draw a progress bar and log their plan and their end, for every epoch of
      every worker, and warn once per process that the bars are off;
    - TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S=0: a retrain reports a
      checkpoint every epoch (a few KB) with num_to_keep=1, which forces an experiment snapshot
      each time; Tune, in this process, would warn about it every epoch;
    - SIGINT (Ctrl-C) and SIGTERM (``ray job stop``): :func:`_on_stop_signal`, which asks a
      running fit to stop gracefully (:func:`fit_until_stopped`, put in ``run.ending.
      GRACEFUL``) and otherwise raises KeyboardInterrupt / SystemExit(143); either way the
      run's MLflow runs end KILLED (``run.ending``) instead of staying RUNNING;
      TUNE_DISABLE_SIGINT_HANDLER=1, so that Tune leaves SIGINT to that handler (it still
      listens on SIGUSR1, which is how the handler asks it to stop), and Tune's own words about
      the stop (how to resume with ``Tuner.restore``) dropped after a stop: the stop line says
      how to resume;
    - MLflow's HTTP retries (``tracking.buffer.BUDGET``: 2 retries, backoff 1, 10 s a request):
      a tracking server that went away is noticed in seconds and the run's writes are buffered
      (``tracking.buffer``) instead of an epoch waiting out MLflow's minutes of retries.
    A value already in the environment is kept: the user's word wins."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    for name, value in mlflow_budget().items():
        os.environ.setdefault(name, value)
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _on_stop_signal)
        signal.signal(signal.SIGUSR1, _no_tune_yet)
        GRACEFUL[:] = [fit_until_stopped]
        for name in ("ray.tune.tune", "ray.train.v2.api.data_parallel_trainer"):
            logging.getLogger(name).addFilter(_before_a_stop)
    if not verbose:
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("RAY_DISABLE_FAILURE_SIGNAL_HANDLER", "1")
        os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
        logging.getLogger("ray.tune.tune").setLevel(logging.WARNING)


# the stop asked for while a fit runs (fit_until_stopped): "ask", an Event the handler sets;
# "code", the exit status (130 after SIGINT, 143 after SIGTERM)
_STOP: dict[str, Any] = {}


def _on_stop_signal(signum: int, frame: Any) -> None:
    """SIGINT or SIGTERM: while a fit runs, the first one asks it to stop and returns (the fit
    ends through Tune's or Train's own stop); otherwise, or a second time, or SIGTERM during a
    Ray Train fit (:func:`fit_until_stopped`), it raises KeyboardInterrupt (SIGINT) or
    SystemExit(143) (SIGTERM) at once. During a Ray Train fit SIGINT does not come here: the
    fit installs its own handler, whose first SIGINT aborts the run, the second does nothing
    and the third ends the fit at once (``sys.exit``; :func:`fit_until_stopped` still raises
    KeyboardInterrupt)."""
    ask = _STOP.get("ask")
    if ask is not None and _STOP.get("code") is None:
        _STOP["code"] = 128 + signum
        if signum == signal.SIGTERM and not _STOP.get("tune"):
            raise SystemExit(128 + signum)  # a Ray Train fit: its checkpoints are all it keeps
        ask.set()
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)


def _no_tune_yet(signum: int, frame: Any) -> None:
    """SIGUSR1 while no Tune fit listens: nothing to do (Tune's fit installs its own)."""


def _before_a_stop(record: logging.LogRecord) -> bool:
    """Tune's and Train's words about a stop (how to resume with their own API) are left out."""
    return _STOP.get("code") is None and "SIGINT" not in record.getMessage()


def fit_until_stopped(call: Callable[[], Any]) -> Any:
    """``call()`` (a Tuner's or a Ray Train trainer's fit) on the main thread, so that Ctrl-C and
    SIGTERM end it through its own graceful stop: Tune, asked through SIGUSR1, saves its
    experiment state one last time (the trials that finished recorded as finished, the others
    with their last checkpoints) and returns; Ray Train, asked through the SIGINT handler its
    fit installs, aborts its workers (the checkpoints stay; a second Ctrl-C is Train's too and
    does nothing, a third ends the fit at once). SIGTERM ends a Ray Train fit at once, as a
    second signal ends a Tune fit: Train's abort, which saves nothing, takes longer under
    load than ``ray job stop`` waits before its SIGKILL, and the tracked runs would stay RUNNING.
    When a stop was asked, it is raised once ``call`` has returned (KeyboardInterrupt, or
    SystemExit(143) after SIGTERM), whatever ``call`` returned or raised in between.

    ``ray job stop`` sends SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S (3 s by
    default, set where the job runs): a stop that takes longer loses what the snapshot would
    have saved since Tune's last one (Tune snapshots with every checkpoint of a retrain, so at
    most the trials that ended meanwhile are recorded unfinished, and continue from their last
    checkpoint), and its MLflow runs stay RUNNING until ``--resume``. Tune takes a trial's result
    and its checkpoint in two steps: a trial whose last epoch ends in the instant of the stop,
    between the two, is saved with the checkpoint before; on ``--resume`` it reports its
    stored last checkpoint and trains nothing (``retrain_trial.report_finished``)."""
    ask, done = threading.Event(), threading.Event()
    sigint = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGTERM, _on_stop_signal)  # ray.init put its own in its stead
    read, write = os.pipe()
    os.set_blocking(read, False)
    os.set_blocking(write, False)
    wakeup = signal.set_wakeup_fd(write)  # a SIGINT that Ray Train's handler took shows here
    from ray.tune import Tuner

    _STOP.update(ask=ask, code=None, tune=isinstance(getattr(call, "__self__", None), Tuner))
    asker = threading.Thread(target=_ask_ray_to_stop, args=(sigint, ask, done), name="goldnas-stop", daemon=True)
    asker.start()
    value, error = None, None
    try:
        value = call()
    except BaseException as exc:  # noqa: BLE001 - raised below unless a stop was asked
        error = exc
    finally:
        done.set()
        _STOP["ask"] = None
        signal.set_wakeup_fd(wakeup)
        signal.signal(signal.SIGINT, sigint)  # Ray Train's fit leaves its handler behind
        signal.signal(signal.SIGUSR1, _no_tune_yet)  # and Tune's fit its own
        try:
            seen = os.read(read, 256)
        except BlockingIOError:
            seen = b""
        os.close(read)
        os.close(write)
    if _STOP["code"] is None and signal.SIGINT in seen:
        _STOP["code"] = 128 + signal.SIGINT
    if _STOP["code"] is None:
        if error is not None:
            raise error
        return value
    if _STOP["code"] == 128 + signal.SIGINT:
        raise KeyboardInterrupt from None
    raise SystemExit(_STOP["code"]) from None


def _ask_ray_to_stop(sigint: Any, ask: threading.Event, done: threading.Event) -> None:
    """Once a stop is asked, ask the running fit: Ray Train's SIGINT handler (its abort) when
    its fit installed one in place of ``sigint``, else Tune's SIGUSR1 handler once its fit has
    installed it (a stop that comes before either listens waits for them)."""
    while not (ask.wait(0.1) or done.is_set()):
        pass
    while not done.is_set():
        train = signal.getsignal(signal.SIGINT)
        if callable(train) and train is not sigint:
            train(signal.SIGINT, None)  # its abort; from this thread, its sys.exit ends only the thread
            return
        if signal.getsignal(signal.SIGUSR1) is not _no_tune_yet:
            os.kill(os.getpid(), signal.SIGUSR1)  # after the fit, _no_tune_yet takes it
            return
        time.sleep(0.05)


def ray_runtime_env(verbose: bool = False, embedded: bool = True,
                    placement_timeout: float | None = None) -> dict[str, Any]:
    """The runtime_env of the Ray job a pipeline starts or joins (``ray.init(runtime_env=...)``):
    what the Ray processes of this job need set, given to them and to no other process.

    - MLFLOW_LOGGING_LEVEL=WARNING (unless --verbose): rank 0 of a search logs to MLflow;
    - RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0 on an embedded Ray (unless --verbose): nothing
      preempts the nodes of a local instance; Ray Train's watcher only adds an error line;
    - RAY_DATA_DISABLE_PROGRESS_BARS=1 and RAY_DATA_LOG_LEVEL=ERROR (unless --verbose): a
      retrain trial makes its own streamed pipelines, and every worker runs them (see
      :func:`configure_process`);
    - PYTHONWARNINGS=ignore::DeprecationWarning (unless --verbose): Ray Train warns, from its
      own code, about Ray Data options it passes itself;
    - :func:`quiet_ray_worker` as every worker's setup hook (unless --verbose);
    - MLflow's HTTP retries (:func:`mlflow_budget`, always): rank 0 of a search tracks;
    - RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S=``placement_timeout`` (--placement-timeout), at
      least ``TRAIN_GROUP_START_FLOOR_S`` (the user's own value wins): Ray Train waits that
      long for a worker group's placement (a group restarted after a node loss, on nodes an
      autoscaler brings back) before it says it timed out and tries again (a controller
      failure, which max_failures does not count); the floor keeps a short placement timeout,
      meant for the first placement, from failing every restart at once."""
    name = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
    waits = {name: os.environ.get(name, f"{max(placement_timeout, TRAIN_GROUP_START_FLOOR_S):g}")} \
        if placement_timeout is not None else {}
    if verbose:
        return {"env_vars": mlflow_budget() | waits}
    env_vars = {"MLFLOW_LOGGING_LEVEL": "WARNING", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
                "RAY_DATA_LOG_LEVEL": "ERROR", "PYTHONWARNINGS": "ignore::DeprecationWarning",
                **mlflow_budget(), **waits}
    if embedded:
        env_vars["RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"] = "0"
    return {"env_vars": env_vars, "worker_process_setup_hook": f"{__name__}.quiet_ray_worker"}


# the least Ray Train waits for a restarted worker group's placement (Ray's own default: 60 s)
TRAIN_GROUP_START_FLOOR_S = 60.0


def mlflow_budget() -> dict[str, str]:
    """MLflow's HTTP retry settings for this job's processes: the user's where set, else the
    short budget of ``tracking.buffer.BUDGET``."""
    from goldnas_ray.tracking.buffer import BUDGET

    return {name: os.environ.get(name, value) for name, value in BUDGET.items()}


# Ray Train's worker-side loggers named after their files, not their modules: LoggingConfig
# does not reach them, and they log every report and checkpoint at INFO through the root logger
RAY_TRAIN_FILE_LOGGERS = ("ray.train.v2._internal.execution.context", "ray.train.collective.collectives")


def quiet_ray_worker() -> None:
    """Worker setup hook: Ray Train's and Tune's per-epoch INFO lines (a report, a checkpoint)
    stay out of the console of a worker of this job; warnings still show. Runs in each Ray worker process of the job as it starts; the loggers are created
    here with their level, so the modules that make them later get them as set."""
    for name in ("ray.train", "ray.tune"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for module in RAY_TRAIN_FILE_LOGGERS:
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.origin:
            logging.getLogger(spec.origin).setLevel(logging.WARNING)
