"""Graph convolutions on the fastlayers message-passing ops, with PyG's argument names, defaults and parameter
names (a PyG layer's state_dict loads into the matching fastlayers layer and gives the same output).

Every layer takes ``x`` and either a :class:`fastlayers.Graph` (indexed once, reused across layers and steps) or
a PyG-style ``edge_index`` [2, E] (validated and indexed on each call; the node count is taken from x).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..graph import Graph, as_graph
from ..ops.mp import block_spmm, edge_softmax, scatter, sddmm, spmm


def _glorot(t: torch.Tensor) -> None:
    nn.init.xavier_uniform_(t.view(-1, t.size(-1)) if t.dim() > 2 else t)


def _with_remaining_self_loops(g: Graph) -> tuple[Graph, torch.Tensor, torch.Tensor]:
    """PyG's add_remaining_self_loops: drop the self loops, add one per node. Returns (graph, ids of the kept
    edges, ids of the dropped self loops), so weights can be carried over per call (with fixed-size gathers, which
    torch.compile can trace, rather than boolean masks)."""
    src, dst = g.edge_index
    kept = (src != dst).nonzero().flatten()
    loops_in = (src == dst).nonzero().flatten()
    nodes = torch.arange(g.num_nodes, device=g.device)
    ei = torch.cat([g.edge_index[:, kept], torch.stack([nodes, nodes])], 1)
    return Graph.from_edge_index(ei, num_nodes=g.num_nodes), kept, loops_in


def gcn_norm(g: Graph, edge_weight: torch.Tensor | None, add_self_loops: bool = True, improved: bool = False,
             dtype: torch.dtype = torch.float32):
    """PyG's gcn_norm: (graph, D^-1/2 (A + fill I) D^-1/2 edge weights in that graph's edge order).

    With self loops, existing loops are replaced by one per node whose weight is the old loop's weight (or
    ``2`` if improved and edge weights are given, else ``1``: PyG's behaviour). The degree is the weighted in-degree (PyG's flow source_to_target).
    """
    # PyG fills the new loops with 2 (improved) only when edge weights are given; unweighted graphs get 1.
    fill = 2.0 if improved and edge_weight is not None else 1.0
    if edge_weight is None:
        edge_weight = torch.ones(g.num_edges, dtype=dtype, device=g.device)
    if add_self_loops:
        g2, kept, loops_in = g.derived("remaining_self_loops", _with_remaining_self_loops)
        loop_w = torch.full((g.num_nodes,), fill, dtype=edge_weight.dtype, device=g.device)
        loop_w = loop_w.index_put((g.edge_index[0, loops_in],), edge_weight[loops_in])
        edge_weight = torch.cat([edge_weight[kept], loop_w])
        g = g2
    deg = scatter(edge_weight, g.edge_index[1], 0, g.num_nodes, "sum")
    dinv = deg.pow(-0.5).masked_fill(deg == 0, 0.0)
    src, dst = g.edge_index
    return g, dinv[src] * edge_weight * dinv[dst]


class GCNConv(nn.Module):
    """Kipf & Welling's graph convolution, ``D^-1/2 (A + I) D^-1/2 X W + b`` (PyG's GCNConv).

    Args follow PyG: ``GCNConv(in_channels, out_channels, improved=False, add_self_loops=True, normalize=True,
    bias=True)``. forward(x [N, in], graph or edge_index, edge_weight [E] = None) -> [N, out].
    """

    def __init__(self, in_channels: int, out_channels: int, improved: bool = False, add_self_loops: bool = True,
                 normalize: bool = True, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.improved, self.add_self_loops, self.normalize = improved, add_self_loops, normalize
        self.lin = nn.Linear(in_channels, out_channels, bias=False)
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        _glorot(self.lin.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, edge_index, edge_weight: torch.Tensor | None = None) -> torch.Tensor:
        g = as_graph(edge_index, x.size(0))
        if edge_weight is None:
            edge_weight = g.edge_weight
        if self.normalize:
            g, edge_weight = gcn_norm(g, edge_weight, self.add_self_loops, self.improved, x.dtype)
        out = spmm(g, self.lin(x), edge_weight, "sum")
        return out + self.bias if self.bias is not None else out


class SAGEConv(nn.Module):
    """GraphSAGE: ``lin_l(aggr over in-neighbours of x) + lin_r(x)`` (PyG's SAGEConv, no projection).

    ``SAGEConv(in_channels, out_channels, aggr="mean", normalize=False, root_weight=True, bias=True)``;
    aggr is one of sum, mean, max, min. forward(x [N, in], graph or edge_index) -> [N, out].
    """

    def __init__(self, in_channels: int, out_channels: int, aggr: str = "mean", normalize: bool = False,
                 root_weight: bool = True, bias: bool = True):
        super().__init__()
        if aggr not in ("sum", "mean", "max", "min"):
            raise ValueError(f"aggr must be sum, mean, max or min, got {aggr!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.aggr, self.normalize, self.root_weight = aggr, normalize, root_weight
        self.lin_l = nn.Linear(in_channels, out_channels, bias=bias)
        self.lin_r = nn.Linear(in_channels, out_channels, bias=False) if root_weight else None

    def forward(self, x: torch.Tensor, edge_index) -> torch.Tensor:
        g = as_graph(edge_index, x.size(0))
        out = self.lin_l(spmm(g, x, None, self.aggr))
        if self.root_weight and self.lin_r is not None:
            out = out + self.lin_r(x)
        return F.normalize(out, p=2.0, dim=-1) if self.normalize else out


class GINConv(nn.Module):
    """Graph isomorphism convolution: ``nn((1 + eps) x + sum over in-neighbours of x)`` (PyG's GINConv)."""

    def __init__(self, nn: torch.nn.Module, eps: float = 0.0, train_eps: bool = False):
        super().__init__()
        self.nn = nn
        self.initial_eps = eps
        if train_eps:
            self.eps = torch.nn.Parameter(torch.tensor([float(eps)]))
        else:
            self.register_buffer("eps", torch.tensor([float(eps)]))

    def forward(self, x: torch.Tensor, edge_index) -> torch.Tensor:
        g = as_graph(edge_index, x.size(0))
        return self.nn(spmm(g, x, None, "sum") + (1 + self.eps) * x)


def _with_self_loops(g: Graph) -> Graph:
    """PyG's remove_self_loops + add_self_loops: exactly one self loop per node (appended after the edges)."""
    return _with_remaining_self_loops(g)[0]


class GATConv(nn.Module):
    """Graph attention (PyG's GATConv, one linear map for source and target): per head
    ``alpha_e = softmax_v(leaky_relu(a_src . W x_u + a_dst . W x_v))``, ``out_v = sum_e alpha_e W x_u``.

    The scores are an sddmm (the two attention terms as 2-vectors), the softmax an edge_softmax and the
    aggregation an spmm with [E, H] weights: nothing of size [E, F] is materialised.
    ``GATConv(in_channels, out_channels, heads=1, concat=True, negative_slope=0.2, dropout=0.0,
    add_self_loops=True, bias=True)``; forward(x [N, in], graph or edge_index) -> [N, heads * out] (concat) or
    [N, out] (mean over heads).
    """

    def __init__(self, in_channels: int, out_channels: int, heads: int = 1, concat: bool = True,
                 negative_slope: float = 0.2, dropout: float = 0.0, add_self_loops: bool = True, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.heads, self.concat = in_channels, out_channels, heads, concat
        self.negative_slope, self.dropout, self.add_self_loops = negative_slope, dropout, add_self_loops
        self.lin = nn.Linear(in_channels, heads * out_channels, bias=False)
        self.att_src = nn.Parameter(torch.empty(1, heads, out_channels))
        self.att_dst = nn.Parameter(torch.empty(1, heads, out_channels))
        self.bias = nn.Parameter(torch.empty(heads * out_channels if concat else out_channels)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):
        _glorot(self.lin.weight)
        _glorot(self.att_src)
        _glorot(self.att_dst)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor, edge_index) -> torch.Tensor:
        g = as_graph(edge_index, x.size(0))
        if self.add_self_loops:
            g = g.derived("self_loops", _with_self_loops)
        H, C = self.heads, self.out_channels
        h = self.lin(x).view(-1, H, C)
        a_src = (h * self.att_src).sum(-1)
        a_dst = (h * self.att_dst).sum(-1)
        one = torch.ones_like(a_src)
        # [a_dst[v], 1] . [1, a_src[u]] = a_dst[v] + a_src[u]: the additive score as an sddmm.
        score = sddmm(g, torch.stack([a_dst, one], -1), torch.stack([one, a_src], -1))
        alpha = edge_softmax(g, F.leaky_relu(score, self.negative_slope))
        alpha = F.dropout(alpha, p=self.dropout, training=self.training)
        out = spmm(g, h, alpha, "sum")
        out = out.reshape(-1, H * C) if self.concat else out.mean(1)
        return out + self.bias if self.bias is not None else out


class DirGNNConv(nn.Module):
    """Dir-GNN (Rossi et al.): ``alpha * conv_out(x, reversed edges) + (1 - alpha) * conv_in(x, edges)
    (+ lin(x))`` (PyG's DirGNNConv). The reversed graph is the Graph's CSC: no re-sorting per call.

    ``DirGNNConv(conv, alpha=0.5, root_weight=True)``: conv is any fastlayers conv taking (x, graph); like PyG,
    the two copies run without self loops and without their own root weight.
    """

    def __init__(self, conv: nn.Module, alpha: float = 0.5, root_weight: bool = True):
        super().__init__()
        self.alpha, self.root_weight = alpha, root_weight
        self.conv_in = copy.deepcopy(conv)
        self.conv_out = copy.deepcopy(conv)
        for c in (self.conv_in, self.conv_out):
            if hasattr(c, "add_self_loops"):
                c.add_self_loops = False
            if hasattr(c, "root_weight"):
                c.root_weight = False
        self.lin = nn.Linear(conv.in_channels, conv.out_channels) if root_weight else None

    def forward(self, x: torch.Tensor, edge_index) -> torch.Tensor:
        g = as_graph(edge_index, x.size(0))
        out = self.alpha * self.conv_out(x, g.reverse()) + (1 - self.alpha) * self.conv_in(x, g)
        return out + self.lin(x) if self.lin is not None else out


class SignedConv(nn.Module):
    """Signed graph convolution with balance-theory routing (SGCN; PyG's SignedConv, as SEMBA uses it).

    Node states are [x_pos | x_neg]. First layer: each side averages x over positive (resp. negative)
    in-neighbours. Later layers: the positive side averages positive neighbours' positive states and negative
    neighbours' negative states ("the enemy of my enemy is my friend"); the negative side the reverse.
    ``SignedConv(in_channels, out_channels, first_aggr, bias=True)``; forward(x, pos_edges, neg_edges), each a
    Graph or edge_index -> [N, 2 * out]. Two mean-spmm calls per layer (each over both halves at once).
    """

    def __init__(self, in_channels: int, out_channels: int, first_aggr: bool, bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.first_aggr = in_channels, out_channels, first_aggr
        k = 1 if first_aggr else 2
        self.lin_pos_l = nn.Linear(k * in_channels, out_channels, bias=False)
        self.lin_pos_r = nn.Linear(in_channels, out_channels, bias=bias)
        self.lin_neg_l = nn.Linear(k * in_channels, out_channels, bias=False)
        self.lin_neg_r = nn.Linear(in_channels, out_channels, bias=bias)

    def forward(self, x: torch.Tensor, pos_edge_index, neg_edge_index) -> torch.Tensor:
        gp = as_graph(pos_edge_index, x.size(0), "pos_edge_index")
        gn = as_graph(neg_edge_index, x.size(0), "neg_edge_index")
        mp, mn = spmm(gp, x, None, "mean"), spmm(gn, x, None, "mean")
        if self.first_aggr:
            out_pos = self.lin_pos_l(mp) + self.lin_pos_r(x)
            out_neg = self.lin_neg_l(mn) + self.lin_neg_r(x)
        else:
            c = self.in_channels
            out_pos = self.lin_pos_l(torch.cat([mp[:, :c], mn[:, c:]], -1)) + self.lin_pos_r(x[:, :c])
            out_neg = self.lin_neg_l(torch.cat([mp[:, c:], mn[:, :c]], -1)) + self.lin_neg_r(x[:, c:])
        return torch.cat([out_pos, out_neg], -1)


def _orthogonal(params: torch.Tensor, d: int) -> torch.Tensor:
    """[E, d(d-1)/2] -> [E, d, d] orthogonal maps: the exponential of the skew-symmetric matrix they fill."""
    iu = torch.triu_indices(d, d, 1, device=params.device)
    a = params.new_zeros(params.size(0), d, d)
    a[:, iu[0], iu[1]] = params
    return torch.linalg.matrix_exp(a - a.transpose(1, 2))


class SheafConv(nn.Module):
    """One layer of neural sheaf diffusion (Bodnar et al., NSD) on d-dimensional stalks.

    Node states x [N, d * C] are read as [N, d, C]. For each edge e = u -> v the restriction maps of its two ends
    are learned from the node pair, ``F_v = tanh(W [x_v, x_u])`` and ``F_u = tanh(W [x_u, x_v])`` (W split into
    node-wise halves, so only [E, d] or [E, d, d] is ever formed per edge); the sheaf Laplacian has off-diagonal
    blocks ``-F_v^T F_u`` (a :func:`fastlayers.ops.block_spmm`) and diagonal blocks ``D_v = sum F_v^T F_v``;
    with ``s = (diag(D) + 1)^-1/2`` the step is ``x <- (1 + tanh(eps)) x - elu(s L s (W_left x W_right))``.

    Args:
        channels: C, the channels per stalk dimension.
        d: stalk dimension (2 to 4 in NSD).
        maps: "diag" (d values per edge end), "orthogonal" (exp of a learned skew-symmetric matrix, so
            D_v = deg(v) I) or "general" (d x d). For "general" the normalisation uses the diagonal of D_v (NSD
            inverts the full block).
        act: apply ELU to the diffusion term (NSD's default).
    forward(x [N, d * C], graph or edge_index) -> [N, d * C]. Give each undirected edge in both directions.
    """

    def __init__(self, channels: int, d: int, maps: str = "diag", act: bool = True):
        super().__init__()
        if maps not in ("diag", "orthogonal", "general"):
            raise ValueError(f"maps must be 'diag', 'orthogonal' or 'general', got {maps!r}")
        if d < 1 or channels < 1:
            raise ValueError(f"d and channels must be positive, got d={d}, channels={channels}")
        self.channels, self.d, self.maps, self.act = channels, d, maps, act
        m = {"diag": d, "orthogonal": d * (d - 1) // 2, "general": d * d}[maps]
        if m == 0:
            raise ValueError("orthogonal maps need d >= 2")
        self.map_dst = nn.Linear(d * channels, m, bias=True)  # the x_v half of W
        self.map_src = nn.Linear(d * channels, m, bias=False)  # the x_u half of W
        self.lin_left = nn.Linear(d, d, bias=False)
        self.lin_right = nn.Linear(channels, channels, bias=False)
        self.eps = nn.Parameter(torch.zeros(d))
        nn.init.eye_(self.lin_left.weight)
        nn.init.eye_(self.lin_right.weight)

    def laplacian(self, x: torch.Tensor, g: Graph):
        """(off-diagonal blocks [E, d(, d)], diagonal blocks D [N, d(, d)], s = (diag(D) + 1)^-1/2 [N, d])."""
        src, dst = g.edge_index
        p, q = self.map_dst(x), self.map_src(x)
        fv = torch.tanh(p[dst] + q[src])  # v's map of edge e
        fu = torch.tanh(p[src] + q[dst])  # u's map of edge e
        d = self.d
        if self.maps == "orthogonal":
            fv, fu = _orthogonal(fv, d), _orthogonal(fu, d)
            off = -torch.bmm(fv.transpose(1, 2), fu)
            # F^T F = I: the diagonal blocks are the in-degree times the identity.
            deg = g.in_degree.to(x.dtype).unsqueeze(1).expand(-1, d)
            return off, torch.diag_embed(deg), (deg + 1).pow(-0.5)
        if self.maps == "diag":
            off = -(fv * fu)
            diag = scatter(fv * fv, dst, 0, g.num_nodes, "sum")
            deg = diag
        else:
            fv, fu = fv.view(-1, d, d), fu.view(-1, d, d)
            off = -torch.bmm(fv.transpose(1, 2), fu)
            diag = scatter(torch.bmm(fv.transpose(1, 2), fv).view(-1, d * d), dst, 0, g.num_nodes, "sum")
            diag = diag.view(-1, d, d)
            deg = torch.diagonal(diag, dim1=1, dim2=2)
        return off, diag, (deg + 1).pow(-0.5)

    def forward(self, x: torch.Tensor, edge_index) -> torch.Tensor:
        g = as_graph(edge_index, x.size(0))
        n, d, c = x.size(0), self.d, self.channels
        if x.dim() != 2 or x.size(1) != d * c:
            raise ValueError(f"x must be [N, d * channels] = [N, {d * c}], got {tuple(x.shape)}")
        off, diag, s = self.laplacian(x, g)
        xs = x.view(n, d, c)
        h = self.lin_right(torch.einsum("ij,njc->nic", self.lin_left.weight, xs))
        h = h * s.unsqueeze(-1)
        lh = block_spmm(g, off, h)
        lh = lh + (diag.unsqueeze(-1) * h if self.maps == "diag" else torch.bmm(diag, h))
        lh = lh * s.unsqueeze(-1)
        if self.act:
            lh = F.elu(lh)
        out = (1 + torch.tanh(self.eps)).view(1, d, 1) * xs - lh
        return out.reshape(n, d * c)
