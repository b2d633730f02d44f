"""Each epoch's batches: a deterministic, shardable order and the augmentation drawn with it.

Each epoch's order and augmentation randomness come from (seed, epoch, rank) alone, never
from an RNG that has run since the start: a search resumed or restarted at any epoch sees
exactly the batches an uninterrupted one would. A batch is cut from the tensors in memory,
moved to the training device as it is stored (uint8 for image sets), then converted,
augmented and normalised there (``transforms``), in the DARTS order: crops, flip and colour
jitter on [0, 1] pixels, normalisation, then cutout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from goldnas_ray.core.config import ConfigError
from goldnas_ray.data import transforms as T


@dataclass(frozen=True)
class Augment:
    """Which transforms a batch gets; all off is the identity (plus normalisation)."""

    crop_padding: int = 0        # random crop with this zero padding (32x32 sets: 4)
    flip: bool = False           # horizontal flip, p = 1/2
    cutout: int = 0              # cutout square side, after normalisation
    resized_crop: int = 0        # random resized crop to this size (ImageNet-style sets)
    color_jitter: bool = False   # brightness/contrast/saturation 0.4, hue 0.2
    eval_size: int = 0           # resize to size x 256/224, centre crop (evaluation, and
                                 # training when there is no random resized crop)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of the random stream of (seed, epoch, rank): plain arithmetic, no tensor."""
    return ((seed * 1_000_003 + epoch) * 1_009 + rank + 1) % (2**62)


def epoch_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """A fresh CPU generator whose stream depends only on (seed, epoch, rank)."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch, rank))


def check_batches(images: int, world_size: int, batch_size: int, field: str) -> None:
    """Refuse, before any work, an epoch in which a worker would take no step: its share of the
    training images is smaller than its batch (an epoch drops its last partial batch)."""
    share = images // world_size
    if share < batch_size:
        workers = f" over {world_size} workers" if world_size > 1 else ""
        raise ConfigError(f"{field} ({batch_size}) is larger than a worker's share of the training images ({share} "
                          f"of {images}{workers}): no step would be taken; lower {field}"
                          + (" or the workers" if world_size > 1 else ""))


def shard_indices(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's share of one epoch's permutation (every rank gets the same count)."""
    perm = torch.randperm(n, generator=epoch_generator(seed, epoch, -1))
    per_rank = n // world_size
    return perm[rank * per_rank:(rank + 1) * per_rank]


def prepare(x: torch.Tensor, augment: Augment, gen: torch.Generator | None, train: bool,
            mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
            device: torch.device | str | None = None) -> torch.Tensor:
    """A stored batch as the network takes it: on ``device``, float, augmented when
    ``train``, normalised with ``mean`` / ``std`` (of pixels / 255) when given."""
    if device is not None:
        x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    if train and augment.resized_crop:
        x = T.random_resized_crop(x, augment.resized_crop, gen)
    elif augment.eval_size:  # evaluation, or training without random crops of stored images
        x = T.resize_center_crop(x, augment.eval_size)
    if train:
        x = T.random_crop(x, augment.crop_padding, gen)
        if augment.flip:
            x = T.hflip(x, gen)
        if augment.color_jitter:
            x = T.color_jitter(x, gen)
    if mean is not None and std is not None:
        x = (x - _constant(mean, x.device, x.dtype)) / _constant(std, x.device, x.dtype)
    if train and augment.cutout:
        x = T.cutout(x, augment.cutout, gen)
    return x


_CONSTANTS: dict[tuple, torch.Tensor] = {}


def _constant(values: Sequence[float], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Per-channel values as a (1, C, 1, 1) tensor on ``device``, copied there once per
    (values, device, dtype) rather than with every batch: a copy from the host each step would
    wait for the device on a GPU."""
    key = (tuple(values), str(device), dtype)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor(values, dtype=dtype).view(1, -1, 1, 1).to(device, non_blocking=True)
    return _CONSTANTS[key]


def iterate_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, epoch: int,
                    rank: int = 0, world_size: int = 1, drop_last: bool = True,
                    *, augment: Augment | None = None, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, device: torch.device | str | None = None
                    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of training batches for ``rank``: shuffled, sharded, augmented (``augment``;
    none by default), on ``device``."""
    augment = augment if augment is not None else Augment()
    idx = shard_indices(len(x), seed, epoch, rank, world_size)
    gen = epoch_generator(seed, epoch, rank)
    stop = len(idx) - (len(idx) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        b = idx[start:start + batch_size]
        yb = y[b] if device is None else y[b].to(device, non_blocking=True)
        yield prepare(x[b], augment, gen, True, mean, std, device), yb


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, augment: Augment | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 device: torch.device | str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The test set in order, prepared for evaluation."""
    augment = augment or Augment()
    for start in range(0, len(x), batch_size):
        xb = prepare(x[start:start + batch_size], augment, None, False, mean, std, device)
        yield xb, y[start:start + batch_size]
