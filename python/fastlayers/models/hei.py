"""HEI-style invariant learning for heterophilous graphs, on the message-passing kernels.

HEI (Yang et al., "Leveraging Invariant Principle for Heterophilic Graph Structure Distribution Shifts",
WWW 2025) infers latent training environments from estimated neighbourhood patterns, without augmentation, and
trains the backbone with an invariance objective over them. This module implements that recipe as follows
(its own choices, stated so results can be read against them):

- neighbourhood-pattern score: each node's mean squared distance between its L2-normalised features and its
  in-neighbours' (:func:`neighbourhood_score`, one mean spmm over [x, |x|^2]); nodes whose neighbours look
  unlike them score high (heterophily-like patterns), whatever the labels, so it is available on test nodes too;
- environment inference: a small MLP maps the standardised score (and log degree) to a soft assignment q [N, K]
  over K environments; it is trained adversarially, EIIL-style, to maximise the invariance penalty of the current
  classifier (plus a term keeping the environments' masses balanced);
- invariance objective: the IRMv1 penalty per soft environment, ``(d/dw R_k(w * logits) at w = 1)^2`` with
  R_k the q_k-weighted cross entropy, added to the ERM loss with weight ``penalty_weight``.

The penalty is a gradient, so its backward is a second derivative; with the dummy scale on the logits it stays
outside the backbone, but the whole objective is twice differentiable through the backbone as well (spmm sum/mean
and scatter have double backward; tests/models/test_hei.py runs gradgradcheck through GCN and LINKX).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from ..graph import as_graph
from ..nn.mp import GCNConv
from ..ops.mp import spmm


def neighbourhood_score(x: torch.Tensor, graph) -> torch.Tensor:
    """Mean squared distance of each node's L2-normalised features to its in-neighbours'.

    Args:
        x: [N, F] float32/float64 features.
        graph: a :class:`fastlayers.Graph` or edge_index [2, E] (give undirected graphs in both directions).

    Returns:
        [N] in x's dtype, in [0, 4]; 0 for nodes with no in-neighbour. Computed as
        ``|x_v|^2 - 2 x_v . mean(x_u) + mean(|x_u|^2)`` from a single mean-spmm of [x, |x|^2]: no [E, F] tensor.
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        raise ValueError(f"x must be a [N, F] tensor, got {getattr(x, 'shape', type(x).__name__)}")
    g = as_graph(graph, x.size(0), "graph")
    xn = F.normalize(x, dim=1)
    sq = (xn * xn).sum(1, keepdim=True)
    agg = spmm(g, torch.cat([xn, sq], 1), None, "mean")
    score = sq.squeeze(1) - 2 * (xn * agg[:, :-1]).sum(1) + agg[:, -1]
    return torch.where(g.in_degree > 0, score.clamp_min(0), torch.zeros_like(score))


def local_homophily(y: torch.Tensor, graph) -> torch.Tensor:
    """Each node's share of in-neighbours with its own label ([N] float64; NaN for nodes with no in-neighbour)."""
    g = as_graph(graph, y.size(0), "graph")
    src, dst = g.edge_index
    same = (y[src] == y[dst]).to(torch.float64)
    h = torch.zeros(g.num_nodes, dtype=torch.float64).index_add_(0, dst, same)
    deg = g.in_degree.to(torch.float64)
    return torch.where(deg > 0, h / deg.clamp_min(1), torch.full_like(h, float("nan")))


class MLP(nn.Module):
    """A plain MLP node classifier (ignores the graph): forward(x [N, F], graph) -> [N, out]."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, layers: int = 2, dropout: float = 0.5):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        sizes = [in_channels] + [hidden] * (layers - 1) + [out_channels]
        self.lins = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, edge_index=None) -> torch.Tensor:
        for i, lin in enumerate(self.lins):
            x = F.dropout(x, self.dropout, self.training)
            x = lin(x)
            if i < len(self.lins) - 1:
                x = F.relu(x)
        return x


class GCN(nn.Module):
    """Kipf & Welling's GCN node classifier on :class:`fastlayers.nn.GCNConv`:
    forward(x [N, F], graph or edge_index) -> [N, out]."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int, layers: int = 2, dropout: float = 0.5):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        sizes = [in_channels] + [hidden] * (layers - 1) + [out_channels]
        self.convs = nn.ModuleList(GCNConv(a, b) for a, b in itertools.pairwise(sizes))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, edge_index) -> torch.Tensor:
        g = as_graph(edge_index, x.size(0))
        for i, conv in enumerate(self.convs):
            x = F.dropout(x, self.dropout, self.training)
            x = conv(x, g)
            if i < len(self.convs) - 1:
                x = F.relu(x)
        return x


def irm_penalty(logits: torch.Tensor, y: torch.Tensor, env: torch.Tensor) -> torch.Tensor:
    """IRMv1 penalties of soft environments.

    Args:
        logits: [M, C] class scores of the M training nodes.
        y: [M] int64 labels.
        env: [M, K] non-negative environment weights (rows of a soft assignment).

    Returns:
        [K]: ``(d/dw R_k(w) at w = 1)^2`` with ``R_k(w) = sum_v env_vk CE(w logits_v, y_v) / sum_v env_vk``.
        Differentiable in logits and env (with create_graph, so its own backward is a second derivative).
    """
    scale = torch.ones((), dtype=logits.dtype, device=logits.device, requires_grad=True)
    ce = F.cross_entropy(logits * scale, y, reduction="none")
    risks = (env * ce.unsqueeze(1)).sum(0) / env.sum(0).clamp_min(torch.finfo(logits.dtype).eps)
    grads = torch.stack([torch.autograd.grad(r, scale, create_graph=True)[0] for r in risks.unbind()]) \
        if risks.numel() else risks
    return grads.pow(2)


class HEI(nn.Module):
    """A backbone trained with environment inference from neighbourhood patterns and IRMv1 (see module doc).

    Args:
        backbone: any module ``backbone(x, graph) -> logits [N, C]`` (e.g. :class:`GCN`,
            :class:`fastlayers.nn.LINKX`, :class:`fastlayers.models.NSD`).
        num_envs: K >= 2 inferred environments.
        penalty_weight: weight of the summed IRMv1 penalties in the classifier's loss.
        env_hidden: width of the environment MLP.
        balance_weight: weight of the squared deviation of the environments' masses from 1/K in the environment
            network's loss (keeps it from collapsing onto one environment).

    forward(x [N, F], graph) -> the backbone's logits. :meth:`environments` gives q [N, K]; :meth:`losses` the
    two training losses. The environment network sees only the score and the degree (never labels), so it
    applies to test nodes as well.
    """

    def __init__(self, backbone: nn.Module, num_envs: int = 2, penalty_weight: float = 1.0, env_hidden: int = 16,
                 balance_weight: float = 1.0):
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 2:
            raise ValueError(f"num_envs must be an int >= 2, got {num_envs!r}")
        if penalty_weight < 0 or balance_weight < 0:
            raise ValueError("penalty_weight and balance_weight must be >= 0")
        self.backbone, self.num_envs = backbone, num_envs
        self.penalty_weight, self.balance_weight = penalty_weight, balance_weight
        self.env_net = nn.Sequential(nn.Linear(2, env_hidden), nn.Tanh(), nn.Linear(env_hidden, num_envs))

    def forward(self, x: torch.Tensor, graph) -> torch.Tensor:
        return self.backbone(x, graph)

    def env_parameters(self) -> list[nn.Parameter]:
        return list(self.env_net.parameters())

    def classifier_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def pattern_features(self, x: torch.Tensor, graph) -> torch.Tensor:
        """[N, 2]: the standardised neighbourhood score and log degree, the environment network's input."""
        g = as_graph(graph, x.size(0), "graph")
        with torch.no_grad():
            s = neighbourhood_score(x, g)
            f = torch.stack([s, torch.log1p(g.in_degree.to(x.dtype))], 1)
            if f.size(0) > 1:
                f = (f - f.mean(0)) / f.std(0).clamp_min(1e-6)
        return f

    def environments(self, x: torch.Tensor, graph, features: torch.Tensor | None = None) -> torch.Tensor:
        """Soft environment assignment q [N, K] (rows sum to 1)."""
        f = self.pattern_features(x, graph) if features is None else features
        return torch.softmax(self.env_net(f), 1)

    def losses(self, x: torch.Tensor, graph, y: torch.Tensor, mask: torch.Tensor,
               features: torch.Tensor | None = None) -> dict:
        """The training losses on the nodes of ``mask`` (bool [N]).

        Returns a dict: ``classifier`` (ERM + penalty_weight * sum of IRMv1 penalties, the environments held
        fixed) for the backbone's optimiser, ``environment`` (minus the penalties, the classifier held fixed, plus
        the balance term) for the environment network's, and ``erm``, ``penalty`` (detached, for logging).
        """
        g = as_graph(graph, x.size(0), "graph")
        if y.shape != (x.size(0),):
            raise ValueError(f"y must be [N] = [{x.size(0)}], got {tuple(y.shape)}")
        if mask.shape != (x.size(0),) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be bool [N] = [{x.size(0)}], got {mask.dtype} {tuple(mask.shape)}")
        logits = self.backbone(x, g)[mask]
        yt = y[mask]
        q = self.environments(x, g, features)[mask]
        erm = F.cross_entropy(logits, yt)
        pen_cls = irm_penalty(logits, yt, q.detach()).sum()
        pen_env = irm_penalty(logits.detach(), yt, q).sum()
        balance = (q.mean(0) - 1.0 / self.num_envs).pow(2).sum()
        return {"classifier": erm + self.penalty_weight * pen_cls,
                "environment": -pen_env + self.balance_weight * balance,
                "erm": erm.detach(), "penalty": pen_cls.detach()}


__all__ = ["GCN", "HEI", "MLP", "irm_penalty", "local_homophily", "neighbourhood_score"]
