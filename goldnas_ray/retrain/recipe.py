"""Training one architecture from scratch: DARTS's retraining recipe, as a resumable state.

Recipe (DESIGN.md section 4, every knob in :class:`~goldnas_ray.config.RetrainConfig`):
SGD with momentum and weight decay, learning rate annealed by a cosine over the epochs,
gradient clipping, cutout, an auxiliary head on the 2L/3 cell weighted 0.4, and drop-path
whose probability rises linearly from 0 to ``drop_path`` over the epochs. Test accuracy is
measured after every epoch.

Every epoch's data order, cutout squares and drop-path masks come from (seed, epoch) alone,
so a trial restored from its checkpoint continues exactly as if it had never stopped. Pure
PyTorch: the Ray Tune trainable drives it, and so can a plain loop.
"""
from __future__ import annotations

import math
import time
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from goldnas_ray.core.config import DataConfig, RetrainConfig
from goldnas_ray.core.costs import count_params, total_flops
from goldnas_ray.core.network import seeded
from goldnas_ray.data import Augment, Dataset
from goldnas_ray.data.batches import epoch_seed
from goldnas_ray.data.from_config import eval_augment, train_augment
from goldnas_ray.core.discrete import build_network
from goldnas_ray.core.genotype import Genotype

STATE_VERSION = 1


class Retrainer:
    """Network, optimizer, schedule and per-epoch history of one (architecture, seed)."""

    def __init__(self, geno: Genotype, cfg: RetrainConfig, seed: int,
                 device: torch.device | str = "cpu"):
        self.geno, self.cfg, self.seed = geno, cfg, seed
        self.device = torch.device(device)
        with seeded(seed):  # the initial weights depend on the seed only
            self.model = build_network(geno, auxiliary=cfg.auxiliary)
        shape = (geno.in_channels, geno.input_size, geno.input_size)
        self.flops = total_flops(self.model, shape)
        self.params = count_params(self.model)
        self.model.to(self.device)
        self.generator = torch.Generator(device=self.device)  # drop-path masks, reseeded each epoch
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []

    @property
    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs

    def train_epoch(self, data: Dataset, data_cfg: DataConfig | None = None) -> dict[str, Any]:
        """Train one epoch, then measure test accuracy; returns (and keeps) the epoch's row.
        ``data_cfg`` chooses the augmentation (its dataset's defaults, this recipe's cutout and
        colour jitter); without it, cutout alone."""
        cfg, model = self.cfg, self.model
        augment = (train_augment(data_cfg, cfg.cutout, cfg.color_jitter) if data_cfg is not None
                   else Augment(cutout=cfg.cutout))
        lr = self.optimizer.param_groups[0]["lr"]
        drop_prob = cfg.drop_path * self.epoch / cfg.epochs
        self.generator.manual_seed(epoch_seed(self.seed, self.epoch, -2))  # masks from (seed, epoch)
        model.set_drop_path(drop_prob, self.generator)
        model.train()
        start = time.perf_counter()
        loss_sum, correct, images = 0.0, 0, 0
        for x, y in data.train_batches(cfg.batch_size, self.seed, self.epoch, augment=augment, device=self.device):
            logits, aux = model(x, with_aux=True)
            loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            total = loss
            if aux is not None and cfg.auxiliary_weight > 0:
                total = loss + cfg.auxiliary_weight * F.cross_entropy(aux, y, label_smoothing=cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            images += len(y)
        self.scheduler.step()
        train_seconds = time.perf_counter() - start
        test_acc = evaluate(model, data.eval_batches(512, eval_augment(data_cfg) if data_cfg is not None else None,
                                                     self.device))
        self.epoch += 1
        row = {
            "epoch": self.epoch,
            "lr": lr,
            "drop_path": drop_prob,
            "train_loss": loss_sum / max(images, 1),
            "train_acc": correct / max(images, 1),
            "test_acc": test_acc,
            "seconds": time.perf_counter() - start,
            "images_per_second": images / max(train_seconds, 1e-9),
            "end_time": time.time(),
        }
        self.history.append(row)
        return row

    # ---- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: tensors and plain data only, so it loads
        with ``torch.load(weights_only=True)``."""
        return {
            "version": STATE_VERSION,
            "genotype": self.geno.to_dict(),
            "config": self.cfg.model_dump(),
            "seed": self.seed,
            "epoch": self.epoch,
            "model": {k: v.cpu() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "history": list(self.history),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device | str = "cpu") -> "Retrainer":
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"retrain checkpoint version {state.get('version')!r}; "
                             f"this release reads {STATE_VERSION}")
        trainer = cls(Genotype.from_dict(state["genotype"]), RetrainConfig.from_dict(state["config"]),
                      int(state["seed"]), device)
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        trainer.epoch = int(state["epoch"])
        trainer.history = list(state["history"])
        return trainer


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Top-1 accuracy of ``model`` over ``batches`` (e.g. ``data.eval_batches``)."""
    model.eval()
    correct, total = 0, 0
    for xb, yb in batches:
        correct += int((model(xb).argmax(1).cpu() == yb.cpu()).sum())
        total += len(yb)
    return correct / max(total, 1)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: RetrainConfig):
    """The learning rate per epoch: cosine from lr to lr_min over the epochs (DARTS CIFAR), or
    lr x lr_gamma^epoch (DARTS ImageNet's step decay), after ``warmup_epochs`` of linear
    warm-up from lr / (warmup_epochs + 1)."""
    if cfg.schedule == "cosine" and cfg.warmup_epochs == 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=cfg.lr_min)

    def factor(epoch: int) -> float:
        warm = min(1.0, (epoch + 1) / (cfg.warmup_epochs + 1))
        if cfg.schedule == "step":
            return warm * cfg.lr_gamma ** epoch
        cos = 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
        return warm * (cfg.lr_min + (cfg.lr - cfg.lr_min) * cos) / cfg.lr

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
