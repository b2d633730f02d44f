"""Data: a loader for every dataset of the registry (``datasets``; the registry itself is in
``core.config``), batched augmentation in torch (``transforms``), and each epoch's
deterministic, sharded batches (``batches``).

Owns everything between files and the tensors a training step consumes, in memory or streamed
(``stream``: metadata and a consumer's share of a stream). May import ``goldnas_ray.core`` (the
config and its registry) and ``goldnas_ray.files`` (the storage layer every file is read
through); pure PyTorch / NumPy (the Ray Data pipelines that feed a stream live in
``goldnas_ray.orchestration.streaming``).
"""
from goldnas_ray.data.batches import (Augment, epoch_generator, eval_batches, iterate_batches, prepare,
                                      shard_indices)
from goldnas_ray.data.datasets import (LOADERS, DataError, Dataset, load_cifar10, load_cifar100,
                                       load_dataset, load_digits)
from goldnas_ray.data.transforms import cutout

__all__ = ["Augment", "cutout", "epoch_generator", "eval_batches", "iterate_batches", "prepare",
           "shard_indices", "LOADERS", "DataError", "Dataset", "load_cifar10", "load_cifar100",
           "load_dataset", "load_digits"]
