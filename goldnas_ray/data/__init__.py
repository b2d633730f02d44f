"""Data: datasets as in-memory tensors (``datasets``) and each epoch's deterministic, sharded,
augmented batches (``batches``).

Owns everything between files on disk and the tensors a training step consumes. May import
``goldnas_ray.core`` (for its config) and nothing else of the package; pure PyTorch / NumPy.
"""
from goldnas_ray.data.batches import cutout, epoch_generator, iterate_batches, shard_indices
from goldnas_ray.data.datasets import DataError, Dataset, load_cifar10, load_dataset, load_digits

__all__ = ["cutout", "epoch_generator", "iterate_batches", "shard_indices", "DataError", "Dataset",
           "load_cifar10", "load_dataset", "load_digits"]
