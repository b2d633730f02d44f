"""Exact FLOPs and parameter counts.

Convention (that of torch.utils.flop_counter): only convolutions and linear layers count, and
one multiply-add is 2 FLOPs. Papers usually quote multiply-adds (MACs): divide by 2. Batch
norm, activations, pooling, additions and the sigmoid gates are not counted.

One formula per module type, applied to the output shape seen in a real forward pass of a
single image, so the count is exact for the input size the network runs on:

    Conv2d: 2 * out_elements * (in_channels / groups) * kh * kw
    Linear: 2 * out_elements * in_features

:class:`CostTable` measures every part of a space's full network once (stem, each cell's
input preprocessing, each operator, classifier); the FLOPs and parameters of any
architecture of that space are then sums over the parts it keeps, exact because the parts
see the same shapes in every architecture. The supernet's cost term, the random baseline's
FLOPs matching and the retrain's genotype checks all read such a table.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Hashable, Sequence

import torch
from torch import nn

from goldnas_ray.core.genotype import Genotype

if TYPE_CHECKING:  # networks import this module (the supernet measures itself with a table):
    # the network classes are imported inside the functions that build one
    from goldnas_ray.core.config import SpaceConfig
    from goldnas_ray.core.network import Network


def module_flops(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return 2 * output.numel() * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return 2 * output.numel() * module.in_features
    return 0


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, int, int],
                labels: dict[nn.Module, Hashable] | None = None,
                **forward_kwargs) -> dict[Hashable, int]:
    """FLOPs of one forward pass on a single image of ``input_shape`` (C, H, W).

    With ``labels`` (module -> label), each conv / linear is charged to the label of its
    nearest labelled ancestor; the result maps label -> FLOPs (``None`` for the rest).
    """
    owner: dict[nn.Module, Hashable] = {}
    labels = labels or {}

    def assign(module: nn.Module, label: Hashable) -> None:
        label = labels.get(module, label)
        owner[module] = label
        for child in module.children():
            assign(child, label)

    assign(model, None)
    totals: dict[Hashable, int] = defaultdict(int)
    handles = []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(
                lambda m, _inp, out: totals.__setitem__(owner[m], totals[owner[m]] + module_flops(m, out))
            ))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        model(torch.zeros(1, *input_shape, device=device), **forward_kwargs)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return dict(totals)


def total_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """FLOPs of one image through ``model`` (inference path: no auxiliary head)."""
    return sum(count_flops(model, input_shape).values())


def count_params(model: nn.Module, exclude: tuple[str, ...] = ("aux_head",)) -> int:
    """Trainable parameters of the inference network (the auxiliary head is excluded, as in
    DARTS's reported sizes)."""
    return sum(p.numel() for name, p in model.named_parameters()
               if not any(name.startswith(prefix) for prefix in exclude))


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
