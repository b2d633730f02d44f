"""Image sets streamed instead of held: their metadata, and a worker's view of the stream.

:func:`inspect` reads only metadata and a sample (row count, classes, image shape, channel
statistics); :class:`StreamSource` turns a stream of decoded rows (a Ray Data iterator, built
by ``goldnas_ray.orchestration.streaming``) into the batches the search and the retrain
consume. Every consumer receives the whole stream in file order and keeps the rows of its own
share: the same (seed, epoch)-permutation shares the in-memory path uses, so every rank trains
the same number of batches. Inside its share a consumer shuffles through a bounded buffer with
a generator of (seed, epoch, rank): the batches of an epoch depend on nothing else, and a run
resumed at an epoch boundary sees the same ones. No consumer holds more than the buffer; each
reads (and discards most of) the whole set, the price of that determinism. Pure: no Ray here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from goldnas_ray.core.config import DATASETS, DataConfig
from goldnas_ray.data.batches import Augment, epoch_generator, prepare, shard_indices
from goldnas_ray.data.datasets import IMAGE_SUFFIXES, DataError, decode_image

def stream_info(d: DataConfig) -> "StreamInfo | None":
    """The streamed set's metadata when ``d`` streams: data.path=stream, or auto and the
    decoded training set larger than data.stream_above_gb; None for the in-memory path."""
    if d.path == "memory" or (d.path == "auto" and not DATASETS[d.dataset].streamable):
        return None
    info = inspect(d)
    size_gb = info.num_train * math.prod(info.stored_shape) / 1e9
    return info if d.path == "stream" or size_gb > d.stream_above_gb else None


@dataclass
class StreamInfo:
    """What the driver learns about a streamed set from its metadata and a sample."""

    name: str
    num_train: int
    num_classes: int
    stored_shape: tuple[int, int, int]
    model_size: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "StreamInfo":
        """Back from ``dataclasses.asdict`` after a trip through JSON (lists -> tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.stored_shape
        return (c, self.model_size, self.model_size) if self.model_size else (c, h, w)


def parquet_split(d: DataConfig, split: str = "train") -> str:
    """The Parquet data of ``split``: root/train or root/val, or root itself for training
    when it has no splits (a streamed retrain needs a val split)."""
    root = Path(d.root)
    if (root / split).exists():
        return str(root / split)
    if split == "train":
        return d.root
    raise DataError(f"streamed Parquet data needs {root / split} beside {root / 'train'} to test on")


def folder_items(d: DataConfig, split: str = "train") -> tuple[list[str], list[int], list[str]]:
    """Paths, labels and class names of an image folder's split."""
    train = Path(d.root) / split
    if not train.is_dir():
        raise DataError(f"image folder split {train} is missing (expected {split}/<class>/)")
    classes = sorted(p.name for p in train.iterdir() if p.is_dir())
    paths, labels = [], []
    for k, name in enumerate(classes):
        files = sorted(str(p) for p in (train / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"class folder {train / name} holds no JPEG or PNG image")
        paths += files
        labels += [k] * len(files)
    return paths, labels, classes


def inspect(d: DataConfig, sample: int = 256) -> StreamInfo:
    """Metadata of the training split, checked before any worker starts."""
    if not DATASETS[d.dataset].streamable:
        streamable = " or ".join(n for n, s in DATASETS.items() if s.streamable)
        raise DataError(f"data.path=stream reads {streamable} data, not {d.dataset}")
    if d.dataset == "parquet":
        import pyarrow.parquet as pq

        source = parquet_split(d)
        try:
            table = pq.read_table(source, columns=[d.label_column])
            schema = pq.read_schema(next(iter(sorted(Path(source).rglob("*.parquet")))) if Path(source).is_dir()
                                    else source)
        except (OSError, ValueError, StopIteration) as exc:
            raise DataError(f"cannot read Parquet data at {source}: {exc}") from exc
        if d.image_column not in schema.names:
            raise DataError(f"Parquet data at {source} has no column {d.image_column!r}")
        labels = table.column(d.label_column).to_pylist()
        blobs = pq.read_table(source, columns=[d.image_column]).slice(0, sample).column(d.image_column).to_pylist()
        where = [f"{source} row {i}" for i in range(len(blobs))]
    else:
        paths, labels, _ = folder_items(d)
        step = max(1, len(paths) // sample)
        where = paths[::step][:sample]
        blobs = [Path(p).read_bytes() for p in where]
    if any(not isinstance(v, int) or v < 0 for v in labels):
        raise DataError(f"{d.root}: labels must be integers >= 0")
    images = np.stack([decode_image(b, w, d.image_size) for b, w in zip(blobs, where)]).astype(np.float32) / 255
    shape = images.shape[1:]
    return StreamInfo(d.dataset, len(labels), max(labels) + 1, tuple(shape), d.image_size,
                      tuple(images.mean(axis=(0, 2, 3)).tolist()),
                      tuple(np.maximum(images.std(axis=(0, 2, 3)), 1e-3).tolist()))


class Decode:
    """map_batches: encoded images -> uint8 pixels of one size."""

    def __init__(self, image_column: str, label_column: str, image_size: int | None, shape: Sequence[int]):
        self.image_column, self.label_column = image_column, label_column
        self.image_size, self.shape = image_size, tuple(shape)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        blobs = batch[self.image_column]
        if "path" in batch:
            blobs = [Path(p).read_bytes() for p in batch["path"]]
        pixels = [decode_image(b, "streamed image", self.image_size) for b in blobs]
        for p in pixels:
            if p.shape != self.shape:
                raise DataError(f"a streamed image is {p.shape[1]}x{p.shape[2]}, the set's first ones "
                                f"{self.shape[1]}x{self.shape[2]}; set data.image_size")
        return {"pixels": np.stack(pixels), "label": np.asarray(batch[self.label_column], dtype=np.int64)}


class StreamSource:
    """A worker's view of a streamed set: the same interface as an in-memory Dataset where the
    search loop uses it (input_shape, num_classes, num_train, mean, std, train_batches)."""

    def __init__(self, shard: Any, info: StreamInfo, buffer_batches: int = 16, read_batch: int = 256,
                 eval_shard: Any = None):
        self.shard, self.info, self.eval_shard = shard, info, eval_shard
        self.name, self.num_classes, self.num_train = info.name, info.num_classes, info.num_train
        self.input_shape, self.mean, self.std = info.input_shape, info.mean, info.std
        self.buffer_batches, self.read_batch = buffer_batches, read_batch

    def rows(self, seed: int, epoch: int, rank: int, world_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(pixels, labels) chunks of this rank's share, in stream order."""
        mine = np.zeros(self.num_train, dtype=bool)
        mine[shard_indices(self.num_train, seed, epoch, rank, world_size).numpy()] = True
        seen = 0
        for batch in self.shard.iter_batches(batch_size=self.read_batch, batch_format="numpy", prefetch_batches=2):
            n = len(batch["label"])
            if seen + n > self.num_train:
                raise DataError(f"the stream holds more than the {self.num_train} rows its metadata counts")
            keep = mine[seen:seen + n]
            seen += n
            if keep.any():
                yield batch["pixels"][keep], batch["label"][keep]

    def train_batches(self, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1,
                      augment: Augment | None = None, device: torch.device | str | None = None
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        augment = augment or Augment()
        gen = epoch_generator(seed, epoch, rank)
        capacity = self.buffer_batches * batch_size
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        held = 0

        def emit(final: bool):
            x, y = np.concatenate(xs), np.concatenate(ys)
            order = torch.randperm(len(y), generator=gen).numpy()
            full = (len(y) // batch_size) * batch_size
            emit_n = full if final else full - batch_size * (self.buffer_batches // 2)
            out = [(x[order[i:i + batch_size]], y[order[i:i + batch_size]]) for i in range(0, emit_n, batch_size)]
            rest = order[emit_n:]
            return out, x[rest], y[rest]

        for px, lab in self.rows(seed, epoch, rank, world_size):
            xs.append(px)
            ys.append(lab)
            held += len(lab)
            if held >= capacity:
                out, rx, ry = emit(final=False)
                xs, ys, held = [rx], [ry], len(ry)
                yield from (self._prepare(bx, by, augment, gen, device) for bx, by in out)
        if held:
            out, _, _ = emit(final=True)
            yield from (self._prepare(bx, by, augment, gen, device) for bx, by in out)

    def eval_batches(self, batch_size: int, augment: Augment | None = None,
                     device: torch.device | str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every row of ``eval_shard`` (the test split) in order, prepared for evaluation."""
        if self.eval_shard is None:
            raise DataError("this stream has no test split")
        for batch in self.eval_shard.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2):
            x = prepare(torch.from_numpy(np.ascontiguousarray(batch["pixels"])), augment or Augment(), None, False,
                        self.mean, self.std, device)
            yield x, torch.from_numpy(batch["label"])

    def _prepare(self, x: np.ndarray, y: np.ndarray, augment: Augment, gen, device):
        yb = torch.from_numpy(y)
        xb = prepare(torch.from_numpy(np.ascontiguousarray(x)), augment, gen, True, self.mean, self.std, device)
        return xb, yb if device is None else yb.to(device)
