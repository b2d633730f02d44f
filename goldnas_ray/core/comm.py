"""How the ranks of one search or one retrain trial talk: nothing to say in one process,
torch.distributed in many.

The search's epoch protocol (``GoldSearch.run_epoch``) and the retrain's epoch
(``Retrainer.train_epoch``) are written once against :class:`Communicator`; the in-process
loop passes :class:`LocalComm`, a Ray Train worker a :class:`DistributedComm` over the process
group Ray Train set up (gloo on CPU, NCCL on GPU).
DDP averages the gradients of weights AND alphas, so every rank holds the same alphas; the
prune decision is still made once on rank 0 and broadcast, so a tie can never split ranks.
Pure PyTorch.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    images: int
    seconds: float


class Communicator(Protocol):
    rank: int
    world_size: int

    def wrap(self, model: nn.Module) -> nn.Module:
        """What the training step calls: ``model``, or its DDP wrapper (cached until
        :meth:`model_changed`)."""

    def model_changed(self) -> None:
        """The model lost modules (pruning): the next :meth:`wrap` wraps it anew."""

    def reduce_stats(self, stats: EpochStats) -> EpochStats:
        """The epoch's statistics over all ranks (seconds: the slowest rank's)."""

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""

    def digests(self, model: nn.Module) -> list[dict[str, str]]:
        """Every rank's digest of its alive set and alphas; raises when they differ."""

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""

    def all_sum(self, values: list[float]) -> list[float]:
        """``values`` summed over the ranks (float64)."""

    def all_max(self, value: float) -> float:
        """The largest ``value`` of any rank."""

    def sync_buffers(self, model: nn.Module) -> None:
        """Give every rank rank 0's buffers (batch-norm statistics): DDP broadcasts them before
        each forward, so after an epoch's last step each rank holds its own update."""


def model_digest(model: Any) -> dict[str, str]:
    """Short hashes of a supernet's alive operators and of its alphas' exact bits."""
    alphas = torch.stack([a.detach().cpu() for a in model.arch_parameters()])
    alive = repr(model.alive_ops()).encode()
    return {"alive": hashlib.sha256(alive).hexdigest()[:16],
            "alphas": hashlib.sha256(alphas.numpy().tobytes()).hexdigest()[:16]}


class LocalComm:
    """One process: every operation is the identity."""

    rank, world_size = 0, 1

    def wrap(self, model: nn.Module) -> nn.Module:
        return model

    def model_changed(self) -> None:
        pass

    def reduce_stats(self, stats: EpochStats) -> EpochStats:
        return stats

    def broadcast(self, obj: Any) -> Any:
        return obj

    def digests(self, model: nn.Module) -> list[dict[str, str]]:
        return [model_digest(model)]

    def all_gather(self, obj: Any) -> list[Any]:
        return [obj]

    def all_sum(self, values: list[float]) -> list[float]:
        return [float(v) for v in values]

    def all_max(self, value: float) -> float:
        return float(value)

    def sync_buffers(self, model: nn.Module) -> None:
        pass


class DistributedComm:
    """The ranks of an initialised ``torch.distributed`` process group."""

    def __init__(self, device: torch.device):
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError("DistributedComm needs an initialised torch.distributed process group")
        self.device = device
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.backend = str(dist.get_backend())
        self._wrapped: nn.Module | None = None

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world_size == 1:
            return model
        if self._wrapped is None or self._wrapped.module is not model:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self._wrapped = DistributedDataParallel(model, device_ids=ids)
        return self._wrapped

    def model_changed(self) -> None:
        self._wrapped = None

    def reduce_stats(self, stats: EpochStats) -> EpochStats:
        if self.world_size == 1:
            return stats
        t = torch.tensor([stats.loss * stats.images, stats.accuracy * stats.images, stats.images],
                         dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        sec = torch.tensor([stats.seconds], dtype=torch.float64, device=self.device)
        dist.all_reduce(sec, op=dist.ReduceOp.MAX)
        images = int(t[2])
        return EpochStats(float(t[0]) / images, float(t[1]) / images, images, float(sec))

    def all_gather(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        found: list[Any] = [None] * self.world_size
        dist.all_gather_object(found, obj)
        return found

    def all_sum(self, values: list[float]) -> list[float]:
        if self.world_size == 1:
            return [float(v) for v in values]
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def all_max(self, value: float) -> float:
        if self.world_size == 1:
            return float(value)
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    def sync_buffers(self, model: nn.Module) -> None:
        if self.world_size == 1:
            return
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)

    def broadcast(self, obj: Any) -> Any:
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def digests(self, model: nn.Module) -> list[dict[str, str]]:
        found = self.all_gather(model_digest(model))
        if any(d != found[0] for d in found):
            raise DivergedRanksError(f"ranks diverged: {found}")
        return found


class DivergedRanksError(RuntimeError):
    """Ranks hold different architectures or alphas: a bug, never a user error."""
