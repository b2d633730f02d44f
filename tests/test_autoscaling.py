"""Runs on a cluster that grows: Ray's fake multi-node autoscaling provider (tests/autoscaling.py),
a head of 0 CPUs and a worker type of 1 CPU from 0 to 2 nodes."""
import subprocess
import sys
import time

import pytest
from autoscaling import alive_workers, worker_nodes, autoscaling_cluster, wait_for  # noqa: F401
from conftest import BIN, ROOT

pytestmark = [pytest.mark.ray]


def test_a_plain_job_of_two_one_cpu_tasks_adds_two_nodes(autoscaling_cluster, tmp_path):
    cluster = autoscaling_cluster
    assert alive_workers(cluster) == []
    script = tmp_path / "two_tasks.py"
    script.write_text("import ray, time\nray.init()\n@ray.remote(num_cpus=1)\ndef where():\n"
                      "    time.sleep(2)\n    return ray.get_runtime_context().get_node_id()\n"
                      "print('nodes:', len(set(ray.get([where.remote(), where.remote()]))))\n")
    proc = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", cluster["dashboard"],
                           "--working-dir", str(tmp_path), "--", sys.executable, "two_tasks.py"],
                          capture_output=True, text=True, timeout=300, env=cluster["env"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "nodes: 2" in proc.stdout
    assert len(alive_workers(cluster)) == 2, worker_nodes(cluster)  # added for it (none before)
    assert wait_for(lambda: alive_workers(cluster) == [], timeout=120), "idle nodes were not removed"
