"""IsoNet++ (node and edge variants, lazy multi-round early interaction) and IsoNet (late interaction over edges)
for subgraph-matching retrieval, on fastlayers' alignment ops.

Both score a padded batch of (query, corpus) pairs (fastlayers.data.PairBatch); higher means "more likely the
query is a subgraph of the corpus graph". ``ops="eager"`` runs the same model on the plain-PyTorch references of
the ops (the published code path, under fastlayers.ops.use_reference()), for benchmarks and checks.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

from .. import ops as _fast
from ..graph import Graph


def _mlp(d_in, d_hidden, d_out):
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.ReLU(), nn.Linear(d_hidden, d_out))


class _OnReference:
    """fastlayers.ops with every call made under use_reference(): the ops' plain-PyTorch references."""

    def __getattr__(self, name):
        fn = getattr(_fast, name)

        @functools.wraps(fn)
        def call(*args, **kwargs):
            with _fast.use_reference():
                return fn(*args, **kwargs)

        return call


_ON_REFERENCE = _OnReference()


class _Ops:
    # Holds only the kind: modules and functions are looked up on use, so a model can be deep-copied and pickled.
    def __init__(self, kind):
        if kind not in ("fastlayers", "eager"):
            raise ValueError(f"ops must be 'fastlayers' or 'eager', got {kind!r}")
        self.fast = kind == "fastlayers"

    @property
    def m(self):
        return _fast if self.fast else _ON_REFERENCE

    @property
    def layer(self):
        return self.m.isonet_layer

    def graph(self, edge_index, num_nodes):
        # The layer takes the CSR that a Graph builds once per batch (on the reference sort for the eager model).
        if self.fast:
            return Graph.from_edge_index(edge_index, num_nodes)
        with _fast.use_reference():
            return Graph.from_edge_index(edge_index, num_nodes)


class _Propagate(nn.Module):
    """One message-passing layer: messages from [z_u, z_v] along both directions of each edge, summed at the
    target, GRU update of the node state."""

    def __init__(self, node_dim, msg_dim):
        super().__init__()
        self.message = _mlp(2 * node_dim, msg_dim, msg_dim)
        self.update = nn.GRUCell(msg_dim, node_dim)

    def forward(self, z, h, edges):
        src, dst = edges
        # The first message layer on [z_u, z_v] is W_u z_u + W_v z_v + b: applied per node, then gathered, it
        # costs a node-sized matmul instead of an edge-sized one and no concatenated edge tensor.
        first, act, second = self.message
        d = z.shape[1]
        zu = nn.functional.linear(z, first.weight[:, :d])
        zv = nn.functional.linear(z, first.weight[:, d:], first.bias)
        m = second(act(zu[src] + zv[dst]))
        agg = torch.zeros(h.shape[0], m.shape[1], dtype=m.dtype, device=m.device).index_add_(0, dst, m)
        return self.update(agg, h)

    def weights(self):
        """The message MLP's and GRU cell's parameters in fastlayers.ops.isonet_layer's order."""
        first, _, second = self.message
        u = self.update
        return (first.weight, first.bias, second.weight, second.bias, u.weight_ih, u.weight_hh, u.bias_ih, u.bias_hh)


_VARIANTS = ("node", "edge")


class IsoNetPP(nn.Module):
    """IsoNet++ node variant: T rounds x K layers, lazy alignment refinement.

    Each round restarts message passing from the encoder output; at layer k of round t a query node also sees
    its partner feature, row u of P_{t-1} Hc_{t-1,k-1} (a corpus node: P_{t-1}^T Hq_{t-1,k-1}; round 1 sees
    zeros), combined with its state by an MLP before the messages. After the round, P_t = Sinkhorn of the
    masked logits f(Hq) f(Hc)^T / tau (reference padding, as published). Score: -sum ReLU(Hq - P_T Hc).

    Args: variant ("node", or "edge" for the edge-alignment variant, see _IsoNetPPEdge), rounds T, layers K,
    node_dim (10), msg_dim (20), sinkhorn_dim (16), tau (0.1), sinkhorn_iters (20), ops ("fastlayers" or "eager").
    Input: PairBatch; output: scores [B] (float32).
    """

    def __new__(cls, variant: str = "node", *args, **kwargs):
        # IsoNetPP(variant=...) stays the one public entry; the edge variant is its own subclass so that the two
        # variants' code paths evolve independently.
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")
        target = _IsoNetPPEdge if cls is IsoNetPP and variant == "edge" else cls
        return super().__new__(target)

    def __init__(self, variant: str = "node", rounds: int = 3, layers: int = 5, node_dim: int = 10,
                 msg_dim: int = 20, sinkhorn_dim: int = 16, tau: float = 0.1, sinkhorn_iters: int = 20,
                 ops: str = "fastlayers"):
        super().__init__()
        self._setup(rounds, layers, tau, sinkhorn_iters, ops, node_dim)
        self.interaction = _mlp(2 * node_dim, node_dim, node_dim)
        self.layer = nn.ModuleList(_Propagate(node_dim, msg_dim) for _ in range(layers))
        self.sinkhorn_net = _mlp(node_dim, sinkhorn_dim, sinkhorn_dim)

    def _setup(self, rounds, layers, tau, sinkhorn_iters, ops, node_dim):
        """What both variants share: round/layer counts, Sinkhorn settings, the ops and the node encoder."""
        if rounds < 1 or layers < 1:
            raise ValueError(f"rounds and layers must be >= 1, got {rounds}, {layers}")
        self.rounds, self.layers = rounds, layers
        self.tau, self.sinkhorn_iters = tau, sinkhorn_iters
        self.ops = _Ops(ops)
        self.encoder = nn.Linear(1, node_dim)

    def alignment(self, hq, hc, qm, cm):
        fq = self.sinkhorn_net(hq) * qm[..., None]
        fc = self.sinkhorn_net(hc) * cm[..., None]
        logits = torch.bmm(fq, fc.transpose(1, 2))
        return self.ops.m.sinkhorn(logits, qm, cm, tau=self.tau, num_iters=self.sinkhorn_iters, mode="reference")

    def forward(self, batch) -> torch.Tensor:
        b, n = batch.q_mask.shape
        qm, cm = batch.q_mask, batch.c_mask
        qmf, cmf = qm.reshape(-1, 1).float(), cm.reshape(-1, 1).float()
        dev = qm.device
        hq0 = self.encoder(torch.ones(b * n, 1, device=dev)) * qmf
        hc0 = self.encoder(torch.ones(b * n, 1, device=dev)) * cmf
        qg, cg = self.ops.graph(batch.q_edges, b * n), self.ops.graph(batch.c_edges, b * n)
        qmv, cmv = qm.reshape(-1), cm.reshape(-1)
        inter = (self.interaction[0].weight, self.interaction[0].bias, self.interaction[2].weight,
                 self.interaction[2].bias)
        P = None
        prev_q = prev_c = None
        for _ in range(self.rounds):
            hq, hc = hq0, hc0
            cur_q, cur_c = [hq], [hc]
            for k in range(self.layers):
                # Partner transport (P Hc for q, P^T Hq for c; zeros in round 1, P is None), interaction MLP,
                # messages, GRU and mask in one layer call (fused on fastlayers ops).
                oq, oc = (None, None) if P is None else (prev_c[k], prev_q[k])
                w = inter + self.layer[k].weights()
                hq = self.ops.layer(hq, None, qg, qmv, *w, P=P, other=oq)
                hc = self.ops.layer(hc, None, cg, cmv, *w, P=P, other=oc, transpose=True)
                cur_q.append(hq)
                cur_c.append(hc)
            prev_q, prev_c = cur_q, cur_c
            P = self.alignment(hq.view(b, n, -1), hc.view(b, n, -1), qm, cm)
        return self.ops.m.align_score(hq.view(b, n, -1), hc.view(b, n, -1), P)


def _edge_embed(mlp, h, ends, emask):
    """Edge embeddings r_(u,v) = mlp([h_u, h_v]) + mlp([h_v, h_u]), zero on padded edges.

    mlp: _mlp(2 * D, H, D_out); h [B * N, D] node states; ends (u, v) int64 [B * E] flat node ids;
    emask [B * E, 1] float (1 = real edge). Returns [B * E, D_out] in h's dtype.
    """
    first, act, second = mlp
    d = h.shape[1]
    # The first layer on [h_u, h_v] is W_1 h_u + W_2 h_v + b: applied per node and then gathered, it is a
    # node-sized matmul shared by both directions. The second layer is affine, so the two directions are summed
    # before it (one matmul; its bias counts twice).
    first_slot = nn.functional.linear(h, first.weight[:, :d])
    second_slot = nn.functional.linear(h, first.weight[:, d:], first.bias)
    u, v = ends
    hidden = act(first_slot[u] + second_slot[v]) + act(first_slot[v] + second_slot[u])
    return nn.functional.linear(hidden, second.weight, 2 * second.bias) * emask


class _EdgeLayer(nn.Module):
    """One layer of the edge variant: the edge network that embeds r_(u,v) from the layer's input node states,
    and the GRU that updates a node from the sum of its incident edges' messages."""

    def __init__(self, node_dim, edge_dim):
        super().__init__()
        self.edge = _mlp(2 * node_dim, edge_dim, edge_dim)
        self.update = nn.GRUCell(edge_dim, node_dim)


class _IsoNetPPEdge(IsoNetPP):
    """IsoNet++ edge variant (built by ``IsoNetPP(variant="edge")``): T rounds x K layers of lazy refinement of an
    edge alignment S.

    Each round restarts from the encoder output. At layer k of round t every (undirected, padded) edge has an
    embedding r_(u,v) = edge_k([h_u, h_v]) + edge_k([h_v, h_u]) from the layer's input node states; its message
    is interaction([r_e, partner_e]), where partner_e is row e of S_{t-1} Rc_{t-1,k} for a query edge and of
    S_{t-1}^T Rq_{t-1,k} for a corpus edge (zeros in round 1), Rq/Rc being the same layer's edge embeddings in
    the previous round. A node's GRU update takes the sum of the messages of its incident edges. After the round,
    R_{t,K} = edge_K(final node states) and S_t = Sinkhorn of f(Rq) f(Rc)^T / tau over padded edges (reference
    padding, as published). Score: -sum ReLU(Rq_{T,K} - S_T Rc_{T,K}).

    Args as IsoNetPP; msg_dim is the edge embedding and message width. Input: PairBatch (q_edge_pairs,
    c_edge_pairs int64 [B, E, 2] flat node ids; q_edge_mask, c_edge_mask bool [B, E]); output: scores [B] in
    the parameters' dtype (float32 unless converted).
    """

    def __init__(self, variant: str = "edge", rounds: int = 3, layers: int = 5, node_dim: int = 10,
                 msg_dim: int = 20, sinkhorn_dim: int = 16, tau: float = 0.1, sinkhorn_iters: int = 20,
                 ops: str = "fastlayers"):
        nn.Module.__init__(self)  # IsoNetPP.__init__ builds the node variant's layers
        self._setup(rounds, layers, tau, sinkhorn_iters, ops, node_dim)
        self.interaction = _mlp(2 * msg_dim, msg_dim, msg_dim)
        self.layer = nn.ModuleList(_EdgeLayer(node_dim, msg_dim) for _ in range(layers))
        self.edge_net = _mlp(2 * node_dim, msg_dim, msg_dim)
        self.sinkhorn_net = _mlp(msg_dim, sinkhorn_dim, sinkhorn_dim)

    def alignment(self, rq, rc, qm, cm):
        """S [B, Eq, Ec] from edge embeddings rq [B, Eq, D], rc [B, Ec, D] and edge masks (bool)."""
        fq = self.sinkhorn_net(rq) * qm[..., None]
        fc = self.sinkhorn_net(rc) * cm[..., None]
        logits = torch.bmm(fq, fc.transpose(1, 2))
        return self.ops.m.sinkhorn(logits, qm, cm, tau=self.tau, num_iters=self.sinkhorn_iters, mode="reference")

    @staticmethod
    def _side(batch, side):
        mask, pairs, emask = (getattr(batch, f"{side}_{name}") for name in ("mask", "edge_pairs", "edge_mask"))
        b, _n = mask.shape
        if pairs.dim() != 3 or pairs.shape[0] != b or pairs.shape[2] != 2:
            raise ValueError(f"batch.{side}_edge_pairs must be [B, E, 2] with B = {b}, got {tuple(pairs.shape)}")
        if tuple(emask.shape) != tuple(pairs.shape[:2]):
            raise ValueError(f"batch.{side}_edge_mask must be [B, E] = {list(pairs.shape[:2])}, got "
                             f"{tuple(emask.shape)}")
        flat = pairs.reshape(-1, 2)
        return mask, emask, (flat[:, 0], flat[:, 1])

    def _step(self, k, h, r, partner_feat, ends, emask, nmask):
        # Padded edges point at arbitrary nodes: their messages are zeroed before they reach any node.
        msg = self.interaction(torch.cat([r, partner_feat], 1)) * emask
        agg = torch.zeros(h.shape[0], msg.shape[1], dtype=msg.dtype, device=msg.device)
        agg.index_add_(0, ends[0], msg).index_add_(0, ends[1], msg)
        return self.layer[k].update(agg, h) * nmask

    def forward(self, batch) -> torch.Tensor:
        qm, qem, qends = self._side(batch, "q")
        cm, cem, cends = self._side(batch, "c")
        b, _n = qm.shape
        eq, ec = qem.shape[1], cem.shape[1]
        dt = self.encoder.weight.dtype
        qnf, cnf = qm.reshape(-1, 1).to(dt), cm.reshape(-1, 1).to(dt)
        qef, cef = qem.reshape(-1, 1).to(dt), cem.reshape(-1, 1).to(dt)
        h0 = self.encoder(torch.ones(1, 1, dtype=dt, device=qm.device))
        hq0, hc0 = h0 * qnf, h0 * cnf
        # Every round restarts from the encoder output, so the first layer's edge embeddings are the same in all
        # rounds.
        rq0 = _edge_embed(self.layer[0].edge, hq0, qends, qef)
        rc0 = _edge_embed(self.layer[0].edge, hc0, cends, cef)
        S = None
        prev_q = prev_c = None
        for _ in range(self.rounds):
            hq, hc = hq0, hc0
            cur_q, cur_c = [], []
            for k in range(self.layers):
                rq = rq0 if k == 0 else _edge_embed(self.layer[k].edge, hq, qends, qef)
                rc = rc0 if k == 0 else _edge_embed(self.layer[k].edge, hc, cends, cef)
                cur_q.append(rq)
                cur_c.append(rc)
                if S is None:
                    pq, pc = torch.zeros_like(rq), torch.zeros_like(rc)
                else:
                    pq, pc = self.ops.m.partner(S, prev_q[k].view(b, eq, -1), prev_c[k].view(b, ec, -1))
                    pq, pc = pq.reshape(b * eq, -1), pc.reshape(b * ec, -1)
                hq = self._step(k, hq, rq, pq, qends, qef, qnf)
                hc = self._step(k, hc, rc, pc, cends, cef, cnf)
            prev_q, prev_c = cur_q, cur_c
            rq = _edge_embed(self.edge_net, hq, qends, qef).view(b, eq, -1)
            rc = _edge_embed(self.edge_net, hc, cends, cef).view(b, ec, -1)
            S = self.alignment(rq, rc, qem, cem)
        return self.ops.m.align_score(rq, rc, S)


class IsoNet(nn.Module):
    """IsoNet (late interaction): K message-passing layers per graph with no cross-graph information, edge
    embeddings r_(u,v) = msg([h_u, h_v]) + msg([h_v, h_u]), one Sinkhorn edge alignment S over padded edges, and
    the hinge score -sum ReLU(Rq - S Rc). Input: PairBatch; output: scores [B]."""

    def __init__(self, layers: int = 5, node_dim: int = 10, edge_dim: int = 20, sinkhorn_dim: int = 16,
                 tau: float = 0.1, sinkhorn_iters: int = 20, ops: str = "fastlayers"):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.tau, self.sinkhorn_iters = tau, sinkhorn_iters
        self.ops = _Ops(ops)
        self.encoder = nn.Linear(1, node_dim)
        self.layer = nn.ModuleList(_Propagate(node_dim, edge_dim) for _ in range(layers))
        self.edge_net = _mlp(2 * node_dim, edge_dim, edge_dim)
        self.sinkhorn_net = _mlp(edge_dim, sinkhorn_dim, sinkhorn_dim)

    def _edges(self, h, pairs, emask):
        u, v = pairs[..., 0], pairs[..., 1]
        r = self.edge_net(torch.cat([h[u], h[v]], -1)) + self.edge_net(torch.cat([h[v], h[u]], -1))
        return r * emask[..., None]

    def forward(self, batch) -> torch.Tensor:
        b, n = batch.q_mask.shape
        qmf, cmf = batch.q_mask.reshape(-1, 1).float(), batch.c_mask.reshape(-1, 1).float()
        dev = qmf.device
        hq = self.encoder(torch.ones(b * n, 1, device=dev)) * qmf
        hc = self.encoder(torch.ones(b * n, 1, device=dev)) * cmf
        for layer in self.layer:
            hq = layer(hq, hq, batch.q_edges) * qmf
            hc = layer(hc, hc, batch.c_edges) * cmf
        rq = self._edges(hq, batch.q_edge_pairs, batch.q_edge_mask)
        rc = self._edges(hc, batch.c_edge_pairs, batch.c_edge_mask)
        qm, cm = batch.q_edge_mask, batch.c_edge_mask
        logits = torch.bmm(self.sinkhorn_net(rq) * qm[..., None], (self.sinkhorn_net(rc) * cm[..., None]).transpose(1, 2))
        S = self.ops.m.sinkhorn(logits, qm, cm, tau=self.tau, num_iters=self.sinkhorn_iters, mode="reference")
        return self.ops.m.align_score(rq, rc, S)
