"""Where a run's work can be placed: what the cluster can ever hold, what is refused at once,
the wait for what can come, and how the work asks Ray for it.

The cluster's *node types* are what it can ever have. On a cluster without an autoscaler (an
embedded Ray, a fixed cluster) they are its alive nodes, one of each. With an autoscaler they
are the autoscaler's node types, at their max counts: Ray's cluster config where the autoscaler
reports one (``ray._private.state.state.get_cluster_config()``: autoscaler v2, KubeRay), else
the ``available_node_types`` of the autoscaling config the head's monitor runs with (the v1
autoscaler: the cluster launcher, Ray's ``fake_multinode`` provider; the monitor's pid is in the
status it reports to the GCS, the one ``ray status`` shows, and its ``--autoscaling-config`` is
read where the driver runs on the head, as a ``ray job submit`` job's does; a launcher config
for machines one already has, provider ``local``, is a fixed cluster: its alive nodes). Where the types
cannot be learned on an autoscaling cluster (the driver off the head, a node type whose
resources the provider fills in from its instance type) nothing is refused: the run waits.

Refused at once, before any work: a worker (a one-worker trial) larger than every node type;
with known max counts, workers that all the node types together could never hold, and a
streamed run that leaves no CPU for Ray Data to decode on (:data:`DECODE_CPUS` beside each
search's or trial's workers). Everything else is asked for: before Ray Train's or Tune's fit the
driver places the first search's (trial's) bundles in a placement group, which the autoscaler
sees as demand and adds nodes for; a wait says so in a line every :data:`PROGRESS_S` at most, and
one that lasts past ``--placement-timeout`` ends with a ClusterError naming what never came. The
group is removed as soon as it is placed, so that the fit's own groups take its place and
nothing is held when the work ends (the autoscaler can scale back down). How many retrain
trials or sweep searches run at once follows the node types at their max counts (unknown: Tune
queues every trial on its placement group).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from goldnas_ray.orchestration.cluster import ClusterError
from goldnas_ray.files.store import Location
from goldnas_ray.orchestration.streaming import DECODE_CPUS, train_data_config
from goldnas_ray.retrain.plan import Resources

PLACEMENT_TIMEOUT = 900.0  # seconds a run waits for its first search's (trial's) resources (--placement-timeout)
PROGRESS_S = 30.0  # at most this long between two lines of a wait
FIRST_S = 2.0  # a placement that takes longer than this is said
DRIVER_MEMORY = 64 * 2**20  # what the Tune trial driving a multi-worker trial's Ray Train run holds


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict[str, float]
    max_count: int | None  # None: no bound known


@dataclass(frozen=True)
class Cluster:
    """The node types a cluster can have; ``types`` None: an autoscaler whose types Ray does not
    tell this driver."""
    types: tuple[NodeType, ...] | None
    autoscaling: bool

    def totals(self) -> dict[str, float] | None:
        """CPUs and GPUs of every node type at its max count; None when a bound is unknown."""
        if self.types is None or any(t.max_count is None for t in self.types):
            return None
        return {k: sum(t.resources.get(k, 0) * t.max_count for t in self.types) for k in ("CPU", "GPU")}

    def has(self) -> str:
        return "can grow to" if self.autoscaling else "has"


@dataclass(frozen=True)
class Ask:
    """What one search (or trial) holds: ``workers`` of (cpus, gpus), and ``spare`` CPUs beside
    them for Ray Data when its data streams."""
    workers: int
    cpus: float
    gpus: float
    streaming: bool = False

    @property
    def spare(self) -> float:
        return DECODE_CPUS if self.streaming else 0

    def bundles(self) -> list[dict[str, float]]:
        one = {"CPU": self.cpus} | ({"GPU": self.gpus} if self.gpus else {})
        return [dict(one) for _ in range(self.workers)] + ([{"CPU": float(self.spare)}] if self.spare else [])

    def describe(self) -> str:
        beside = f" and {self.spare:g} CPU for Ray Data" if self.spare else ""
        return f"{self.workers} worker(s) x ({self.cpus:g} CPU, {self.gpus:g} GPU){beside}"


def ask_of(trial: Resources, streaming: bool) -> Ask:
    return Ask(trial.workers, trial.cpus, trial.gpus, streaming)


# ---- what the cluster can ever hold ---------------------------------------------------------
def cluster_shape(embedded: bool = False) -> Cluster:
    """The node types of the connected cluster (see the module's docstring); ``embedded``: the
    Ray this process started, which has no autoscaler."""
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    fixed = Cluster(tuple(NodeType(n["NodeID"], _cpu_gpu(n["Resources"]), 1) for n in alive), autoscaling=False)
    if embedded:
        return fixed
    reported = _reported_config()
    if reported is not None:
        return reported
    status = _monitor_status()
    if status is None:  # no v1 monitor's report: an autoscaler v2 (or a monitor not yet reporting)
        return Cluster(None, autoscaling=True)
    found, config = _monitor_config(status.get("monitor_pid"))
    if found:
        return _of_config(config, fixed)
    # the monitor runs on another machine: a fixed cluster's mirrors each node as a type "node_<id>"
    types = (status.get("autoscaler_report") or {}).get("active_nodes") or {}
    ids = {n["NodeID"] for n in alive}
    if types and all(t.startswith("node_") and t[5:] in ids for t in types):
        return fixed
    return Cluster(None, autoscaling=True)


def _cpu_gpu(resources: dict[str, Any]) -> dict[str, float]:
    return {k: float(resources.get(k, 0)) for k in ("CPU", "GPU")}


def _reported_config() -> Cluster | None:
    """The node types of the cluster config an autoscaler reported to the GCS (v2, KubeRay)."""
    import ray._private.state

    try:
        config = ray._private.state.state.get_cluster_config()
    except Exception:  # noqa: BLE001 - an older GCS without the key: not reported
        return None
    if config is None or not config.node_group_configs:
        return None
    return Cluster(tuple(NodeType(g.name, _cpu_gpu(dict(g.resources)), None if g.max_count < 0 else g.max_count)
                         for g in config.node_group_configs), autoscaling=True)


def _monitor_status() -> dict[str, Any] | None:
    """The v1 monitor's last status report (what ``ray status`` reads), None without one."""
    from ray._private import ray_constants
    from ray.experimental.internal_kv import _internal_kv_get

    raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _monitor_config(pid: Any) -> tuple[bool, dict[str, Any] | None]:
    """(whether the monitor process ``pid`` of this cluster runs on this machine, the
    autoscaling config it runs with: None for a fixed cluster's monitor, which runs without)."""
    import psutil
    import ray
    import yaml

    port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[-1]
    try:
        monitor = psutil.Process(int(pid))
        cmd, cwd = monitor.cmdline(), monitor.cwd()
    except (psutil.Error, TypeError, ValueError):
        return False, None
    flags = dict(a.split("=", 1) for a in cmd if a.startswith("--") and "=" in a)
    if not any(a.endswith("monitor.py") for a in cmd) or not flags.get("--gcs-address", "").endswith(f":{port}"):
        return False, None
    if "--autoscaling-config" not in flags:
        return True, None
    try:
        with open(os.path.join(cwd, os.path.expanduser(flags["--autoscaling-config"]))) as f:
            return True, yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        return True, {}  # an autoscaler whose types cannot be read here


def _of_config(config: dict[str, Any] | None, fixed: Cluster) -> Cluster:
    """The cluster the head's monitor runs: ``fixed`` (its alive nodes) without an autoscaling
    config or with one for machines the user already has (provider ``local`` without a
    coordinator: Ray writes its one node type with ``resources: {}``, the nodes' own); else the
    config's node types."""
    provider = (config or {}).get("provider") or {}
    if config is None or (provider.get("type") == "local" and "coordinator_address" not in provider):
        return fixed
    return Cluster(_types_of(config), autoscaling=True)


def _types_of(config: dict[str, Any]) -> tuple[NodeType, ...] | None:
    """A v1 autoscaling config's node types; None when one has no CPU count of its own (the
    provider fills it in from the instance type) or there are none."""
    cap, head = config.get("max_workers"), config.get("head_node_type")
    types = []
    for name, spec in (config.get("available_node_types") or {}).items():
        resources = spec.get("resources") or {}
        if "CPU" not in resources:
            return None
        count = spec.get("max_workers", cap)
        if count is not None and cap is not None:
            count = min(count, cap)
        count = None if count is None else count + (name == head)
        types.append(NodeType(name, _cpu_gpu(resources), count))
    return tuple(types) or None


# ---- refused at once --------------------------------------------------------------------------
def check(cluster: Cluster, ask: Ask, whose: str = "a search") -> None:
    """Refuse what ``cluster`` could never hold of ``whose`` ask: a worker larger than every node
    type; with known max counts, all its workers together, or its workers with the CPU a stream
    keeps beside them."""
    if cluster.types is None:
        return
    if not any(_per_node(t, ask) for t in cluster.types):
        short = ("GPU", "CPU") if ask.gpus > 0 else ("CPU", "GPU")
        biggest = max(cluster.types, key=lambda t: tuple(t.resources.get(k, 0) for k in short))
        kind = "node type the cluster can have" if cluster.autoscaling else "node"
        unit = whose if ask.workers == 1 else f"a worker of {whose}"
        raise ClusterError(f"{unit} needs {ask.cpus:g} CPUs and {ask.gpus:g} GPUs on one node; the largest {kind} "
                           f"has {biggest.resources.get('CPU', 0):g} CPUs and {biggest.resources.get('GPU', 0):g} GPUs")
    totals = cluster.totals()
    if totals is None:
        return
    held = sum(_per_node(t, ask) * t.max_count for t in cluster.types)
    need_cpu, need_gpu = ask.workers * ask.cpus, ask.workers * ask.gpus
    if held < ask.workers:
        raise ClusterError(
            f"{ask.workers} workers x ({ask.cpus:g} CPU, {ask.gpus:g} GPU) need {need_cpu:g} CPUs and {need_gpu:g} "
            f"GPUs; the cluster {cluster.has()} {totals['CPU']:g} CPUs and {totals['GPU']:g} GPUs "
            f"({held} such workers fit on its nodes), so they could never all be placed")
    check_spare(totals["CPU"], ask, whose)


def check_spare(cpus: float, ask: Ask, whose: str) -> None:
    """A streamed search or trial keeps DECODE_CPUS beside its workers: Ray Data decodes in tasks
    of their own, and with every CPU held by the workers none would ever run."""
    if ask.workers * ask.cpus + ask.spare > cpus:
        raise ClusterError(f"streaming needs {ask.spare:g} CPU beside {whose}'s workers for Ray Data to decode on; "
                           f"{whose}'s {ask.workers} x {ask.cpus:g} CPUs leave {cpus - ask.workers * ask.cpus:g} "
                           f"of the cluster's {cpus:g}: lower --cpus-per-worker"
                           f"{' (--cpus-per-trial with one worker)' if whose == 'a trial' else ''}, or add a node")


def _per_node(t: NodeType, ask: Ask) -> int:
    """How many of ``ask``'s workers one node of type ``t`` holds."""
    counts = [t.resources.get(k, 0) // need for k, need in (("CPU", ask.cpus), ("GPU", ask.gpus)) if need > 0]
    return int(min(counts)) if counts else ask.workers


# ---- how many at once -------------------------------------------------------------------------
def at_once(cluster: Cluster, ask: Ask) -> int | None:
    """How many searches (trials) of ``ask`` the cluster can hold at once once grown (Tune's
    max_concurrent_trials): the workers its nodes hold (each node type's, at its max count) over
    each one's workers, at most its CPUs over each one's workers' and spare CPUs and its GPUs
    over each one's GPUs; None when the max counts are unknown (Tune queues every trial) or the
    ask holds nothing."""
    totals = cluster.totals()
    need = {"CPU": ask.workers * ask.cpus + ask.spare, "GPU": ask.workers * ask.gpus}
    if totals is None or not any(need.values()):
        return None
    count = sum(_per_node(t, ask) * t.max_count for t in cluster.types) // ask.workers
    count = min([count] + [int(totals[k] // v) for k, v in need.items() if v > 0])
    return max(1, count)


def at_once_line(count: int | None) -> str:
    return f"up to {count} at once" if count else "as many at once as the cluster grows to hold"


def trial_resources(trial: Resources, runs_train: bool):
    """The placement group factory of a Tune trial: one that trains (or searches) in its own
    process holds its CPUs and GPUs; one that drives a Ray Train run holds only memory (its run's
    workers hold the rest, or 1-CPU nodes could never fit them)."""
    import ray.tune

    if runs_train:
        return ray.tune.PlacementGroupFactory([{"memory": DRIVER_MEMORY}])
    return ray.tune.PlacementGroupFactory([{"CPU": trial.cpus} | ({"GPU": trial.gpus} if trial.gpus else {})])


def torch_trainer(loop: Callable[..., None], config: dict[str, Any], workers: Resources, *, name: str,
                  storage: Location, max_failures: int, keep: int, datasets: dict[str, Any] | None = None,
                  callbacks: list[Any] | None = None, verbose: bool = False):
    """The TorchTrainer of a search or of a multi-worker trial: ``workers`` (count, CPUs and GPUs
    each; NCCL on GPUs, else gloo), its run ``name`` under ``storage`` (a resumed or retried run
    finds its checkpoints by it), keeping the last ``keep`` checkpoints, restarting its worker
    group ``max_failures`` times. A streamed set's splits are split among the workers
    (``train_data_config``): each decodes only its own parts. INFO logs a line per report and
    per checkpoint; ``verbose`` shows them."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    per_worker = {"CPU": workers.cpus} | ({"GPU": workers.gpus} if workers.use_gpu else {})
    storage_path, storage_fs = storage.arrow()
    return TorchTrainer(
        loop, train_loop_config=config, datasets=datasets,
        dataset_config=train_data_config() if datasets else None,
        scaling_config=ray.train.ScalingConfig(num_workers=workers.workers, use_gpu=workers.use_gpu,
                                               resources_per_worker=per_worker),
        torch_config=TorchConfig(backend="nccl" if workers.use_gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=name, storage_path=storage_path, storage_filesystem=storage_fs,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=keep),
            logging_config=ray.train.LoggingConfig(log_level="INFO" if verbose else "WARNING"),
            callbacks=callbacks))


# ---- the wait ---------------------------------------------------------------------------------
def wait_until_placed(ask: Ask, what: str, timeout: float | None, log: Callable[[str], None] = print) -> None:
    """Place ``ask``'s bundles (the first search's or trial's) in a placement group, which the
    autoscaler sees as demand, and return once placed, the group removed. Not placed within
    :data:`FIRST_S`: a line says what it waits for and what the cluster has, again every
    :data:`PROGRESS_S`; past ``timeout`` seconds a ClusterError names what never came.
    ``timeout`` None: no wait here (a search inside a sweep's trial: the sweep waited; a sweep or
    resumed retrain with nothing left to run)."""
    if timeout is None:
        return
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    started, said, group = time.monotonic(), None, None
    try:
        group = placement_group(ask.bundles(), strategy="PACK", name="goldnas-placement")
        ready = group.ready()
        while True:
            waited = time.monotonic() - started
            if ray.wait([ready], timeout=max(0.0, min(1.0, timeout - waited)))[0]:
                if said is not None:
                    log(f"placement: {what} placed after {waited:.0f}s; starting")
                return
            waited = time.monotonic() - started
            if waited >= timeout:
                raise ClusterError(f"gave up after {timeout:g}s (--placement-timeout) waiting for {what}: "
                                   f"{ask.describe()} never placed; {_now()}")
            if waited >= FIRST_S and (said is None or waited - said >= PROGRESS_S):
                said = waited
                log(f"placement: waiting for {what}: {ask.describe()}; {_now()} "
                    f"(gives up after {timeout:g}s, --placement-timeout)")
    finally:
        if group is not None:
            remove_placement_group(group)


def _now() -> str:
    """What the cluster has free now, and the nodes the autoscaler is starting."""
    import ray

    free, total = ray.available_resources(), ray.cluster_resources()
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    line = (f"the cluster has {nodes} node(s), {free.get('CPU', 0):g} of {total.get('CPU', 0):g} CPUs and "
            f"{free.get('GPU', 0):g} of {total.get('GPU', 0):g} GPUs free")
    report = (_monitor_status() or {}).get("autoscaler_report") or {}
    starting = sum((report.get("pending_launches") or {}).values()) + len(report.get("pending_nodes") or [])
    return line + (f", {starting} node(s) starting" if starting else "")


def place_first(ask: Ask, whose: str, embedded: bool, timeout: float | None, log: Callable[[str], None]) -> int | None:
    """Before a retrain's trials (a sweep's searches), each ``ask`` (``whose``: "a trial", "a
    search"): refuse what the cluster could never hold, wait until it places the first one,
    and return how many run at once once it has grown (:func:`at_once`)."""
    shape = cluster_shape(embedded)
    check(shape, ask, whose)
    wait_until_placed(ask, f"the first {whose.removeprefix('a ')}", timeout, log)
    return at_once(shape, ask)
