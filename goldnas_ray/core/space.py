"""The relaxed GOLD-NAS search space: cells, nodes, edges and their operators.

Nodes of a cell are numbered 0..N+1: 0 and 1 are the cell's inputs (outputs of the two
previous cells), 2..N+1 the intermediate nodes. Node j receives an edge from every earlier
node, so a cell has sum_{j<N} (2 + j) edges (14 for N = 4). Unlike DARTS, every
(cell, edge, operator) is searched independently: an edge may keep any subset of its
operators and a node any number of inputs, so the space holds 2^(ops x edges x cells)
architectures (the constraint that each node keeps at least one input removes a vanishing
fraction of them and is ignored in the size, as in the paper).
"""
from __future__ import annotations

import math
from typing import NamedTuple


class Edge(NamedTuple):
    """A directed edge from node ``src`` to intermediate node ``dst`` of one cell."""

    src: int
    dst: int

    @property
    def key(self) -> str:
        """Name usable as a ``ModuleDict`` key."""
        return f"e{self.src}_{self.dst}"


class OpKey(NamedTuple):
    """One searchable operator: (cell index, edge, operator name)."""

    cell: int
    src: int
    dst: int
    op: str

    @property
    def edge(self) -> Edge:
        return Edge(self.src, self.dst)


def cell_edges(num_nodes: int) -> list[Edge]:
    """All edges of a cell with ``num_nodes`` intermediate nodes, grouped by destination."""
    return [Edge(src, dst) for dst in range(2, num_nodes + 2) for src in range(dst)]


def reduction_cells(num_cells: int) -> set[int]:
    """Indices of the reduction cells: at L/3 and 2L/3 (none for fewer than 3 cells)."""
    if num_cells < 3:
        return set()
    return {num_cells // 3, 2 * num_cells // 3}


def auxiliary_cell(num_cells: int) -> int:
    """Index of the cell whose output feeds the auxiliary head (the 2L/3 reduction)."""
    return 2 * num_cells // 3


def log10_space_size(num_cells: int, num_nodes: int, num_ops: int) -> float:
    """log10 of the number of architectures: 2^(ops x edges x cells)."""
    return num_ops * len(cell_edges(num_nodes)) * num_cells * math.log10(2)


class SpaceError(ValueError):
    """A space that cannot be built (an input size its reductions cannot halve)."""


STEM_STRIDE = {"cifar": 1, "imagenet": 8}  # how much a stem shrinks the image before cell 0


def check_spatial(input_size: int, num_cells: int, stem: str = "cifar") -> None:
    """Reductions halve the feature map with factorized reduce, which needs an even size."""
    stride = STEM_STRIDE[stem]
    if input_size % stride or input_size < 2 * stride:
        raise SpaceError(f"the {stem} stem divides the input size by {stride}; {input_size} is not a "
                         f"multiple of {stride} (ImageNet: 224)")
    size = input_size // stride
    for k in range(num_cells):
        if k in reduction_cells(num_cells):
            if size % 2 or size < 2:
                raise SpaceError(
                    f"input size {input_size} reaches {size} at reduction cell {k}; "
                    f"it must be even there (use an input size divisible by 4)"
                )
            size //= 2
