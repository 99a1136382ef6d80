"""NAT (Luo & Li, LoG 2022): temporal link prediction from per-node neighbourhood caches (fastlayers.NCache).

Per node: a self state updated by a GRU from (partner state, edge feature, time encoding), and the N-cache whose
slot values are the pair's edge count (channel 0) and a GRU over (neighbour state, edge feature, time encoding)
with the previous slot value as state. A query pair (u, v) is scored from its joint structural features -- the
6-bit hop code of every key of the joint neighbourhood, embedded, plus the keys' summed slot values, sum-pooled --
the common-neighbour counts, whether v is in u's hop-1 cache, and both self states, by an MLP.

Training follows the memory-network recipe (TGN): the state update of batch i-1 is computed at the start of batch
i with gradients, so the self-state GRU is trained through the predictions of batch i; predictions of a batch only
see edges strictly before it. The cache is state and stores slot values detached; the values written by the
queued batch are also kept live (with their graph) for the next predictions, whose pair features add them back
as a zero-valued, differentiable term, so the slot-value GRU is trained through the scorer like the self state.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ncache import NCache


class TimeEncoder(nn.Module):
    """cos(w * log1p(dt) + b): a learnable harmonic encoding of elapsed time (TGAT/TGN style, log-scaled so Unix
    second gaps of 1 s .. years share one range). dt: [B] float64 -> [B, dim] float32."""

    def __init__(self, dim: int):
        super().__init__()
        self.lin = nn.Linear(1, dim)
        with torch.no_grad():
            self.lin.weight.copy_(torch.linspace(0.1, 3.0, dim).view(dim, 1))
            self.lin.bias.zero_()

    def forward(self, dt: torch.Tensor) -> torch.Tensor:
        return torch.cos(self.lin(torch.log1p(dt.clamp_min(0)).to(torch.float32).unsqueeze(-1)))


class NAT(nn.Module):
    """NAT temporal link predictor.

    Args:
        num_nodes: node ids 0 .. num_nodes - 1.
        edge_dim: edge feature length (0 for none).
        sizes, value_dim, replace_prob, seed: the N-cache (NAT: (32, 16), 4, alpha).
        self_dim: self-state size (NAT: 72). time_dim: time encoding size. code_dim: hop-code embedding size.
        hidden: width of the pair encoder and the scorer.

    Use: ``logits = model(src, dst, neg, t, eid, edge_feat)`` scores the positive pairs (src, dst) and the
    negatives (src, neg) of a batch ([B] each, time-sorted) from the state before the batch, then queues the
    batch as the next state update; call :meth:`detach_state` after each optimiser step and :meth:`reset_state`
    before replaying a stream from its start.

    Data-parallel (``process_group=pg``, every rank builds the model with the same arguments): each rank passes
    its slice of every batch (the global batch is the slices in rank order, as for the sharded N-cache) and gets
    the logits of its slice. The N-cache is sharded over the group (:class:`fastlayers.ncache_sharded.
    ShardedNCache`); the self states are replicated: the queued batch is gathered from all ranks (its ids, times
    and features: a few bytes per edge) and every rank applies the same state update, with gradients, so each
    rank's loss reaches the GRUs through the states its pairs read. Wrap the model in DDP with
    ``find_unused_parameters=True`` (the first batch of a stream has no queued update; DDP is told to leave the
    state buffers alone: the cache shards differ per rank, the self states are equal by construction), and
    scale each rank's loss by ``world_size * B_r / B`` of a mean so that DDP's average equals the single-process
    gradient.
    """

    def __init__(self, num_nodes: int, edge_dim: int = 0, sizes=(32, 16), value_dim: int = 4, self_dim: int = 72,
                 time_dim: int = 16, code_dim: int = 16, hidden: int = 64, replace_prob: float = 0.9,
                 seed: int = 0, process_group=None):
        super().__init__()
        self.num_nodes, self.edge_dim, self.self_dim = num_nodes, edge_dim, self_dim
        self.process_group = process_group
        self.cache = NCache(num_nodes, sizes, value_dim, replace_prob=replace_prob, seed=seed,
                            process_group=process_group)
        if process_group is not None:
            # DDP broadcasts buffers from rank 0 (at construction, and per forward unless told otherwise): that
            # would overwrite every rank's cache shard with rank 0's. The names DDP reads to skip them:
            self._ddp_params_and_buffers_to_ignore = [f"cache.{n}" for n, _ in self.cache.named_buffers()] + \
                ["memory", "last_seen"]
        hops = 1 + len(sizes)
        self.time_enc = TimeEncoder(time_dim)
        msg = self_dim + edge_dim + time_dim
        self.self_gru = nn.GRUCell(msg, self_dim)
        if value_dim < 2:
            raise ValueError(f"value_dim must be >= 2 (a pair count and GRU channels), got {value_dim}")
        self.value_gru = nn.GRUCell(msg, value_dim - 1)
        self.code_emb = nn.Embedding(1 << (2 * hops), code_dim)
        self.pair_enc = nn.Sequential(nn.Linear(code_dim + value_dim, hidden), nn.ReLU(),
                                      nn.Linear(hidden, hidden))
        # Scorer input: pooled pair code features, both self states, whether v is in u's hop-1 cache (one slot
        # probe) and the log common-neighbour counts per hop pair. Time gaps enter through the self-state GRU
        # only: fed to the scorer directly they raised validation AP but lowered test AP on CollegeMsg, whose
        # later months have much longer gaps than the training period.
        self.scorer = nn.Sequential(nn.Linear(hidden + 2 * self_dim + 1 + hops * hops, hidden),
                                    nn.ReLU(), nn.Linear(hidden, 1))
        self.register_buffer("memory", torch.zeros(num_nodes, self_dim))
        self.register_buffer("last_seen", torch.zeros(num_nodes, dtype=torch.float64))
        self._live = None  # memory with this step's graph attached
        self._live_values = None  # (sorted flat slot indices [W], values [W, D] with graph) written by _flush
        self._pending = None
        self._mine = None  # this rank's edges [lo, hi) of the queued global batch (data-parallel)

    def reset_state(self) -> None:
        """Forget the stream: zero self states, empty the N-cache, drop the queued batch."""
        self.memory.zero_()
        self.last_seen.zero_()
        self.cache.reset()
        self._live, self._live_values, self._pending = None, None, None

    def detach_state(self) -> None:
        """Store the live state as plain tensors (end of a training step: no gradient across batches)."""
        if self._live is not None:
            self.memory.copy_(self._live.detach())
            self._live = None
        self._live_values = None

    def _flush(self) -> torch.Tensor:
        """Apply the queued batch to self states (with gradient) and the N-cache; return the live memory."""
        memory = self.memory if self._live is None else self._live
        if self._pending is None:
            return memory
        src, dst, t, eid, feat = self._pending
        lo, hi = self._mine if self._mine is not None else (0, src.numel())
        self._pending, self._mine = None, None
        hs, hd = memory[src], memory[dst]
        es = self.time_enc(t - self.last_seen[src])
        ed = self.time_enc(t - self.last_seen[dst])
        parts_s = [hd, es] if feat is None else [hd, feat, es]
        parts_d = [hs, ed] if feat is None else [hs, feat, ed]
        new_s = self.self_gru(torch.cat(parts_s, 1), hs)
        new_d = self.self_gru(torch.cat(parts_d, 1), hd)
        # A node in several edges of the batch keeps the update of its last edge (the stream is time-sorted):
        # index_put_ with duplicate indices would keep an arbitrary one.
        nodes = torch.stack([src, dst], 1).reshape(-1)
        updates = torch.stack([new_s, new_d], 1).reshape(-1, self.self_dim)
        uniq, inv = torch.unique(nodes, return_inverse=True)
        last = torch.zeros_like(uniq).scatter_reduce_(0, inv, torch.arange(nodes.numel(), device=nodes.device),
                                                      "amax", include_self=False)
        memory = memory.index_put((uniq,), updates[last])
        # One slot value per edge: channel 0 counts the pair's edges (the previous value of dst's slot in src's
        # hop-1 table, plus one), the other channels are NAT's slot-value GRU over the partner's new state with the
        # previous slot value as hidden state.
        with torch.no_grad():
            slot = self.cache.probe(src, dst, 1)
            prev = slot.values * (slot.keys == dst).unsqueeze(-1)
        val_in = torch.cat([new_s + new_d] + ([] if feat is None else [feat]) + [es], 1)
        values = torch.cat([prev[:, :1] + 1, self.value_gru(val_in, prev[:, 1:])], 1)
        with torch.no_grad():
            # A sharded cache takes this rank's slice; every rank computed the same values for all edges.
            self.cache.update(src[lo:hi], dst[lo:hi], t[lo:hi], eid[lo:hi], values[lo:hi].detach())
            self.last_seen.index_put_((uniq,), t.repeat_interleave(2)[last])
        self._live = memory
        self._live_values = self._written(src, dst, eid, values) if values.requires_grad else None
        return memory

    @torch.no_grad()
    def _slot_index(self, owner, key, hop):
        """Flat index into the [N * S] tables of key's slot in owner's hop (hop 0: column 0)."""
        return owner * self.cache.num_slots + self.cache.column(key, hop)

    def _written(self, src, dst, eid, values):
        """The hop-0 and hop-1 entries this batch's update actually wrote (slot holds the key and the edge id),
        as (sorted flat indices, values with graph)."""
        with torch.no_grad():
            owner = torch.cat([src, dst])
            key = torch.cat([src, dst, dst, src])
            flat = torch.cat([self._slot_index(owner, owner, 0), self._slot_index(owner, key[owner.numel():], 1)])
            hop0, hop1 = self.cache.probe(owner, owner, 0), self.cache.probe(owner, key[owner.numel():], 1)
            e4 = eid.repeat(4)
            ok = (torch.cat([hop0.keys, hop1.keys]) == key) & (torch.cat([hop0.eids, hop1.eids]) == e4)
            # An edge seen twice in the batch (same slot, same id) keeps one live copy.
            flat, first = torch.unique(flat[ok], return_inverse=True)
            pick = torch.zeros_like(flat).scatter_reduce_(0, first, ok.nonzero().squeeze(1), "amax",
                                                          include_self=False)
        return flat, values.repeat(4, 1)[pick]

    def _live_feats(self, pf, u, v):
        """pf.feats plus a zero-valued term carrying the gradient of the slot values written by _flush."""
        if self._live_values is None or self._live_values[0].numel() == 0:
            return pf.feats
        flat_live, vals = self._live_values
        with torch.no_grad():
            p, k = pf.mask.nonzero(as_tuple=True)
            key, code = pf.keys[p, k], pf.codes[p, k]
            H = self.cache.num_hops
            hits = []
            for side, nodes in ((0, u), (1, v)):
                for hop in (0, 1):  # hop-2 entries copy older values: nothing live there
                    has = (code >> (side * H + hop)) & 1 == 1
                    flat = self._slot_index(nodes[p], key, hop)
                    at = torch.searchsorted(flat_live, flat).clamp_max(flat_live.numel() - 1)
                    hit = has & (flat_live[at] == flat)
                    hits.append((hit.nonzero().squeeze(1), at[hit]))
        delta = torch.zeros(p.numel(), vals.shape[1], dtype=vals.dtype, device=vals.device)
        for rows, at in hits:
            live = vals[at]
            delta = delta.index_add(0, rows, live - live.detach())
        return pf.feats.index_put((p, k), delta, accumulate=True)

    def score(self, u: torch.Tensor, v: torch.Tensor, t: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """Logits [P] for pairs (u, v) at times t from the cache and the given self states."""
        pf = self.cache.pair_features(u, v)
        feats = self._live_feats(pf, u, v)
        # Summed pair counts span 1 .. thousands: log-scale them.
        x = torch.cat([self.code_emb(pf.codes), torch.log1p(feats[..., :1]), feats[..., 1:]], -1)
        z = (self.pair_enc(x) * pf.mask.unsqueeze(-1)).sum(1)
        # v can only sit in one slot of u's hop 1: one probe says whether they met (and the cache kept it).
        met = (self.cache.probe(u, v, 1).keys == v).unsqueeze(-1).float()
        counts = torch.log1p(pf.counts.flatten(1).to(torch.float32))
        return self.scorer(torch.cat([z, memory[u], memory[v], met, counts], 1)).squeeze(-1)

    def forward(self, src, dst, neg, t, eid, edge_feat=None):
        """Logits of positives (src, dst) and negatives (src, neg), [B] each; then queue the batch."""
        memory = self._flush()
        pos = self.score(src, dst, t, memory)
        negl = self.score(src, neg, t, memory)
        if self.process_group is None:
            self._pending = (src, dst, t, eid, edge_feat)
        else:
            self._pending, self._mine = _gather_batch(self.process_group, src, dst, t, eid, edge_feat)
        return pos, negl


def _gather_batch(group, src, dst, t, eid, feat):
    """The global batch from every rank's slice (rank order), and this rank's [lo, hi) in it."""
    import torch.distributed as dist

    from ..ncache_sharded import _pack, _unpack

    w, r = dist.get_world_size(group), dist.get_rank(group)
    n = torch.tensor([src.numel()], dtype=torch.int64, device=src.device)
    sizes = [torch.empty_like(n) for _ in range(w)]
    dist.all_gather(sizes, n, group=group)
    sizes = [int(s) for s in sizes]
    cols = [torch.stack([src, dst, eid], 1).to(torch.int64), t.to(torch.float64)]
    specs = [(torch.int64, (3,)), (torch.float64, ())]
    if feat is not None:
        cols.append(feat.detach().to(torch.float32))
        specs.append((torch.float32, tuple(feat.shape[1:])))
    buf = _pack(*cols)
    width, m = buf.shape[1], max(sizes)
    # all_gather needs equal shapes: pad every slice to the longest, then keep each rank's own rows.
    padded = buf.new_zeros((m, width))
    padded[:buf.shape[0]] = buf
    got = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(got, padded, group=group)
    whole = torch.cat([g[:k] for g, k in zip(got, sizes)])
    ids, tt, *rest = _unpack(whole, *specs)
    lo = sum(sizes[:r])
    return (ids[:, 0], ids[:, 1], tt, ids[:, 2], rest[0] if rest else None), (lo, lo + sizes[r])
