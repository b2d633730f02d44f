"""Training one architecture from scratch: DARTS's retraining recipe, as a resumable state.

Recipe (docs/retraining.md, "Recipe"; every knob in :class:`~goldnas_ray.core.config.RetrainConfig`):
SGD with momentum and weight decay, learning rate annealed by a cosine over the epochs,
gradient clipping, cutout, an auxiliary head on the 2L/3 cell weighted 0.4, and drop-path
whose probability rises linearly from 0 to ``drop_path`` over the epochs. Test accuracy is
measured after every epoch.

One epoch implementation for any number of workers: :meth:`Retrainer.train_epoch` takes a
communicator (``goldnas_ray.core.comm``), no-op in one process, torch.distributed in a Ray
Train trial of N workers. Each rank trains on its (seed, epoch) share of the data (DDP
averages the gradients), evaluates its share of the test split, and the counts are summed
over the ranks, so every rank reports the same row. Every epoch's data order, augmentation
and drop-path masks come from (seed, epoch, rank) alone, so a trial restored from its
checkpoint continues exactly as if it had never stopped.

As fast per FLOP as the search's step: channels-last tensors, bf16 autocast as an option,
the loss and accuracy summed on the device and read once per epoch, evaluation without
autograd (benchmarks/retrain_epoch.py measures it against the search's step). Pure PyTorch:
the Ray layer drives it, and so can a plain loop.
"""
from __future__ import annotations

import math
import time
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from goldnas_ray.core.comm import Communicator, LocalComm
from goldnas_ray.core.config import DataConfig, RetrainConfig
from goldnas_ray.core.counting import count_params, total_flops
from goldnas_ray.core.discrete import build_network, load_inherited
from goldnas_ray.core.genotype import Genotype
from goldnas_ray.core.network import seeded
from goldnas_ray.data import Augment, Dataset
from goldnas_ray.data.batches import epoch_seed
from goldnas_ray.data.from_config import eval_augment, train_augment

STATE_VERSION = 1
EVAL_BATCH = 512
CALIBRATION_IMAGES = 2000  # an inherited network's batch-norm statistics are recomputed on these


class Retrainer:
    """Network, optimizer, schedule and per-epoch history of one (architecture, seed)."""

    def __init__(self, geno: Genotype, cfg: RetrainConfig, seed: int,
                 device: torch.device | str = "cpu", weights: dict[str, torch.Tensor] | None = None):
        """``weights``: the architecture's inherited weights (``SuperNet.inherited_state``), or
        None to start from scratch."""
        self.geno, self.cfg, self.seed = geno, cfg, seed
        self.device = torch.device(device)
        with seeded(seed):  # the initial weights depend on the seed only
            # a head weighted 0 gets no gradient, which DDP refuses: it is not built at all
            self.model = build_network(geno, auxiliary=cfg.auxiliary and cfg.auxiliary_weight > 0)
        if weights is not None:
            load_inherited(self.model, weights)
        shape = (geno.in_channels, geno.input_size, geno.input_size)
        self.flops = total_flops(self.model, shape)
        self.params = count_params(self.model)
        self.memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.model.to(self.device, memory_format=self.memory_format)
        self.generator = torch.Generator(device=self.device)  # drop-path masks, reseeded each epoch
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, cfg)
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        self.start_test_acc: float | None = None  # an inherited network's, before its first step (calibrate)

    @property
    def finished(self) -> bool:
        return self.epoch >= self.cfg.epochs

    def train_epoch(self, data: Dataset, data_cfg: DataConfig | None = None,
                    comm: Communicator | None = None) -> dict[str, Any]:
        """Train one epoch on this rank's share, then measure test accuracy over all ranks;
        returns (and keeps) the epoch's row, the same on every rank. ``data_cfg`` chooses the
        augmentation (its dataset's defaults, this recipe's cutout and colour jitter); without
        it, cutout alone."""
        comm = comm if comm is not None else LocalComm()
        cfg = self.cfg
        augment = (train_augment(data_cfg, cfg.cutout, cfg.color_jitter) if data_cfg is not None
                   else Augment(cutout=cfg.cutout))
        lr = self.optimizer.param_groups[0]["lr"]
        drop_prob = cfg.drop_path * self.epoch / cfg.epochs
        start = time.perf_counter()
        batches = data.train_batches(cfg.batch_size, self.seed, self.epoch, comm.rank, comm.world_size,
                                     augment=augment, device=self.device)
        loss_sum, correct, images = self.train_steps(batches, drop_prob, comm)
        loss_total, correct_total, images_total = comm.all_sum([float(loss_sum), float(correct), float(images)])
        self.scheduler.step()
        train_seconds = comm.all_max(time.perf_counter() - start)
        comm.sync_buffers(self.model)  # every rank evaluates (and rank 0 saves) the same network
        test_acc = self.evaluate(data, data_cfg, comm)
        self.epoch += 1
        row = {
            "epoch": self.epoch,
            "lr": lr,
            "drop_path": drop_prob,
            "train_loss": loss_total / max(images_total, 1),
            "train_acc": correct_total / max(images_total, 1),
            "test_acc": test_acc,
            "seconds": time.perf_counter() - start,
            "images_per_second": images_total / max(train_seconds, 1e-9),
            "end_time": time.time(),
        } | ({"start_test_acc": self.start_test_acc} if self.start_test_acc is not None else {})
        self.history.append(row)
        return row

    def calibrate(self, data: Dataset, data_cfg: DataConfig | None = None, comm: Communicator | None = None
                  ) -> float:
        """Before an inherited network's first step: recompute its batch-norm running statistics
        as the mean over up to ``CALIBRATION_IMAGES`` training images (epoch 0's order, no
        augmentation; once-for-all's calibration) and measure its test accuracy, kept as
        ``start_test_acc``. The supernet's running statistics lag behind weights that changed at
        every step of the search, whose own accuracies were measured with batch statistics."""
        comm = comm if comm is not None else LocalComm()
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative mean over the calibration batches
        self.model.train()
        images = 0
        with torch.no_grad():
            for x, _ in data.train_batches(self.cfg.batch_size, self.seed, 0, comm.rank, comm.world_size,
                                           device=self.device):
                self.model(x.to(memory_format=self.memory_format))
                images += len(x)
                if images * comm.world_size >= CALIBRATION_IMAGES:
                    break
        for m in norms:
            m.momentum = 0.1  # nn.BatchNorm2d's default, which every network here uses
        comm.sync_buffers(self.model)
        self.start_test_acc = self.evaluate(data, data_cfg, comm)
        return self.start_test_acc

    def train_steps(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], drop_prob: float,
                    comm: Communicator) -> tuple[torch.Tensor, torch.Tensor, int]:
        """An epoch's steps on this rank, none of which waits for the device: (summed loss,
        correct predictions) as device tensors, and the images trained on."""
        cfg, model = self.cfg, self.model
        net = comm.wrap(model)
        # drop-path masks from (seed, epoch, rank): a restarted trial draws the same ones
        self.generator.manual_seed(epoch_seed(self.seed, self.epoch, -2 - comm.rank))
        model.set_drop_path(drop_prob, self.generator)
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        images = 0
        for x, y in batches:
            x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
            y = y.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp == "bf16"):
                logits, aux = net(x, with_aux=True)
                loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                total = loss
                if aux is not None:
                    total = loss + cfg.auxiliary_weight * F.cross_entropy(aux, y, label_smoothing=cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            if cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            loss_sum += loss.detach().float() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            images += len(y)
        return loss_sum, correct, images

    def evaluate(self, data: Dataset, data_cfg: DataConfig | None = None, comm: Communicator | None = None
                 ) -> float:
        """Top-1 test accuracy: each rank counts its share of the test split, summed over the
        ranks."""
        comm = comm if comm is not None else LocalComm()
        correct, total = count_correct(
            self.model, data.eval_batches(EVAL_BATCH, eval_augment(data_cfg) if data_cfg is not None else None,
                                          self.device, comm.rank, comm.world_size),
            self.memory_format, self.cfg.amp == "bf16")
        correct, total = comm.all_sum([float(correct), float(total)])
        return correct / max(total, 1)

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
            "start_test_acc": self.start_test_acc,
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
        trainer.start_test_acc = state.get("start_test_acc")
        return trainer


def count_correct(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  memory_format: torch.memory_format = torch.contiguous_format, bf16: bool = False
                  ) -> tuple[int, int]:
    """(correct top-1 predictions, images) of ``model`` over ``batches``, counted on the device
    without autograd and read once."""
    model.eval()
    correct, total = None, 0
    with torch.no_grad():
        for xb, yb in batches:
            xb = xb.to(memory_format=memory_format)
            device = xb.device
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                hits = (model(xb).argmax(1) == yb.to(device, non_blocking=True)).sum()
            correct = hits if correct is None else correct + hits
            total += len(yb)
    return (int(correct) if correct is not None else 0), total


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
