"""The Ray Data pipelines of a streamed image set: read (``read_parquet``, or the files of an
image folder) -> ``map_batches`` decoding on CPU workers, file order preserved, from a local
path or any storage URI. Consumers (``goldnas_ray.data.stream.StreamSource``) take their own
share of it."""
from __future__ import annotations

from goldnas_ray.core.config import DataConfig
from goldnas_ray.data.datasets import parquet_splits
from goldnas_ray.data.stream import Decode, StreamInfo, folder_items
from goldnas_ray.files.store import location


def dataset(d: DataConfig, info: StreamInfo, split: str = "train"):
    """The Ray Data pipeline of ``split`` (train, or val for testing). A Parquet table without
    splits streams whole: its consumers skip the held-out rows (``StreamInfo.train_rows``)."""
    import ray.data

    ray.data.DataContext.get_current().execution_options.preserve_order = True
    if d.dataset == "parquet":
        splits = parquet_splits(d.root)
        path, fs = splits.get(split, splits.get("all")).arrow()
        ds = ray.data.read_parquet(path, filesystem=fs, columns=[d.image_column, d.label_column])
        decode = Decode(d.image_column, d.label_column, d.image_size, info.stored_shape)
    else:
        paths, labels, _ = folder_items(d, split)
        ds = ray.data.from_items([{"path": p, "label": k, "image": b""} for p, k in zip(paths, labels)])
        decode = Decode("image", "label", d.image_size, info.stored_shape, root=location(d.root).resolved().uri)
    return ds.map_batches(decode, batch_format="numpy", batch_size=64)


def train_dataset(d: DataConfig, info: StreamInfo):
    return dataset(d, info, "train")
