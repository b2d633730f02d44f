"""Connecting to Ray, and what can be checked about a cluster before any work starts.

With an address (``--address``, RAY_ADDRESS, which ``ray job submit`` sets for its jobs) the
pipelines join that cluster; without one they start an embedded Ray on 127.0.0.1
(``address="local"``: never a cluster that Ray's address file happens to name).
"""
from __future__ import annotations

import os
import socket
from typing import Callable


class ClusterError(RuntimeError):
    """Ray cannot be reached or cannot host the requested work."""


AUTH_HINT = ("the cluster requires token authentication: set RAY_AUTH_MODE=token in this "
             "environment (the token is read from ~/.ray/auth_token, or RAY_AUTH_TOKEN; "
             "`ray get-auth-token` on the head prints it)")


def connect(address: str | None = None, log: Callable[[str], None] = print,
            num_cpus: int | None = None) -> dict[str, float]:
    """Join ``address`` (or RAY_ADDRESS), else start an embedded local Ray; returns the
    cluster's resources. A pipeline that searches, then retrains, connects once."""
    import ray

    if ray.is_initialized():
        return ray.cluster_resources()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_address(address)
    try:
        if address:
            context = ray.init(address=address, log_to_driver=True)
        else:
            # the dashboard also serves the State API, which Ray Train's placement-group
            # cleaner polls: without it, it warns every few seconds
            context = ray.init(address="local", _node_ip_address="127.0.0.1", include_dashboard=True,
                     dashboard_host="127.0.0.1", num_cpus=num_cpus)
    except Exception as exc:  # noqa: BLE001 - Ray raises many types here; all mean "cannot connect"
        text = str(exc)
        if "auth" in text.lower() or "unauthenticated" in text.lower():
            raise ClusterError(f"cannot join the Ray cluster at {address}: {AUTH_HINT}") from exc
        raise ClusterError(f"cannot connect to Ray at {address or 'a new local instance'}: {exc}") from exc
    resources = ray.cluster_resources()
    where = f"joined the cluster at {address}" if address else "started an embedded local Ray on 127.0.0.1"
    dashboard = f"; dashboard at http://{context.dashboard_url}" if context.dashboard_url else ""
    log(f"Ray: {where}; {resources.get('CPU', 0):g} CPUs, {resources.get('GPU', 0):g} GPUs{dashboard}")
    return resources


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


def check_capacity(resources: dict[str, float], workers: int, cpus: float, gpus: float) -> None:
    """The cluster as a whole can hold ``workers`` workers of (cpus, gpus)."""
    need_cpu, need_gpu = workers * cpus, workers * gpus
    if need_cpu > resources.get("CPU", 0) or need_gpu > resources.get("GPU", 0):
        raise ClusterError(
            f"{workers} workers x ({cpus:g} CPU, {gpus:g} GPU) need {need_cpu:g} CPUs and "
            f"{need_gpu:g} GPUs; the cluster has {resources.get('CPU', 0):g} CPUs and "
            f"{resources.get('GPU', 0):g} GPUs, so they could never all be placed")


def check_fits_on_a_node(cpus: float, gpus: float) -> None:
    """Some alive node can hold one trial of (cpus, gpus)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        biggest = max(nodes, key=lambda r: r.get("CPU", 0), default={})
        raise ClusterError(f"a trial needs {cpus:g} CPUs and {gpus:g} GPUs on one node; the largest "
                           f"node has {biggest.get('CPU', 0):g} CPUs and {biggest.get('GPU', 0):g} GPUs")
