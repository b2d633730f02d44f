"""The Ray Data pipelines of a streamed image set: the rows a split's consumers get (no held-out
row, no image data.subset leaves out), read in file order -> ``map_batches`` decoding on CPU
workers, from a local path or any storage URI; and how Ray Train hands them to its workers.
Consumers (``goldnas_ray.data.stream.StreamSource``) train on what they receive.

A Parquet stream is read row group by row group (``ReadRows``), each row's index in the stream
known where it is read, so the rows nobody gets are dropped before they are decoded; an image
folder's list of files is cut the same way before any is read; the files' footers (where each
row group starts) are read side by side. With several workers Ray Train splits the training
stream and the test stream (:func:`train_data_config`): Ray Data decodes each training image
once an epoch, and each test image once an evaluation, for the one worker that receives it.
:func:`counted_decodes` counts the decodes, for tests and benchmarks/data_throughput.py."""
from __future__ import annotations

import collections
import contextlib
from concurrent.futures import ThreadPoolExecutor

from goldnas_ray.core.config import DataConfig
from goldnas_ray.data.datasets import parquet_files, parquet_splits
from goldnas_ray.data.stream import Decode, ReadRows, StreamInfo, folder_items
from goldnas_ray.files.store import location, retrying

FOOTER_READS = 16  # footers read at once when a Parquet stream's pipeline is made
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
    and its first row's index in the stream (from the files' footers, :data:`FOOTER_READS` read
    at once: a bucket's thousands of files are not asked one after another)."""
    import pyarrow.parquet as pq

    def footer(path: str):
        def read():
            with fs.open_input_file(path) as f:
                return pq.ParquetFile(f).metadata
        return retrying(read, path)  # a store's transient faults retried

    with ThreadPoolExecutor(max_workers=FOOTER_READS) as pool:
        metas = list(pool.map(footer, paths))
    items, first = [], 0
    for path, meta in zip(paths, metas):
        for group in range(meta.num_row_groups):
            items.append({"path": path, "group": group, "first": first})
            first += meta.row_group(group).num_rows
    return items


def train_dataset(d: DataConfig, info: StreamInfo):
    return dataset(d, info, "train")


def train_data_config():
    """The ``dataset_config`` of a Ray Train run that streams. The training stream is split
    (``streaming_split(W, equal=True)``: each worker receives, and Ray Data decodes, its own
    ``num_train // W`` images; ``goldnas_ray.data.stream`` says which); the test stream ("val")
    is split too, unequally (``equal=False``: no test image is dropped, each reaches one worker,
    which evaluates what it receives; the ranks' counts are summed). Ray Train replaces a
    dataset's execution options with its own when it hands the dataset to the workers (taken
    from the controller's DataContext, not the dataset's), so the order, and with it a split
    that is the same every epoch, is asked for here."""
    import ray.train
    from ray.data import ExecutionOptions

    class SplitStreams(ray.train.DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            equal = {name: ds for name, ds in datasets.items() if name != "val"}
            output = super().configure(equal, world_size, worker_handles, worker_node_ids, **kwargs)
            if "val" in datasets:
                ds = datasets["val"].copy(datasets["val"])
                ds.context.execution_options = ExecutionOptions(preserve_order=True)
                for rank, part in enumerate(ds.streaming_split(world_size, equal=False)):
                    output[rank]["val"] = part
            return output

    return SplitStreams(datasets_to_split=["train", "val"], execution_options=ExecutionOptions(preserve_order=True))


@contextlib.contextmanager
def counted_decodes(name: str = "goldnas-decoded"):
    """For diagnostics only (tests/test_streaming.py, benchmarks/data_throughput.py): the
    pipelines made in the block decode through a :class:`Decode` that reports the label of
    every image it decodes to a Ray actor named ``name``, where it decodes it. Yields a function
    that returns ``{label: times decoded}`` so far (read it inside the block)."""
    global Decode
    import ray

    @ray.remote(num_cpus=0)
    class Counter:
        def __init__(self):
            self.seen = collections.Counter()

        def add(self, labels):
            self.seen.update(labels)

        def get(self):
            return dict(self.seen)

    class CountingDecode(Decode):
        def __call__(self, batch):
            out = super().__call__(batch)
            ray.get(ray.get_actor(name).add.remote(out["label"].tolist()))
            return out

    counter, saved = Counter.options(name=name).remote(), Decode
    Decode = CountingDecode
    try:
        yield lambda: ray.get(counter.get.remote())
    finally:
        Decode = saved
        ray.kill(counter)
