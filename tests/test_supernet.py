"""Supernet structure, FLOPs against torch's own counter, pruning, gradients."""
import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from goldnas_ray import build_network
from goldnas_ray.core.counting import count_params, total_flops
from goldnas_ray.core.operations import PRIMITIVES
from goldnas_ray.core.space import OpKey, cell_edges, log10_space_size
from goldnas_ray.core.supernet import SuperNet


def torch_flops(model, shape, **kw):
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *shape), **kw)
    return counter.get_total_flops()


def test_space_size_matches_the_paper():
    assert len(cell_edges(4)) == 14
    # every gated operator is kept or pruned: 2^(2 operators x 14 edges x cells) architectures,
    # 2^392 = 1.0 x 10^118 with 14 cells and 2^560 = 3.8 x 10^168 with 20 (the paper's "10^168"
    # is that power of ten, not log10 rounded: 168.58)
    for cells, power in ((14, 118), (20, 168)):
        exact = 2 ** (2 * 14 * cells)
        assert log10_space_size(cells, 4, 2) == pytest.approx(math.log10(exact), abs=1e-9)
        assert math.floor(log10_space_size(cells, 4, 2)) == power == len(str(exact)) - 1


@pytest.mark.parametrize("cells,nodes,ops,c,size,in_ch", [
    (3, 4, ("skip_connect", "sep_conv_3x3"), 4, 8, 1),
    (5, 3, PRIMITIVES, 6, 16, 3),
    (8, 4, ("skip_connect", "sep_conv_3x3", "dil_conv_5x5"), 8, 32, 3),
])
def test_flops_agree_with_flop_counter_mode(cells, nodes, ops, c, size, in_ch):
    net = SuperNet(cells, nodes, ops, c, input_size=size, in_channels=in_ch, num_classes=10)
    shape = (in_ch, size, size)
    assert net.flops() == torch_flops(net, shape)
    # prune a third of the operators (never a node's last input) and compare again
    keys = net.alive_ops()
    doomed = []
    for key in keys[::3]:
        node = (key.cell, key.dst)
        if sum(1 for k in keys if (k.cell, k.dst) == node) - sum(1 for d in doomed if (d.cell, d.dst) == node) > 1:
            doomed.append(key)
    net.prune(doomed)
    counted = torch_flops(net, shape)
    assert abs(net.flops() - counted) <= 0.01 * counted
    assert net.flops() == counted
    # the discrete network of the pruned genotype has exactly the same FLOPs
    discrete = build_network(net.genotype())
    assert total_flops(discrete, shape) == counted == torch_flops(discrete, shape)


def test_every_parameter_gets_a_gradient():
    net = SuperNet(3, 4, PRIMITIVES, 4, input_size=8, in_channels=1, num_classes=10, auxiliary=True)
    net.train()
    logits, aux = net(torch.randn(4, 1, 8, 8), with_aux=True)
    loss = logits.sum() + aux.sum() + net.expected_cost("flops")
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    assert all(float(p.grad.abs()) > 0 for p in net.arch_parameters())


def test_pruning_removes_modules_parameters_and_cost():
    net = SuperNet(3, 4, ("skip_connect", "sep_conv_3x3"), 4, input_size=8, in_channels=1, num_classes=10)
    n_params, flops, n_ops = sum(p.numel() for p in net.parameters()), net.flops(), len(net.alive_ops())
    victim = OpKey(0, 0, 2, "sep_conv_3x3")
    net.prune([victim])
    assert victim not in net.alive_ops() and len(net.alive_ops()) == n_ops - 1
    assert "sep_conv_3x3" not in net.cells[0].edges["e0_2"].ops
    assert sum(p.numel() for p in net.parameters()) < n_params
    assert net.flops() < flops
    # the forward pass no longer calls the module: it has no hook left to fire
    assert all(victim.op not in n for n, _ in net.cells[0].edges["e0_2"].named_modules())
    with pytest.raises(KeyError):
        net.prune([victim])


def test_node_keeps_working_and_last_input_is_protected():
    net = SuperNet(3, 4, ("skip_connect", "sep_conv_3x3"), 4, input_size=8, in_channels=1, num_classes=10)
    # node 2 of cell 1 has edges from nodes 0 and 1, two operators each: leave one
    net.prune([OpKey(1, 0, 2, "skip_connect"), OpKey(1, 0, 2, "sep_conv_3x3"),
               OpKey(1, 1, 2, "skip_connect")])
    assert [k for k in net.alive_ops() if k.cell == 1 and k.dst == 2] == [OpKey(1, 1, 2, "sep_conv_3x3")]
    assert torch.isfinite(net(torch.randn(2, 1, 8, 8))).all()
    with pytest.raises(ValueError, match="last input"):
        net.prune([OpKey(1, 1, 2, "sep_conv_3x3")])


def test_unused_cell_input_and_dead_cells_are_removed():
    net = SuperNet(3, 2, ("skip_connect",), 4, input_size=8, in_channels=1, num_classes=10)
    # last cell reads only its s0 input (cell 0's output): cell 1 becomes dead
    net.prune([OpKey(2, 1, 2, "skip_connect"), OpKey(2, 1, 3, "skip_connect"),
               OpKey(2, 2, 3, "skip_connect")])
    assert "s1" not in net.cells[2].pre
    assert net.live == [True, False, True]
    assert all(k.cell != 1 for k in net.alive_ops())
    shape = (1, 8, 8)
    assert net.flops() == torch_flops(net, shape)
    discrete = build_network(net.genotype())
    assert total_flops(discrete, shape) == net.flops()
    assert count_params(discrete) < count_params(build_network(SuperNet(
        3, 2, ("skip_connect",), 4, input_size=8, in_channels=1, num_classes=10).genotype()))


def test_expected_cost_is_normalised_and_differentiable():
    net = SuperNet(3, 4, ("skip_connect", "sep_conv_3x3"), 4, input_size=8, in_channels=1, num_classes=10)
    for kind in ("flops", "params", "ops"):
        cost = net.expected_cost(kind)
        assert 0 < float(cost.detach()) < 1
        if kind == "ops":  # normalised within nodes: equal gates give a zero gradient
            continue
        grads = torch.autograd.grad(cost, net.arch_parameters(), allow_unused=True)
        sep = [g for g, k in zip(grads, net.alive_ops()) if k.op == "sep_conv_3x3"]
        assert all(g is not None and float(g) > 0 for g in sep)
    # all gates at 0.5: FLOPs cost = 0.5 * (operator FLOPs) / total FLOPs
    op_flops = sum(net.costs.flops_by_part.get(k, 0) for k in net.alive_ops())
    assert float(net.expected_cost("flops")) == pytest.approx(0.5 * op_flops / net.full_flops, rel=1e-6)


def test_ops_cost_is_the_mean_log_of_node_normalised_weights():
    net = SuperNet(3, 2, ("skip_connect", "sep_conv_3x3"), 4, input_size=8, in_channels=1, num_classes=10)
    keys = net.alive_ops()
    per_node = {}
    for key in keys:
        per_node[(key.cell, key.dst)] = per_node.get((key.cell, key.dst), 0) + 1
    k = 10.0
    # all alphas 0: every gate 0.5, so an operator's weight is 1 / (operators entering its node)
    expected = sum(math.log1p(k / per_node[(key.cell, key.dst)]) for key in keys) / net.num_ops_full
    assert float(net.expected_cost("ops", k).detach()) == pytest.approx(expected, rel=1e-6)
    # log is concave: equal weights within a node cost the most, so concentrating a node's
    # weight on one operator lowers the cost, and the gradient pushes further that way
    with torch.no_grad():
        net.alpha(keys[0]).fill_(2.0)
    after = net.expected_cost("ops", k)
    assert float(after.detach()) < expected
    grads = torch.autograd.grad(after, net.arch_parameters())
    assert float(grads[0]) < 0


def test_cost_table_sums_are_the_built_networks_counts():
    from goldnas_ray.core.config import SpaceConfig
    from goldnas_ray.core.costs import CostTable
    from goldnas_ray.retrain.sampling import SpaceTable, sample_genotype

    space = SpaceConfig(num_cells=5, num_nodes=3, init_channels=4,
                        operators=["skip_connect", "sep_conv_3x3", "max_pool_3x3"])
    table = CostTable.for_space(space, (3, 16, 16), 10)
    rng = np.random.default_rng(0)
    space_table = SpaceTable(space, (3, 16, 16), 10, table)
    for p in (0.2, 0.5, 0.9):
        geno = sample_genotype(space_table, p, rng)
        net = build_network(geno)
        assert table.flops(geno) == total_flops(net, (3, 16, 16))
        assert table.params(geno) == count_params(net)


def test_imagenet_stem_flops_are_exact_and_cells_start_at_an_eighth():
    net = SuperNet(3, 2, ("skip_connect", "sep_conv_3x3"), 8, input_size=64, in_channels=3, num_classes=10,
                   stem="imagenet")
    shape = (3, 64, 64)
    assert net.flops() == torch_flops(net, shape)
    s0, s1 = net.stem(torch.zeros(1, *shape))
    assert s0.shape[-1] == 16 and s1.shape[-1] == 8  # 64 -> 32 -> 16 (s0) -> 8 (s1)
    discrete = build_network(net.genotype())
    assert discrete.genotype.stem == "imagenet"
    assert total_flops(discrete, shape) == torch_flops(discrete, shape) == net.flops()
    from goldnas_ray.core.space import SpaceError

    with pytest.raises(SpaceError, match="multiple of 8"):
        SuperNet(3, 2, ("skip_connect",), 8, input_size=36, in_channels=3, num_classes=10, stem="imagenet")
