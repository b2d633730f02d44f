"""The discrete network of one architecture, built from its genotype for retraining, from
scratch or from the weights the search's supernet had when it recorded the architecture
(``SuperNet.inherited_state``), at the width it was searched at or another
(``build_network(geno, channels=...)``: the same cells, more or fewer channels)."""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from goldnas_ray.core.counting import count_params, total_flops
from goldnas_ray.core.genotype import Genotype
from goldnas_ray.core.network import Network
from goldnas_ray.core.operations import OPS


def drop_path(x: torch.Tensor, drop_prob: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero whole samples of a branch with probability ``drop_prob`` (rescaling survivors); the
    mask is drawn from ``generator`` (one on ``x``'s device), else from the global RNG."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep, generator=generator)
    return x * mask / keep


class PlainEdge(nn.Module):
    """Sum of the edge's operators; drop-path on every operator but the identity (DARTS).

    An inherited network's edge may carry ``scale``, a fixed output scale per operator (a
    buffer, in ``ops`` order): the search's gate of an operator with no affine layer to fold
    it into (the identity), 1 for the others."""

    scale: torch.Tensor | None

    def __init__(self, ops: tuple[str, ...], c: int, stride: int, affine: bool):
        super().__init__()
        self.ops = nn.ModuleDict({name: OPS[name](c, stride, affine) for name in ops})
        self.register_buffer("scale", None)
        self.drop_prob = 0.0
        self.generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for i, op in enumerate(self.ops.values()):
            y = op(x)
            if self.scale is not None:
                y = y * self.scale[i]
            if self.training and self.drop_prob > 0 and not isinstance(op, nn.Identity):
                y = drop_path(y, self.drop_prob, self.generator)
            out = y if out is None else out + y
        return out


class DiscreteNet(Network):
    def __init__(self, geno: Genotype, auxiliary: bool = False):
        super().__init__(geno, affine=True, edge_factory=PlainEdge, auxiliary=auxiliary)
        self.genotype = geno

    def load_state_dict(self, state, strict: bool = True, assign: bool = False):
        """As nn.Module's; an edge's ``scale`` (an inherited network's) is made when ``state``
        holds one, on the network's device (a state read to the CPU may load into a network on
        a GPU)."""
        device = next(self.parameters()).device
        for name, module in self.named_modules():
            if isinstance(module, PlainEdge) and f"{name}.scale" in state:
                module.scale = torch.ones(len(module.ops), device=device)
        return super().load_state_dict(state, strict, assign)

    def flops(self) -> int:
        """FLOPs of one image through the network (``counting.total_flops``: a multiply-add is 2)."""
        g = self.genotype
        return total_flops(self, (g.in_channels, g.input_size, g.input_size))

    def params(self) -> int:
        """Trainable parameters, the auxiliary head excluded (``counting.count_params``)."""
        return count_params(self)

    def set_drop_path(self, prob: float, generator: torch.Generator | None = None) -> None:
        """Drop-path probability of every edge, its masks drawn from ``generator`` (on the
        network's device; None: the global RNG)."""
        for module in self.modules():
            if isinstance(module, PlainEdge):
                module.drop_prob, module.generator = prob, generator


def load_inherited(net: DiscreteNet, state: dict[str, torch.Tensor]) -> None:
    """Give ``net`` the weights its architecture had in the search (``SuperNet.inherited_state``):
    every part but the auxiliary head, which keeps its own initial weights."""
    try:
        found = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        raise ValueError(f"the inherited weights are not this architecture's: {exc}") from exc
    missing = [k for k in found.missing_keys if not k.startswith("aux_head.")]
    if missing or found.unexpected_keys:
        raise ValueError(f"the inherited weights are not this architecture's: missing {missing[:3]}, "
                         f"unexpected {found.unexpected_keys[:3]}")


def build_network(geno: Genotype, auxiliary: bool = False, channels: int | None = None) -> DiscreteNet:
    """The trainable network of ``geno`` (its FLOPs are the FLOPs recorded for it). ``channels``:
    the same cells at another width, ``channels`` in place of the genotype's ``init_channels``
    (each cell's channels scale with it; reduction cells still double them); the network's
    ``genotype`` is then the widened one and ``net.flops()`` / ``net.params()`` say its cost
    (FLOPs grow about with the square of the width)."""
    if channels is not None:
        geno = widened(geno, channels)
    return DiscreteNet(geno, auxiliary=auxiliary)


def widened(geno: Genotype, channels: int) -> Genotype:
    """``geno`` with ``channels`` initial channels; its recorded FLOPs and parameters, which no
    longer hold, are dropped from its metadata."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    metadata = {k: v for k, v in geno.metadata.items() if k not in ("flops", "params")}
    return replace(geno, init_channels=channels, metadata=metadata | {"widened_from": geno.init_channels})
