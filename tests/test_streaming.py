"""The Ray Data path on the session's two-node cluster: every rank's share of an epoch is
disjoint from the others', together they cover the set, an epoch read again gives the same
batches, and a smoke search streams with 2 workers."""
import json
import subprocess
import sys

import pytest
from conftest import ROOT
from datafiles import write_parquet

pytestmark = [pytest.mark.ray]

SHARDS = r"""
import hashlib, json, sys
import ray
from goldnas_ray.core.config import DataConfig
from goldnas_ray.data.stream import StreamSource, inspect
from goldnas_ray.orchestration.streaming import train_dataset

ray.init(address=sys.argv[2])
d = DataConfig(dataset="parquet", root=sys.argv[1], path="stream")
info = inspect(d)
source = StreamSource(train_dataset(d, info), info, buffer_batches=2)
out = {"num_train": info.num_train, "shape": list(info.input_shape)}
for epoch in (0, 1):
    for rank in (0, 1):
        for attempt in (0, 1):
            out[f"{epoch}-{rank}-{attempt}"] = [
                [hashlib.sha256(x.numpy().tobytes()).hexdigest()[:12] for x in xb] + [yb.tolist()]
                for xb, yb in source.train_batches(8, 0, epoch, rank, 2)]
print("RESULT " + json.dumps(out))
"""


def test_stream_shares_are_disjoint_complete_and_repeatable(ray_cluster, tmp_path):
    data = write_parquet(tmp_path / "train.parquet", n=100, size=(16, 16))
    proc = subprocess.run([sys.executable, "-c", SHARDS, str(data), ray_cluster["address"]], cwd=ROOT,
                          env=ray_cluster["env"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    # one table without splits: every 10th row is the test split's, 90 rows train
    assert found["num_train"] == 90 and found["shape"] == [3, 16, 16]
    for epoch in (0, 1):
        images = {}
        for rank in (0, 1):
            first, again = found[f"{epoch}-{rank}-0"], found[f"{epoch}-{rank}-1"]
            assert first == again  # the same epoch read again: the same batches, in order
            assert len(first) == 45 // 8  # 45 images per rank, whole batches of 8
            images[rank] = {h for batch in first for h in batch[:-1]}
        assert not images[0] & images[1]  # disjoint shares
        assert len(images[0]) == len(images[1]) == 40
    assert found["0-0-0"] != found["1-0-0"]  # a new epoch, a new order


def test_a_smoke_search_streams_with_two_workers(ray_cluster, tmp_path):
    root = tmp_path / "pq"
    write_parquet(root / "train" / "part-0.parquet", n=200, size=(16, 16))
    write_parquet(root / "val" / "part-0.parquet", n=40, size=(16, 16), seed=1)
    env = dict(ray_cluster["env"], RAY_ADDRESS=ray_cluster["address"])
    out = tmp_path / "s"
    held = subprocess.run([sys.executable, "pipelines/search.py", "--smoke-test", "--workers", "2", "--no-mlflow",
                           "--set", "data.dataset=parquet", "--set", f"data.root={root}", "--set", "data.path=stream",
                           "--out", str(tmp_path / "held")], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    # 2 workers of 1 CPU hold both CPUs: refused, or Ray Data could never decode
    assert held.returncode == 2 and "lower --cpus-per-worker" in held.stderr
    proc = subprocess.run([sys.executable, "pipelines/search.py", "--smoke-test", "--workers", "2", "--no-mlflow",
                           "--cpus-per-worker", "0.5",
                           "--set", "data.dataset=parquet", "--set", f"data.root={root}",
                           "--set", "data.path=stream", "--set", "data.batch_size=16", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "streaming 200 training images of parquet through Ray Data" in proc.stdout
    records = json.loads((out / "records.json").read_text())
    assert records["workers"] == 2 and records["finished"] and records["input_shape"] == [3, 16, 16]
    history = [json.loads(line) for line in (out / ".workers" / "consistency.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3] and all(h["ranks"][0] == h["ranks"][1] for h in history)
    assert (out / "history.parquet").is_file()

    # a retrain reads its data into memory: the streamed search's config is refused, with
    # what to set, before anything is written
    retrain = tmp_path / "rt"
    proc = subprocess.run([sys.executable, "pipelines/retrain.py", "--search-dir", str(out), "--smoke-test",
                           "--no-mlflow", "--out", str(retrain)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "set data.path=memory for the retrain" in proc.stderr
    assert not retrain.exists()


SEEN = r"""
import hashlib, json, sys
import numpy as np
import ray
from goldnas_ray.core.config import DataConfig
from goldnas_ray.data.stream import StreamSource, inspect
from goldnas_ray.orchestration.streaming import train_dataset

ray.init(address=sys.argv[2])
d = DataConfig(dataset=sys.argv[3], root=sys.argv[1], path="stream")
info = inspect(d)
source = StreamSource(train_dataset(d, info), info, buffer_batches=2)
seen = []
for rank in (0, 1):
    for px, _ in source.rows(0, 0, rank, 2):
        seen += [hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest()[:16] for im in px]
print("RESULT " + json.dumps({"num_train": info.num_train, "seen": seen}))
"""


@pytest.mark.s3
@pytest.mark.parametrize("layout", ["parquet-splits", "imagefolder", "parquet-one-table"])
def test_a_stream_from_the_bucket_never_trains_on_a_val_image(ray_cluster, s3, tmp_path, layout):
    """Streaming a set from the bucket: the training stream holds the training images only, the
    same ones the in-memory path trains on."""
    from datafiles import pixel_digests, upload, write_imagefolder

    from goldnas_ray.core.config import DataConfig
    from goldnas_ray.data.from_config import load_data

    local = tmp_path / "set"
    if layout == "parquet-splits":
        write_parquet(local / "train" / "part-0.parquet", n=60, size=(16, 16), seed=0)
        write_parquet(local / "val" / "part-0.parquet", n=20, size=(16, 16), seed=1)
    elif layout == "imagefolder":
        write_imagefolder(local, size=(16, 16), per_class=8)
    else:
        write_parquet(local / "all.parquet", n=50, size=(16, 16))
    dataset = "imagefolder" if layout == "imagefolder" else "parquet"
    uri = upload(local, s3["uri"](f"stream/{layout}"))
    proc = subprocess.run([sys.executable, "-c", SEEN, uri, ray_cluster["address"], dataset], cwd=ROOT,
                          env=ray_cluster["env"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    memory = load_data(DataConfig(dataset=dataset, root=str(local)))
    train, val = pixel_digests(memory.x_train), pixel_digests(memory.x_test)
    assert found["num_train"] == len(memory.y_train)
    assert len(found["seen"]) == 2 * (len(memory.y_train) // 2) == len(set(found["seen"]))
    assert set(found["seen"]) <= train and not set(found["seen"]) & val
