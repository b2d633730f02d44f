"""Random architectures of the relaxed space with FLOPs matched to given targets: the baseline
that shows whether a search paid.

An architecture is drawn by keeping each (cell, edge, operator) independently with
probability p (a node left with no input is redrawn, so every node keeps at least one).
With p = 1/2 this is the uniform distribution over the relaxed space; such architectures all
sit near half the supernet's FLOPs, so to match a target, p is adjusted while drawing
(stochastic approximation: lower after a draw above the target, higher after one below) and
the first draw within ``tolerance`` of the target is kept. For a given number of kept
operators, every architecture is equally likely.

FLOPs and parameters are summed from the space's cost table (``goldnas_ray.core.costs``), so
thousands of draws cost milliseconds each.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from goldnas_ray.core.config import SpaceConfig
from goldnas_ray.core.costs import CostTable
from goldnas_ray.core.genotype import CellGenotype, Genotype
from goldnas_ray.core.space import Edge, cell_edges, reduction_cells


@dataclass
class SpaceTable:
    """One space at one input shape, with the costs of every part of its discrete networks."""

    space: SpaceConfig
    input_shape: tuple[int, int, int]
    num_classes: int
    costs: CostTable

    @classmethod
    def build(cls, space: SpaceConfig, input_shape: Sequence[int], num_classes: int) -> "SpaceTable":
        return cls(space, tuple(input_shape), num_classes,
                   CostTable.for_space(space, input_shape, num_classes))

    def flops(self, geno: Genotype) -> int:
        """FLOPs of ``geno``'s network on one image (equal to ``total_flops(build_network(geno))``)."""
        return self.costs.flops(geno)

    def params(self, geno: Genotype) -> int:
        """Parameters of ``geno``'s network (equal to ``count_params(build_network(geno))``)."""
        return self.costs.params(geno)

    def matches(self, geno: Genotype) -> str | None:
        """Why ``geno`` does not belong to this table's space, or None when it does."""
        s = self.space
        expected = {"num_cells": s.num_cells, "num_nodes": s.num_nodes, "init_channels": s.init_channels,
                    "stem_multiplier": s.stem_multiplier, "stem": s.stem, "in_channels": self.input_shape[0],
                    "input_size": self.input_shape[1], "num_classes": self.num_classes}
        for name, value in expected.items():
            if getattr(geno, name) != value:
                return f"{name} is {getattr(geno, name)}, the search space has {value}"
        unknown = {op for cell in geno.cells for ops in cell.edges.values() for op in ops} - set(s.operators)
        if unknown:
            return f"operators {sorted(unknown)} are not in the search space ({', '.join(s.operators)})"
        return None


def sample_genotype(table: SpaceTable, keep_prob: float, rng: np.random.Generator) -> Genotype:
    """One architecture: every (cell, edge, operator) kept with probability ``keep_prob``."""
    s = table.space
    edges_by_node: dict[int, list[Edge]] = {}
    for e in cell_edges(s.num_nodes):
        edges_by_node.setdefault(e.dst, []).append(e)
    cells = []
    reductions = reduction_cells(s.num_cells)
    for k in range(s.num_cells):
        kept: dict[Edge, tuple[str, ...]] = {}
        for node_edges in edges_by_node.values():
            while True:  # redraw a node that would be left without an input
                mask = rng.random((len(node_edges), len(s.operators))) < keep_prob
                if mask.any():
                    break
            for e, row in zip(node_edges, mask):
                ops = tuple(op for op, keep in zip(s.operators, row) if keep)
                if ops:
                    kept[e] = ops
        cells.append(CellGenotype(k in reductions, kept))
    c, h, _ = table.input_shape
    return Genotype(cells, s.num_nodes, s.init_channels, s.stem_multiplier, h, c, table.num_classes,
                    stem=s.stem)


def spread_architectures(space: SpaceConfig, input_shape: Sequence[int], num_classes: int, n: int, seed: int,
                         low: float = 0.1, high: float = 0.9) -> list[Genotype]:
    """``n`` random architectures of ``space`` spread over its FLOPs (keep probabilities from
    ``low`` to ``high``), drawn with ``seed``: a latency table's calibration set and the
    networks its check measures."""
    table = SpaceTable.build(space, tuple(input_shape), num_classes)
    rng = np.random.default_rng(seed)
    return [sample_genotype(table, low + (high - low) * i / max(n - 1, 1), rng) for i in range(n)]


def _signature(geno: Genotype) -> tuple:
    return tuple(tuple(sorted((e, ops) for e, ops in cell.edges.items())) for cell in geno.cells)


def sample_matched(table: SpaceTable, targets: Sequence[float], seed: int, tolerance: float = 0.02,
                   max_draws: int = 20000, avoid: Sequence[Genotype] = ()) -> list[Genotype]:
    """One random architecture per FLOPs target, each within ``tolerance`` (relative) of its
    target, all distinct from each other and from ``avoid``. Metadata holds the target, the
    keep probability of the accepted draw, its FLOPs and parameters."""
    rng = np.random.default_rng(seed)
    seen = {_signature(g) for g in avoid}
    out = []
    for target in targets:
        logit, step = 0.0, 0.2  # p = 1/2: start from the uniform distribution
        for draw in range(max_draws):
            p = 1 / (1 + math.exp(-logit))
            geno = sample_genotype(table, p, rng)
            flops = table.flops(geno)
            if abs(flops - target) <= tolerance * target and _signature(geno) not in seen:
                break
            logit += -step if flops > target else step
            step = max(0.02, step * 0.995)
        else:
            raise ValueError(f"no random architecture within {100 * tolerance:g}% of {target:.4g} "
                             f"FLOPs after {max_draws} draws")
        seen.add(_signature(geno))
        geno.metadata = {"flops": flops, "params": table.params(geno),
                         "target_flops": float(target), "keep_prob": round(p, 4), "draws": draw + 1}
        out.append(geno)
    return out


def matched_targets(flops: Sequence[float], k: int) -> list[float]:
    """``k`` FLOPs targets spread over the searched architectures' FLOPs: exactly those FLOPs
    when k equals their number, evenly spaced quantiles (on a log scale) otherwise."""
    if k <= 0:
        return []
    values = np.log(np.sort(np.asarray(flops, dtype=float)))
    if len(values) == 0:
        raise ValueError("no searched architectures to match FLOPs to")
    qs = np.linspace(0, 1, k) if k > 1 else np.array([0.5])
    return [float(round(v)) for v in np.exp(np.quantile(values, qs))]
