"""Neural Sheaf Diffusion (Bodnar, Di Giovanni, Chamberlain, Lio, Bronstein; NeurIPS 2022), discrete model.

Node states live in d-dimensional stalks: X [N, d, C]. Per layer t a sheaf learner predicts, for every edge
e = {u, v} and each of its ends, a restriction map F_{v<e} from the pair (x_v, x_u); the sheaf Laplacian has
diagonal blocks D_v = sum_e F_{v<e}^T F_{v<e} and off-diagonal blocks -F_{v<e}^T F_{u<e}; it is normalised as
(D + I)^{-1/2} L (D + I)^{-1/2} (the "augmented" normalisation of the paper's code) and one step is

    X <- (1 + tanh eps_t) X - elu( L_norm (I_N kron W1_t) X W2_t ).

The product with L_norm is one :func:`fastlayers.ops.block_spmm` over the off-diagonal blocks plus node-wise
products: no per-edge message tensor [E, d, C] is formed, only the maps ([E, d] or [E, d, d]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..graph import Graph, as_graph
from ..ops.mp import block_spmm, scatter

VARIANTS = ("diag", "orthogonal", "general")


def simple_undirected(graph: Graph) -> Graph:
    """``graph`` with self loops dropped, every edge present in both directions, and duplicates merged (sorted
    by (source, target)). The sheaf Laplacian is defined on an undirected simple graph: a self loop would add
    F^T F - F^T F = 0 to L but a spurious term to the degree normalisation."""
    src, dst = graph.edge_index
    keep = src != dst
    ei = torch.cat([graph.edge_index[:, keep], graph.edge_index[:, keep].flip(0)], 1)
    n = graph.num_nodes
    key = torch.unique(ei[0] * n + ei[1]) if ei.numel() else ei.new_zeros(0)
    return Graph.from_edge_index(torch.stack([key // max(n, 1), key % max(n, 1)]), num_nodes=n)


def _reverse_edge(graph: Graph) -> torch.Tensor:
    """For each edge u -> v of a graph holding every edge in both directions, the id of its edge v -> u."""
    src, dst = graph.edge_index
    n = max(graph.num_nodes, 1)
    key = src * n + dst
    order = torch.argsort(key)
    return order[torch.searchsorted(key[order], dst * n + src)]


class _SymInvSqrt(torch.autograd.Function):
    """(A)^{-1/2} of a batch of symmetric positive definite matrices [B, d, d], by eigh.

    The backward is the Daleckii-Krein formula with the divided differences of f(l) = l^{-1/2} written in closed
    form, (f(a) - f(b)) / (a - b) = -1 / (sqrt(a) sqrt(b) (sqrt(a) + sqrt(b))), which stays finite when
    eigenvalues coincide (eigh's own backward divides by their gaps: an isolated node, D + I = I, would give NaN)."""

    @staticmethod
    def forward(ctx, a):
        lam, v = torch.linalg.eigh(a)
        r = lam.clamp_min(torch.finfo(a.dtype).tiny).sqrt()
        ctx.save_for_backward(r, v)
        return (v / r.unsqueeze(-2)) @ v.transpose(-1, -2)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        r, v = ctx.saved_tensors
        g = 0.5 * (g + g.transpose(-1, -2))
        kernel = -1.0 / (r.unsqueeze(-1) * r.unsqueeze(-2) * (r.unsqueeze(-1) + r.unsqueeze(-2)))
        inner = v.transpose(-1, -2) @ g @ v
        return v @ (kernel * inner) @ v.transpose(-1, -2)


def sym_inv_sqrt(a: torch.Tensor) -> torch.Tensor:
    """``a^{-1/2}`` for a batch [B, d, d] of symmetric positive definite matrices (float32/float64).

    Differentiable once (its backward is exact and stays finite for repeated eigenvalues); a second derivative
    raises."""
    return _SymInvSqrt.apply(a)


def _orthogonal(params: torch.Tensor, d: int) -> torch.Tensor:
    """[E, d(d-1)/2] -> [E, d, d] rotations: the matrix exponential of the skew-symmetric matrix they fill.

    d = 2 and 3 use closed forms (a plane rotation; Rodrigues' formula), which are exact and far cheaper than a
    batched matrix_exp (that took ~95% of a training step at d = 3 on Squirrel)."""
    E = params.size(0)
    if d == 2:
        c, s = torch.cos(params[:, 0]), torch.sin(params[:, 0])
        return torch.stack([c, s, -s, c], 1).view(E, 2, 2)
    iu = torch.triu_indices(d, d, 1, device=params.device)
    a = params.new_zeros(E, d, d)
    a = a.index_put((torch.arange(E, device=params.device)[:, None], iu[0], iu[1]), params)
    a = a - a.transpose(1, 2)
    if d != 3:
        return torch.linalg.matrix_exp(a)
    # exp(K) = I + sin(t)/t K + (1 - cos t)/t^2 K^2 with t the rotation angle (t^2 = |params|^2); near t = 0 the
    # series, and a safe t in the untaken branch so its gradient is not NaN.
    t2 = (params * params).sum(1)
    small = t2 < 1e-6
    t = torch.where(small, torch.ones_like(t2), t2).sqrt()
    ca = torch.where(small, 1 - t2 / 6, torch.sin(t) / t)
    cb = torch.where(small, 0.5 - t2 / 24, (1 - torch.cos(t)) / (t * t))
    eye = torch.eye(3, dtype=params.dtype, device=params.device)
    return eye + ca.view(E, 1, 1) * a + cb.view(E, 1, 1) * torch.bmm(a, a)


class SheafLaplacian:
    """The normalised sheaf Laplacian of one layer, ready to apply to [N, D, C] stalk states.

    ``off`` [E, D] (diag) or [E, D, D]: the blocks -F_{v<e}^T F_{u<e} of the edges u -> v; ``deg`` [N, D] (diag),
    [N] (orthogonal: D_v = deg_v I) or [N, D, D]: the diagonal blocks D_v; ``norm`` the matching (D_v + I)^{-1/2}.
    """

    def __init__(self, graph: Graph, off: torch.Tensor, deg: torch.Tensor, norm: torch.Tensor, kind: str):
        self.graph, self.off, self.deg, self.norm, self.kind = graph, off, deg, norm, kind

    def _node(self, m: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.kind == "diag":
            return m.unsqueeze(-1) * h
        if self.kind == "orthogonal":
            return m.view(-1, 1, 1) * h
        return torch.bmm(m, h)

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        """L_norm h for h [N, D, C]."""
        h = self._node(self.norm, h)
        out = block_spmm(self.graph, self.off, h) + self._node(self.deg, h)
        return self._node(self.norm, out)


class NSD(nn.Module):
    """Neural Sheaf Diffusion for node classification (the paper's discrete Diag-NSD, O(d)-NSD and Gen-NSD).

    Args:
        in_channels: F, the input feature width.
        out_channels: the number of classes.
        variant: "diag" (diagonal maps), "orthogonal" (O(d) maps, exponential of a learned skew-symmetric matrix,
            times a learned per-edge-end weight in (0, 1) when ``edge_weights``) or "general" (any d x d map).
        d: learned stalk dimension (>= 1; >= 2 for "orthogonal").
        hidden: channels per stalk dimension C; the node state is [N, D * C] with D = d + add_lp + add_hp.
        layers: diffusion steps, each with its own sheaf learner (a new Laplacian per step, the paper's default).
        dropout: dropout of the states before each step and before each learner after the first.
        input_dropout: dropout of the input features.
        left_weights, right_weights: the W1 (D x D) and W2 (C x C) maps of each step.
        use_act: ELU after the input projection and on the diffusion term.
        add_lp, add_hp: one extra stalk dimension each with fixed maps (+1, +1: a low-pass channel; +1, -1: a
            high-pass one), as in the paper's code.
        edge_weights: learned edge weights for "orthogonal" (ignored otherwise).
        second_linear: a second D*C x D*C linear layer after the input projection.
        sparse_learner: the learner reads the stalk-summed states [N, C] instead of [N, D * C].
        linear: learn the maps once (from the first step's input) and reuse them in every step.

    forward(x [N, F] float32/float64, graph or edge_index [2, E]) -> logits [N, out_channels].

    The edges are read as undirected: self loops are dropped (they add nothing to the sheaf Laplacian), each edge
    is used in both directions once (duplicates merged). Isolated nodes have D_v = 0: their stalks are only
    rescaled by (1 + tanh eps). Call :meth:`laplacian` to see one step's operator.

    Raises:
        ValueError: an unknown variant, d < 1 (d < 2 for "orthogonal"), non-positive sizes, or an x whose width is
        not in_channels or whose row count is not the graph's node count.
    """

    # The reduction and the operator class, as attributes so a peer implementation (benchmarks) can swap them
    # while keeping every parameter and formula.
    _scatter = staticmethod(scatter)
    _laplacian_type = SheafLaplacian

    def __init__(self, in_channels: int, out_channels: int, variant: str = "diag", d: int = 3, hidden: int = 20,
                 layers: int = 2, dropout: float = 0.0, input_dropout: float = 0.0, left_weights: bool = True,
                 right_weights: bool = True, use_act: bool = True, add_lp: bool = False, add_hp: bool = False,
                 edge_weights: bool = True, second_linear: bool = False, sparse_learner: bool = False,
                 linear: bool = False):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"d must be an int >= 1, got {d!r}")
        if variant == "orthogonal" and d < 2:
            raise ValueError("d must be >= 2 for orthogonal maps (O(1) maps are only +-1)")
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("hidden", hidden),
                        ("layers", layers)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.in_channels, self.out_channels, self.variant, self.d = in_channels, out_channels, variant, d
        self.hidden, self.layers = hidden, layers
        self.extra = [1.0] * int(add_lp) + [-1.0] * int(add_hp)  # u's fixed map, v's is +1
        self.D = D = d + len(self.extra)
        self.dropout, self.input_dropout = dropout, input_dropout
        self.use_act, self.linear, self.sparse_learner = use_act, linear, sparse_learner
        self.edge_weights = edge_weights and variant == "orthogonal"
        m = {"diag": d, "orthogonal": d * (d - 1) // 2, "general": d * d}[variant] + int(self.edge_weights)
        learner_in = hidden if sparse_learner else D * hidden
        # The paper's learner is Linear([x_v, x_u]) with no bias: kept as the two halves, so the products are per
        # node ([N, m]) and only their sums are gathered per edge.
        self.map_self = nn.ModuleList(nn.Linear(learner_in, m, bias=False) for _ in range(1 if linear else layers))
        self.map_other = nn.ModuleList(nn.Linear(learner_in, m, bias=False) for _ in range(1 if linear else layers))
        self.lin1 = nn.Linear(in_channels, D * hidden)
        self.lin12 = nn.Linear(D * hidden, D * hidden) if second_linear else None
        self.left = nn.ModuleList(nn.Linear(D, D, bias=False) for _ in range(layers)) if left_weights else None
        self.right = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(layers)) \
            if right_weights else None
        self.eps = nn.Parameter(torch.zeros(layers, D))
        self.lin2 = nn.Linear(D * hidden, out_channels)
        self.reset_parameters()

    def reset_parameters(self):
        for lin in (self.lin1, self.lin2, self.lin12, *self.map_self, *self.map_other):
            if lin is not None:
                lin.reset_parameters()
        for lin in self.left or ():
            nn.init.eye_(lin.weight)
        for lin in self.right or ():
            nn.init.orthogonal_(lin.weight)
        nn.init.zeros_(self.eps)

    def sheaf_parameters(self) -> list[nn.Parameter]:
        """The sheaf learners' parameters (the paper trains them with their own weight decay)."""
        return [p for m in (*self.map_self, *self.map_other) for p in m.parameters()]

    def graph(self, edge_index, num_nodes: int) -> Graph:
        """The simple undirected graph the model diffuses over (built once per Graph and cached on it)."""
        return as_graph(edge_index, num_nodes).derived("nsd_simple_undirected", simple_undirected)

    def restriction_maps(self, xs: torch.Tensor, g: Graph, step: int = 0):
        """Per edge e = u -> v of ``g`` (every edge in both directions, e.g. :func:`simple_undirected`):
        (F_{v<e}, F_{u<e}, w_v, w_u) from the stalk states xs [N, D, C]. Maps are [E, D] (diag) or [E, D, D] including the fixed lp/hp dimensions; w are the
        per-end orthogonal edge weights [E] (None otherwise)."""
        k = 0 if self.linear else step
        inp = xs.sum(1) if self.sparse_learner else xs.reshape(xs.size(0), xs.size(1) * xs.size(2))
        p, q = self.map_self[k](inp), self.map_other[k](inp)
        src, dst = g.edge_index
        # F_{u<e} of edge u -> v is F_{v<e} of its reverse edge: each map is computed once and gathered.
        rev = g.derived("nsd_reverse_edge", _reverse_edge)
        raw = p[dst] + q[src]
        wv = wu = None
        if self.edge_weights:
            wv, raw = torch.sigmoid(raw[:, -1]), raw[:, :-1]
            wu = wv[rev]
        fv = torch.tanh(raw)
        d, E = self.d, src.numel()
        if self.variant == "orthogonal":
            fv = _orthogonal(fv, d)
        elif self.variant == "general":
            fv = fv.view(E, d, d)
        fu = fv[rev]
        if self.extra:
            ev = xs.new_ones(E, len(self.extra))
            eu = xs.new_tensor(self.extra).expand(E, -1)
            if self.variant == "diag":
                fv, fu = torch.cat([fv, ev], 1), torch.cat([fu, eu], 1)
            else:
                fv, fu = _block_diag(fv, ev), _block_diag(fu, eu)
        return fv, fu, wv, wu

    def laplacian(self, xs: torch.Tensor, g: Graph, step: int = 0) -> SheafLaplacian:
        """The normalised sheaf Laplacian learned from stalk states xs [N, D, C] on the simple graph g."""
        fv, fu, wv, wu = self.restriction_maps(xs, g, step)
        _src, dst = g.edge_index
        n = g.num_nodes
        if self.variant == "diag":
            off = -(fv * fu)
            deg = self._scatter(fv * fv, dst, 0, n, "sum")
            return self._laplacian_type(g, off, deg, (deg + 1).rsqrt(), "diag")
        off = -torch.bmm(fv.transpose(1, 2), fu)
        if self.variant == "orthogonal":
            # F^T F = w^2 I for a weighted rotation: D_v is a multiple of the identity, so is its normalisation.
            if wv is None:
                deg = g.in_degree.to(xs.dtype)
            else:
                off = off * (wv * wu).view(-1, 1, 1)
                deg = self._scatter(wv * wv, dst, 0, n, "sum")
            return self._laplacian_type(g, off, deg, (deg + 1).rsqrt(), "orthogonal")
        D = fv.size(1)
        deg = self._scatter(torch.bmm(fv.transpose(1, 2), fv).reshape(-1, D * D), dst, 0, n, "sum").view(n, D, D)
        eye = torch.eye(D, dtype=xs.dtype, device=xs.device)
        return self._laplacian_type(g, off, deg, sym_inv_sqrt(deg + eye), "general")

    def forward(self, x: torch.Tensor, edge_index) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 2 or x.size(1) != self.in_channels:
            raise ValueError(f"x must be [N, in_channels] = [N, {self.in_channels}], got {tuple(x.shape)}")
        g = self.graph(edge_index, x.size(0))
        n, D, C = x.size(0), self.D, self.hidden
        x = F.dropout(x, self.input_dropout, self.training)
        x = self.lin1(x)
        if self.use_act:
            x = F.elu(x)
        if self.lin12 is not None:
            x = self.lin12(x)
        x = F.dropout(x, self.dropout, self.training).view(n, D, C)
        lap = None
        for t in range(self.layers):
            if lap is None or not self.linear:
                xm = F.dropout(x, self.dropout, self.training) if t > 0 else x
                lap = self.laplacian(xm, g, t)
            h = F.dropout(x, self.dropout, self.training)
            if self.left is not None:
                h = torch.einsum("ij,njc->nic", self.left[t].weight, h)
            if self.right is not None:
                h = self.right[t](h)
            lh = lap(h)
            if self.use_act:
                lh = F.elu(lh)
            x = (1 + torch.tanh(self.eps[t])).view(1, D, 1) * x - lh
        return self.lin2(x.reshape(n, D * C))


def _block_diag(maps: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """[E, d, d] maps and [E, k] fixed scalars -> [E, d + k, d + k] block-diagonal maps."""
    E, d, k = maps.size(0), maps.size(1), extra.size(1)
    return torch.cat([torch.cat([maps, maps.new_zeros(E, d, k)], 2),
                     torch.cat([maps.new_zeros(E, k, d), torch.diag_embed(extra)], 2)], 1)
