"""A deterministic, shardable batch order and the augmentation drawn with it.

Each epoch's order and augmentation randomness come from (seed, epoch, rank) alone, never
from an RNG that has run since the start: a search resumed or restarted at any epoch sees
exactly the batches an uninterrupted one would.
"""
from __future__ import annotations

from typing import Iterator

import torch


def epoch_generator(seed: int, epoch: int, rank: int = 0) -> torch.Generator:
    """A fresh generator whose stream depends only on (seed, epoch, rank)."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 1_009 + rank + 1) % (2**62))


def shard_indices(n: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
    """This rank's share of one epoch's permutation (every rank gets the same count)."""
    perm = torch.randperm(n, generator=epoch_generator(seed, epoch, -1))
    per_rank = n // world_size
    return perm[rank * per_rank:(rank + 1) * per_rank]


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Zero one random ``size`` x ``size`` square per image (DeVries & Taylor, 2017), as DARTS
    draws it: the centre is uniform over the image and the square is clipped at the border."""
    if size <= 0:
        return x
    n, _, h, w = x.shape
    top = torch.randint(0, h, (n,), generator=gen).view(n, 1, 1) - size // 2
    left = torch.randint(0, w, (n,), generator=gen).view(n, 1, 1) - size // 2
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return x * (~inside).unsqueeze(1).to(x.dtype)


def iterate_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, epoch: int,
                    rank: int = 0, world_size: int = 1, cutout_size: int = 0,
                    drop_last: bool = True) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of training batches for ``rank``: shuffled, sharded, optionally cut out."""
    idx = shard_indices(len(x), seed, epoch, rank, world_size)
    gen = epoch_generator(seed, epoch, rank)
    stop = len(idx) - (len(idx) % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        b = idx[start:start + batch_size]
        yield cutout(x[b], cutout_size, gen), y[b]
