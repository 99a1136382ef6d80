"""LINKX (Lim et al., "Large Scale Learning on Non-Homophilous Graphs", NeurIPS 2021) on the spmm kernel."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from ..graph import as_graph
from ..ops.mp import spmm


def _mlp(sizes: list[int]) -> nn.ModuleList:
    return nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))


def _run_mlp(layers: nn.ModuleList, h: torch.Tensor, dropout: float, training: bool) -> torch.Tensor:
    for i, lin in enumerate(layers):
        if i:
            h = F.dropout(F.relu(h), dropout, training)
        h = lin(h)
    return h


class LINKX(nn.Module):
    """LINKX: separate embeddings of the adjacency and of the features, mixed by a linear layer with skips.

    ``h_A = MLP_A(A W_A)``, ``h_X = MLP_X(X)``, ``h = relu(W [h_A, h_X] + h_A + h_X)``, ``out = MLP_f(h)``, where
    ``(A W_A)_v`` sums the rows of the learned [N, hidden] table W_A over v's in-neighbours: one
    :func:`fastlayers.ops.spmm`, never a dense or sparse [N, N] matrix. Transductive (the table has a row per node).

    Args:
        num_nodes: N, the node count of the graph it is trained on.
        in_channels, hidden, out_channels: feature, hidden and output widths.
        num_layers: layers of the final MLP; num_edge_layers / num_node_layers: of MLP_A / MLP_X (>= 1 each).
        dropout: dropout between the layers of every MLP and before the final one.

    forward(x [N, in_channels] float32/float64, graph or edge_index [2, E]) -> [N, out_channels]. Give undirected
    graphs in both directions. Differentiable to any order (spmm sum supports double backward).
    """

    def __init__(self, num_nodes: int, in_channels: int, hidden: int, out_channels: int, num_layers: int = 1,
                 num_edge_layers: int = 1, num_node_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        for name, v in (("num_nodes", num_nodes), ("in_channels", in_channels), ("hidden", hidden),
                        ("out_channels", out_channels), ("num_layers", num_layers),
                        ("num_edge_layers", num_edge_layers), ("num_node_layers", num_node_layers)):
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "num_nodes" else 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.num_nodes, self.in_channels, self.hidden, self.out_channels = num_nodes, in_channels, hidden, out_channels
        self.dropout = dropout
        self.adj_weight = nn.Parameter(torch.empty(num_nodes, hidden))
        self.adj_bias = nn.Parameter(torch.empty(hidden))
        self.edge_mlp = _mlp([hidden] * num_edge_layers)  # empty for one layer: W_A is the first
        self.node_mlp = _mlp([in_channels] + [hidden] * num_node_layers)
        self.cat_lin = nn.Linear(2 * hidden, hidden)
        self.final_mlp = _mlp([hidden] * num_layers + [out_channels])
        self.reset_parameters()

    def reset_parameters(self):
        bound = self.num_nodes ** -0.5 if self.num_nodes else 1.0  # nn.Linear's default for N inputs
        nn.init.uniform_(self.adj_weight, -bound, bound)
        nn.init.uniform_(self.adj_bias, -bound, bound)
        for lin in (*self.edge_mlp, *self.node_mlp, self.cat_lin, *self.final_mlp):
            lin.reset_parameters()

    def forward(self, x: torch.Tensor, edge_index) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.size(0) != self.num_nodes or x.size(1) != self.in_channels:
            raise ValueError(f"x must be [num_nodes, in_channels] = [{self.num_nodes}, {self.in_channels}], "
                             f"got {tuple(x.shape)}")
        g = as_graph(edge_index, x.size(0))
        h_a = spmm(g, self.adj_weight.to(x.dtype), None, "sum") + self.adj_bias.to(x.dtype)
        h_a = _run_mlp(self.edge_mlp, F.relu(h_a), self.dropout, self.training) if len(self.edge_mlp) else h_a
        h_x = _run_mlp(self.node_mlp, x, self.dropout, self.training)
        h = F.relu(self.cat_lin(torch.cat([h_a, h_x], 1)) + h_a + h_x)
        h = F.dropout(h, self.dropout, self.training)
        return _run_mlp(self.final_mlp, h, self.dropout, self.training)
