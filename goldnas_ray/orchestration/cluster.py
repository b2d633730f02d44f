"""Connecting to Ray (what the cluster can hold, and the wait for it: ``placement``).

With an address (``--address``, RAY_ADDRESS, which ``ray job submit`` sets for its jobs) the
pipelines join that cluster; without one they start an embedded Ray on 127.0.0.1
(``address="local"``: never a cluster that Ray's address file happens to name).
"""
from __future__ import annotations

import os
import socket
import threading
from typing import Any, Callable, TypeVar

from goldnas_ray.files.store import job_runtime_env

T = TypeVar("T")


class ClusterError(RuntimeError):
    """Ray cannot be reached or cannot host the requested work."""


class DriverOnly:
    """Mixed into a Ray Tune callback, which Tune may pickle with its experiment state: the
    attributes named in ``DRIVER_ONLY`` belong to this driver process (its log function, a
    tracker's client) and are left out; unpickled, they are None, and ``log`` is print."""

    DRIVER_ONLY: tuple[str, ...] = ("log",)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | dict.fromkeys(self.DRIVER_ONLY)

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.log = self.log or print


def auth_hint() -> str:
    """What to set when joining a cluster failed and token authentication may be the cause
    (a cluster started where ~/.ray/auth_token exists requires tokens, Ray 2.60)."""
    if os.environ.get("RAY_AUTH_MODE") == "token":
        return ""
    has_token = os.environ.get("RAY_AUTH_TOKEN") or os.path.isfile(
        os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token"))
    where = ("" if has_token else " and put the head's token in ~/.ray/auth_token or RAY_AUTH_TOKEN "
             "(`ray get-auth-token` on the head prints it)")
    return (f". If the cluster uses token authentication, set RAY_AUTH_MODE=token in this "
            f"environment{where}")


def connect(address: str | None = None, log: Callable[[str], None] = print,
            num_cpus: int | None = None, runtime_env: dict[str, Any] | None = None) -> dict[str, float]:
    """Join ``address`` (or RAY_ADDRESS), else start an embedded local Ray; returns the
    cluster's resources. ``runtime_env`` is the job's (``cli.process.ray_runtime_env``):
    inside a ``ray job submit`` job, what the job's own runtime_env already sets is left to it.
    A pipeline that searches, then retrains, connects once."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_address(address)
    env = dict(runtime_env or {})
    try:
        if address:
            context = ray.init(address=address, log_to_driver=True, runtime_env=_beside_the_job(env))
        else:
            # the dashboard also serves the State API, which Ray Train's placement-group cleaner
            # (an actor of this job) polls; without it, it warns every few seconds. The cleaner
            # finds the API through RAY_API_SERVER_ADDRESS, else by looking for running Ray
            # instances, which fails when another cluster runs on this machine: name ours
            port = _free_port()
            env["env_vars"] = env.get("env_vars", {}) | {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
            context = ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=True,
                               dashboard_host="127.0.0.1", dashboard_port=port, num_cpus=num_cpus,
                               runtime_env=env or None)
    except Exception as exc:  # noqa: BLE001 - Ray raises many types here; all mean "cannot connect"
        if address:
            raise ClusterError(f"cannot join the Ray cluster at {address}: {exc}{auth_hint()}") from exc
        raise ClusterError(f"cannot start a local Ray instance: {exc}") from exc
    resources = ray.cluster_resources()
    where = f"joined the cluster at {address}" if address else "started an embedded local Ray on 127.0.0.1"
    dashboard = f"; dashboard at http://{context.dashboard_url}" if context.dashboard_url else ""
    log(f"Ray: {where}; {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs{dashboard}")
    return resources


def _beside_the_job(env: dict[str, Any]) -> dict[str, Any] | None:
    """``env`` without the fields and variables a ``ray job submit`` job's own runtime_env sets
    (Ray refuses to merge the two when they overlap: the job's own word wins)."""
    job = job_runtime_env()
    if not job or not env:
        return env or None
    kept = {k: v for k, v in env.items() if k != "env_vars" and k not in job}
    env_vars = {k: v for k, v in env.get("env_vars", {}).items() if k not in (job.get("env_vars") or {})}
    if env_vars:
        kept["env_vars"] = env_vars
    return kept or None


def _free_port(preferred: int = 8265) -> int:
    """``preferred`` (Ray's usual dashboard port) when it is free, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise ClusterError("no free port on 127.0.0.1 for the dashboard")


def check_address(address: str, timeout: float = 5.0) -> None:
    """A plain TCP connect to the GCS first: ray.init would otherwise retry for minutes."""
    if address == "auto":
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"Ray address {address!r} is not of the form host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ClusterError(f"Ray cluster at {address} is unreachable: {exc}") from exc


def interruptible(call: Callable[[], T]) -> T:
    """``call()`` (a Tuner's or a Ray Train trainer's ``fit``) so that a stop ends it through
    Ray's own graceful stop. In a pipeline's process (``cli.process.configure_process``:
    ``run.ending.GRACEFUL``) it runs on this, the main, thread, where Ctrl-C or SIGTERM asks
    Tune to stop (its experiment state saved one last time) or Ray Train to abort; once
    ``call`` has returned, the stop is raised here as KeyboardInterrupt (SIGINT) or
    SystemExit(143) (SIGTERM), and the caller ends its tracked runs KILLED. Elsewhere (the
    library called from a program of its own) ``call`` runs in a thread of its own, so that Ray
    installs no signal handler in the caller's process, and this thread waits for it: a stop
    reaches this thread at once, and what ``call`` left on storage (its checkpoints) is what
    ``--resume`` continues from. The outcome of ``call`` is returned or raised as ``call``
    would."""
    from goldnas_ray.run.ending import GRACEFUL

    if GRACEFUL and threading.current_thread() is threading.main_thread():
        return GRACEFUL[-1](call)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="goldnas-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(timeout=0.5)
    if "error" in box:
        raise box["error"]
    return box["value"]
