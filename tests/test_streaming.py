"""The Ray Data path on the session's two-node cluster: Ray Train splits the training stream
(each rank's part disjoint from the others', together the training rows, each image decoded
once an epoch) and the test stream (each test image evaluated, and decoded, once an
evaluation), an epoch read again gives the same batches, held-out rows never reach a
consumer, and the ImageNet path streams end to end with 2 workers."""
import json

import pandas as pd
import pytest
from datafiles import write_imagefolder, write_parquet
from drivers import drive, joined

pytestmark = [pytest.mark.ray]

def _indexed_table(root, files=4, rows=25, group=10):
    """Parquet files of rows labelled with their index in the stream (0 .. files x rows - 1),
    ``group`` rows to a row group."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datafiles import image_bytes

    root.mkdir()
    blob = image_bytes(np.zeros((8, 8, 3), np.uint8), "PNG")
    for f in range(files):
        pq.write_table(pa.table({"image": [blob] * rows, "label": list(range(rows * f, rows * f + rows))}),
                       root / f"part-{f}.parquet", row_group_size=group)
    return root


def _split_run(ray_cluster, root, out, workers):
    """A Ray Train run of ``workers`` workers (half a CPU each) reading the stream of ``root``,
    made here on the cluster: each rank's training rows in order, the batches of epochs 0, 1 and
    0 again, and its test rows at two evaluations (out/rank-<r>.json); with each image's decodes."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from goldnas_ray.core.config import DataConfig
    from goldnas_ray.data.stream import StreamSource, inspect
    from goldnas_ray.orchestration import streaming

    out.mkdir()
    d = DataConfig(dataset="parquet", root=str(root), path="stream")
    info = inspect(d)

    def loop(config):  # made here, not importable: sent to the workers by value
        ctx = ray.train.get_context()
        rank, world = ctx.get_world_rank(), ctx.get_world_size()
        source = StreamSource(ray.train.get_dataset_shard("train"), info, buffer_batches=2,
                              eval_data=ray.train.get_dataset_shard("val"))
        found = {"rows": [int(v) for _, y in source.rows(world) for v in y]}
        for name, epoch in (("epoch0", 0), ("epoch1", 1), ("epoch0-again", 0)):
            found[name] = [yb.tolist() for _, yb in source.train_batches(8, 3, epoch, rank, world)]
        found["tested"] = [[int(v) for _, y in source.eval_batches(4, rank=rank, world_size=world) for v in y]
                           for _ in range(2)]  # two evaluations
        (out / f"rank-{rank}.json").write_text(json.dumps(found))

    with joined(ray_cluster), streaming.counted_decodes() as decoded:  # each image counted where it is decoded
        datasets = {"train": streaming.train_dataset(d, info), "val": streaming.dataset(d, info, "val")}
        TorchTrainer(loop, datasets=datasets, dataset_config=streaming.train_data_config(),
                     scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}),
                     run_config=ray.train.RunConfig(storage_path=str(out / "ray"), name="split")).fit()
        found = {"decoded": decoded(), "num_train": info.num_train}
    return found, [json.loads((out / f"rank-{r}.json").read_text()) for r in range(workers)]


TEST = set(range(9, 100, 10))  # the held-out rows of _indexed_table's table without splits
TRAINING = set(range(100)) - TEST


def _decodes(found) -> dict[int, int]:
    """Times each image (by its label: its row) was decoded in the run."""
    return {int(label): n for label, n in found["decoded"].items()}


def test_two_workers_split_the_stream_and_each_image_is_decoded_once_an_epoch(ray_cluster, tmp_path):
    """A Ray Train run of 2 workers reading a stream of 100 rows (4 files, row groups of 10; a
    table without splits, so rows 9, 19, .., 99 are the test split's): each worker receives 45
    training rows in file order, the two parts are disjoint and together the 90 training rows,
    and Ray Data decodes each training image once an epoch (counted in the decoding itself), not
    twice. Each worker's part is the same every epoch; the batches of an epoch read again are the
    same, and a new epoch shuffles them anew. The test stream is split too: at each of two
    evaluations the workers' parts are disjoint and together every test image, and each test
    image is decoded once an evaluation, not once per worker."""
    root = _indexed_table(tmp_path / "pq")
    found, ranks = _split_run(ray_cluster, root, tmp_path / "two", 2)
    assert found["num_train"] == 90
    # four epochs read, each training image decoded once in each; two evaluations, each test image once in each
    assert _decodes(found) == {row: 4 for row in TRAINING} | {row: 2 for row in TEST}
    parts = [r["rows"] for r in ranks]
    assert [len(p) for p in parts] == [45, 45] and all(p == sorted(p) for p in parts)  # file order
    assert not set(parts[0]) & set(parts[1]) and set(parts[0]) | set(parts[1]) == TRAINING
    for evaluation in range(2):
        tested = [r["tested"][evaluation] for r in ranks]
        assert sorted(tested[0] + tested[1]) == sorted(TEST)  # every test image once, by one worker
    for part, r in zip(parts, ranks):
        batches = r["epoch0"]
        assert len(batches) == 45 // 8 and {v for b in batches for v in b} <= set(part)
        assert r["epoch0-again"] == batches and r["epoch1"] != batches
        assert {v for b in r["epoch1"] for v in b} <= set(part)  # the same part, another order


def test_one_worker_reads_the_whole_training_stream_in_file_order(ray_cluster, tmp_path):
    """The same stream through a Ray Train run of 1 worker (as a one-worker trial reads it):
    every training row once, in file order, each decoded once an epoch; every test image at
    each evaluation, decoded once each time."""
    found, (only,) = _split_run(ray_cluster, _indexed_table(tmp_path / "pq"), tmp_path / "one", 1)
    assert only["rows"] == sorted(TRAINING)
    assert only["tested"] == [sorted(TEST)] * 2
    assert _decodes(found) == {row: 4 for row in TRAINING} | {row: 2 for row in TEST}


def test_the_imagenet_path_end_to_end_streamed_with_two_workers_per_trial(ray_cluster, tmp_path):
    """pipelines/pipeline.py with configs/imagenet.yaml (the ImageNet stem, random resized crops,
    DARTS's ImageNet recipe) on an image folder of 64-pixel images the test writes: the search
    streams through Ray Data with 2 workers, then every recorded architecture retrains streamed
    too, each trial a Ray Train run of 2 workers, on the two-node cluster. A CPU stays beside
    the workers for Ray Data to decode on; a cluster that cannot hold both is refused first."""
    root = write_imagefolder(tmp_path / "imagenet", classes=("ant", "bee", "cat"), per_class=24, size=(64, 80),
                             val_per_class=4)
    base = ["--config", "configs/imagenet.yaml", "--smoke-test", "--max-epochs", "1", "--no-mlflow", "--set",
            f"data.root={root}", "--set", "data.image_size=64", "--set", "data.subset=1.0", "--set", "data.path=stream",
            "--set", "data.batch_size=8", "--set", "retrain.batch_size=8", "--workers", "2"]
    held = drive("pipeline.py", *base, "--cpus-per-worker", "1", "--out", str(tmp_path / "held"), cluster=ray_cluster)
    # 2 workers of 1 CPU hold both CPUs: refused, or Ray Data could never decode
    assert held.returncode == 2 and "lower --cpus-per-worker" in held.stderr, held.stderr[-2000:]
    out = tmp_path / "p"
    proc = drive("pipeline.py", *base, "--cpus-per-worker", "0.5", "--workers-per-trial", "2",
                 "--out", str(out), cluster=ray_cluster)
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


@pytest.mark.s3
@pytest.mark.parametrize("layout", ["parquet-splits", "imagefolder", "parquet-one-table"])
def test_a_stream_from_the_bucket_never_trains_on_a_val_image(ray_cluster, s3, tmp_path, layout):
    """Streaming a set from the bucket: the training stream holds the training images only, the
    same ones the in-memory path trains on."""
    import hashlib

    import numpy as np
    from datafiles import pixel_digests, upload, write_imagefolder

    from goldnas_ray.core.config import DataConfig
    from goldnas_ray.data.from_config import load_data
    from goldnas_ray.data.stream import StreamSource, inspect
    from goldnas_ray.orchestration.streaming import train_dataset

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
    d = DataConfig(dataset=dataset, root=uri, path="stream")
    with joined(ray_cluster):
        info = inspect(d)
        source = StreamSource(train_dataset(d, info), info, buffer_batches=2)
        seen = [hashlib.sha256(np.ascontiguousarray(im).tobytes()).hexdigest()[:16]
                for px, _ in source.rows() for im in px]
    found = {"num_train": info.num_train, "seen": seen}
    memory = load_data(DataConfig(dataset=dataset, root=str(local)))
    train, val = pixel_digests(memory.x_train), pixel_digests(memory.x_test)
    assert found["num_train"] == len(memory.y_train)
    assert len(found["seen"]) == len(memory.y_train) == len(set(found["seen"]))
    assert set(found["seen"]) <= train and not set(found["seen"]) & val
