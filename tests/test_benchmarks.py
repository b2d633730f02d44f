"""The GPU check, rehearsed in miniature on CPU, so that it is known to work when a GPU is
lent: every part runs and passes its own checks, and the table names each part."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT.parent / "shared" / "peers" / "gold_nas_unofficial"


@pytest.mark.ray
def test_gpu_check_rehearsal_runs_every_part(ray_cluster, tmp_path):
    parts = "sync,steps,loop,latency,search,retrain" + (",peer" if PEER.is_dir() else "")
    env = dict(ray_cluster["env"], RAY_ADDRESS=ray_cluster["address"])
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--smoke",
                           "--only", parts, "--json", str(tmp_path / "check.json"),
                           "--keep", str(tmp_path / "parts"), "--part-timeout", "240"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    logs = "".join(p.read_text()[-1500:] for p in (tmp_path / "parts").glob("*.log"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + logs
    result = json.loads((tmp_path / "check.json").read_text())["results"]
    assert set(result) == set(parts.split(","))
    assert "worker on cpu with gloo" in result["search"]["detail"]
    assert "two at once" in result["retrain"]["detail"]
    assert result["sync"]["detail"].count("no synchronising call") == 2  # the search's and the retrain's
    assert set(result["latency"]["batches"]) == {"1", "8"}  # a table and its check at both batches
    for b in result["latency"]["batches"].values():  # 6 networks from 5% to 95% of the operators kept
        assert 0 < b["measured_range_ms"][0] < b["measured_range_ms"][1]
    loop = [r["mflops"] for r in result["loop"]["steps"]]  # architectures at 100, 60 and 30% of the FLOPs
    assert len(loop) == 3 and loop[0] > loop[1] > loop[2]
    steps = result["steps"]["rows"]
    # full, 60 % and 30 % of the FLOPs, then the two options switched on the full supernet
    assert [round(r["fraction"], 1) for r in steps] == [1.0, 0.6, 0.3, 1.0, 1.0]
    assert steps[2]["flops"] <= 0.3 * steps[0]["flops"] < steps[1]["flops"] <= 0.6 * steps[0]["flops"]
    projection = result["steps"]["projection"]
    assert projection["epochs"] == 100  # the default --search-epochs
    for name in parts.split(","):
        assert any(line.startswith(name) for line in proc.stdout.splitlines()), name


def test_the_projection_of_a_whole_search_on_worked_numbers():
    """Step times of 0.2, 0.5 and 1.0 s at 30, 60 and 100% of a 1.6 GFLOPs supernet, batch 100
    (500 steps per CIFAR-10 epoch), 3 epochs falling linearly to the 480 MFLOPs stop (30%):
    epoch 0 at 100% (1.0 s), epoch 1 at 65% (0.5 + 0.05 / 0.4 x 0.5 = 0.5625 s), epoch 2 at 30%
    (0.2 s): 500 x 1.7625 = 881.25 s."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_check import project

    rows = [{"flops": 0.48e9, "step_s": 0.2}, {"flops": 0.96e9, "step_s": 0.5}, {"flops": 1.6e9, "step_s": 1.0}]
    assert project(rows, 1.6e9, 100, 3) == pytest.approx(
        {"epochs": 3, "stop_fraction": 0.3, "hours": 881.25 / 3600, "mean_epoch_s": 293.75,
         "epochs_in_one_hour": 12})
