"""GOLD-NAS's per-epoch decisions: which operators to prune, how lambda moves, what to record.

Pure functions and small state objects, independent of the network, so they are tested on
hand-made weights (docs/algorithm.md, "Pruning", "Lambda", "Recording").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from goldnas_ray.core.records import ArchRecord
from goldnas_ray.core.space import OpKey


def select_prunes(gates: dict[OpKey, float], xi_min: float, xi_max: float, n0: int) -> list[OpKey]:
    """Operators to prune this epoch, from the alive operators' gates sigmoid(alpha).

    An operator's weight is its gate over the sum of the gates of the alive operators entering
    the same node. In each of n0 rounds (as the public GOLD-NAS code does): the weights are
    computed afresh; every operator whose weight is <= xi_min goes, each removal taking its
    gate out of its node's sum for the operators visited after it; then the weakest remaining
    operator goes if its weight is <= xi_max. The last operator entering a node is never
    pruned, so the network stays connected. Operators are visited in ``gates``' order (within a
    node: by source node, then by operator), ties going to the first visited, so every process
    decides the same.
    """
    alive = dict(gates)
    pruned: list[OpKey] = []
    for _ in range(n0):
        sums: dict[tuple[int, int], float] = {}
        count: dict[tuple[int, int], int] = {}
        for key, gate in alive.items():
            node = (key.cell, key.dst)
            sums[node] = sums.get(node, 0.0) + gate
            count[node] = count.get(node, 0) + 1
        weakest, weakest_weight = None, float("inf")
        for key in list(alive):
            node = (key.cell, key.dst)
            weight = alive[key] / sums[node]
            if weight <= xi_min:
                if count[node] > 1:
                    sums[node] -= alive.pop(key)
                    count[node] -= 1
                    pruned.append(key)
            elif weight < weakest_weight:
                weakest, weakest_weight = key, weight
        if weakest is not None and weakest_weight <= xi_max and count[(weakest.cell, weakest.dst)] > 1:
            del alive[weakest]
            pruned.append(weakest)
    return pruned


@dataclass
class LambdaSchedule:
    """The variable resource constraint.

    If at least n0 operators were pruned this epoch, lambda <- lambda / c0 and
    delta <- lambda0; otherwise delta <- c0 * delta and lambda <- lambda + delta.
    lambda starts at 0 and delta at lambda0.
    """

    lambda0: float
    c0: float
    n0: int
    lam: float = 0.0
    delta: float = -1.0

    def __post_init__(self) -> None:
        if self.delta < 0:
            self.delta = self.lambda0

    def update(self, num_pruned: int) -> None:
        if num_pruned >= self.n0:
            self.lam /= self.c0
            self.delta = self.lambda0
        else:
            self.delta *= self.c0
            self.lam += self.delta

    def state_dict(self) -> dict[str, float]:
        return {"lam": self.lam, "delta": self.delta}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.lam, self.delta = float(state["lam"]), float(state["delta"])


@dataclass
class ParetoRecorder:
    """Decides which architectures a search records (the final one is always recorded).

    ``paper``: an architecture whose operator set held still for more than t0 epochs (epochs
    without pruning) is recorded before the pruning that changes it (GOLD-NAS's rule). ``dense``: "held still"
    counts FLOPs, so pruning a free operator (a stride-1 skip) does not reset it; and an
    architecture is also recorded before a pruning that would take the FLOPs more than
    ``gap`` x the supernet's below the last record, so consecutive records are never further
    apart than that (unless one epoch's pruning alone is). No record is taken within
    ``min_gap`` x the supernet's FLOPs of the last one. ``cost`` ``latency``: the same, in
    predicted latency instead of FLOPs (the caller passes latencies).
    """

    t0: int
    rule: str = "paper"
    gap: float = 0.12
    min_gap: float = 0.03
    cost: str = "flops"  # or "latency": what the gaps are measured in (ArchRecord.cost)
    stable: int = 0
    records: list[ArchRecord] = field(default_factory=list)

    def end_epoch(self, will_change: bool, flops: float = 0.0, flops_next: float = 0.0,
                  full_flops: float = 1.0) -> bool:
        """An epoch ended; ``will_change``: its pruning is about to change the architecture
        (from ``flops`` to ``flops_next``). True when the current architecture should be
        recorded first. An epoch that changes nothing (for ``dense``: no FLOPs) counts one
        more epoch held still; as in the public code, an architecture is recorded when
        pruning resumes after more than t0 such epochs."""
        changes = will_change if self.rule == "paper" else will_change and flops_next != flops
        if not changes:
            self.stable += 1
            return False
        if self.rule == "paper":
            return self.stable > self.t0
        last = self.records[-1].cost(self.cost) if self.records else full_flops
        if self.records and last - flops < self.min_gap * full_flops:
            return False
        return self.stable > self.t0 or last - flops_next > self.gap * full_flops

    def changed(self, flops_changed: bool = True) -> None:
        if self.rule == "paper" or flops_changed:
            self.stable = 0

    def state_dict(self) -> dict[str, Any]:
        return {"t0": self.t0, "stable": self.stable, "records": [r.to_dict() for r in self.records]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stable = int(state["stable"])
        self.records = [ArchRecord.from_dict(r) for r in state["records"]]
