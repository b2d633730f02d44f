"""The GOLD-NAS supernet: every (cell, edge, operator) gated by its own sigmoid(alpha).

Edge output = sum over alive operators o of sigmoid(alpha_o) * o(x). Sigmoid, not softmax:
operators do not compete, so any subset of an edge's operators may survive. Pruning an
operator deletes its module and its alpha (so the optimizers lose them too) and the forward
pass never calls it again: a smaller supernet is a cheaper step. Batch norm inside the cells
has no affine parameters, as in DARTS's search.
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Callable, Hashable, Iterable

import torch
from torch import nn

from goldnas_ray.core.costs import CostTable
from goldnas_ray.core.genotype import Genotype
from goldnas_ray.core.network import Cell, Network
from goldnas_ray.core.operations import OPS
from goldnas_ray.core.space import OpKey, check_spatial, log10_space_size


class GatedEdge(nn.Module):
    def __init__(self, ops: tuple[str, ...], c: int, stride: int, affine: bool):
        super().__init__()
        self.ops = nn.ModuleDict({name: OPS[name](c, stride, affine) for name in ops})
        self.alphas = nn.ParameterDict({name: nn.Parameter(torch.zeros(())) for name in ops})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = None
        for name, op in self.ops.items():
            y = torch.sigmoid(self.alphas[name]) * op(x)
            out = y if out is None else out + y
        return out

    def remove(self, op: str) -> None:
        del self.ops[op]
        del self.alphas[op]


if TYPE_CHECKING:
    from goldnas_ray.core.latency import LatencyTable


class SuperNet(Network):
    def __init__(self, num_cells: int, num_nodes: int, operators: Iterable[str], init_channels: int,
                 input_size: int, in_channels: int, num_classes: int, stem_multiplier: int = 3,
                 auxiliary: bool = False, stem: str = "cifar"):
        check_spatial(input_size, num_cells, stem)
        geno = Genotype.full(num_cells, num_nodes, operators, init_channels, stem_multiplier,
                             input_size, in_channels, num_classes, stem)
        super().__init__(geno, affine=False, edge_factory=GatedEdge, auxiliary=auxiliary)
        self._geno = geno
        self.operators = tuple(operators)
        self.input_shape = (in_channels, input_size, input_size)
        self.log10_size = log10_space_size(num_cells, num_nodes, len(self.operators))
        # FLOPs and parameters of every part, measured once on the full supernet (the shapes
        # never change); pruning only changes which parts are summed
        self.costs = CostTable.measure(self, self.input_shape)
        self._constants: dict[Hashable, torch.Tensor] = {}  # per alive set: emptied by prune
        self.full_flops = self.flops()
        self.full_params = sum(self.costs.params_by_part.values())
        self.num_ops_full = len(self.alive_ops())
        self.latency: "LatencyTable | None" = None  # cost=latency: use_latency

    def use_latency(self, table: "LatencyTable") -> None:
        """Take operator latencies from ``table`` (made for this space: ``LatencyTable.check``);
        the cost is normalised by the full supernet's predicted latency."""
        self.latency = table
        # what keeping the operator adds to the prediction: its own time and its node's sum,
        # both under the table's scale; the norm is the same prediction's for the whole network
        scale = table.correction.get("scale", 1.0)
        self.latency_by_op = {key: scale * (table.op_ms(key) + table.cells_ms.get(key.cell, {}).get("add", 0.0))
                              for key in self.alive_ops()}
        self.full_latency_ms = table.latency_ms(self._geno)
        self._constants.clear()

    # ---- structure ---------------------------------------------------------------------
    def alive_ops(self) -> list[OpKey]:
        """Alive operators of the live cells, in a fixed order."""
        return [label for label, _ in self.parts() if isinstance(label, OpKey)]

    def alpha(self, key: OpKey) -> nn.Parameter:
        return self.cells[key.cell].edges[key.edge.key].alphas[key.op]

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alpha(key) for key in self.alive_ops()]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def genotype(self) -> Genotype:
        return copy.deepcopy(self._geno)

    # ---- cost --------------------------------------------------------------------------
    def flops(self) -> int:
        """FLOPs of the current (pruned) network on one image; equal to the FLOPs of the
        discrete network built from :meth:`genotype`."""
        return self.costs.flops(self._geno)

    def flops_after(self, keys: Iterable[OpKey]) -> int:
        """FLOPs the network would have with ``keys`` pruned (nothing is pruned)."""
        return self.costs.flops(self._geno.without(keys))

    def expected_cost(self, kind: str = "flops", ops_k: float = 10.0) -> torch.Tensor:
        """Differentiable resource term, normalised by the full supernet's value.

        flops / params / latency: sum over alive o of sigmoid(alpha_o) * cost(o), over the full
        network's FLOPs (parameters, or predicted latency: :meth:`use_latency`). ops: sum over alive o of log(1 + k * w_o) with w_o the pruning
        weight (sigmoid normalised within the node), over the number of operators in the full
        supernet; it ignores how expensive an operator is.
        """
        keys = self.alive_ops()
        gates = torch.sigmoid(torch.stack([self.alpha(k) for k in keys]))
        if kind == "ops":
            weights = gates / self._node_sums(keys, gates)
            return torch.log1p(ops_k * weights).sum() / self.num_ops_full
        if kind == "flops":
            table, norm = self.costs.flops_by_part, self.full_flops
        elif kind == "params":
            table, norm = self.costs.params_by_part, self.full_params
        elif kind == "latency":
            if self.latency is None:
                raise ValueError("cost 'latency' needs use_latency(table) first")
            table, norm = self.latency_by_op, self.full_latency_ms
        else:
            raise ValueError(f"unknown cost {kind!r}")
        costs = self._on_device((kind, gates.device), lambda: [float(table.get(k, 0)) for k in keys],
                                gates.device, torch.float32)
        return (gates * costs).sum() / norm

    def _on_device(self, key: Hashable, values: Callable[[], list], device: torch.device,
                   dtype: torch.dtype) -> torch.Tensor:
        """A constant of the current alive set on ``device``: copied there once (without waiting
        for the device) and kept until the next pruning, not re-sent every step."""
        if key not in self._constants:
            self._constants[key] = torch.tensor(values(), dtype=dtype).to(device, non_blocking=True)
        return self._constants[key]

    def _node_sums(self, keys: list[OpKey], gates: torch.Tensor) -> torch.Tensor:
        def node_index() -> list[int]:
            nodes: dict[tuple[int, int], int] = {}
            return [nodes.setdefault((k.cell, k.dst), len(nodes)) for k in keys]

        index = self._on_device(("nodes", gates.device), node_index, gates.device, torch.long)
        sums = torch.zeros(len(keys), device=gates.device, dtype=gates.dtype).index_add(0, index, gates)
        return sums[index]

    @torch.no_grad()
    def gates(self) -> dict[OpKey, float]:
        """sigmoid(alpha) of every alive operator, in :meth:`alive_ops` order."""
        keys = self.alive_ops()
        values = torch.sigmoid(torch.stack([self.alpha(k) for k in keys]).float()).cpu().tolist()
        return dict(zip(keys, values))

    # ---- pruning -----------------------------------------------------------------------
    def prune(self, keys: Iterable[OpKey]) -> None:
        """Remove operators; cells whose output nobody reads any more are removed whole."""
        keys = list(keys)
        self._constants.clear()
        for key in keys:
            cell_geno = self._geno.cells[key.cell]
            ops = cell_geno.edges.get(key.edge, ())
            if key.op not in ops:
                raise KeyError(f"operator {key} is not alive")
            remaining = tuple(o for o in ops if o != key.op)
            if not remaining and not any(e.dst == key.dst and e != key.edge for e in cell_geno.edges):
                raise ValueError(f"cannot prune {key}: it is the last input of node {key.dst}")
            cell = self.cells[key.cell]
            edge_module = cell.edges[key.edge.key]
            edge_module.remove(key.op)
            if remaining:
                cell_geno.edges[key.edge] = remaining
            else:
                del cell_geno.edges[key.edge]
                del cell.edges[key.edge.key]
        for k in {key.cell for key in keys}:
            if isinstance(self.cells[k], Cell):
                self.cells[k].refresh()
        self.live = self._geno.live_cells()
        for k, live in enumerate(self.live):
            if not live and isinstance(self.cells[k], Cell):
                self.cells[k] = nn.Identity()
        if self.aux_head is not None and not self.live[self.aux_index]:
            self.aux_head = None

    @torch.no_grad()
    def inherited_state(self) -> dict[str, torch.Tensor]:
        """The state of the discrete network of :meth:`genotype` (``DiscreteNet``; an auxiliary
        head is not inherited) that computes what this supernet computes, in training mode (batch
        statistics) and in eval mode (the running statistics, copied): the weights, each
        operator's gate sigmoid(alpha) folded into the affine scale of its last batch norm (the
        supernet's cell batch norms have none: scale 1, shift 0 before the gate), or, for an
        operator without one (the identity), kept as its edge's fixed output scale. CPU tensors."""
        # contiguous: a channels-last network's weights are not, and safetensors stores only those
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()
                 if ".alphas." not in k and not k.startswith("aux_head.")}
        for name, module in self.named_modules():
            if isinstance(module, nn.BatchNorm2d) and not module.affine and not name.startswith("aux_head."):
                state[f"{name}.weight"] = torch.ones(module.num_features)
                state[f"{name}.bias"] = torch.zeros(module.num_features)
        for key, gate in self.gates().items():
            prefix = f"cells.{key.cell}.edges.{key.edge.key}"
            op = self.cells[key.cell].edges[key.edge.key].ops[key.op]
            norms = [n for n, m in op.named_modules() if isinstance(m, nn.BatchNorm2d)]
            if norms:  # the operator ends with it: gate x BN(x) = BN(x) with gate x its affine
                state[f"{prefix}.ops.{key.op}.{norms[-1]}.weight"] *= gate
                state[f"{prefix}.ops.{key.op}.{norms[-1]}.bias"] *= gate
            else:
                ops = list(self.cells[key.cell].edges[key.edge.key].ops)
                scale = state.setdefault(f"{prefix}.scale", torch.ones(len(ops)))
                scale[ops.index(key.op)] = gate
        return state

    def restrict_to(self, geno: Genotype) -> None:
        """Prune everything that ``geno`` does not keep (used to restore a saved search)."""
        keep = set(geno.op_keys())
        self.prune([key for key in self._geno.op_keys() if key not in keep])
