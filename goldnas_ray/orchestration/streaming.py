"""The Ray Data pipelines of a streamed image set: read (``read_parquet``, or the files of an
image folder) -> ``map_batches`` decoding on CPU workers, file order preserved, from a local
path or any storage URI. Consumers (``goldnas_ray.data.stream.StreamSource``) take their own
share of it."""
from __future__ import annotations

import contextlib

from goldnas_ray.core.config import DataConfig
from goldnas_ray.data.datasets import parquet_files, parquet_splits
from goldnas_ray.data.stream import Decode, StreamInfo, folder_items
from goldnas_ray.files.store import location


@contextlib.contextmanager
def _options_of_new_datasets():
    """What the pipelines made in the block run with: a Dataset keeps the DataContext current
    when it is made, so the process's own context is changed only for the block.

    - preserve_order: every consumer counts rows in file order (its share, the held-out rows);
    - use_datasource_v2 off: Ray 2.60's new Parquet reader provisions 32 footer-reader actors
      for every read, which on a small cluster whose CPUs the training workers hold took 20-25 s
      per epoch for 200 images (measured on the 2-CPU test cluster), against 0.1 s read by the
      classic reader."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.use_datasource_v2)
    ctx.execution_options.preserve_order, ctx.use_datasource_v2 = True, False
    try:
        yield
    finally:
        ctx.execution_options.preserve_order, ctx.use_datasource_v2 = saved


def dataset(d: DataConfig, info: StreamInfo, split: str = "train"):
    """The Ray Data pipeline of ``split`` (train, or val for testing). A Parquet table without
    splits streams whole for either split: its consumers keep their rows (the training images of
    ``StreamInfo.train_rows``, the held-out ones of ``test_rows``)."""
    with _options_of_new_datasets():
        return _pipeline(d, info, split)


def _pipeline(d: DataConfig, info: StreamInfo, split: str):
    import ray.data

    if d.dataset == "parquet":
        splits = parquet_splits(d.root)
        paths, fs = parquet_files(splits.get(split, splits.get("all")))  # the memory path's order
        ds = ray.data.read_parquet(paths, filesystem=fs, columns=[d.image_column, d.label_column])
        decode = Decode(d.image_column, d.label_column, d.image_size, info.stored_shape)
    else:
        paths, labels, _ = folder_items(d, split)
        ds = ray.data.from_items([{"path": p, "label": k, "image": b""} for p, k in zip(paths, labels)])
        decode = Decode("image", "label", d.image_size, info.stored_shape, root=location(d.root).resolved().uri)
    return ds.map_batches(decode, batch_format="numpy", batch_size=256)


def train_dataset(d: DataConfig, info: StreamInfo):
    return dataset(d, info, "train")


def train_data_config():
    """The ``dataset_config`` of a Ray Train run that streams: every worker gets the whole
    stream (each keeps its own (seed, epoch) share), in file order. Ray Train replaces a
    dataset's execution options with its own when it hands the dataset to the workers (taken
    from the controller's DataContext, not the dataset's), so the order is asked for here."""
    import ray.train
    from ray.data import ExecutionOptions

    return ray.train.DataConfig(datasets_to_split=[], execution_options=ExecutionOptions(preserve_order=True))
