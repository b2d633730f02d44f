"""Exact FLOPs and parameter counts of any module.

Convention (that of torch.utils.flop_counter): only convolutions and linear layers count, and
one multiply-add is 2 FLOPs. Papers usually quote multiply-adds (MACs): divide by 2. Batch
norm, activations, pooling, additions and the sigmoid gates are not counted.

One formula per module type, applied to the output shape seen in a real forward pass of a
single image, so the count is exact for the input size the network runs on:

    Conv2d: 2 * out_elements * (in_channels / groups) * kh * kw
    Linear: 2 * out_elements * in_features

The networks count themselves with these (``DiscreteNet.flops``); the tables of a space's
parts (``core.costs.CostTable``) measure a network built from the space: this module stays
below both, so neither imports the other in a circle.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Hashable

import torch
from torch import nn


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
