"""GOLD-NAS search: one-level optimisation with gradual, resource-constrained pruning.

Bi, Xie, Chen, Wei, Tian. "GOLD-NAS: Gradual, One-Level, Differentiable", 2020.

Each step is ONE forward and ONE backward on a training batch; the same gradients update the
weights (SGD) and the alphas (their own SGD). Loss = CE (+ aux) + lambda * cost(alpha).
Once per epoch: prune (see :func:`select_prunes`), record an architecture that held still for
more than t0 epochs, move lambda (see :class:`LambdaSchedule`), stop at flops_min or
max_epochs. :class:`GoldSearch` holds the whole state and saves / restores it exactly.
:meth:`GoldSearch.run_epoch` is the whole epoch protocol (train, decide on rank 0,
broadcast, prune, move lambda); the in-process loop and the Ray Train worker run it with
different communicators (``goldnas_ray.core.comm``). Pure PyTorch.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from goldnas_ray.core.comm import Communicator, EpochStats, LocalComm
from goldnas_ray.core.config import Config, ConfigError
from goldnas_ray.core.costs import CostTable
from goldnas_ray.core.genotype import Genotype
from goldnas_ray.core.latency import LatencyTable, table_key
from goldnas_ray.core.network import seeded
from goldnas_ray.core.records import ArchRecord
from goldnas_ray.core.schedule import LambdaSchedule, ParetoRecorder, select_prunes
from goldnas_ray.core.space import OpKey
from goldnas_ray.core.supernet import SuperNet

STATE_VERSION = 1  # checkpoints written before the search stopped using the global RNG also
                   # hold its state ("rng"): nothing reads it

# called after every training step with (steps done, images done) of this rank's epoch
StepCallback = Callable[[int, int], None]


def stop_flops(cfg: Config, full_flops: float) -> float:
    """The FLOPs a search stops at: search.flops_min, else flops_min_ratio x the supernet's
    (with cost=latency, flops_min only: the stop fraction is the latency's); ConfigError when
    that is not below the supernet's own."""
    q = cfg.search
    if q.cost == "latency" and q.flops_min is None:
        return 0.0
    flops_min = q.flops_min if q.flops_min is not None else q.flops_min_ratio * full_flops
    if flops_min >= full_flops:
        raise ConfigError(f"search.flops_min ({flops_min:.4g}) must be below the full supernet's FLOPs "
                          f"({full_flops:.4g})")
    return flops_min


def stop_latency(cfg: Config, full_ms: float) -> float:
    """The predicted latency (ms) a cost=latency search stops at: search.latency_min_ms, else
    latency_min_ratio x the supernet's; ConfigError when that is not below the supernet's."""
    q = cfg.search
    stop = q.latency_min_ms if q.latency_min_ms is not None else q.latency_min_ratio * full_ms
    if stop >= full_ms:
        raise ConfigError(f"search.latency_min_ms ({stop:.4g}) must be below the full supernet's predicted "
                          f"latency ({full_ms:.4g} ms)")
    return stop


def latency_table(cfg: Config, input_shape: tuple[int, int, int], num_classes: int,
                  table: LatencyTable | None = None) -> LatencyTable | None:
    """The search's latency table (cost=latency): ``table`` (read from search.latency_table by
    the caller, ``run.loop.read_latency``, or a checkpoint's), checked against its space, data
    and batch, and that it has an entry for every part of the space's network."""
    q = cfg.search
    if q.cost != "latency":
        return None
    if table is None:
        raise ValueError(f"a cost=latency search needs its table, read from {q.latency_table} by the caller "
                         f"(run.loop.read_latency)")
    s = cfg.space
    table.check(table_key(s, input_shape, num_classes, q.latency_batch), f"search.latency_table {q.latency_table}")
    full = Genotype.full(s.num_cells, s.num_nodes, s.operators, s.init_channels, s.stem_multiplier, input_shape[1],
                         input_shape[0], num_classes, s.stem)
    table.check_covers(full, f"search.latency_table {q.latency_table}")
    return table


def check_stop(cfg: Config, input_shape: tuple[int, int, int], num_classes: int,
               table: LatencyTable | None = None) -> float:
    """:func:`stop_flops` (and the latency ``table`` with its stop, for cost=latency) for a
    search not built yet (a driver checks it before any worker starts): the supernet's FLOPs
    are the full architecture's, counted on its network."""
    s = cfg.space
    full = Genotype.full(s.num_cells, s.num_nodes, s.operators, s.init_channels, s.stem_multiplier, input_shape[1],
                         input_shape[0], num_classes, s.stem)
    table = latency_table(cfg, input_shape, num_classes, table)
    if table is not None:
        stop_latency(cfg, table.latency_ms(full))
    return stop_flops(cfg, CostTable.for_space(s, input_shape, num_classes).flops(full))


class SearchDiverged(ConfigError):
    """The training loss became NaN or infinite: a schedule whose learning rates are too high."""


class GoldSearch:
    """The search state: supernet, optimizers, lambda schedule, recorder, counters."""

    def __init__(self, cfg: Config, input_shape: tuple[int, int, int], num_classes: int,
                 device: torch.device | str = "cpu", latency: LatencyTable | None = None):
        self.cfg = cfg
        self.device = torch.device(device)
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        s = cfg.space
        with seeded(cfg.seed):  # the initial weights depend on the seed only
            self.model = SuperNet(s.num_cells, s.num_nodes, s.operators, s.init_channels,
                                  input_size=input_shape[1], in_channels=input_shape[0],
                                  num_classes=num_classes, stem_multiplier=s.stem_multiplier, stem=s.stem,
                                  auxiliary=s.auxiliary).to(self.device)
        # the discrete networks' costs: what a record's params and the history's are (the
        # network a retrain trains, without the auxiliary head; the supernet has other BNs)
        self.network_costs = CostTable.for_space(s, self.input_shape, num_classes)
        self.memory_format = torch.channels_last if cfg.search.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        q = cfg.search
        self.flops_min = stop_flops(cfg, self.model.full_flops)
        # cost=latency only: ``latency`` travels with the search (a Ray job, a checkpoint), so a
        # worker on another node or a resume never depends on the file it was read from
        self.latency = latency_table(cfg, self.input_shape, num_classes, latency)
        self.latency_min = 0.0
        if self.latency is not None:
            self.model.use_latency(self.latency)
            self.latency_min = stop_latency(cfg, self.model.full_latency_ms)
        self.schedule = LambdaSchedule(q.lambda0, q.c0, q.n0)
        self.recorder = ParetoRecorder(q.t0, q.record_rule, q.record_gap, q.record_min_gap,
                                       "latency" if self.latency is not None else "flops")
        # record id -> its inherited weights (SuperNet.inherited_state), kept until written out;
        # only where ``keeps_weights`` (the rank that writes the outputs: the others never build them)
        self.inherited: dict[str, dict[str, torch.Tensor]] = {}
        self.keeps_weights = True
        # record id -> bytes of its written weights file (files.search_files notes each as it writes it)
        self.weights_bytes: dict[str, int] = {}
        self.epoch = 0  # epochs completed
        self.finished = False
        self.history: list[dict[str, Any]] = []
        self.w_opt, self.a_opt = self._make_optimizers()

    # ---- optimizers --------------------------------------------------------------------
    def _make_optimizers(self) -> tuple[torch.optim.SGD, torch.optim.SGD]:
        q = self.cfg.search
        w_opt = torch.optim.SGD(self.model.weight_parameters(), lr=q.w_lr, momentum=q.w_momentum,
                                weight_decay=q.w_weight_decay)
        a_opt = torch.optim.SGD(self.model.arch_parameters(), lr=q.a_lr, momentum=q.a_momentum,
                                weight_decay=q.a_weight_decay)
        return w_opt, a_opt

    def _rebuild_optimizers(self) -> None:
        """New optimizers over the surviving parameters, keeping their momentum."""
        old_w, old_a = self.w_opt, self.a_opt
        self.w_opt, self.a_opt = self._make_optimizers()
        for old, new in ((old_w, self.w_opt), (old_a, self.a_opt)):
            for group in new.param_groups:
                for p in group["params"]:
                    if p in old.state:
                        new.state[p] = old.state[p]

    # ---- training ----------------------------------------------------------------------
    @property
    def lam(self) -> float:
        return self.schedule.lam

    def train_step(self, x: torch.Tensor, y: torch.Tensor, net: nn.Module | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward + one backward; updates weights and alphas. Returns (mean loss,
        correct predictions) as tensors on the device: reading them waits for the device,
        so callers read them once per epoch, not once per step."""
        net = net if net is not None else self.model
        q = self.cfg.search
        x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
        y = y.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=q.amp == "bf16"):
            logits, aux = net(x, with_aux=True)
            loss = F.cross_entropy(logits, y)
            if aux is not None and q.auxiliary_weight > 0:
                loss = loss + q.auxiliary_weight * F.cross_entropy(aux, y)
        total = loss
        if self.lam > 0:
            total = loss + self.lam * self.model.expected_cost(q.cost, q.ops_cost_k)
        self.w_opt.zero_grad(set_to_none=True)
        self.a_opt.zero_grad(set_to_none=True)
        total.backward()
        if q.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.w_opt.param_groups[0]["params"], q.grad_clip)
        self.w_opt.step()
        self.a_opt.step()
        return loss.detach().float(), (logits.detach().argmax(1) == y).sum()

    def train_epoch(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                    net: nn.Module | None = None, on_step: StepCallback | None = None) -> EpochStats:
        """Train on ``batches``; loss and accuracy are summed on the device and read once."""
        start = time.perf_counter()
        loss_sum, correct, images = self.train_steps(batches, net, on_step)
        loss_total, correct_total = float(loss_sum), int(correct)
        seconds = time.perf_counter() - start
        return EpochStats(loss_total / max(images, 1), correct_total / max(images, 1), images, seconds)

    def train_steps(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], net: nn.Module | None = None,
                    on_step: StepCallback | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The steps of an epoch, none of which waits for the device: (summed loss, correct
        predictions) as device tensors, and the images trained on."""
        self.model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        images = 0
        for step, (x, y) in enumerate(batches, 1):
            loss, c = self.train_step(x, y, net)
            loss_sum += loss * len(y)
            correct += c
            images += len(y)
            if on_step is not None:
                on_step(step, images)
        return loss_sum, correct, images

    def run_epoch(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  comm: Communicator | None = None, on_step: StepCallback | None = None
                  ) -> dict[str, Any]:
        """One whole epoch on every rank: train on this rank's ``batches``, pool the
        statistics, decide the prunes on rank 0, broadcast them, then :meth:`end_epoch`
        (identical on every rank). Returns the epoch's history row."""
        comm = comm if comm is not None else LocalComm()
        stats = comm.reduce_stats(self.train_epoch(batches, comm.wrap(self.model), on_step))
        if not math.isfinite(stats.loss):  # pooled: every rank stops here alike
            q = self.cfg.search
            raise SearchDiverged(
                f"epoch {self.epoch + 1}: the training loss is {stats.loss}; the search diverged and is stopped "
                f"before it records or prunes anything: lower search.w_lr ({q.w_lr:g}) or search.a_lr "
                f"({q.a_lr:g})")
        prunes = comm.broadcast(self.decide_prunes() if comm.rank == 0 else None)
        row = self.end_epoch(stats, prunes)
        if prunes:
            comm.model_changed()
        return row

    # ---- per-epoch decisions -----------------------------------------------------------
    def decide_prunes(self) -> list[OpKey]:
        q = self.cfg.search
        return select_prunes(self.model.gates(), q.xi_min, q.xi_max, q.n0)

    def end_epoch(self, stats: EpochStats, prunes: list[OpKey] | None = None) -> dict[str, Any]:
        """Record, prune, move lambda and check the stop rule; returns the history row.

        ``prunes`` lets a distributed caller pass the decision made on rank 0 so that every
        rank prunes exactly the same operators; by default it is decided here.
        """
        prunes = self.decide_prunes() if prunes is None else [OpKey(*k) for k in prunes]
        self.epoch += 1
        lam_used, delta_used = self.schedule.lam, self.schedule.delta
        recorded = []
        before, after, full = self._recorded_cost(prunes)
        if self.recorder.end_epoch(bool(prunes), before, after, full):
            recorded.append(self._record(lam_used, before))
        if prunes:
            self.model.prune(prunes)
            self._rebuild_optimizers()
            self.recorder.changed(flops_changed=after != before)
        self.schedule.update(len(prunes))
        flops = self.model.flops()
        latency = self.latency.latency_ms(self.model.genotype()) if self.latency is not None else None
        if (flops <= self.flops_min or (latency is not None and latency <= self.latency_min)
                or self.epoch >= self.cfg.search.max_epochs):
            self.finished = True
            recorded.append(self._record(lam_used, latency if latency is not None else flops))
        row = {
            "epoch": self.epoch,
            "lambda": lam_used,
            "delta": delta_used,
            "flops": flops,
            "params": self.network_costs.params(self.model.genotype()),
            "supernet_params": sum(p.numel() for p in self.model.weight_parameters()),
            "alive_ops": len(self.model.alive_ops()),
            **({"latency_ms": latency} if latency is not None else {}),
            "pruned": len(prunes),
            "loss": stats.loss,
            "accuracy": stats.accuracy,
            "seconds": stats.seconds,
            "images_per_second": stats.images / stats.seconds if stats.seconds > 0 else 0.0,
            "recorded": ",".join(r for r in recorded if r),
            "end_time": time.time(),
        }
        self.history.append(row)
        return row

    def _recorded_cost(self, prunes: list[OpKey]) -> tuple[float, float, float]:
        """What records are decided by, now, after ``prunes`` and in the full supernet: the
        predicted latency with cost=latency (so that its records are dense in it), else FLOPs."""
        if self.latency is None:
            flops = self.model.flops()
            return flops, self.model.flops_after(prunes) if prunes else flops, self.model.full_flops
        geno = self.model.genotype()
        return (self.latency.latency_ms(geno), self.latency.latency_ms(geno.without(prunes)),
                self.model.full_latency_ms)

    def _record(self, lam: float, cost: float | None = None) -> str | None:
        """Record the current architecture with the lambda its epoch trained under and ``cost``,
        its recorded cost as the caller computed it (else :meth:`_recorded_cost`'s); skipped
        when that equals the last record's, e.g. when only free skip connections were pruned
        since a FLOPs search's last record."""
        cost = cost if cost is not None else self._recorded_cost([])[0]
        flops = self.model.flops()
        records = self.recorder.records
        geno = self.model.genotype()
        if records and records[-1].cost(self.recorder.cost) <= cost:
            return None
        record = ArchRecord(f"arch-{len(records):03d}", self.epoch, flops, self.network_costs.params(geno), lam,
                            len(self.model.alive_ops()), geno, cost if self.latency is not None else None)
        geno.metadata = record.fields()
        records.append(record)
        if self.keeps_weights:  # the pruned supernet's weights as the discrete network's, until written out
            self.inherited[record.id] = self.model.inherited_state()
        return record.id

    @property
    def records(self) -> list[ArchRecord]:
        return self.recorder.records

    # ---- state -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "config": self.cfg.to_dict(),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "epoch": self.epoch,
            "finished": self.finished,
            "genotype": self.model.genotype().to_dict(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "w_opt": self.w_opt.state_dict(),
            "a_opt": self.a_opt.state_dict(),
            "schedule": self.schedule.state_dict(),
            "recorder": self.recorder.state_dict(),
            "history": list(self.history),
            "latency": self.latency.to_dict() if self.latency is not None else None,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device | str = "cpu") -> "GoldSearch":
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"checkpoint version {state.get('version')!r} is not {STATE_VERSION}")
        latency = LatencyTable.from_dict(state["latency"]) if state.get("latency") else None
        search = cls(Config.from_dict(state["config"]), tuple(state["input_shape"]),
                     state["num_classes"], device, latency)
        search.model.restrict_to(Genotype.from_dict(state["genotype"]))
        search.model.load_state_dict(state["model"])
        search.w_opt, search.a_opt = search._make_optimizers()
        search.w_opt.load_state_dict(state["w_opt"])
        search.a_opt.load_state_dict(state["a_opt"])
        search.schedule.load_state_dict(state["schedule"])
        search.recorder.load_state_dict(state["recorder"])
        search.epoch = int(state["epoch"])
        search.finished = bool(state["finished"])
        search.history = list(state["history"])
        return search
