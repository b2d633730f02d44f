"""Images per second of each data path alone, beside what the search step consumes.

    python benchmarks/data_throughput.py [--images 2048] [--size 32] [--device cpu]

Each path is timed on synthetic images written in the real formats to a temporary folder,
median of --repeats runs:
- memory: uint8 tensors in memory -> batch -> crop (padding 4) + flip + cutout 16 +
  normalisation on the device (the CIFAR path);
- decode: PNG bytes -> PIL -> uint8 array, one process (what loading an image folder or
  Parquet data into memory costs per core);
- stream: Ray Data read_parquet -> map_batches decode (CPU workers of an embedded Ray) ->
  one consumer's share -> augmented batches (the streaming path, world size 1);
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
    p.add_argument("--no-stream", action="store_true", help="skip the Ray Data path")
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
    if not args.no_stream:
        rows.append(("stream (Ray Data)", stream_rate(blobs, size, args)))

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


def stream_rate(blobs: list[bytes], size: int, args) -> float:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from goldnas_ray.orchestration.cluster import connect
    from goldnas_ray.data.stream import StreamSource, inspect
    from goldnas_ray.orchestration.streaming import train_dataset

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.parquet"
        reps = max(1, args.images // len(blobs))
        pq.write_table(pa.table({"image": blobs * reps, "label": [i % 10 for i in range(len(blobs) * reps)]}), path)
        connect(log=lambda _: None)
        d = DataConfig(dataset="parquet", root=str(path), path="stream")
        info = inspect(d)
        source = StreamSource(train_dataset(d, info), info)
        aug = Augment(crop_padding=4, flip=True, cutout=16)

        def run():
            for _ in source.train_batches(args.batch, 0, 0, augment=aug):
                pass
        rate = info.num_train / timed(run, args.repeats)
        ray.shutdown()
    return rate


if __name__ == "__main__":
    main()
