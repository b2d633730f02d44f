"""The network skeleton shared by the supernet and the discrete networks it yields.

stem conv -> L cells (reduction at L/3 and 2L/3) -> global pool -> linear classifier, with an
optional auxiliary head on the 2L/3 cell (DARTS). A cell preprocesses its two inputs to C
channels, computes each intermediate node as the sum of its incoming edges, and outputs the
concatenation of the intermediate nodes. What an edge does is left to ``edge_factory``:
sigmoid-gated operators in the supernet, plain operators in a discrete network.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Hashable, Iterator

import torch
from torch import nn

from goldnas_ray.core.genotype import Genotype
from goldnas_ray.core.operations import FactorizedReduce, ReLUConvBN
from goldnas_ray.core.space import Edge, OpKey, auxiliary_cell

EdgeFactory = Callable[[tuple[str, ...], int, int, bool], nn.Module]


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block (a network's construction: torch's initialisers draw from the global RNG)
    with the global CPU RNG seeded by ``seed``, and give the RNG back as it was: the caller's
    random state is never touched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class Cell(nn.Module):
    def __init__(self, edges: dict[Edge, tuple[str, ...]], num_nodes: int, c_pp: int, c_p: int,
                 c: int, reduction: bool, reduction_prev: bool, affine: bool,
                 edge_factory: EdgeFactory):
        super().__init__()
        self.reduction = reduction
        self.num_nodes = num_nodes
        self.pre = nn.ModuleDict()
        if any(e.src == 0 for e in edges):
            self.pre["s0"] = (FactorizedReduce(c_pp, c, affine) if reduction_prev
                              else ReLUConvBN(c_pp, c, 1, 1, 0, affine))
        if any(e.src == 1 for e in edges):
            self.pre["s1"] = ReLUConvBN(c_p, c, 1, 1, 0, affine)
        self.edges = nn.ModuleDict()
        self._edge_of = {edge.key: edge for edge in edges}
        for edge, ops in sorted(edges.items()):
            stride = 2 if reduction and edge.src < 2 else 1
            self.edges[edge.key] = edge_factory(tuple(ops), c, stride, affine)
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the routing table after edges were removed."""
        self.inputs: list[list[Edge]] = [
            [Edge(src, dst) for src in range(dst) if Edge(src, dst).key in self.edges]
            for dst in range(2, self.num_nodes + 2)]
        for src in (0, 1):
            if f"s{src}" in self.pre and not any(e.src == src for edges in self.inputs for e in edges):
                del self.pre[f"s{src}"]

    def edge_items(self) -> Iterator[tuple[Edge, nn.Module]]:
        """(edge, its module) of every edge still present, in construction order."""
        for key, module in self.edges.items():
            yield self._edge_of[key], module

    def pre_items(self) -> Iterator[tuple[int, nn.Module]]:
        """(input node 0 or 1, its preprocessing module) of the inputs the cell still reads."""
        for src in (0, 1):
            if f"s{src}" in self.pre:
                yield src, self.pre[f"s{src}"]

    def forward(self, s0: torch.Tensor | None, s1: torch.Tensor | None) -> torch.Tensor:
        states: list[torch.Tensor | None] = [
            self.pre["s0"](s0) if "s0" in self.pre else None,
            self.pre["s1"](s1) if "s1" in self.pre else None,
        ]
        for edges in self.inputs:
            node = None
            for edge in edges:
                out = self.edges[edge.key](states[edge.src])
                node = out if node is None else node + out
            states.append(node)
        return torch.cat(states[2:], dim=1)


class AuxiliaryHead(nn.Module):
    """DARTS's auxiliary classifier, made size-agnostic with an adaptive pool to 2x2."""

    def __init__(self, c: int, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.AdaptiveAvgPool2d(2),
            nn.Conv2d(c, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class CifarStem(nn.Sequential):
    """DARTS's CIFAR stem: one 3x3 convolution at full resolution; both first inputs see it."""

    def __init__(self, in_channels: int, c_out: int):
        super().__init__(nn.Conv2d(in_channels, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = super().forward(x)
        return y, y


class ImageNetStem(nn.Module):
    """DARTS's ImageNet stem: two stride-2 3x3 convolutions give the first cell's s0 (1/4 of
    the input), a third gives s1 (1/8: 224 -> 28), so cell 0 treats s0 as a reduction's
    output."""

    def __init__(self, in_channels: int, c: int):
        super().__init__()
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, c // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c // 2),
            nn.ReLU(inplace=False),
            nn.Conv2d(c // 2, c, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c),
        )
        self.stem1 = nn.Sequential(nn.ReLU(inplace=False), nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)
        return s0, self.stem1(s0)


class Network(nn.Module):
    """Stem, cells and head for the architecture ``geno``; dead cells are not built."""

    def __init__(self, geno: Genotype, affine: bool, edge_factory: EdgeFactory, auxiliary: bool):
        super().__init__()
        c = geno.init_channels
        if geno.stem == "imagenet":
            self.stem: nn.Module = ImageNetStem(geno.in_channels, c)
            c_pp, c_p, reduction_prev = c, c, True
        else:
            c_stem = geno.stem_multiplier * c
            self.stem = CifarStem(geno.in_channels, c_stem)
            c_pp, c_p, reduction_prev = c_stem, c_stem, False
        self.live = geno.live_cells()
        self.aux_index = auxiliary_cell(geno.num_cells) if auxiliary else -1
        self.cells = nn.ModuleList()
        c_aux = c_p
        for k, cell_geno in enumerate(geno.cells):
            if cell_geno.reduction:
                c *= 2
            if self.live[k]:
                self.cells.append(Cell(cell_geno.edges, geno.num_nodes, c_pp, c_p, c,
                                       cell_geno.reduction, reduction_prev, affine, edge_factory))
            else:
                self.cells.append(nn.Identity())  # placeholder keeps indices aligned
            reduction_prev = cell_geno.reduction
            c_pp, c_p = c_p, geno.num_nodes * c
            if k == self.aux_index:
                c_aux = c_p
        self.aux_head = AuxiliaryHead(c_aux, geno.num_classes) if self.aux_index >= 0 else None
        if self.aux_head is not None and not self.live[self.aux_index]:
            self.aux_head = None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, geno.num_classes)

    def parts(self) -> Iterator[tuple[Hashable, nn.Module]]:
        """(label, module) of every part a cost table charges separately: ``"stem"``,
        ``"classifier"``, ``("pre", cell, input)`` and one :class:`OpKey` per operator of the
        live cells. Whatever lies outside them (pooling, the auxiliary head) costs nothing here."""
        yield "stem", self.stem
        yield "classifier", self.classifier
        for k, cell in enumerate(self.cells):
            if not self.live[k]:
                continue
            for src, module in cell.pre_items():
                yield ("pre", k, src), module
            for edge, edge_module in cell.edge_items():
                for op, module in edge_module.ops.items():
                    yield OpKey(k, edge.src, edge.dst, op), module

    def forward_features(self, x: torch.Tensor, with_aux: bool = False):
        s0, s1 = self.stem(x)
        aux = None
        for k, cell in enumerate(self.cells):
            out = cell(s0, s1) if self.live[k] else None
            s0, s1 = s1, out
            if with_aux and k == self.aux_index and self.aux_head is not None:
                aux = self.aux_head(out)
        return s1, aux

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(features).flatten(1))

    def forward(self, x: torch.Tensor, with_aux: bool = False):
        """Logits; with ``with_aux`` a pair (logits, auxiliary logits or None)."""
        features, aux = self.forward_features(x, with_aux)
        logits = self.forward_head(features)
        return (logits, aux) if with_aux else logits
