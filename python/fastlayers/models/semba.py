"""SEMBA (Sharma et al., CIKM 2023): signed link prediction in continuous-time dynamic graphs with two memories per
node and balance-theory routing, and the static SGCN baseline it is compared with.

Memory. Every node u keeps a positive memory s+_u and a negative memory s-_u (``memory[:, :d]`` and
``memory[:, d:]``). An event (u, v, rating r, time t) sends one message to each endpoint; for u (and likewise
for v with the roles swapped) the four routes of balance theory are

    positive edge:  m+_u = [s+_u | s+_v | |r| / R | phi(dt_u)]   (a friend's friends are my friends)
                    m-_u = [s-_u | s-_v | |r| / R | phi(dt_u)]   (a friend's enemies are my enemies)
    negative edge:  m+_u = [s+_u | s-_v | |r| / R | phi(dt_u)]   (an enemy's enemies are my friends)
                    m-_u = [s-_u | s+_v | |r| / R | phi(dt_u)]   (an enemy's friends are my enemies)

with R the largest |rating| and phi a learnable harmonic encoding of the node's time gap since its last update,
divided by ``time_scale`` and log-scaled (raw Unix seconds would saturate the cosines). The messages of a batch
are averaged per node with one segment reduction (``fastlayers.ops.segment`` over the node-sorted messages of
both memories at once) and fed to one GRU cell per sign: s+_u <- GRU+(mean m+_u, s+_u), s-_u <- GRU-(...). Only
the nodes a batch touches are updated. ``balance=False`` is the no-balance ablation: one memory of the same
width 2d, messages [s_u | s_v | r / R | phi(dt_u)] with the signed rating, one GRU.

Embedding. Each node's last K neighbours (both directions, with the signed rating and time of the edge) sit in a
ring buffer; a node's embedding is multi-head attention from its memory over those K neighbours' memories, edge
ratings and time gaps, merged with its own memory by an MLP (TGN's graph-attention embedding, restricted to K
recent neighbours instead of the whole history).

Decoders on [z_u | z_v]: ``sign`` (2 classes: 0 negative, 1 positive), ``link`` (1 logit), ``signlink``
(3 classes: 0 positive, 1 negative, 2 no edge) and ``weight`` (the rating itself, regression).

Training follows TGN: the memory update of batch i-1 is computed at the start of batch i with gradients, so the
GRUs are trained through the predictions of batch i, which only see edges strictly before it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..graph import Graph
from ..nn import SignedConv
from ..ops import segment

TASKS = {"sign": 2, "link": 1, "signlink": 3, "weight": 1}


def _task_heads(dim: int) -> nn.ModuleDict:
    """One MLP per task on a pair's concatenated embeddings [P, 2 * dim] -> [P, TASKS[task]]."""
    return nn.ModuleDict({task: nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(), nn.Linear(dim, k))
                          for task, k in TASKS.items()})


def _decode(heads: nn.ModuleDict, max_rating: float, task: str, z_u: torch.Tensor, z_v: torch.Tensor):
    """Decoder ``task`` on pair embeddings: [P, 2] sign / [P] link / [P, 3] signlink logits, [P] weight (rating
    units: the head predicts rating / max_rating)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {tuple(TASKS)}, got {task!r}")
    out = heads[task](torch.cat([z_u, z_v], -1))
    if task == "weight":
        return out.squeeze(-1) * max_rating
    return out.squeeze(-1) if task == "link" else out


class TimeEncoder(nn.Module):
    """cos(w * log1p(dt / scale) + b). dt: [*] float64 seconds -> [*, dim] in the module's dtype."""

    def __init__(self, dim: int, scale: float = 1.0):
        super().__init__()
        if not (isinstance(scale, (int, float)) and scale > 0 and math.isfinite(scale)):
            raise ValueError(f"time_scale must be a positive finite number, got {scale!r}")
        self.scale = float(scale)
        self.lin = nn.Linear(1, dim)
        with torch.no_grad():
            self.lin.weight.copy_(torch.linspace(0.1, 3.0, dim).view(dim, 1))
            self.lin.bias.zero_()

    def forward(self, dt: torch.Tensor) -> torch.Tensor:
        x = torch.log1p(dt.clamp_min(0) / self.scale).to(self.lin.weight.dtype)
        return torch.cos(self.lin(x.unsqueeze(-1)))


def _check_ids(name: str, ids: torch.Tensor, n: int) -> None:
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(ids).__name__}")
    if ids.dtype != torch.int64:
        raise TypeError(f"{name} must be int64 node ids, got {ids.dtype}")
    if ids.dim() != 1:
        raise ValueError(f"{name} must be 1-D [B], got shape {tuple(ids.shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
        raise IndexError(f"{name} has ids outside [0, num_nodes = {n}): [{int(ids.min())}, {int(ids.max())}]")


class SEMBA(nn.Module):
    """SEMBA signed temporal link predictor (see the module docstring for the equations).

    Args:
        num_nodes: node ids 0 .. num_nodes - 1.
        memory_dim: d, the width of each signed memory (the no-balance ablation keeps one memory of width 2d).
        time_dim: width of the time encoding. embed_dim: width of the embeddings and decoders.
        neighbours: K, how many recent neighbours each node attends over. heads: attention heads.
        balance: True for SEMBA; False for the ablation without balance routing (one memory).
        time_scale: seconds that count as one unit of time gap before the log scaling (e.g. the median gap
            between a node's events).
        max_rating: R, the largest |rating| (Bitcoin OTC: 10); ratings must be nonzero integers or floats in
            [-R, R] \\ {0} (the sign of a zero rating is undefined, so it is refused).

    Use: ``out, out_neg = model(src, dst, rating, t, neg=None, task="sign")`` decodes the events (src, dst) and, if
    given, the pairs (src, neg) from the state before the batch, then queues the batch as the next state update.
    src, dst, neg: int64 [B]; rating: [B] (int or float); t: float64 [B] Unix seconds, non-decreasing and not
    before the previous batch. Outputs: [B, 2] logits (sign), [B] logit (link), [B, 3] logits (signlink) or [B]
    predicted ratings (weight), in the parameters' dtype. Call :meth:`detach_state` after each optimiser step and
    :meth:`reset_state` before replaying a stream from its start.
    """

    def __init__(self, num_nodes: int, memory_dim: int = 32, time_dim: int = 16, embed_dim: int = 64,
                 neighbours: int = 10, heads: int = 2, balance: bool = True, time_scale: float = 1.0,
                 max_rating: float = 10.0):
        super().__init__()
        for name, v in (("num_nodes", num_nodes), ("memory_dim", memory_dim), ("time_dim", time_dim),
                        ("embed_dim", embed_dim), ("neighbours", neighbours), ("heads", heads)):
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if name == "num_nodes" else 1):
                raise ValueError(f"{name} must be a {'non-negative' if name == 'num_nodes' else 'positive'} int, "
                                 f"got {v!r}")
        if embed_dim % heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by heads ({heads})")
        if not (max_rating > 0 and math.isfinite(max_rating)):
            raise ValueError(f"max_rating must be a positive finite number, got {max_rating!r}")
        self.num_nodes, self.d, self.balance = num_nodes, memory_dim, bool(balance)
        self.K, self.heads, self.embed_dim, self.max_rating = neighbours, heads, embed_dim, float(max_rating)
        M = 2 * memory_dim
        self.time_enc = TimeEncoder(time_dim, time_scale)
        if self.balance:
            msg = 2 * memory_dim + 1 + time_dim
            self.gru_pos = nn.GRUCell(msg, memory_dim)
            self.gru_neg = nn.GRUCell(msg, memory_dim)
        else:
            self.gru = nn.GRUCell(2 * M + 1 + time_dim, M)
        self.att_q = nn.Linear(M + time_dim, embed_dim)
        self.att_k = nn.Linear(M + 1 + time_dim, embed_dim)
        self.att_v = nn.Linear(M + 1 + time_dim, embed_dim)
        self.merge = nn.Sequential(nn.Linear(embed_dim + M, embed_dim), nn.ReLU(), nn.Linear(embed_dim, embed_dim))
        self.heads_out = _task_heads(embed_dim)
        self.register_buffer("memory", torch.zeros(num_nodes, M))
        self.register_buffer("last_update", torch.zeros(num_nodes, dtype=torch.float64))
        self.register_buffer("seen", torch.zeros(num_nodes, dtype=torch.bool))
        self.register_buffer("nbr", torch.full((num_nodes, neighbours), -1, dtype=torch.int64))
        self.register_buffer("nbr_t", torch.zeros(num_nodes, neighbours, dtype=torch.float64))
        self.register_buffer("nbr_r", torch.zeros(num_nodes, neighbours))
        self.register_buffer("nbr_count", torch.zeros(num_nodes, dtype=torch.int64))
        self.register_buffer("clock", torch.full((), -math.inf, dtype=torch.float64))
        self._live = None  # memory with this step's graph attached
        self._pending = None

    # ---- state ---------------------------------------------------------------------------------------------

    def reset_state(self) -> None:
        """Forget the stream: zero memories, empty the neighbour buffers, drop the queued batch."""
        self.memory.zero_()
        self.last_update.zero_()
        self.seen.zero_()
        self.nbr.fill_(-1)
        self.nbr_t.zero_()
        self.nbr_r.zero_()
        self.nbr_count.zero_()
        self.clock.fill_(-math.inf)
        self._live, self._pending = None, None

    def detach_state(self) -> None:
        """Store the live memory as a plain tensor (end of a training step: no gradient across batches)."""
        if self._live is not None:
            self.memory.copy_(self._live.detach())
            self._live = None

    def state_keys(self) -> tuple[str, ...]:
        """Names of the stream-state buffers (left out when copying trained weights)."""
        return ("memory", "last_update", "seen", "nbr", "nbr_t", "nbr_r", "nbr_count", "clock")

    # ---- memory update -------------------------------------------------------------------------------------

    def messages(self, memory: torch.Tensor, node: torch.Tensor, partner: torch.Tensor, rating: torch.Tensor,
                 dt: torch.Tensor) -> torch.Tensor:
        """Raw messages [P, width] to ``node`` from its event with ``partner`` (balance: [m+ | m-] side by side).

        memory: [N, 2d]; node, partner: int64 [P]; rating: [P] signed; dt: float64 [P] gap since node's last
        update (0 for a node never updated)."""
        enc = self.time_enc(dt)
        r = rating.to(memory.dtype).unsqueeze(1) / self.max_rating
        mu, mv = memory[node], memory[partner]
        if not self.balance:
            return torch.cat([mu, mv, r, enc], 1)
        d = self.d
        pos = (rating > 0).unsqueeze(1)
        v_pos, v_neg = mv[:, :d], mv[:, d:]
        friend_side = torch.where(pos, v_pos, v_neg)  # what the edge says about u's friends
        enemy_side = torch.where(pos, v_neg, v_pos)  # what it says about u's enemies
        a = r.abs()
        return torch.cat([mu[:, :d], friend_side, a, enc, mu[:, d:], enemy_side, a, enc], 1)

    def updated_rows(self, memory: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, rating: torch.Tensor,
                     t: torch.Tensor, last_update: torch.Tensor | None = None, seen: torch.Tensor | None = None):
        """(touched nodes [U] sorted, their new memory rows [U, 2d]) after the events (src, dst, rating, t).

        All messages use the memory before the batch; a node's messages are averaged by one segment reduction."""
        last_update = self.last_update if last_update is None else last_update
        seen = self.seen if seen is None else seen
        node = torch.stack([src, dst], 1).reshape(-1)
        partner = torch.stack([dst, src], 1).reshape(-1)
        r2, t2 = rating.repeat_interleave(2), t.repeat_interleave(2)
        dt = torch.where(seen[node], t2 - last_update[node], torch.zeros_like(t2))
        msg = self.messages(memory, node, partner, r2, dt)
        order = torch.argsort(node, stable=True)
        uniq, counts = torch.unique_consecutive(node[order], return_counts=True)
        indptr = torch.zeros(uniq.numel() + 1, dtype=torch.int64, device=node.device)
        torch.cumsum(counts, 0, out=indptr[1:])
        agg = segment(msg[order], indptr, "mean")
        old = memory[uniq]
        if not self.balance:
            return uniq, self.gru(agg, old)
        half, d = agg.size(1) // 2, self.d
        new_pos = self.gru_pos(agg[:, :half], old[:, :d])
        new_neg = self.gru_neg(agg[:, half:], old[:, d:])
        return uniq, torch.cat([new_pos, new_neg], 1)

    @torch.no_grad()
    def _insert_neighbours(self, src, dst, rating, t) -> None:
        """Write each event into both endpoints' ring buffers; a node keeps its last K partners."""
        node = torch.stack([src, dst], 1).reshape(-1)  # event order kept within each node
        partner = torch.stack([dst, src], 1).reshape(-1)
        r2, t2 = rating.repeat_interleave(2), t.repeat_interleave(2)
        order = torch.argsort(node, stable=True)
        sn = node[order]
        uniq, counts = torch.unique_consecutive(sn, return_counts=True)
        start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(sn.numel(), device=sn.device) - start.repeat_interleave(counts)
        total = counts.repeat_interleave(counts)
        keep = rank >= total - self.K  # older entries would be overwritten within this batch anyway
        o, sn, rank = order[keep], sn[keep], rank[keep]
        slot = (self.nbr_count[sn] + rank) % self.K
        self.nbr[sn, slot] = partner[o]
        self.nbr_t[sn, slot] = t2[o]
        self.nbr_r[sn, slot] = r2[o].to(self.nbr_r.dtype)
        self.nbr_count[uniq] += counts

    def _flush(self) -> torch.Tensor:
        """Apply the queued batch to the memories (with gradient when enabled); return the live memory."""
        if self._live is not None and not torch.is_grad_enabled():
            self.detach_state()  # evaluation after a training step: continue from the stored memory
        memory = self.memory if self._live is None else self._live
        if self._pending is None:
            return memory
        src, dst, rating, t = self._pending
        self._pending = None
        uniq, rows = self.updated_rows(memory, src, dst, rating, t)
        if rows.requires_grad:
            memory = memory.index_put((uniq,), rows)
            self._live = memory
        else:
            memory.index_put_((uniq,), rows)
        with torch.no_grad():
            node = torch.stack([src, dst], 1).reshape(-1)
            # t is non-decreasing, so the largest time per node is its last event's
            self.last_update.scatter_reduce_(0, node, t.repeat_interleave(2), "amax", include_self=False)
            self.seen[node] = True
            self._insert_neighbours(src, dst, rating, t)
        return memory

    # ---- embedding and decoders ----------------------------------------------------------------------------

    def embed(self, nodes: torch.Tensor, t: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        """Embeddings [Q, embed_dim] of ``nodes`` (int64 [Q]) at times ``t`` (float64 [Q]): attention from each
        node's memory over its last K neighbours (memory, rating / R, time gap); a node with no neighbour yet
        gets a zero attention output."""
        memory = self.memory if memory is None else memory
        Q, K, H = nodes.numel(), self.K, self.heads
        nb = self.nbr[nodes]
        mask = nb >= 0
        h_nb = memory[nb.clamp_min(0)]
        enc_nb = self.time_enc(t.unsqueeze(1) - self.nbr_t[nodes])
        feat = torch.cat([h_nb, (self.nbr_r[nodes] / self.max_rating).to(memory.dtype).unsqueeze(-1), enc_nb], -1)
        h_q = memory[nodes]
        c = self.embed_dim // H
        q = self.att_q(torch.cat([h_q, self.time_enc(torch.zeros_like(t))], -1)).view(Q, H, c)
        k = self.att_k(feat).view(Q, K, H, c)
        v = self.att_v(feat).view(Q, K, H, c)
        scores = torch.einsum("qhc,qkhc->qhk", q, k) / math.sqrt(q.size(-1))
        # Finite fill (not -inf): a row with no neighbour stays finite in forward and backward and is zeroed below.
        scores = scores.masked_fill(~mask.unsqueeze(1), -1e9)
        w = torch.softmax(scores, -1) * mask.unsqueeze(1)
        out = torch.einsum("qhk,qkhc->qhc", w, v).reshape(Q, self.embed_dim)
        return self.merge(torch.cat([out, h_q], -1))

    def decode(self, task: str, z_u: torch.Tensor, z_v: torch.Tensor) -> torch.Tensor:
        """Decoder ``task`` on pair embeddings [P, embed_dim] each -> [P, 2] / [P] / [P, 3] / [P] (see class)."""
        return _decode(self.heads_out, self.max_rating, task, z_u, z_v)

    # ---- forward -------------------------------------------------------------------------------------------

    def _check(self, src, dst, rating, t, neg) -> None:
        n = self.num_nodes
        _check_ids("src", src, n)
        _check_ids("dst", dst, n)
        B = src.numel()
        if dst.numel() != B:
            raise ValueError(f"src and dst must have the same length, got {B} and {dst.numel()}")
        if neg is not None:
            _check_ids("neg", neg, n)
            if neg.numel() != B:
                raise ValueError(f"neg must have one entry per event ({B}), got {neg.numel()}")
        for name, x in (("rating", rating), ("t", t)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
            if x.shape != (B,):
                raise ValueError(f"{name} must have shape [B] = ({B},), got {tuple(x.shape)}")
        if t.dtype != torch.float64:
            raise TypeError(f"t must be float64 (Unix seconds lose precision in float32), got {t.dtype}")
        if bool((src == dst).any()):
            i = int((src == dst).nonzero()[0])
            raise ValueError(f"self loop at position {i} (node {int(src[i])}): a node cannot rate itself")
        if B:
            if not bool(torch.isfinite(rating.double()).all()):
                raise ValueError("rating has non-finite values")
            a = rating.double().abs()
            if bool((a == 0).any()) or float(a.max()) > self.max_rating:
                raise ValueError(f"rating must be nonzero with |rating| <= max_rating = {self.max_rating:g}, got "
                                 f"values in [{float(rating.min())}, {float(rating.max())}]")
            if not bool(torch.isfinite(t).all()):
                raise ValueError("t has non-finite values")
            if bool((t[1:] < t[:-1]).any()) or float(t[0]) < float(self.clock):
                raise ValueError("t must be non-decreasing within a batch and not before the previous batch (sort "
                                 "the events by time; fastlayers.data.signed_temporal_split does)")

    def forward(self, src: torch.Tensor, dst: torch.Tensor, rating: torch.Tensor, t: torch.Tensor,
                neg: torch.Tensor | None = None, task: str = "sign"):
        """Decode the events and the (src, neg) pairs from the state before the batch; then queue the batch.

        Returns (out [B, ...], out_neg [B, ...] or None), shapes as in :meth:`decode`."""
        if task not in TASKS:
            raise ValueError(f"task must be one of {tuple(TASKS)}, got {task!r}")
        self._check(src, dst, rating, t, neg)
        memory = self._flush()
        B = src.numel()
        nodes = torch.cat([src, dst] + ([] if neg is None else [neg]))
        z = self.embed(nodes, t.repeat(nodes.numel() // max(B, 1)) if B else t, memory)
        out = self.decode(task, z[:B], z[B:2 * B])
        out_neg = None if neg is None else self.decode(task, z[:B], z[2 * B:])
        if B:
            self.clock.fill_(float(t[-1]))
            self._pending = (src, dst, rating, t)
        return out, out_neg


def spectral_features(pos_edge_index: torch.Tensor, neg_edge_index: torch.Tensor, num_nodes: int,
                      dim: int = 32, seed: int = 0) -> torch.Tensor:
    """SGCN's input features: the top-``dim`` left singular vectors of the symmetric signed adjacency (+1 / -1),
    scaled by their singular values ([N, dim] float32; zero rows for nodes without edges)."""
    ei = torch.cat([pos_edge_index, neg_edge_index], 1)
    val = torch.cat([torch.ones(pos_edge_index.size(1)), -torch.ones(neg_edge_index.size(1))])
    idx = torch.cat([ei, ei.flip(0)], 1)
    a = torch.sparse_coo_tensor(idx, torch.cat([val, val]), (num_nodes, num_nodes), check_invariants=True).coalesce()
    q = min(dim, num_nodes)
    if q == 0 or ei.size(1) == 0:
        return torch.zeros(num_nodes, dim)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # svd_lowrank draws a random start
    try:
        u, s, _ = torch.svd_lowrank(a, q=q, niter=6)
    finally:
        torch.random.set_rng_state(gen_state)
    x = torch.zeros(num_nodes, dim)
    x[:, :q] = (u * s).float()
    return x


class SGCN(nn.Module):
    """Static signed GCN baseline (Derr et al. 2018) on fastlayers.nn.SignedConv, with SEMBA's decoders.

    ``SGCN(in_dim, hidden=32, layers=2)``; ``z = model.embed(x, pos_graph, neg_graph)`` -> [N, 2 * hidden];
    ``model.decode(task, z[u], z[v])`` as :meth:`SEMBA.decode`.
    """

    def __init__(self, in_dim: int, hidden: int = 32, layers: int = 2, max_rating: float = 10.0):
        super().__init__()
        if layers < 1:
            raise ValueError(f"layers must be >= 1, got {layers}")
        self.convs = nn.ModuleList([SignedConv(in_dim, hidden, first_aggr=True)] +
                                   [SignedConv(hidden, hidden, first_aggr=False) for _ in range(layers - 1)])
        self.max_rating = float(max_rating)
        self.heads_out = _task_heads(2 * hidden)

    def embed(self, x: torch.Tensor, pos: Graph | torch.Tensor, neg: Graph | torch.Tensor) -> torch.Tensor:
        """[N, in_dim] features and the positive / negative graphs -> [N, 2 * hidden] embeddings."""
        for i, conv in enumerate(self.convs):
            x = conv(x, pos, neg)
            if i < len(self.convs) - 1:
                x = torch.tanh(x)
        return x

    def decode(self, task: str, z_u: torch.Tensor, z_v: torch.Tensor) -> torch.Tensor:
        return _decode(self.heads_out, self.max_rating, task, z_u, z_v)
