"""GOLD-NAS's per-epoch decisions: which operators to prune, how lambda moves, what to record.

Pure functions and small state objects, independent of the network, so they are tested on
hand-made weights (DESIGN.md section 4).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from goldnas_ray.core.records import ArchRecord
from goldnas_ray.core.space import OpKey


def select_prunes(weights: dict[OpKey, float], xi_min: float, xi_max: float, n0: int) -> list[OpKey]:
    """Operators to prune this epoch.

    ``weights`` maps each alive operator to sigmoid(alpha) normalised over the alive operators
    entering the same node. Every operator with weight <= xi_min goes; then, up to n0 times,
    the weakest remaining operator goes if its weight <= xi_max. The last operator entering a
    node is never pruned, so the network stays connected. Ties break on the key, so every
    process decides the same.
    """
    alive_per_node: dict[tuple[int, int], int] = {}
    for key in weights:
        alive_per_node[(key.cell, key.dst)] = alive_per_node.get((key.cell, key.dst), 0) + 1
    ordered = sorted(weights, key=lambda k: (weights[k], k))
    pruned: list[OpKey] = []

    def take(key: OpKey) -> bool:
        node = (key.cell, key.dst)
        if alive_per_node[node] <= 1:
            return False
        alive_per_node[node] -= 1
        pruned.append(key)
        return True

    for key in ordered:
        if weights[key] <= xi_min:
            take(key)
    extra = 0
    for key in ordered:
        if extra >= n0 or weights[key] > xi_max:
            break
        if key in pruned:
            continue
        if take(key):
            extra += 1
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
    """Records architectures that held still for more than t0 epochs.

    ``stable`` counts the epochs trained since the architecture last changed. When pruning
    is about to change an architecture that has been stable for more than t0 epochs, it is
    recorded first; the final architecture is recorded too.
    """

    t0: int
    stable: int = 0
    records: list[ArchRecord] = field(default_factory=list)

    def end_epoch(self, will_change: bool) -> bool:
        """Count one more stable epoch; True when the current architecture should be
        recorded before ``will_change`` pruning alters it."""
        self.stable += 1
        return will_change and self.stable > self.t0

    def changed(self) -> None:
        self.stable = 0

    def state_dict(self) -> dict[str, Any]:
        return {"t0": self.t0, "stable": self.stable, "records": [r.to_dict() for r in self.records]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stable = int(state["stable"])
        self.records = [ArchRecord.from_dict(r) for r in state["records"]]
