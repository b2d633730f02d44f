"""tests/drivers.py: a pipeline run in the test process leaves it as it found it."""
import logging
import os
import signal
import sys

import mlflow  # noqa: F401 - imported before the state is taken: importing them sets variables
import ray  # noqa: F401
from drivers import SIGNALS, drive

from goldnas_ray import cli


def _state():
    return ({s: signal.getsignal(s) for s in SIGNALS}, dict(os.environ), list(sys.argv), os.getcwd(),
            dict(cli._FOLDER), logging.getLogger("ray.tune.tune").level,
            list(logging.getLogger("ray.tune.tune").filters))


def test_a_driver_run_twice_leaves_the_process_as_it_found_it(tmp_path):
    """compare.py sets up the process as every pipeline does (signal handlers, environment
    defaults, loggers, its folder): twice, an error and an argparse exit, each with its status
    and console, and nothing of it left behind."""
    before = _state()
    refused = drive("compare.py", str(tmp_path), "--out", str(tmp_path / "c.png"))
    assert refused.returncode == 2 and "neither a retrain's frontier.parquet" in refused.stderr, refused
    assert _state() == before
    usage = drive("compare.py")  # argparse: SystemExit(2)
    assert usage.returncode == 2 and "usage: compare.py" in usage.stderr, usage
    assert _state() == before
    assert "TUNE_DISABLE_SIGINT_HANDLER" not in os.environ or before[1].get("TUNE_DISABLE_SIGINT_HANDLER")
