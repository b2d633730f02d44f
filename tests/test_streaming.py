"""The Ray Data path on the session's two-node cluster: every rank's share of an epoch is
disjoint from the others', together they cover the set, an epoch read again gives the same
batches, and a smoke search streams with 2 workers."""
import json
import subprocess
import sys

import pandas as pd
import pytest
from conftest import ROOT
from datafiles import write_imagefolder, write_parquet

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


ORDER = r"""
import json, sys
from pathlib import Path
import ray, ray.train
from ray.train.torch import TorchTrainer
from goldnas_ray.core.config import DataConfig
from goldnas_ray.data.stream import inspect
from goldnas_ray.orchestration.streaming import train_data_config, train_dataset

ray.init(address=sys.argv[2])
d = DataConfig(dataset="parquet", root=sys.argv[1], path="stream")
ds = train_dataset(d, inspect(d))
out = Path(sys.argv[3])

def loop(config):
    labels = []
    for batch in ray.train.get_dataset_shard("train").iter_batches(batch_size=16, batch_format="numpy"):
        labels += batch["label"].tolist()
    rank = ray.train.get_context().get_world_rank()
    (out / f"rank-{rank}.json").write_text(json.dumps(labels))

TorchTrainer(loop, datasets={"train": ds}, dataset_config=train_data_config(),
             scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 0.5}),
             run_config=ray.train.RunConfig(storage_path=str(out / "ray"), name="order")).fit()
"""


def test_every_train_worker_receives_the_whole_stream_in_file_order(ray_cluster, tmp_path):
    """What the shares rest on, through Ray Train itself (which sets a dataset's execution
    options when it hands it to the workers): 8 Parquet files, row i labelled i, and every
    worker reads rows 0..199 in that order."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datafiles import image_bytes

    root = tmp_path / "pq"
    root.mkdir()
    blob = image_bytes(np.zeros((8, 8, 3), np.uint8), "PNG")
    for f in range(8):
        pq.write_table(pa.table({"image": [blob] * 25, "label": list(range(25 * f, 25 * f + 25))}),
                       root / f"part-{f}.parquet")
    proc = subprocess.run([sys.executable, "-c", ORDER, str(root), ray_cluster["address"], str(tmp_path)],
                          cwd=ROOT, env=ray_cluster["env"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank-{rank}.json").read_text()) == list(range(200)), rank


def test_the_imagenet_path_end_to_end_streamed_with_two_workers_per_trial(ray_cluster, tmp_path):
    """pipelines/pipeline.py with configs/imagenet.yaml (the ImageNet stem, random resized crops,
    DARTS's ImageNet recipe) on an image folder of 64-pixel images the test writes: the search
    streams through Ray Data with 2 workers, then every recorded architecture retrains streamed
    too, each trial a Ray Train run of 2 workers, on the two-node cluster. A CPU stays beside
    the workers for Ray Data to decode on; a cluster that cannot hold both is refused first."""
    root = write_imagefolder(tmp_path / "imagenet", classes=("ant", "bee", "cat"), per_class=24, size=(64, 80),
                             val_per_class=4)
    env = dict(ray_cluster["env"], RAY_ADDRESS=ray_cluster["address"])
    base = [sys.executable, "pipelines/pipeline.py", "--config", "configs/imagenet.yaml", "--smoke-test",
            "--max-epochs", "1", "--no-mlflow", "--set", f"data.root={root}", "--set", "data.image_size=64",
            "--set", "data.subset=1.0", "--set", "data.path=stream", "--set", "data.batch_size=8",
            "--set", "retrain.batch_size=8", "--workers", "2"]
    held = subprocess.run(base + ["--cpus-per-worker", "1", "--out", str(tmp_path / "held")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    # 2 workers of 1 CPU hold both CPUs: refused, or Ray Data could never decode
    assert held.returncode == 2 and "lower --cpus-per-worker" in held.stderr, held.stderr[-2000:]
    out = tmp_path / "p"
    proc = subprocess.run(base + ["--cpus-per-worker", "0.5", "--workers-per-trial", "2", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "streaming 72 training images of imagefolder through Ray Data" in proc.stdout
    assert "(test split streamed)" in proc.stdout
    search = json.loads((out / "search" / "records.json").read_text())
    assert search["workers"] == 2 and search["finished"] and search["input_shape"] == [3, 64, 64]
    assert search["config"]["space"]["stem"] == "imagenet"
    history = [json.loads(line) for line in (out / "search" / ".workers" / "consistency.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1] and history[0]["ranks"][0] == history[0]["ranks"][1]
    manifest = json.loads((out / "retrain" / "retrain.json").read_text())
    assert manifest["trials"] == [f"{a['id']}-s0" for a in search["architectures"]]
    trials = pd.read_parquet(out / "retrain" / "trials.parquet")
    for key in manifest["trials"]:
        mine = trials[trials["key"] == key]
        assert list(mine["epoch"]) == [1, 2] and mine["train_loss"].gt(0).all(), key
        start = json.loads((out / "retrain" / ".trials" / f"{key}.jsonl").read_text().splitlines()[0])
        assert start["workers"] == 2 and len(start["ranks"]) == 2
    table = pd.read_csv(out / "retrain" / "frontier.csv")
    assert sorted(table["arch_id"]) == sorted(a["id"] for a in search["architectures"])


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
