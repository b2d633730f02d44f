"""Pipelines on a real local Ray cluster of two nodes on 127.0.0.1, run in the test process
(tests/drivers.py): a request the cluster can never place, addresses that do not answer, a
local search resumed on Ray. The 2-worker search submitted as a job, tracked in MLflow and
with a worker killed, is in tests/test_storage.py (in the bucket)."""
import pandas as pd
import pytest
from conftest import free_port
from datafiles import frontier_summary
from drivers import drive

pytestmark = [pytest.mark.ray]


def test_more_workers_than_the_cluster_can_place_fails_before_training(ray_cluster, tmp_path):
    proc = drive("search.py", "--smoke-test", "--workers", "3", "--out", str(tmp_path / "x"), "--no-mlflow",
                 cluster=ray_cluster)
    assert proc.returncode == 2
    assert "could never all be placed" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_unreachable_addresses_fail_fast(tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    proc = drive("search.py", "--smoke-test", "--out", str(tmp_path / "a"), "--no-mlflow",
                 env={"RAY_ADDRESS": f"127.0.0.1:{free_port()}"})
    assert proc.returncode == 2 and "unreachable" in proc.stderr
    proc = drive("search.py", "--smoke-test", "--out", str(tmp_path / "b"), "--mlflow-uri",
                 f"http://127.0.0.1:{free_port()}")
    assert proc.returncode == 2 and "MLflow tracking server" in proc.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_resume_on_ray_continues_a_local_search_to_the_same_result(ray_cluster, tmp_path):
    """2 epochs in-process, interrupted; --resume on Ray (1 worker) must end exactly where an
    uninterrupted in-process run ends: same recorded architectures, same history."""
    from conftest import tiny_config
    from goldnas_ray.files.search_files import save_checkpoint, write_outputs
    from goldnas_ray.data import iterate_batches, load_digits
    from goldnas_ray.run.loop import run_local
    from goldnas_ray.core.search import GoldSearch

    cfg = tiny_config(lambda0=0.3, t0=1, max_epochs=5, flops_min_ratio=0.05)
    run_local(cfg, tmp_path / "straight", log=lambda _: None)

    data = load_digits()
    partial = GoldSearch(tiny_config(lambda0=0.3, t0=1, max_epochs=5, flops_min_ratio=0.05), data.input_shape, 10)
    for _ in range(2):
        partial.end_epoch(partial.train_epoch(iterate_batches(
            data.x_train, data.y_train, cfg.data.batch_size, cfg.seed, partial.epoch)))
    out = tmp_path / "resumed"
    out.mkdir()
    save_checkpoint(out, partial.state_dict())
    write_outputs(out, partial, {})

    proc = drive("search.py", "--resume", "--out", str(out), "--no-mlflow", "--cpus-per-worker", "1",
                 cluster=ray_cluster)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert frontier_summary(out) == frontier_summary(tmp_path / "straight")
    # Ray Train's run folder is named after the output folder, resumed or not: a later resume
    # finds it (and its checkpoints) again instead of starting a new one beside it
    assert [p.name for p in (out / "ray").iterdir() if p.is_dir()] == ["resumed"]
    a, b = pd.read_parquet(tmp_path / "straight" / "history.parquet"), pd.read_parquet(out / "history.parquet")
    assert list(a["epoch"]) == list(b["epoch"]) == [1, 2, 3, 4, 5]
    assert list(a["flops"]) == list(b["flops"])
    assert a["loss"].tolist() == pytest.approx(b["loss"].tolist(), rel=1e-5)
