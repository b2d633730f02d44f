"""The GPU check, rehearsed in miniature on CPU, so that it is known to work when a GPU is
lent: every part runs and passes its own checks, and the table names each part."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT.parent / "shared" / "peers" / "gold_nas_unofficial"
pytestmark = [pytest.mark.ray]


def test_gpu_check_rehearsal_runs_every_part(ray_cluster, tmp_path):
    parts = "steps,search,retrain" + (",peer" if PEER.is_dir() else "")
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
    steps = result["steps"]["rows"]
    # full, 60 % and 30 % of the FLOPs, then the two options switched on the full supernet
    assert [round(r["fraction"], 1) for r in steps] == [1.0, 0.6, 0.3, 1.0, 1.0]
    assert steps[2]["flops"] <= 0.3 * steps[0]["flops"] < steps[1]["flops"] <= 0.6 * steps[0]["flops"]
    assert result["steps"]["projection"]["hours"] > 0
    for name in parts.split(","):
        assert any(line.startswith(name) for line in proc.stdout.splitlines()), name
