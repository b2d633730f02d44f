"""A Ray cluster that grows when work asks for nodes, on this machine: Ray's fake multi-node
autoscaling provider (``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=FILE``,
provider ``type: fake_multinode``), in the shape of cluster/aws-gpu.yaml: a head of 0 CPUs and
one worker type of 1 CPU, ``min_workers: 0``, ``max_workers: 2``. The autoscaler (the head's
monitor process) starts a worker node as a raylet of its own on this machine when demand asks
for one, and removes it when idle.

The wheel lacks the provider's example.yaml, so :func:`fake_cluster_config` writes the whole
config. Everything is isolated from other clusters on the machine: every port of the head is
given (GCS, dashboard, its agent, metrics, worker ports, Ray client, runtime-env agent, the
autoscaler's and the dashboard's metrics), Ray's files go under a temp dir of its own, HOME is
the cluster's own with a token in ~/.ray/auth_token and ``RAY_AUTH_MODE=token`` (token
authentication on, as the README's cluster), and every process carries a mark of its own
(``GOLDNAS_TEST_SESSION=<session>-autoscaling``): the worker nodes are started by the head's
monitor, so they inherit it, and the end stops that mark only (tests/ray_nodes.py).

Use: ``from autoscaling import autoscaling_cluster`` in a test module (a module-scoped
fixture); it yields a dict like conftest's ``ray_cluster`` (address, dashboard, env, plus
``temp_dir`` and ``mark``). Jobs go to it with this module's :func:`submit`, which leaves out
``--working-dir`` (why: its docstring).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shlex
import signal
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import ray_nodes
from conftest import BIN, ROOT, free_port, wait_http
from ray._private.services import node_ip_address_from_perspective

WORKER_TYPE = "ray.worker.cpu"
FAKE_NODE_ID = "f" * 51  # + 5 digits: the provider's node ids (head 00000, then 00001, 00002, ...)


def fake_cluster_config(gcs_address: str, max_workers: int = 2, idle_minutes: float = 30) -> dict:
    """The autoscaler's config: provider fake_multinode at ``gcs_address``, the head type the
    provider knows (``ray.head.default``, 0 CPUs), one worker type of 1 CPU from 0 to
    ``max_workers``, a node removed once idle ``idle_minutes`` (longer than a module: the jobs
    after the first find their nodes up instead of each waiting for new ones); no commands (the
    provider starts raylets itself)."""
    return {
        "cluster_name": "goldnas-fake", "max_workers": max_workers, "upscaling_speed": 1.0,
        "idle_timeout_minutes": idle_minutes,
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address,
                     "disable_launch_config_check": True, "disable_node_updaters": True,
                     "use_node_id_as_ip": True},
        "auth": {"ssh_user": "ray"}, "docker": {},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            WORKER_TYPE: {"resources": {"CPU": 1, "object_store_memory": 150 * 2**20}, "node_config": {},
                          "min_workers": 0, "max_workers": max_workers},
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def _node_processes(env_value: str, mark: str) -> list[int]:
    """Pids of the marked processes whose environment holds ``env_value`` (a fake node's id)."""
    needle = env_value.encode()
    found = []
    for pid in ray_nodes.marked(mark):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if any(needle in item for item in f.read().split(b"\0")):
                    found.append(pid)
        except OSError:
            continue
    return found


def raylet_of(node_id: str, mark: str) -> int | None:
    """The pid of the raylet of fake node ``node_id`` (its hex id), None when gone."""
    for pid in _node_processes(f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node_id}", mark):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if cmd.endswith(b"/raylet"):
            return pid
    return None


def _kill(pids: set[int]) -> list[int]:
    """SIGKILL every pid of ``pids`` still there; returns them sorted."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return sorted(pids)


def kill_node(node_id: str, mark: str) -> list[int]:
    """SIGKILL fake node ``node_id`` as a lost machine goes: its raylet and every process under
    it (its workers and agents) at once, and the node's other processes (started with its id).
    Returns the pids killed."""
    raylet = raylet_of(node_id, mark)
    assert raylet, f"no raylet for node {node_id}"
    victims = {raylet, *_node_processes(f"RAY_OVERRIDE_NODE_ID_FOR_TESTING={node_id}", mark),
               *ray_nodes.descendants(raylet)}
    return _kill(victims)


def join_node(cluster, name: str) -> None:
    """Start a worker node of 1 CPU by hand (``ray start --address``), every port its own, Ray's
    files in a temp dir of its own under the cluster's: a replacement for a lost node, which
    Ray 2.60's v1 autoscaler with this provider never brings back itself (a fake node killed
    stays in the provider's list, shown as pending, so no new one is launched for it)."""
    temp = cluster["temp_dir"] / name
    ports = ["--dashboard-agent-listen-port", free_port(), "--dashboard-agent-grpc-port", free_port(),
             "--metrics-export-port", free_port(), "--runtime-env-agent-port", free_port(),
             "--node-manager-port", free_port(), "--object-manager-port", free_port(),
             "--min-worker-port", 0, "--max-worker-port", 0]
    subprocess.run([str(BIN / "ray"), "start", "--address", cluster["address"], "--node-ip-address", cluster["ip"],
                    "--num-cpus", "1", "--object-store-memory", str(150 * 2**20), "--temp-dir", str(temp),
                    "--disable-usage-stats", *map(str, ports)],
                   check=True, capture_output=True, env=dict(cluster["env"], GOLDNAS_JOINED_NODE=name), timeout=180)


def leave_node(cluster, name: str) -> list[int]:
    """SIGKILL the node :func:`join_node` started as ``name`` (its processes and every process
    under them): the autoscaler never removes a node it did not launch, so a test that joins one
    removes it, or the cluster would never scale back to no worker."""
    own = _node_processes(f"GOLDNAS_JOINED_NODE={name}", cluster["mark"])
    victims = {*own, *(d for pid in own for d in ray_nodes.descendants(pid))}
    return _kill(victims)


def worker_nodes(cluster) -> dict[str, bool]:
    """Every worker node the cluster has had (the autoscaler's launches: the head left out),
    node id -> alive, from the GCS."""
    code = ("import json, ray; ray.init(address='auto', logging_level='ERROR'); "
            "print('NODES', json.dumps({n['NodeID']: n['Alive'] for n in ray.nodes()}))")
    proc = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(cluster["env"], RAY_ADDRESS=cluster["address"]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    nodes = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("NODES "))[6:])
    return {node: alive for node, alive in nodes.items() if node != FAKE_NODE_ID + "00000"}


def alive_workers(cluster) -> list[str]:
    return sorted(node for node, alive in worker_nodes(cluster).items() if alive)


def nothing_held(cluster) -> bool:
    """No placement group of any job left alive and every CPU of the cluster free: what a
    finished job leaves (its driver, actors and groups gone), so that idle nodes can go."""
    code = ("import json, ray; ray.init(address='auto', logging_level='ERROR'); "
            "held = [g['name'] or i for i, g in ray.util.placement_group_table().items() if g['state'] != 'REMOVED']; "
            "print('HELD', json.dumps([held, ray.available_resources().get('CPU', 0), "
            "ray.cluster_resources().get('CPU', 0)]))")
    proc = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(cluster["env"], RAY_ADDRESS=cluster["address"]))
    assert proc.returncode == 0, proc.stderr[-2000:]
    held, free, total = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("HELD "))[5:])
    return held == [] and free == total


@contextlib.contextmanager
def holding(cluster, nodes: int):
    """A driver of its own holding 1 CPU on each of ``nodes`` worker nodes (a placement group,
    STRICT_SPREAD; the autoscaler adds the nodes when they are not there) from when they are
    placed until the block ends: the worker nodes full and the node count at its maximum, as
    another job's work would leave them."""
    code = ("import sys, ray; from ray.util.placement_group import placement_group; "
            "ray.init(address='auto', logging_level='ERROR'); "
            f"group = placement_group([{{'CPU': 1}}] * {nodes}, strategy='STRICT_SPREAD'); "
            "ray.get(group.ready(), timeout=600); print('HELD', flush=True); sys.stdin.read()")
    proc = subprocess.Popen([str(BIN / "python"), "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(cluster["env"], RAY_ADDRESS=cluster["address"]))
    try:
        if proc.stdout.readline().strip() != "HELD":  # nothing: it ended first
            proc.stdin.close()
            raise AssertionError(f"the holder ended first: {proc.stderr.read()[-3000:]}")
        yield
    finally:
        proc.stdin.close()  # its driver ends, the group with it
        proc.wait(timeout=120)


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory):
    mark = f"{os.environ.get(ray_nodes.MARKER, 'tests')}-autoscaling"
    root = tmp_path_factory.mktemp("autoscaling")
    home = root / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    temp_dir = Path(f"/tmp/{mark}")  # short: Ray puts unix sockets below it
    temp_dir.mkdir(exist_ok=True)
    gcs, dashboard = free_port(), free_port()
    # the provider starts its nodes on the address Ray finds for this machine (not 127.0.0.1):
    # the head takes the same one, or a Ray process on a worker node finds two clusters
    ip = node_ip_address_from_perspective()
    config = root / "autoscaling.yaml"
    config.write_text(json.dumps(fake_cluster_config(f"{ip}:{gcs}")))  # JSON is YAML
    base = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    env = base | {"HOME": str(home), "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
                  "RAY_TMPDIR": str(temp_dir), ray_nodes.MARKER: mark,
                  "AUTOSCALER_METRIC_PORT": str(free_port()), "DASHBOARD_METRIC_PORT": str(free_port())}
    ports = ["--port", gcs, "--dashboard-port", dashboard, "--dashboard-agent-listen-port", free_port(),
             "--dashboard-agent-grpc-port", free_port(), "--metrics-export-port", free_port(),
             "--ray-client-server-port", free_port(), "--runtime-env-agent-port", free_port(),
             "--node-manager-port", free_port(), "--object-manager-port", free_port(),
             "--min-worker-port", 0, "--max-worker-port", 0]
    cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address", ip, "--dashboard-host", "127.0.0.1",
           "--num-cpus", "0", "--object-store-memory", str(150 * 2**20), "--temp-dir", str(temp_dir),
           "--autoscaling-config", str(config), "--disable-usage-stats", *map(str, ports)]
    # the monitor looks every second, and replaces a node silent for 10 s (a lost one), not 30
    started = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                             env=dict(env, RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1",
                                      AUTOSCALER_HEARTBEAT_TIMEOUT_S="10"))
    cluster = {"address": f"{ip}:{gcs}", "ip": ip, "dashboard": f"http://127.0.0.1:{dashboard}", "env": env,
               "temp_dir": temp_dir, "mark": mark}
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        wait_http(cluster["dashboard"])
        yield cluster
    finally:
        ray_nodes.stop(mark, timeout=10)
        left = ray_nodes.marked(mark)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert left == [], ray_nodes.describe(left)


def submit(cluster, script, *args, timeout=900, job_id=None):
    """conftest's ``submit`` without ``--working-dir``: the job runs pipelines/<script> in the
    checkout (goldnas_ray installed in the venv, editable). Here every fake node shares the head's
    temp dir, and a node's runtime-env agent unpacks a job's working_dir over the copy the driver
    runs in (Ray overwrites it), which takes the driver's current directory away."""
    no_wait = ["--no-wait", "--submission-id", job_id] if job_id else []
    cmd = [str(BIN / "ray"), "job", "submit", "--address", cluster["dashboard"], *no_wait,
           "--", "sh", "-c", f"cd {shlex.quote(str(ROOT))} && exec {BIN / 'python'} pipelines/{script} {shlex.join(args)}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=cluster["env"])


def job_state(cluster, job_id: str) -> str:
    """The job's state as ``ray job status`` says it: succeeded, failed, stopped, running, ..."""
    proc = subprocess.run([str(BIN / "ray"), "job", "status", "--address", cluster["dashboard"], job_id],
                          capture_output=True, text=True, timeout=60, env=cluster["env"])
    said = proc.stdout + proc.stderr  # "Job 'ID' succeeded", or "Status for job 'ID': RUNNING"
    found = re.search(rf"(?:Job '{re.escape(job_id)}' |Status for job '{re.escape(job_id)}': )(\w+)", said)
    return found.group(1).lower() if found else said[-500:]


def job_logs(cluster, job_id: str) -> str:
    return subprocess.run([str(BIN / "ray"), "job", "logs", "--address", cluster["dashboard"], job_id],
                          capture_output=True, text=True, timeout=60, env=cluster["env"]).stdout


def wait_for(predicate, timeout: float, every: float = 0.5):
    """Poll ``predicate`` until it returns something true (returned) or ``timeout`` passes (None)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(every)
    return None
