"""The Ray Data pipelines of a streamed image set: the rows a split's consumers get (no held-out
row, no image data.subset leaves out), read in file order -> ``map_batches`` decoding on CPU
workers, from a local path or any storage URI; and how Ray Train hands them to its workers.
Consumers (``goldnas_ray.data.stream.StreamSource``) train on what they receive.

A Parquet stream is read row group by row group (``ReadRows``), each row's index in the stream
known where it is read, so the rows nobody gets are dropped before they are decoded; an image
folder's list of files is cut the same way before any is read. With several workers Ray Train
splits the training stream (:func:`train_data_config`): Ray Data decodes each image once an
epoch, for the one worker that receives it."""
from __future__ import annotations

import contextlib

from goldnas_ray.core.config import DataConfig
from goldnas_ray.data.datasets import parquet_files, parquet_splits
from goldnas_ray.data.stream import Decode, ReadRows, StreamInfo, folder_items
from goldnas_ray.files.store import location, retrying

DECODE_CPUS = 1  # kept beside the workers of every streamed run (a search, a trial) for Ray Data


@contextlib.contextmanager
def _options_of_new_datasets():
    """What the pipelines made in the block run with: a Dataset keeps the DataContext current
    when it is made, so the process's own context is changed only for the block.
    preserve_order: rows in file order, and Ray Data's split deals them to the workers the same
    way every epoch (it ignores locality then, for that determinism)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        yield
    finally:
        ctx.execution_options.preserve_order = saved


def dataset(d: DataConfig, info: StreamInfo, split: str = "train"):
    """The Ray Data pipeline of ``split`` (train, or val for testing): the decoded rows its
    consumers get. A Parquet table without splits is read for either split, each keeping its
    rows (the training images of ``StreamInfo.train_rows``, the held-out ones of ``test_rows``)."""
    with _options_of_new_datasets():
        return _pipeline(d, info, split)


def _pipeline(d: DataConfig, info: StreamInfo, split: str):
    import pyarrow.fs
    import ray.data

    if d.dataset == "parquet":
        splits = parquet_splits(d.root)
        paths, fs = parquet_files(splits.get(split, splits.get("all")))  # the memory path's order
        fs = fs or pyarrow.fs.LocalFileSystem()
        read = ReadRows(info, split, [d.image_column, d.label_column], fs)
        ds = ray.data.from_items(row_groups(paths, fs)).map_batches(read, batch_format="numpy", batch_size=1)
        decode = Decode(d.image_column, d.label_column, d.image_size, info.stored_shape)
    else:
        paths, labels, _ = folder_items(d, split)
        kept = info.kept(split, 0, len(paths))
        ds = ray.data.from_items([{"path": p, "label": k, "image": b""}
                                  for p, k, keep in zip(paths, labels, kept) if keep])
        decode = Decode("image", "label", d.image_size, info.stored_shape, root=location(d.root).resolved().uri)
    return ds.map_batches(decode, batch_format="numpy", batch_size=256)


def row_groups(paths: list[str], fs) -> list[dict]:
    """Every row group of the Parquet files ``paths`` in stream order: its file, its index there
    and its first row's index in the stream (from the files' footers)."""
    import pyarrow.parquet as pq

    def footer(path: str):
        with fs.open_input_file(path) as f:
            return pq.ParquetFile(f).metadata

    items, first = [], 0
    for path in paths:
        meta = retrying(lambda path=path: footer(path), path)  # a store's transient faults retried
        for group in range(meta.num_row_groups):
            items.append({"path": path, "group": group, "first": first})
            first += meta.row_group(group).num_rows
    return items


def train_dataset(d: DataConfig, info: StreamInfo):
    return dataset(d, info, "train")


def train_data_config():
    """The ``dataset_config`` of a Ray Train run that streams: the training stream is split
    (``streaming_split(W, equal=True)``: each worker receives, and Ray Data decodes, its own
    ``num_train // W`` images; ``goldnas_ray.data.stream`` says which), the test split reaches every worker
    whole (each evaluates every W-th image). Ray Train replaces a dataset's execution options
    with its own when it hands the dataset to the workers (taken from the controller's
    DataContext, not the dataset's), so the order, and with it a split that is the same every
    epoch, is asked for here."""
    import ray.train
    from ray.data import ExecutionOptions

    return ray.train.DataConfig(datasets_to_split=["train"], execution_options=ExecutionOptions(preserve_order=True))
