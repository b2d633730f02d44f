"""Images per second of each data path alone, beside what the search step consumes.

    python benchmarks/data_throughput.py [--images 2048] [--size 32] [--device cpu]

Each path is timed on synthetic images written in the real formats to a temporary folder,
median of --repeats runs:
- memory: uint8 tensors in memory -> batch -> crop (padding 4) + flip + cutout 16 +
  normalisation on the device (the CIFAR path);
- decode: PNG bytes -> PIL -> uint8 array, one process (what loading an image folder or
  Parquet data into memory costs per core);
- stream: Ray Data (Parquet row groups read, map_batches decode, CPU workers of an embedded
  Ray) -> one consumer -> augmented batches (the streaming path, world size 1);
- split: a Ray Train run streaming the same Parquet set for --epochs epochs with 1 and 2
  workers (half a CPU each): images Ray Data decodes per epoch (counted where they are decoded)
  and the epoch's wall time, medians over epochs; and, for comparison, 2 workers that each read
  the whole stream (how streamed runs read before the split: every worker decoded every image);
- step: images/s of one search step (forward, backward, both optimizers) of the supernet at
  the same image size, with --cells / --channels (defaults: a small 8-cell, 16-channel
  supernet; the paper's is 14 and 36).
The slowest of the three data paths against the step says whether data is the bottleneck.
"""
from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from goldnas_ray.core.config import Config, DataConfig
from goldnas_ray.core.search import GoldSearch
from goldnas_ray.data import Augment, iterate_batches
from goldnas_ray.data.datasets import decode_image


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def png_blobs(n: int, size: int) -> list[bytes]:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=96)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cells", type=int, default=8)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-stream", action="store_true", help="skip the Ray Data paths")
    p.add_argument("--epochs", type=int, default=5, help="epochs of each split run (default 5)")
    args = p.parse_args()
    n, size, device = args.images, args.size, torch.device(args.device)
    rows = []

    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
    y = torch.randint(0, 10, (n,))
    aug = Augment(crop_padding=4, flip=True, cutout=16)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)

    def memory():
        for xb, _ in iterate_batches(x, y, args.batch, 0, 0, augment=aug, mean=mean, std=std, device=device):
            pass
        if device.type == "cuda":
            torch.cuda.synchronize()
    rows.append(("memory (batch + augment)", n / timed(memory, args.repeats)))

    blobs = png_blobs(min(n, 512), size)
    rows.append(("decode (PNG, 1 process)", len(blobs) / timed(lambda: [decode_image(b, "x", None) for b in blobs],
                                                                args.repeats)))
    split = None
    if not args.no_stream:
        rows.append(("stream (Ray Data)", stream_rate(blobs, size, args)))
        split = split_runs(blobs, args)

    cfg = Config().override([f"space.num_cells={args.cells}", f"space.init_channels={args.channels}"])
    search = GoldSearch(cfg, (3, size, size), 10, device)
    xb, yb = torch.randn(args.batch, 3, size, size, device=device), torch.randint(0, 10, (args.batch,), device=device)
    search.model.train()

    def step():
        search.train_step(xb, yb)
        if device.type == "cuda":
            torch.cuda.synchronize()
    rows.append((f"search step ({args.cells} cells, C={args.channels})", args.batch / timed(step, args.repeats)))

    print(f"{n} images of 3x{size}x{size}, batch {args.batch}, {torch.get_num_threads()} threads, {device}; "
          f"medians of {args.repeats} runs")
    print(f"{'path':<36}{'images/s':>12}")
    for name, rate in rows:
        print(f"{name:<36}{rate:>12.0f}")
    data_rate = min(rate for name, rate in rows if not name.startswith("search"))
    print(f"slowest data path / search step: {data_rate / rows[-1][1]:.1f}x "
          f"({'data keeps up' if data_rate > rows[-1][1] else 'data is the bottleneck'})")
    if split:
        print(f"\nstreamed Ray Train run, {split[0][2]} training images, medians of {args.epochs} epochs")
        print(f"{'workers':<30}{'decoded/epoch':>14}{'epoch s':>10}{'images/s':>10}")
        for name, decoded, images, seconds in split:
            print(f"{name:<30}{decoded:>14.0f}{seconds:>10.2f}{images / seconds:>10.0f}")


def stream_rate(blobs: list[bytes], size: int, args) -> float:
    import ray

    from goldnas_ray.orchestration.cluster import connect
    from goldnas_ray.data.stream import StreamSource, inspect
    from goldnas_ray.orchestration.streaming import train_dataset

    with tempfile.TemporaryDirectory() as tmp:
        connect(log=lambda _: None)
        d = DataConfig(dataset="parquet", root=str(_parquet(blobs, args.images, tmp)), path="stream")
        info = inspect(d)
        source = StreamSource(train_dataset(d, info), info)
        aug = Augment(crop_padding=4, flip=True, cutout=16)

        def run():
            for _ in source.train_batches(args.batch, 0, 0, augment=aug):
                pass
        rate = info.num_train / timed(run, args.repeats)
        ray.shutdown()
    return rate


def _parquet(blobs: list[bytes], images: int, tmp: str) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(tmp) / "train.parquet"
    reps = max(1, images // len(blobs))
    pq.write_table(pa.table({"image": blobs * reps, "label": [i % 10 for i in range(len(blobs) * reps)]}), path,
                   row_group_size=256)
    return path


def split_runs(blobs: list[bytes], args) -> list[tuple[str, float, int, float]]:
    """(name, images decoded per epoch, training images, median epoch seconds) of a Ray Train
    run of 1 and of 2 workers streaming the set (split), and of 2 that each read it whole."""
    import json

    import ray
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchTrainer

    from goldnas_ray.data.stream import StreamSource, inspect
    from goldnas_ray.orchestration import streaming
    from goldnas_ray.orchestration.cluster import connect

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        d = DataConfig(dataset="parquet", root=str(_parquet(blobs, args.images, tmp)), path="stream")
        info = inspect(d)
        connect(log=lambda _: None)
        try:
            for name, workers, split in (("1 worker (split)", 1, True), ("2 workers (split)", 2, True),
                                         ("2 workers (each reads all)", 2, False)):
                times = Path(tmp) / name.replace(" ", "_")
                times.mkdir()

                def loop(config, times=times, split=split):
                    ctx = ray.train.get_context()
                    shard = ray.train.get_dataset_shard("train")
                    source = StreamSource(shard, info)
                    seconds = []
                    for _ in range(config["epochs"]):
                        start = time.perf_counter()
                        if split:
                            for _ in source.rows(ctx.get_world_size()):
                                pass
                        else:  # the stream whole, as every worker read it before the split
                            for _ in shard.iter_batches(batch_size=256, batch_format="numpy"):
                                pass
                        seconds.append(time.perf_counter() - start)
                    (times / f"{ctx.get_world_rank()}.json").write_text(json.dumps(seconds))

                config = streaming.train_data_config() if split else ray.train.DataConfig(
                    datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True))
                with streaming.counted_decodes() as decoded:  # counted where they are decoded
                    TorchTrainer(loop, train_loop_config={"epochs": args.epochs},
                                 datasets={"train": streaming.train_dataset(d, info)}, dataset_config=config,
                                 scaling_config=ray.train.ScalingConfig(num_workers=workers,
                                                                        resources_per_worker={"CPU": 0.5}),
                                 run_config=ray.train.RunConfig(storage_path=str(Path(tmp) / "ray"),
                                                                name=times.name)).fit()
                    per_epoch = sum(decoded().values()) / args.epochs
                ranks = [json.loads(f.read_text()) for f in sorted(times.glob("*.json"))]
                epoch_seconds = [max(r[e] for r in ranks) for e in range(args.epochs)]  # the slowest worker's
                out.append((name, per_epoch, info.num_train, statistics.median(epoch_seconds)))
        finally:
            ray.shutdown()
    return out


if __name__ == "__main__":
    main()
