"""A pipeline's ``main(argv)`` run in the test process, in place of ``python pipelines/X.py``:
the same exit status and console, without a fresh interpreter importing torch, Ray and MLflow
and without Train's and Tune's actors waiting on it.

    from drivers import drive
    done = drive("retrain.py", "--search-dir", str(search), "--out", str(out), cluster=ray_cluster)
    assert done.returncode == 0, done.console[-3000:]

``cluster``: the session's Ray cluster (conftest's ``ray_cluster``): its environment (HOME with
its auth token, RAY_AUTH_MODE=token) and RAY_ADDRESS are the process's only while the driver
runs. Without it the pipeline runs as the command line would here (``--local``, or an embedded
Ray that it starts and shuts down).

The test process is left as it was found: signal handlers (cli.process.configure_process
installs SIGINT/SIGTERM/SIGUSR1 handlers), os.environ, sys.argv, the working directory, the cli
package's module state (cli.outputs._FOLDER, cli.process._STOP, run.ending.GRACEFUL), MLflow's
global tracking URI, experiment and active runs, every logger's level, filters and handlers,
warning filters, torch's thread count and Ray's connection (``ray.shutdown()`` when the driver
left it connected: ``connect()`` returns early on a connected Ray, so a leftover connection
would give the next driver this one's runtime_env). tests/test_drivers.py checks it.

Where a process boundary is what a test checks (signals, exit codes of a killed process, job
submission, the README's commands) the test starts the process itself.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
DURING_S = 60  # how long drive waits for its ``during`` function once the run has ended


class Driven(NamedTuple):
    """What ``subprocess.run(..., capture_output=True, text=True)`` gave the tests it replaces."""
    returncode: int
    stdout: str
    stderr: str

    @property
    def console(self) -> str:
        return self.stdout + self.stderr


_PIPELINES: dict[str, Any] = {}


def pipeline(script: str):
    """pipelines/<script> as a module (pipelines/ is no package), loaded once."""
    if script not in _PIPELINES:
        spec = importlib.util.spec_from_file_location(f"pipelines_{Path(script).stem}", ROOT / "pipelines" / script)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _PIPELINES[script] = module
    return _PIPELINES[script]


class Running:
    """What a ``during`` function of :func:`drive` sees of the run: its stdout so far, whether
    it has ended, and a wait for a line it prints."""

    def __init__(self, stdout: int):
        self._stdout, self.ended = stdout, threading.Event()

    def printed(self) -> str:
        return os.pread(self._stdout, 1 << 26, 0).decode("utf-8", "replace")

    def poll(self) -> int | None:
        """None while the run goes on, as ``subprocess.Popen.poll`` (so conftest's
        kill_rank_after_report watches an in-process run as it watches a process)."""
        return 0 if self.ended.is_set() else None

    def wait_for(self, pattern: str) -> bool:
        """Whether the run printed a line matching ``pattern`` (re.M) before it ended."""
        while not re.search(pattern, self.printed(), re.M):
            if self.ended.wait(0.1):
                return bool(re.search(pattern, self.printed(), re.M))
        return True


def signal_paused(pid: int, sig: int, group: bool = False) -> None:
    """``sig`` to a driver process paused where it is (SIGSTOP before, SIGCONT after), to its
    process group when ``group`` (as Ctrl-C in a terminal): the stop lands at the moment the
    test saw, however loaded the machine."""
    os.kill(pid, signal.SIGSTOP)
    try:
        (os.killpg if group else os.kill)(pid, sig)
    finally:
        os.kill(pid, signal.SIGCONT)


def stop_when(run, enough: Callable[[list[str]], bool], sig: int = signal.SIGINT, timeout: float = 300) -> list[str]:
    """The lines a driver process ``run`` (a ``subprocess.Popen`` with text stdout) prints until
    ``enough(lines)`` holds, when it gets ``sig`` by :func:`signal_paused`; all of its lines if it
    ends first (no signal then: the caller asserts it came). ``run`` is killed after
    ``timeout`` seconds, so a hang fails instead of waiting."""
    watchdog = threading.Timer(timeout, run.kill)
    watchdog.start()
    lines = []
    try:
        for line in run.stdout:
            lines.append(line)
            if enough(lines):
                signal_paused(run.pid, sig)
                break
    finally:
        watchdog.cancel()
    return lines


def drive(script: str, *argv: str, cluster: dict | None = None, env: dict[str, str | None] | None = None,
          cwd: str | Path | None = None, during: Callable[[Running], Any] | None = None) -> Driven:
    """``python pipelines/<script> argv...`` in this process: its exit status (SystemExit's code
    when main raises it; 1 and the traceback on stderr for any other exception) and what it
    printed on stdout and stderr (fd 1 and 2, so Ray's forwarded worker lines and anything below
    Python land there too). ``cluster``: join the session's cluster (its env, RAY_ADDRESS);
    ``env``: variables set while it runs, a value None removing one; ``cwd``: the folder it runs
    in (default: the repository's root, as the subprocesses ran); ``during``: a function given
    a :class:`Running` in a thread of its own while the pipeline runs (what a test did beside a
    Popen: wait for a line, then act), to return within DURING_S of ``ended`` being set; what
    it raises is raised here once the run has ended.

    The pipeline's stop handlers take SIGINT and SIGTERM while it runs
    (cli.process.configure_process); no test signals its own process, so a stop status (130,
    143) is a Ctrl-C or SIGTERM sent to pytest: it is raised as KeyboardInterrupt once the test
    process's handlers are back, and the session ends as it would have outside the driver
    (conftest.py's pytest_configure)."""
    main = pipeline(script).main
    raised: list[BaseException] = []

    def beside_run(running: Running) -> None:
        try:
            during(running)
        except BaseException as exc:  # noqa: BLE001 - the test's failure, raised on the main thread
            raised.append(exc)

    with _as_found(), _environment(cluster, env), _cwd(cwd or ROOT), _argv([f"pipelines/{script}", *argv]), \
            _console() as console:
        running = Running(console[0])
        beside = threading.Thread(target=beside_run, args=(running,), daemon=True) if during else None
        if beside:
            beside.start()
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:  # noqa: BLE001 - a bug: the interpreter prints its traceback, status 1
            traceback.print_exc()
            code = 1
        finally:
            _disconnect()
            running.ended.set()
            if beside:
                beside.join(DURING_S)
    if code in (128 + signal.SIGINT, 128 + signal.SIGTERM):
        raise KeyboardInterrupt(f"a stop signal reached the test process while pipelines/{script} ran "
                                f"(exit {code}): {console[1][-300:]}")
    if beside and beside.is_alive():
        raise AssertionError(f"drive's during function did not return within {DURING_S} s of the run's end")
    if raised:
        raise raised[0]
    return Driven(code, *console)


@contextlib.contextmanager
def _as_found() -> Iterator[None]:
    """Signal handlers, cli's and run.ending's module state, MLflow's globals, loggers, warning
    filters and torch's threads restored after the block."""
    import mlflow  # noqa: F401 - imported now, so that its loggers are among those restored
    import ray  # noqa: F401
    import torch
    from mlflow.tracking import fluent
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from goldnas_ray.cli import outputs, process
    from goldnas_ray.run import ending

    for name in ("ray.tune.tune", "ray.train.v2.api.data_parallel_trainer"):  # cli.process.configure_process's
        logging.getLogger(name)
    handlers = {s: signal.getsignal(s) for s in SIGNALS}
    folder, stop, graceful = dict(outputs._FOLDER), dict(process._STOP), list(ending.GRACEFUL)
    uri, experiment = tracking_utils._tracking_uri, fluent._active_experiment_id
    runs = list(fluent._active_run_stack.get())
    loggers = {name: _logger_state(logging.getLogger(name)) for name in [None, *logging.root.manager.loggerDict]}
    filters, threads = list(warnings.filters), torch.get_num_threads()
    try:
        yield
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)
        outputs._FOLDER.clear(), outputs._FOLDER.update(folder)
        process._STOP.clear(), process._STOP.update(stop)
        ending.GRACEFUL[:] = graceful
        tracking_utils._tracking_uri, fluent._active_experiment_id = uri, experiment
        fluent._active_run_stack.get()[:] = runs
        for name, state in loggers.items():
            logger = logging.getLogger(name)
            logger.level, logger.propagate, logger.disabled = state[0], state[1], state[2]
            logger.filters[:], logger.handlers[:] = state[3], state[4]
        warnings.filters[:] = filters
        torch.set_num_threads(threads)


def _logger_state(logger) -> tuple:
    return (logger.level, getattr(logger, "propagate", True), getattr(logger, "disabled", False),
            list(logger.filters), list(logger.handlers))


@contextlib.contextmanager
def _environment(cluster: dict | None, extra: dict[str, str | None] | None) -> Iterator[None]:
    """os.environ as the subprocess would have had it, the test process's own again after:
    Ray's token loader and config are reset on both sides, since they cache what they read."""
    saved = dict(os.environ)
    if cluster is not None:
        os.environ.clear()
        os.environ.update(cluster["env"], RAY_ADDRESS=cluster["address"])
    for name, value in (extra or {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _reset_ray_auth()
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        _reset_ray_auth()


def _reset_ray_auth() -> None:
    """Ray caches the auth token (and its config the auth mode) once read; a driver joining a
    cluster with tokens after one that ran without them (or the reverse) must read them anew."""
    # a private helper of Ray's (its tests'), checked against ray==2.60.0 (requirements.txt)
    from ray._private.authentication_test_utils import reset_auth_token_state

    reset_auth_token_state()


@contextlib.contextmanager
def _cwd(folder: str | Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


@contextlib.contextmanager
def _argv(argv: list[str]) -> Iterator[None]:
    """sys.argv as the command line had it: the stop and resume lines name sys.argv[0]."""
    before = sys.argv
    sys.argv = argv
    try:
        yield
    finally:
        sys.argv = before


@contextlib.contextmanager
def _console() -> Iterator[list[str]]:
    """fd 1 and 2 (and sys.stdout, sys.stderr on them) into two files while the block runs;
    yields [stdout's fd, stderr's fd], replaced by their text when it ends."""
    files = [tempfile.TemporaryFile(), tempfile.TemporaryFile()]
    found = [f.fileno() for f in files]
    streams = (sys.stdout, sys.stderr)
    for stream in streams:
        with contextlib.suppress(Exception):
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    for fd, f in zip((1, 2), files):
        os.dup2(f.fileno(), fd)
    # never closed: a handler made while the driver ran keeps writing to fd 2, the real one after
    sys.stdout, sys.stderr = (io.TextIOWrapper(io.FileIO(fd, "w", closefd=False), encoding="utf-8",
                                               errors="replace", line_buffering=True, write_through=True)
                              for fd in (1, 2))
    try:
        yield found
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        sys.stdout, sys.stderr = streams
        for fd, old in zip((1, 2), saved):
            os.dup2(old, fd)
            os.close(old)
        for i, f in enumerate(files):
            f.seek(0)
            found[i] = f.read().decode("utf-8", "replace")
            f.close()


@contextlib.contextmanager
def joined(cluster: dict) -> Iterator[None]:
    """This process connected to the session's cluster, as a script of a test's own would be
    (``ray.init(address=...)``, the cluster's environment while connected), and left as
    :func:`drive` leaves it."""
    import ray

    with _as_found(), _environment(cluster, None):
        ray.init(address=cluster["address"])
        try:
            yield
        finally:
            _disconnect()


def _disconnect() -> None:
    """Ray shut down when the driver left it connected (a run that ended without a stop leaves
    a joined cluster connected)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
