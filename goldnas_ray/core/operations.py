"""Candidate operators of the DARTS / GOLD-NAS space.

``PRIMITIVES`` names them, ``OPS`` builds one from its name: ``OPS[name](C, stride, affine)``.
GOLD-NAS searches over ``skip_connect`` and ``sep_conv_3x3`` by default; the other DARTS
operators are available by name. Convolutions carry no bias (batch norm follows them), so a
convolution's FLOPs are exactly 2 x multiply-adds, as torch.utils.flop_counter counts them.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class ReLUConvBN(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class DilConv(nn.Sequential):
    """ReLU, depthwise (dilated) conv, pointwise conv, BN."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int,
                 dilation: int, affine: bool):
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(c_in, c_in, kernel, stride, padding, dilation=dilation, groups=c_in, bias=False),
            nn.Conv2d(c_in, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out, affine=affine),
        )


class SepConv(nn.Sequential):
    """Two stacked DilConv blocks without dilation, the first one strided (as in DARTS)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, padding: int, affine: bool):
        super().__init__(
            DilConv(c_in, c_in, kernel, stride, padding, 1, affine),
            DilConv(c_in, c_out, kernel, 1, padding, 1, affine),
        )


class _Shift(torch.autograd.Function):
    """``x[:, :, 1:, 1:]`` whose gradient keeps ``x``'s memory format. Autograd's own slice
    gradient is a contiguous (NCHW) tensor, and a channels-last network then runs every
    element-wise backward on mixed layouts, several times slower."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.shape, ctx.format = x.shape, _memory_format(x)
        return x[:, :, 1:, 1:]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.new_zeros(ctx.shape).contiguous(memory_format=ctx.format)
        out[:, :, 1:, 1:] = grad
        return out


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class FactorizedReduce(nn.Module):
    """Halves the spatial size with two offset 1x1 stride-2 convs (needs an even size)."""

    def __init__(self, c_in: int, c_out: int, affine: bool):
        super().__init__()
        if c_out % 2:
            raise ValueError(f"FactorizedReduce needs an even channel count, got {c_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(c_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(_Shift.apply(x))], dim=1))


class Pool(nn.Sequential):
    def __init__(self, kind: str, c: int, stride: int, affine: bool):
        pool = (nn.MaxPool2d(3, stride=stride, padding=1) if kind == "max"
                else nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False))
        super().__init__(pool, nn.BatchNorm2d(c, affine=affine))


def _skip(c: int, stride: int, affine: bool) -> nn.Module:
    return nn.Identity() if stride == 1 else FactorizedReduce(c, c, affine)


OPS: dict[str, Callable[[int, int, bool], nn.Module]] = {
    "skip_connect": _skip,
    "sep_conv_3x3": lambda c, s, a: SepConv(c, c, 3, s, 1, a),
    "sep_conv_5x5": lambda c, s, a: SepConv(c, c, 5, s, 2, a),
    "sep_conv_7x7": lambda c, s, a: SepConv(c, c, 7, s, 3, a),
    "dil_conv_3x3": lambda c, s, a: DilConv(c, c, 3, s, 2, 2, a),
    "dil_conv_5x5": lambda c, s, a: DilConv(c, c, 5, s, 4, 2, a),
    "max_pool_3x3": lambda c, s, a: Pool("max", c, s, a),
    "avg_pool_3x3": lambda c, s, a: Pool("avg", c, s, a),
}
PRIMITIVES: tuple[str, ...] = tuple(OPS)
