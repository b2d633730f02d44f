"""Image sets streamed instead of held: their metadata, and a consumer's view of the stream.

:func:`inspect` reads only metadata and a sample (row count, classes, image shape, channel
statistics); :class:`StreamSource` turns a stream of decoded rows (a Ray Data dataset or
iterator, built by ``goldnas_ray.orchestration.streaming``) into the batches the search
and the retrain consume. Splits are found as the in-memory loaders find them
(``datasets.parquet_splits``, ``datasets.folder_split``), through the storage layer: a table
without train/ and val/ streams its rows whole, and the rows a split's consumers do not get
(``StreamInfo.kept``: held-out rows, images data.subset leaves out) are dropped where they are
read (:class:`ReadRows`, or the folder's file list), before any is decoded, so no test row is
ever trained on, on either path, and none is decoded for nothing.

With W workers, Ray Train splits the training stream (``streaming_split(W, equal=True)``): each
worker receives, and Ray Data decodes, only its own part, ``num_train // W`` images; the
stream's last ``num_train % W`` are nobody's. Ray Data deals the stream's blocks in file order
to the worker that has received the fewest rows so far, and with ``preserve_order`` (which the
pipelines ask for) that deal depends only on the data's layout and W: a worker gets the same
images every epoch, and a run resumed at an epoch boundary sees the same batches. Inside its
part a consumer shuffles through a bounded buffer with a generator of (seed, epoch, rank). One
consumer (a one-worker trial, W = 1) gets the whole training part, exactly as before. A
streamed test split is split too, unequally (no test image dropped): each worker receives, and
Ray Data decodes, only its part, and evaluates all of it. What the
in-memory path does differently: its shares are a new (seed, epoch) permutation every epoch
(``batches.shard_indices``); a streamed worker's share is fixed and only its order changes
with the epoch. No consumer holds more than the buffer. Pure: no Ray here.
"""
from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from goldnas_ray.core.config import DATASETS, DataConfig
from goldnas_ray.data.batches import Augment, epoch_generator, eval_batches, prepare
from goldnas_ray.data.datasets import (DataError, channel_stats, check_labels, decode_image,
                                       folder_split, held_out, image_bytes_of, parquet_splits, read_parquet_table,
                                       subset_indices)
from goldnas_ray.files.store import Location, location, retrying


def stream_info(d: DataConfig) -> "StreamInfo | None":
    """The streamed set's metadata when ``d`` streams: data.path=stream, or auto and the
    decoded training set larger than data.stream_above_gb; None for the in-memory path."""
    if d.path == "memory" or (d.path == "auto" and not DATASETS[d.dataset].streamable):
        return None
    info = inspect(d)
    return info if streams(d, info.decoded_gb) else None


def streams(d: DataConfig, decoded_gb: float) -> bool:
    """The rule for a split of ``decoded_gb`` decoded gigabytes: data.path=stream streams it,
    auto streams it above data.stream_above_gb, memory never. The training split and the test
    split are each held or streamed by it."""
    return d.path == "stream" or (d.path == "auto" and decoded_gb > d.stream_above_gb)


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
    held_out: bool = False  # a table without splits: every consumer skips its held-out rows
    num_rows: int = 0       # rows of the training stream (training images + held-out rows)
    subset: str | None = None  # data.subset < 1: which training images are kept (packed bits)
    num_test: int = 0       # images of the test split

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "StreamInfo":
        """Back from ``dataclasses.asdict`` after a trip through JSON (lists -> tuples)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.stored_shape
        return (c, self.model_size, self.model_size) if self.model_size else (c, h, w)

    @property
    def decoded_gb(self) -> float:
        return self.num_train * math.prod(self.stored_shape) / 1e9

    @property
    def test_gb(self) -> float:
        return self.num_test * math.prod(self.stored_shape) / 1e9

    def train_rows(self) -> np.ndarray:
        """For every row of the training stream, its index among the training images kept, or
        -1 for a held-out row or one data.subset leaves out."""
        rows = max(self.num_rows, self.num_train)
        kept = ~held_out(rows) if self.held_out else np.ones(rows, dtype=bool)
        if self.subset is not None:
            chosen = np.unpackbits(np.frombuffer(base64.b64decode(self.subset), dtype=np.uint8))
            kept[kept] = chosen[:int(kept.sum())].astype(bool)
        index = np.cumsum(kept) - 1
        index[~kept] = -1
        return index

    def kept(self, split: str, start: int, n: int, train_index: np.ndarray | None = None) -> np.ndarray:
        """Which of rows start .. start + n - 1 of ``split``'s stream its consumers get: the
        training images kept (train; ``train_index``: :meth:`train_rows`, when the caller holds
        it), or the test images (val)."""
        if split != "train":
            return self.test_rows(start, n)
        index = self.train_rows() if train_index is None else train_index
        return index[start:start + n] >= 0

    def test_rows(self, start: int, n: int) -> np.ndarray:
        """Which of the test stream's rows start .. start + n - 1 are test images: the held-out
        ones of a table without splits, else all."""
        return held_out(n, start) if self.held_out else np.ones(n, dtype=bool)


def folder_items(d: DataConfig, split: str = "train") -> tuple[list[str], list[int], list[str]]:
    """Paths (relative to data.root), labels and class names of an image folder's split."""
    classes, files, labels = folder_split(d.root, split)
    root = location(d.root)
    rel = [f.path[len(root.path) + 1:] if f.is_remote else str(f.local.relative_to(root.local)) for f in files]
    return rel, labels, classes


def inspect(d: DataConfig, sample: int = 256) -> StreamInfo:
    """Metadata of the training split (and the test split's size), checked before any worker
    starts."""
    held = False
    if d.dataset == "parquet":
        splits = parquet_splits(d.root)
        source = splits.get("train", splits.get("all"))
        table = read_parquet_table(source, columns=[d.label_column])
        labels = check_labels(table.column(d.label_column).to_pylist(), f"Parquet data at {source}")
        rows = len(labels)
        if "all" in splits:
            held = True
            num_test = int(held_out(rows).sum())
            labels = labels[~held_out(rows)]
        else:
            num_test = read_parquet_table(splits["val"], columns=[d.label_column]).num_rows
        head = read_parquet_table(source, columns=[d.image_column], head=sample)
        blobs = [image_bytes_of(b) for b in head.column(d.image_column).to_pylist()]
        where = [f"{source} row {i}" for i in range(len(blobs))]
    else:
        classes, files, labels = folder_split(d.root, "train")
        labels = np.asarray(labels)
        rows = len(labels)
        num_test = len(folder_split(d.root, "val", classes)[1])
        step = max(1, len(files) // sample)
        picked = files[::step][:sample]
        where = [str(f) for f in picked]
        blobs = [f.read_bytes() for f in picked]
    images = np.stack([decode_image(b, w, d.image_size) for b, w in zip(blobs, where)])
    mean, std = channel_stats(images)
    num_classes = int(labels.max()) + 1
    subset, kept = None, len(labels)
    if d.subset < 1:
        chosen = np.zeros(len(labels), dtype=bool)
        # the images the in-memory path keeps (its loaders pick them with seed 0: the same
        # subset whatever the run's seed)
        chosen[subset_indices(torch.from_numpy(labels), num_classes, d.subset, 0).numpy()] = True
        subset, kept = base64.b64encode(np.packbits(chosen).tobytes()).decode(), int(chosen.sum())
    return StreamInfo(d.dataset, kept, num_classes, tuple(images.shape[1:]), d.image_size, mean, std, held, rows,
                      subset, num_test)


@dataclass
class EvalSplit:
    """A test split held in memory beside a streamed training split (uint8 images)."""

    x: torch.Tensor
    y: torch.Tensor


def load_eval_split(d: DataConfig, info: StreamInfo) -> EvalSplit:
    """The test split of a streamed set, decoded into memory (a small one: :func:`streams`)."""
    if d.dataset == "parquet":
        splits = parquet_splits(d.root)
        source = splits.get("val", splits.get("all"))
        table = read_parquet_table(source, columns=[d.image_column, d.label_column])
        rows = info.test_rows(0, table.num_rows)
        blobs = [b for b, keep in zip(table.column(d.image_column).to_pylist(), rows) if keep]
        labels = check_labels([v for v, keep in zip(table.column(d.label_column).to_pylist(), rows) if keep],
                              f"Parquet data at {source}")
        images = [decode_image(image_bytes_of(b), f"{source} test image {i}", d.image_size)
                  for i, b in enumerate(blobs)]
    else:
        classes = folder_split(d.root, "train")[0]
        _, files, labels = folder_split(d.root, "val", classes)
        images = [decode_image(f.read_bytes(), str(f), d.image_size) for f in files]
        labels = np.asarray(labels, dtype=np.int64)
    return EvalSplit(torch.from_numpy(np.stack(images)), torch.from_numpy(labels))


class Decode:
    """map_batches: encoded images -> uint8 pixels of one size. Image folder rows carry a path
    relative to ``root``, read through the storage layer."""

    def __init__(self, image_column: str, label_column: str, image_size: int | None, shape: Sequence[int],
                 root: str | None = None):
        self.image_column, self.label_column = image_column, label_column
        self.image_size, self.shape, self.root = image_size, tuple(shape), root
        self._root: Location | None = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "path" in batch:
            self._root = self._root or location(self.root)
            blobs = [(self._root / p).read_bytes() for p in batch["path"]]
        else:
            blobs = [image_bytes_of(b) for b in batch[self.image_column]]
        pixels = [decode_image(b, "streamed image", self.image_size) for b in blobs]
        for p in pixels:
            if p.shape != self.shape:
                raise DataError(f"a streamed image is {p.shape[1]}x{p.shape[2]}, the set's first ones "
                                f"{self.shape[1]}x{self.shape[2]}; set data.image_size")
        return {"pixels": np.stack(pixels), "label": np.asarray(batch[self.label_column], dtype=np.int64)}

    def __getstate__(self) -> dict[str, Any]:  # the storage handle is rebuilt where it runs
        return self.__dict__ | {"_root": None}


class ReadRows:
    """map_batches over the row groups of a Parquet stream (items ``path``, ``group``: its
    index in the file, ``first``: its first row's index in the stream): the rows of ``split``
    its consumers get (:meth:`StreamInfo.kept`), read in order a row group at a time, the
    others dropped before anything is decoded. ``fs``: the files' pyarrow filesystem."""

    def __init__(self, info: StreamInfo, split: str, columns: Sequence[str], fs: Any, read_batch: int = 256):
        self.info, self.split, self.columns, self.fs, self.read_batch = info, split, list(columns), fs, read_batch
        self._index: np.ndarray | None = None

    def __call__(self, items: dict[str, np.ndarray]) -> Iterator[Any]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.split == "train" and self._index is None:
            self._index = self.info.train_rows()
        for path, group, first in zip(items["path"], items["group"], items["first"]):
            def read(path=str(path), group=int(group)):
                with self.fs.open_input_file(path) as f:
                    return pq.ParquetFile(f).read_row_group(group, columns=self.columns)

            # a store's transient faults retried, as every read through the storage layer
            table, start = retrying(read, f"{path} (row group {group})"), int(first)
            for part in table.to_batches(max_chunksize=self.read_batch):
                keep = self.info.kept(self.split, start, part.num_rows, self._index)
                start += part.num_rows
                if keep.any():
                    yield pa.Table.from_batches([part]).filter(pa.array(keep))

    def __getstate__(self) -> dict[str, Any]:  # the index is rebuilt where it runs
        return self.__dict__ | {"_index": None}


class StreamSource:
    """A consumer's view of a streamed set: the same interface as an in-memory Dataset where the
    search loop and the retrain use it (input_shape, num_classes, num_train, mean, std,
    train_batches, eval_batches). ``shard``: the whole training stream (one consumer) or this
    worker's split of it (Ray Train's ``get_dataset_shard``)."""

    def __init__(self, shard: Any, info: StreamInfo, buffer_batches: int = 16, read_batch: int = 256,
                 eval_data: "Any | EvalSplit | None" = None):
        self.shard, self.info, self.eval_data = shard, info, eval_data
        self.name, self.num_classes, self.num_train = info.name, info.num_classes, info.num_train
        self.input_shape, self.mean, self.std = info.input_shape, info.mean, info.std
        self.buffer_batches, self.read_batch = buffer_batches, read_batch

    def rows(self, world_size: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(pixels, labels) chunks of this consumer's share, in stream order: every row of its
        shard, which must hold ``num_train // world_size`` (so every rank takes the same steps)."""
        expected, seen = self.num_train // world_size, 0
        for batch in self.shard.iter_batches(batch_size=self.read_batch, batch_format="numpy", prefetch_batches=2):
            seen += len(batch["label"])
            if seen > expected:
                raise DataError(f"a worker's share of the stream holds more than the {expected} images its "
                                f"metadata counts ({self.num_train} over {world_size} worker(s))")
            yield batch["pixels"], batch["label"]
        if seen != expected:  # every rank must take the same steps: a short stream is an error
            raise DataError(f"a worker's share of the stream held {seen} images, its metadata counts {expected} "
                            f"({self.num_train} over {world_size} worker(s)): the data changed since the run started")

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

        for px, lab in self.rows(world_size):
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
                     device: torch.device | str | None = None, rank: int = 0, world_size: int = 1
                     ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's share of the test split, prepared for evaluation: held (an
        :class:`EvalSplit`), every world_size-th test image; streamed (``eval_data`` a Ray Data
        pipeline or iterator), every image it holds, which is this rank's part of the split
        (Ray Train splits the test stream among the workers; one consumer gets it whole)."""
        if self.eval_data is None:
            raise DataError("this stream has no test split")
        if isinstance(self.eval_data, EvalSplit):
            yield from eval_batches(self.eval_data.x[rank::world_size], self.eval_data.y[rank::world_size],
                                    batch_size, augment, self.mean, self.std, device)
            return
        # the stream holds the test images only (StreamInfo.kept)
        for batch in self.eval_data.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2):
            x = prepare(torch.from_numpy(np.ascontiguousarray(batch["pixels"])), augment or Augment(), None, False,
                        self.mean, self.std, device)
            yield x, torch.from_numpy(batch["label"])

    def _prepare(self, x: np.ndarray, y: np.ndarray, augment: Augment, gen, device):
        yb = torch.from_numpy(y)
        xb = prepare(torch.from_numpy(np.ascontiguousarray(x)), augment, gen, True, self.mean, self.std, device)
        return xb, yb if device is None else yb.to(device, non_blocking=True)
