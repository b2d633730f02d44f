"""tests/drivers.py: a pipeline run in the test process leaves it as it found it, and a stop
signal sent to the test process while one runs still ends the session."""
import logging
import os
import signal
import sys
import warnings

import mlflow
import pytest
import ray
import torch
from drivers import SIGNALS, _logger_state, drive

from goldnas_ray.cli import outputs, process
from goldnas_ray.run import ending


def _state(loggers=None):
    """What drive restores: signal handlers, the environment, argv, the working folder, cli's and
    run.ending's module state, MLflow's tracking URI, experiment and active run, Ray's
    connection, torch's threads, warning filters and the state of every logger (those that
    existed in ``loggers``' snapshot)."""
    from mlflow.tracking import fluent

    names = [None, *logging.root.manager.loggerDict] if loggers is None else list(loggers)
    return ({s: signal.getsignal(s) for s in SIGNALS}, dict(os.environ), list(sys.argv), os.getcwd(),
            dict(outputs._FOLDER), dict(process._STOP), list(ending.GRACEFUL), mlflow.get_tracking_uri(),
            fluent._active_experiment_id, mlflow.active_run(), ray.is_initialized(), torch.get_num_threads(),
            list(warnings.filters), {name: _logger_state(logging.getLogger(name)) for name in names})


def test_a_driver_run_twice_leaves_the_process_as_it_found_it(tmp_path, monkeypatch):
    """compare.py sets up the process as every pipeline does (signal handlers, environment
    defaults, loggers, its folder): twice, an error and an argparse exit, each with its status
    and console, and nothing of it left behind; then a local search of one epoch tracked in an
    sqlite MLflow store (MLflow's globals, torch's threads, cli's stop state), which ends with
    status 0, and nothing of it left behind either. ``env``'s None removes a variable while the
    driver runs."""
    monkeypatch.setenv("GOLDNAS_DRIVERS_CHECK", "set")
    before = _state()
    loggers = before[-1]
    refused = drive("compare.py", str(tmp_path), "--out", str(tmp_path / "c.png"))
    assert refused.returncode == 2 and "neither a retrain's frontier.parquet" in refused.stderr, refused
    assert _state(loggers) == before
    seen = []
    usage = drive("compare.py", env={"GOLDNAS_DRIVERS_CHECK": None},  # argparse: SystemExit(2)
                  during=lambda run: seen.append(os.environ.get("GOLDNAS_DRIVERS_CHECK", "removed")))
    assert seen == ["removed"]
    assert usage.returncode == 2 and "usage: compare.py" in usage.stderr, usage
    assert _state(loggers) == before
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ or before[1].get("TUNE_DISABLE_SIGINT_HANDLER")
    searched = drive("search.py", "--local", "--smoke-test", "--max-epochs", "1", "--out", str(tmp_path / "s"),
                     "--mlflow-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert searched.returncode == 0, searched.console[-3000:]
    assert (tmp_path / "s" / "records.json").exists() and (tmp_path / "mlflow.db").exists()
    assert _state(loggers) == before


def test_a_stop_signal_sent_to_the_test_process_while_a_driver_runs_ends_the_session(tmp_path):
    """SIGTERM (a CI runner's timeout) sent to pytest during a local search, whose own handler
    takes it (exit 143): drive raises KeyboardInterrupt, as conftest.py's handler would have,
    and the process is left as it was found. What ``during`` raises is raised by drive."""
    before = _state()

    def terminate(run):
        if run.wait_for(r"epoch") and not run.ended.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt, match=r"while pipelines/search.py ran \(exit 143\)"):
        drive("search.py", "--local", "--smoke-test", "--no-mlflow", "--out", str(tmp_path / "s"), during=terminate)
    assert _state(before[-1]) == before

    def fails(run):
        raise AssertionError("the test's check, in the during thread")

    with pytest.raises(AssertionError, match="the test's check"):
        drive("compare.py", during=fails)
