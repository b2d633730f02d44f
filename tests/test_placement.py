"""What the cluster can ever hold (its node types), what is refused at once, how many trials run
at once, and the wait for resources (goldnas_ray/orchestration/placement.py). The wait runs on a
real embedded Ray whose only CPU another placement group holds; the autoscaling cluster's own
end-to-end tests are in test_autoscaling.py."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from goldnas_ray.orchestration.cluster import ClusterError
import yaml

from goldnas_ray.orchestration.placement import Ask, Cluster, NodeType, _of_config, _types_of, at_once, check
from goldnas_ray.retrain.plan import Resources

ROOT = Path(__file__).resolve().parents[1]


def fixed(**totals) -> Cluster:
    """A cluster of one node of ``totals``, without an autoscaler."""
    return Cluster((NodeType("n", {"CPU": 0.0, "GPU": 0.0} | totals, 1),), autoscaling=False)


# a head of 0 CPUs and up to 2 worker nodes of 1 CPU: cluster/aws-gpu.yaml's shape, with no node up
GROWS = Cluster((NodeType("head", {"CPU": 0, "GPU": 0}, 1), NodeType("cpu", {"CPU": 1, "GPU": 0}, 2)), autoscaling=True)
UNBOUNDED = Cluster((NodeType("cpu", {"CPU": 4, "GPU": 0}, None),), autoscaling=True)
UNKNOWN = Cluster(None, autoscaling=True)


@pytest.mark.parametrize("cluster, trial, streaming, count", [
    (fixed(CPU=2), Resources(1, 1, 0), False, 2),  # two one-CPU trials on the 2-CPU test cluster
    (fixed(CPU=2), Resources(1, 1, 0), True, 1),  # a CPU stays beside the trials for Ray Data
    (fixed(CPU=2), Resources(2, 0.5, 0), True, 1),  # 2 workers of half a CPU, and the decoding CPU
    (fixed(CPU=8), Resources(1, 1, 0), True, 4),  # each streamed trial keeps its own decoding CPU: 8 / (1 + 1)
    (fixed(CPU=8, GPU=2), Resources(1, 1, 0.5), False, 4),  # the GPUs bound it: 2 / 0.5
    (fixed(CPU=16, GPU=8), Resources(2, 4, 1), False, 2),  # 2 x 4 CPUs each: 16 / 8
    (GROWS, Resources(1, 1, 0), False, 2),  # the node types at their max counts, not the 0 CPUs up now
    (GROWS, Resources(2, 1, 0), False, 1),
    (UNBOUNDED, Resources(1, 1, 0), False, None),  # no bound: Tune queues every trial
    (UNKNOWN, Resources(1, 1, 0), False, None),
    # 6 CPUs in all, but a 2-CPU trial fits once on each 3-CPU node: packing, not the total, decides
    (Cluster((NodeType("a", {"CPU": 3}, 1), NodeType("b", {"CPU": 3}, 1)), False), Resources(1, 2, 0), False, 2),
    (Cluster((NodeType("gpu", {"CPU": 4, "GPU": 1}, 2),), True), Resources(1, 0, 1), False, 2),  # GPU-only workers
    (Cluster((NodeType("gpu", {"CPU": 4, "GPU": 1}, 2),), True), Resources(2, 0, 1), False, 1),
])
def test_how_many_trials_run_at_once_follows_the_node_types(cluster, trial, streaming, count):
    assert at_once(cluster, Ask(trial.workers, trial.cpus, trial.gpus, streaming)) == count


def test_what_can_never_fit_is_refused_and_what_can_grow_is_not():
    check(GROWS, Ask(2, 1, 0))  # 2 one-CPU workers: 2 nodes the autoscaler can add
    check(UNKNOWN, Ask(8, 64, 4))  # node types unknown: nothing refused, the run waits
    with pytest.raises(ClusterError, match=r"^a search needs 2 CPUs and 0 GPUs on one node; the largest node type the "
                                           r"cluster can have has 1 CPUs and 0 GPUs$"):
        check(GROWS, Ask(1, 2, 0))
    with pytest.raises(ClusterError, match=r"^a worker of a trial needs 1 CPUs and 1 GPUs on one node; the largest "
                                           r"node has 2 CPUs and 0 GPUs$"):
        check(fixed(CPU=2), Ask(2, 1, 1), "a trial")
    with pytest.raises(ClusterError, match=r"3 workers x \(1 CPU, 0 GPU\) need 3 CPUs and 0 GPUs; the cluster can grow "
                                           r"to 2 CPUs and 0 GPUs \(2 such workers fit on its nodes\), so they could "
                                           r"never all be placed"):
        check(GROWS, Ask(3, 1, 0))
    # 3 CPUs in all, but 2-CPU workers fit one per node: packing, not the total, decides
    with pytest.raises(ClusterError, match=r"\(1 such workers fit on its nodes\)"):
        check(Cluster((NodeType("a", {"CPU": 2}, 1), NodeType("b", {"CPU": 1}, 1)), False), Ask(2, 2, 0))
    with pytest.raises(ClusterError, match=r"a trial's 2 x 1 CPUs leave 0 of the cluster's 2: lower --cpus-per-worker "
                                           r"\(--cpus-per-trial with one worker\), or add a node"):
        check(fixed(CPU=2), Ask(2, 1, 0, streaming=True), "a trial")


def test_a_v1_autoscaling_configs_node_types():
    """The autoscaling config the head's monitor runs with (the shape of tests/autoscaling.py's
    and cluster/aws-gpu.yaml): the head type once, each worker type at its max_workers, capped by
    the cluster's; a type whose resources the provider fills in makes the types unknown."""
    config = {"max_workers": 3, "head_node_type": "head",
              "available_node_types": {"head": {"resources": {"CPU": 0}, "max_workers": 0},
                                       "cpu": {"resources": {"CPU": 1, "memory": 10**9}, "max_workers": 2},
                                       "gpu": {"resources": {"CPU": 8, "GPU": 1}, "max_workers": 4}}}
    types = {t.name: (t.resources, t.max_count) for t in _types_of(config)}
    assert types == {"head": ({"CPU": 0, "GPU": 0}, 1), "cpu": ({"CPU": 1, "GPU": 0}, 2),
                     "gpu": ({"CPU": 8, "GPU": 1}, 3)}
    config["available_node_types"]["gpu"]["resources"] = {}  # an instance type's CPUs, filled in by the provider
    assert _types_of(config) is None


def test_an_on_premises_launcher_config_is_a_fixed_cluster():
    """cluster/onprem.yaml as the head's monitor runs it: Ray's local provider writes its one
    node type with ``resources: {}`` (the nodes' own), so the config tells no sizes; the cluster
    is its alive nodes, and a worker larger than each is refused at once."""
    from ray.autoscaler._private.local.config import prepare_local

    config, _ = prepare_local(yaml.safe_load((ROOT / "cluster" / "onprem.yaml").read_text()))
    assert _types_of(config) is None  # as an autoscaler's config it would say nothing
    nodes = Cluster((NodeType("head", {"CPU": 8, "GPU": 1}, 1), NodeType("w", {"CPU": 8, "GPU": 1}, 1)), False)
    shape = _of_config(config, nodes)
    assert shape == nodes and at_once(shape, Ask(1, 4, 1)) == 2
    with pytest.raises(ClusterError, match=r"^a search needs 16 CPUs and 1 GPUs on one node; the largest node has 8"):
        check(shape, Ask(1, 16, 1))
    config["provider"]["type"] = "aws"  # an autoscaler whose types' sizes come from their instance types
    assert _of_config(config, nodes) == Cluster(None, autoscaling=True)


def run_search(args: list[str], tmp_path: Path, hold_cpus: float = 0, timeout: float = 300):
    """pipelines/search.py on an embedded Ray of 1 CPU started first in its process, of which a
    placement group holds ``hold_cpus`` (work of another kind that keeps the CPU busy)."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import runpy, sys
        import ray
        from ray.util.placement_group import placement_group
        from goldnas_ray.orchestration.cluster import connect
        connect(num_cpus=1)
        if {hold_cpus}:
            held = placement_group([{{"CPU": {hold_cpus}}}])
            ray.get(held.ready())
        sys.argv = ["pipelines/search.py", *{args!r}]
        runpy.run_path("pipelines/search.py", run_name="__main__")
    """))
    return subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("workers, cpus, gpus", [(0, 1.0, 0.0), (1, 0.0, 0.0), (1, 1.0, -1.0)])
def test_each_driver_refuses_a_worker_count_or_size_that_cannot_run_before_connecting(tmp_path, workers, cpus, gpus):
    """The search, the sweep and the retrain name the same impossible resources with one
    ConfigError, before Ray is started (no address given: an embedded Ray would start) and
    before anything is written."""
    from goldnas_ray.core.config import ConfigError
    from goldnas_ray.orchestration.retrain_driver import run_retrain
    from goldnas_ray.orchestration.search_driver import run_ray
    from goldnas_ray.orchestration.sweep_driver import run_sweep

    runs = {"search": lambda out: run_ray(None, out, workers=workers, cpus_per_worker=cpus, gpus_per_worker=gpus),
            "sweep": lambda out: run_sweep(out, grid={"search.lambda0": ["0.001"]}, seeds=[0], workers=workers,
                                           cpus_per_worker=cpus, gpus_per_worker=gpus),
            "retrain": lambda out: run_retrain(out, search_dir=tmp_path / "no-search", trial=Resources(workers, cpus, gpus))}
    for name, run in runs.items():
        with pytest.raises(ConfigError, match=r"^--workers[-a-z]*, --cpus-per-.*: a run needs at least one worker of "
                                              rf"> 0 CPUs and >= 0 GPUs, got {workers} worker\(s\) x \({cpus:g} CPU, "
                                              rf"{gpus:g} GPU\)"):
            run(tmp_path / name)
        assert not (tmp_path / name).exists(), name
    import ray
    assert not ray.is_initialized()


@pytest.mark.ray
def test_a_worker_larger_than_any_node_is_refused_before_any_work(tmp_path):
    out = tmp_path / "x"
    proc = run_search(["--smoke-test", "--no-mlflow", "--cpus-per-worker", "4", "--out", str(out)], tmp_path)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "error: a search needs 4 CPUs and 0 GPUs on one node; the largest node has 1 CPUs and 0 GPUs" in proc.stderr
    assert "placement:" not in proc.stdout and "search:" not in proc.stdout  # neither a wait nor Ray Train
    assert not out.exists()


@pytest.mark.ray
def test_a_wait_past_the_placement_timeout_names_what_never_came(tmp_path):
    out = tmp_path / "x"
    proc = run_search(["--smoke-test", "--no-mlflow", "--cpus-per-worker", "1", "--placement-timeout", "6",
                       "--out", str(out)], tmp_path, hold_cpus=1)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    waiting = [line for line in proc.stdout.splitlines() if line.startswith("placement: waiting")]
    assert waiting and "the search's workers: 1 worker(s) x (1 CPU, 0 GPU)" in waiting[0], proc.stdout
    assert "0 of 1 CPUs" in waiting[0] and "gives up after 6s" in waiting[0]
    assert len(waiting) == 1  # one line per 30 s at most
    assert ("error: gave up after 6s (--placement-timeout) waiting for the search's workers: 1 worker(s) x "
            "(1 CPU, 0 GPU) never placed" in proc.stderr)
    assert not out.exists()  # nothing written while it waited


@pytest.mark.ray
def test_a_wait_ends_when_the_resources_come_and_holds_nothing_after(tmp_path):
    """The CPU is freed once the wait has said it waits (as an autoscaler's node comes up): the
    wait then says that it was placed, and its placement group is gone after."""
    script = tmp_path / "wait.py"
    script.write_text(textwrap.dedent("""
        import ray
        from ray.util.placement_group import placement_group, placement_group_table, remove_placement_group
        from goldnas_ray.orchestration.cluster import connect
        from goldnas_ray.orchestration.placement import Ask, wait_until_placed
        connect(num_cpus=1)
        held = placement_group([{"CPU": 1}])
        ray.get(held.ready())
        def log(line):
            print(line, flush=True)
            if line.startswith("placement: waiting"):
                remove_placement_group(held)
        wait_until_placed(Ask(1, 1, 0), "the first trial", 120, log)
        states = [g["state"] for g in placement_group_table().values() if g["name"] == "goldnas-placement"]
        print("left:", [s for s in states if s != "REMOVED"])
    """))
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("placement:", "left:"))]
    assert lines[0].startswith("placement: waiting for the first trial: 1 worker(s) x (1 CPU, 0 GPU); the cluster "
                               "has 1 node(s), 0 of 1 CPUs and 0 of 0 GPUs free (gives up after 120s"), lines
    assert lines[1].startswith("placement: the first trial placed after") and lines[2] == "left: []", lines
