"""Every operator of the OPS registry, as timm tests every registered model: shapes at stride 1
and 2, no NaN, a gradient for every parameter, FLOPs equal to torch's own counter."""
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from goldnas_ray.core.counting import total_flops
from goldnas_ray.core.operations import OPS, PRIMITIVES


@pytest.mark.parametrize("name", PRIMITIVES)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("affine", [False, True])
def test_operator_shape_gradient_and_flops(name, stride, affine):
    torch.manual_seed(0)
    c, size = 6, 8
    op = OPS[name](c, stride, affine)
    x = torch.randn(2, c, size, size, requires_grad=True)
    y = op(x)
    assert y.shape == (2, c, size // stride, size // stride)
    assert torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in op.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
    assert all((bn.weight is not None) == affine for bn in op.modules() if isinstance(bn, nn.BatchNorm2d))
    op.eval()
    with FlopCounterMode(display=False) as counter:
        op(torch.zeros(1, c, size, size))
    assert total_flops(op, (c, size, size)) == counter.get_total_flops()


def test_registry_names_are_the_primitives():
    assert PRIMITIVES == tuple(OPS) and len(set(PRIMITIVES)) == 8
    assert {"skip_connect", "sep_conv_3x3"} <= set(PRIMITIVES)
