"""The FLOPs and parameters of a space's architectures, from a table of its parts.

The counting convention and its formulas are ``core.counting``'s (re-exported here): only
convolutions and linear layers count, one multiply-add is 2 FLOPs, exact for the input size.

:class:`CostTable` measures every part of a space's full network once (stem, each cell's
input preprocessing, each operator, classifier); the FLOPs and parameters of any
architecture of that space are then sums over the parts it keeps, exact because the parts
see the same shapes in every architecture. The supernet's cost term, the random baseline's
FLOPs matching and the retrain's genotype checks all read such a table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Hashable, Sequence

from goldnas_ray.core.counting import count_flops
from goldnas_ray.core.genotype import Genotype

if TYPE_CHECKING:  # networks import this module (the supernet measures itself with a table):
    # the network classes are imported inside the functions that build one
    from goldnas_ray.core.config import SpaceConfig
    from goldnas_ray.core.network import Network


@dataclass
class CostTable:
    """FLOPs (one image) and parameters of every part of one space's full network."""

    flops_by_part: dict[Hashable, int]
    params_by_part: dict[Hashable, int]

    @classmethod
    def measure(cls, net: "Network", input_shape: tuple[int, int, int]) -> "CostTable":
        """The table of ``net``'s parts (see ``Network.parts``), measured in one forward pass."""
        labels = {module: label for label, module in net.parts()}
        flops = count_flops(net, input_shape, labels)
        flops.pop(None, None)  # pooling and the auxiliary head: no part, no FLOPs counted here
        params = {label: sum(p.numel() for p in module.parameters()) for module, label in labels.items()}
        return cls(dict(flops), params)

    @classmethod
    def for_space(cls, space: "SpaceConfig", input_shape: Sequence[int], num_classes: int) -> "CostTable":
        """The table of the discrete networks of ``space`` (what ``build_network`` builds)."""
        from goldnas_ray.core.discrete import build_network
        from goldnas_ray.core.network import seeded

        c, h, _ = input_shape
        full = Genotype.full(space.num_cells, space.num_nodes, space.operators, space.init_channels,
                             space.stem_multiplier, h, c, num_classes, space.stem)
        with seeded(0):  # its weights are never used: only their count and shapes
            net = build_network(full)
        return cls.measure(net, (c, h, h))

    def _parts(self, geno: Genotype) -> list[Hashable]:
        live = geno.live_cells()
        parts: list[Hashable] = ["stem", "classifier"]
        for k, cell in enumerate(geno.cells):
            if live[k]:
                parts += [("pre", k, src) for src in (0, 1) if cell.uses_input(src)]
                parts += geno.op_keys_of(k)
        return parts

    def flops(self, geno: Genotype) -> int:
        """FLOPs of ``geno``'s network on one image (= ``total_flops(build_network(geno))``)."""
        return sum(self.flops_by_part.get(p, 0) for p in self._parts(geno))

    def params(self, geno: Genotype) -> int:
        """Parameters of the network this table was measured on, restricted to ``geno``
        (for a ``for_space`` table: ``count_params(build_network(geno))``)."""
        return sum(self.params_by_part.get(p, 0) for p in self._parts(geno))
