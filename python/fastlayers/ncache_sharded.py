"""The N-cache sharded over the ranks of a torch.distributed process group: ``NCache(..., process_group=pg)``.

Owner rule: node ``n`` lives on group rank ``n % W`` (W = the group's size), at local row ``n // W`` of that
rank's tables; each rank holds ``ceil((num_nodes - rank) / W)`` rows. Every method is a collective: all ranks of
the group call it, in the same order, each with its own arguments.

``update``: rank r passes its slice of the global batch; the global batch is the slices in rank order, and the
result is bit for bit what a single-process NCache gives for that global batch. That needs the three things the
single-process update decides from the batch as a whole:

- the position of each edge in the global batch: same-slot candidates are ranked by (time, edge id, key,
  position), so every incidence carries its global position ``2 * (offset_r + b) + side`` (offset_r = edges on
  lower ranks, from one small all_gather);
- the replacement draw hashes (seed, owner node, hop, key, time): global ids, never local rows, go into it;
- hop h >= 2 of x copies the hop h-1 entries of its partner y as they were before the batch, and y may live on
  another rank: y's owner sends them before any rank writes.

Per batch: one all_gather of [W + 5] int64 per rank (sizes, first/last time, error flag, per-destination counts),
one all_to_all_single of the incidences to the owners of their nodes, and (hops >= 2) one of counts and one of
the non-empty previous-hop entries of each partner row, sent once per (partner, destination rank). No table is
gathered: the bytes moved are the batch itself plus the rows it needs.

``lookup`` / ``pair_features``: each rank asks for its own nodes; requests go to the owners (distinct nodes only,
counts first with an error flag, then ids) and the rows come back. pair_features runs the single-process kernel
on the fetched rows (it reads nothing but the two rows of a pair), so its output is the same bits.

Errors: a bad argument on any rank raises on every rank (the error flag rides on the first collective of the
call); a dead or stalled rank surfaces as the process group's timeout error, re-raised as a RuntimeError naming
the method.
"""

from __future__ import annotations

import struct

import torch
import torch.distributed as dist

from .ncache import Lookup, NCache, PairFeatures
from .ops import ncache as _ops
from .reference import ncache as _ref

_ERRORS = {"TypeError": TypeError, "ValueError": ValueError, "IndexError": IndexError}
_CONFIG_FIELDS = ("num_nodes", "len(sizes)", "sizes[0]", "sizes[1]", "sizes[2]", "value_dim", "replace_prob",
                  "seed")


def owner_of(nodes: torch.Tensor, world_size: int) -> torch.Tensor:
    """The rank that holds each node's row: ``nodes % world_size`` (int64, nodes' shape)."""
    return torch.remainder(nodes, world_size)


def _f64_bits(x: float) -> int:
    return struct.unpack("<q", struct.pack("<d", float(x)))[0]


def _bits_f64(b: int) -> float:
    return struct.unpack("<d", struct.pack("<q", int(b)))[0]


def _pack(*cols: torch.Tensor) -> torch.Tensor:
    """Rows of several [n, ...] tensors side by side as one [n, bytes] uint8 tensor: one all_to_all per message."""
    n = cols[0].shape[0]
    return torch.cat([c.contiguous().view(n, c[0].numel() if n else int(torch.Size(c.shape[1:]).numel()))
                      .view(torch.uint8) for c in cols], 1)


def _unpack(buf: torch.Tensor, *specs):
    """Inverse of _pack: specs are (dtype, trailing shape) per column."""
    n, out, at = buf.shape[0], [], 0
    for dtype, shape in specs:
        width = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        # A fresh copy: a slice of one row (n = 1) counts as contiguous but keeps the row's stride.
        col = torch.empty((n, width), dtype=torch.uint8, device=buf.device).copy_(buf[:, at:at + width])
        out.append(col.view(dtype).view((n,) + tuple(shape)))
        at += width
    return out


class ShardedNCache(NCache):
    """NCache whose rows are spread over a process group (see the module docstring for the owner rule).

    Build it as ``fastlayers.NCache(num_nodes, sizes, value_dim, replace_prob, seed, device,
    process_group=pg)`` on every rank of ``pg``, with the same arguments: they are compared once, with an
    all_gather, and any difference raises ValueError on every rank. The buffers (``keys``, ``eids``, ``times``,
    ``values`` and ``last_time``; ``state_dict``) hold this rank's rows only, ``[num_local_nodes, S]``; row i
    is node ``rank + i * world_size``. ``num_nodes`` stays the global count.

    Exchanges go through ``torch.distributed`` on the cache's device (gloo: CPU tensors, NCCL: CUDA).
    ``last_exchange`` holds the bytes this rank sent to and received from other ranks in its latest call.
    """

    def __init__(self, num_nodes: int, sizes=(32, 16), value_dim: int = 4, replace_prob: float = 0.9,
                 seed: int = 0, device=None, huge_pages: bool = True, process_group=None):
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("NCache(process_group=...) needs torch.distributed initialised "
                               "(torch.distributed.init_process_group) on every rank")
        if process_group is dist.group.WORLD:
            process_group = dist.distributed_c10d._get_default_group()
        if not isinstance(process_group, dist.ProcessGroup):
            raise TypeError(f"process_group must be a torch.distributed.ProcessGroup, got "
                            f"{type(process_group).__name__}")
        rank, world = dist.get_rank(process_group), dist.get_world_size(process_group)
        if rank < 0:
            raise ValueError("process_group: this process is not a member of the group")
        err, cfg = None, [0] * len(_CONFIG_FIELDS)
        comm_device = torch.device("cpu")
        try:
            num_nodes = _ops.int_arg("num_nodes", num_nodes, 0, 1 << 62)
            sizes = tuple(_ops.sizes_arg(sizes))
            value_dim = _ops.int_arg("value_dim", value_dim, 1, 1 << 31)
            replace_prob = _ops.prob_arg("replace_prob", replace_prob)
            seed = _ops.seed_arg(seed)
            comm_device = torch.empty(0, device=device).device
            cfg = [num_nodes, len(sizes), *(list(sizes) + [0, 0])[:3], value_dim, _f64_bits(replace_prob), seed]
        except Exception as e:  # noqa: BLE001  (re-raised on every rank below)
            err = e
        # One all_gather of the configuration: a rank that disagrees (or failed its own checks) must stop every
        # rank here, before any of them waits in a collective the others never reach.
        mine = torch.tensor([int(err is None)] + cfg, dtype=torch.int64, device=comm_device)
        got = [torch.empty_like(mine) for _ in range(world)]
        _collective("NCache", rank, lambda: dist.all_gather(got, mine, group=process_group))
        table = torch.stack(got).cpu().tolist()
        _raise_if_failed("NCache", err, [row[0] for row in table], rank, world, process_group)
        for i, name in enumerate(_CONFIG_FIELDS):
            col = [row[1 + i] for row in table]
            if len(set(col)) > 1:
                shown = [_bits_f64(c) for c in col] if name == "replace_prob" else col
                raise ValueError(f"NCache(process_group=...): the ranks disagree on {name}: {shown} (in rank "
                                 "order); every rank must build the sharded cache with the same num_nodes, sizes, "
                                 "value_dim, replace_prob and seed")
        local = max(0, (num_nodes - rank + world - 1) // world)
        super().__init__(local, sizes, value_dim, replace_prob, seed, device, huge_pages)
        self.num_nodes = num_nodes
        self.num_local_nodes = local
        self.process_group, self.rank, self.world_size = process_group, rank, world
        self.last_exchange = {"sent": 0, "received": 0}

    # ---- collectives ---------------------------------------------------------------------------------------

    def _a2a(self, op: str, send: torch.Tensor, send_counts: list[int], recv_counts: list[int]) -> torch.Tensor:
        out = send.new_empty((sum(recv_counts),) + tuple(send.shape[1:]))
        _collective(op, self.rank, lambda: dist.all_to_all_single(out, send, recv_counts, send_counts,
                                                                  group=self.process_group))
        row = int(torch.Size(send.shape[1:]).numel()) * send.element_size()
        row_in = row
        self.last_exchange["sent"] += (sum(send_counts) - send_counts[self.rank]) * row
        self.last_exchange["received"] += (sum(recv_counts) - recv_counts[self.rank]) * row_in
        return out

    def _a2a_counts(self, op: str, counts: torch.Tensor, ok: bool, err) -> list[int]:
        """Counts first: [W] int64 per destination, with this rank's error flag riding along to every rank."""
        w = self.world_size
        send = torch.stack([counts.to(torch.int64), torch.full((w,), int(ok), dtype=torch.int64)], 1)
        recv = self._a2a(op, send.to(self.keys.device), [1] * w, [1] * w).cpu()
        _raise_if_failed(op, err, recv[:, 1].tolist(), self.rank, w, self.process_group)
        return recv[:, 0].tolist()

    # ---- update --------------------------------------------------------------------------------------------

    def _check_slice(self, src, dst, t, eid, values):
        dev, n = self.keys.device, self.num_nodes
        src = _ops._ids("src", src, dev)
        B = src.numel()
        dst = _ops._ids("dst", dst, dev, B)
        eid = _ops._ids("eid", eid, dev, B)
        t = _ops._times(t, dev, B)
        if values is not None:
            if not isinstance(values, torch.Tensor):
                raise TypeError(f"values must be a torch.Tensor or None, got {type(values).__name__}")
            if values.shape != (B, self.value_dim):
                raise ValueError(f"values must be [{B}, {self.value_dim}] (one per edge), got {tuple(values.shape)}")
            if not values.dtype.is_floating_point:
                raise TypeError(f"values must be floating, got {values.dtype}")
            if values.device != dev:
                raise ValueError(f"values are on {values.device} but the cache is on {dev}")
            values = values.detach().to(torch.float32)
        if B:
            for name, x in (("src", src), ("dst", dst)):
                if bool(((x < 0) | (x >= n)).any()):
                    raise IndexError(f"ncache.update: {name} has ids out of range [0, {n})")
            if not bool((torch.isfinite(t) & (t >= 0)).all()):
                raise ValueError("ncache.update: t must be finite and >= 0")
            if bool((t[1:] < t[:-1]).any()):
                raise ValueError("ncache.update: t must be non-decreasing within a batch (this rank's slice)")
        return src, dst, t, eid, values

    @torch.no_grad()
    def update(self, src, dst, t, eid, values=None) -> None:
        """Insert this rank's slice of the global batch; collective (every rank calls it, slices in rank order).

        src, dst, eid: [B_r] integer ids (nodes in [0, num_nodes)); t: [B_r] float64 or integer, non-decreasing
        over the global batch (the slices concatenated in rank order) and not older than the latest time already
        inserted; values: [B_r, value_dim] floating or None (zeros). B_r may differ between ranks, and be 0.
        Raises TypeError / ValueError / IndexError on every rank when any rank's slice is bad (the message names
        that rank), and leaves every shard unchanged then.
        """
        op, w, r = "NCache.update", self.world_size, self.rank
        self.last_exchange = {"sent": 0, "received": 0}
        self._dense()
        err = None
        try:
            src, dst, t, eid, values = self._check_slice(src, dst, t, eid, values)
            B = src.numel()
        except Exception as e:  # noqa: BLE001  (re-raised on every rank below)
            err, B = e, 0
        dev, D = self.keys.device, self.value_dim
        if err is None and B:
            x = torch.stack([src, dst], 1).reshape(-1)  # incidence 2b + side: (owner, partner)
            dest = owner_of(x, w)
            counts = torch.bincount(dest, minlength=w).cpu()
            t_first, t_last = _f64_bits(t[0].item()), _f64_bits(t[-1].item())
        else:
            counts, t_first, t_last = torch.zeros(w, dtype=torch.int64), 0, 0
        meta = torch.tensor([int(err is None), B, t_first, t_last, int(values is not None)] + counts.tolist(),
                            dtype=torch.int64, device=dev)
        got = [torch.empty_like(meta) for _ in range(w)]
        _collective(op, r, lambda: dist.all_gather(got, meta, group=self.process_group))
        table = torch.stack(got).cpu().tolist()
        self.last_exchange["sent"] += meta.numel() * 8 * (w - 1)
        self.last_exchange["received"] += meta.numel() * 8 * (w - 1)
        _raise_if_failed(op, err, [row[0] for row in table], r, w, self.process_group)

        # The global batch must be in time order across the slices too: every rank sees every slice's first and
        # last time, so every rank reaches the same verdict with no further exchange.
        latest, where = float(self.last_time.item()), "the cache's latest time"
        for q, row in enumerate(table):
            if row[1] == 0:
                continue
            first, last = _bits_f64(row[2]), _bits_f64(row[3])
            if first < latest:
                raise ValueError(f"{op}: rank {q}'s slice starts at t = {first}, older than {where} {latest}; the "
                                 "global batch (slices in rank order) must be non-decreasing in time and not older "
                                 "than the cache (reset() on every rank to replay a stream)")
            latest, where = last, f"the end of rank {q}'s slice"
        total = sum(row[1] for row in table)
        if total == 0:
            return
        with_values = any(row[4] for row in table)
        offset = sum(row[1] for row in table[:r])

        # 1. Incidences to the owners of their nodes: hops 0 and 1 of x are decided there.
        if B:
            b = torch.arange(B, device=dev).repeat_interleave(2)
            y = torch.stack([dst, src], 1).reshape(-1)
            j = 2 * (offset + b) + torch.arange(2, device=dev).repeat(B)
            order = torch.argsort(dest, stable=True)
            cols = [torch.stack([x, y, eid[b], j], 1)[order], t[b][order]]
            if with_values:
                v = values if values is not None else torch.zeros(B, D, dtype=torch.float32, device=dev)
                cols.append(v[b][order])
            send = _pack(*cols)
        else:
            send = torch.empty(0, 40 + (4 * D if with_values else 0), dtype=torch.uint8, device=dev)
        recv_counts = [row[5 + r] for row in table]
        inc = self._a2a(op, send, counts.tolist(), recv_counts)
        specs = [(torch.int64, (4,)), (torch.float64, ())] + ([(torch.float32, (D,))] if with_values else [])
        got_cols = _unpack(inc, *specs)
        ix, it = got_cols[0], got_cols[1]
        iv = got_cols[2] if with_values else torch.zeros(ix.shape[0], D, dtype=torch.float32, device=dev)
        ox, oy, oe, oj = (c.contiguous() for c in ix.unbind(1))

        # 2. Hops >= 2 copy the partner's previous hop as it was before the batch: read (and send) now, before
        #    any rank writes.
        deeper = self._deeper_candidates(op, ox, oy, oj) if self.num_hops > 2 else []

        # 3. Writes. Every candidate now sits on the rank that owns its node.
        self._commit(0, ox, ox, oe, it, iv, oj)
        self._commit(1, ox, oy, oe, it, iv, oj)
        for h, cand in deeper:
            self._commit(h, *cand)
        self.last_time.fill_(max(float(self.last_time.item()), latest))

    def _deeper_candidates(self, op, ox, oy, oj):
        """Hop h >= 2 candidates for this rank's owners: for incidence (x, y, j), every non-empty hop h-1 entry
        of y before the batch, ranked j * M_{h-1} + column as in the single-process kernel."""
        w, r, dev, D, S, off = self.world_size, self.rank, self.keys.device, self.value_dim, self.num_slots, \
            self.offsets
        last_col = off[self.num_hops - 1]  # hops 1 .. H-2 feed hops 2 .. H-1
        # Rows of my owners x that the owners of their partners need: each (x, destination) once.
        lx = ox // w
        pair = torch.unique(lx * w + owner_of(oy, w))
        plx, pdest = pair // w, pair % w
        rows = self.keys[plx, 1:last_col]
        ui, ci = (rows >= 0).nonzero(as_tuple=True)
        order = torch.argsort(pdest[ui], stable=True)
        ui, ci = ui[order], ci[order]
        counts = torch.bincount(pdest[ui], minlength=w).cpu()
        row, col = plx[ui], ci + 1
        send = _pack(torch.stack([row * w + r, col, self.keys[row, col], self.eids[row, col]], 1),
                     self.times[row, col], self.values[row, col])
        recv_counts = self._a2a_counts(op, counts, True, None)
        got = self._a2a(op, send, counts.tolist(), recv_counts)
        ints, et, ev = _unpack(got, (torch.int64, (4,)), (torch.float64, ()), (torch.float32, (D,)))
        ex, ecol, ekey, eeid = ints.unbind(1)
        # Join: incidence i takes every received entry of its partner oy[i] (entries sorted by (node, column)).
        order = torch.argsort(ex * S + ecol)
        ex, ecol, ekey, eeid, et, ev = ex[order], ecol[order], ekey[order], eeid[order], et[order], ev[order]
        ux, cnt = torch.unique_consecutive(ex, return_counts=True)
        start = torch.cumsum(cnt, 0) - cnt
        pos = torch.searchsorted(ux, oy).clamp_(max=max(ux.numel() - 1, 0))
        found = ux[pos] == oy if ux.numel() else torch.zeros_like(oy, dtype=torch.bool)
        n_i = torch.where(found, cnt[pos] if ux.numel() else torch.zeros_like(oy), torch.zeros_like(oy))
        ii = torch.repeat_interleave(torch.arange(oy.numel(), device=dev), n_i)
        within = torch.arange(ii.numel(), device=dev) - (torch.cumsum(n_i, 0) - n_i)[ii]
        e = start[pos[ii]] + within
        widths = torch.tensor([off[h + 1] - off[h] for h in range(self.num_hops)], device=dev)
        src_hop = torch.repeat_interleave(torch.arange(self.num_hops, device=dev), widths)[ecol[e]]
        m_prev = widths[src_hop]
        rank = oj[ii] * m_prev + (ecol[e] - torch.tensor(off[:-1], device=dev)[src_hop])
        out = []
        for h in range(2, self.num_hops):
            k = (src_hop == h - 1).nonzero(as_tuple=True)[0]
            ek = e[k]
            out.append((h, (ox[ii[k]], ekey[ek], eeid[ek], et[ek], ev[ek], rank[k])))
        return out

    def _commit(self, h, owner, key, eid, t, val, rank) -> None:
        """Per (owner, hop, slot) the candidate that wins (latest time, largest edge id, key, rank) is written
        unless a different resident key survives its replacement draw: the single-process rule on local rows."""
        if owner.numel() == 0:
            return
        S, off, w = self.num_slots, self.offsets, self.world_size
        m = off[h + 1] - off[h]
        slot = _ref.slot_of(key, self.seed, m) if h > 0 else torch.zeros_like(key)
        target = (owner // w) * S + off[h] + slot
        grp, inv = torch.unique(target, return_inverse=True)
        alive = torch.ones_like(target, dtype=torch.bool)
        # Lexicographic maximum, one field at a time: keep the candidates that reach their group's maximum.
        for col in (t, eid, key, rank):
            low = torch.finfo(col.dtype).min if col.dtype.is_floating_point else torch.iinfo(col.dtype).min
            best = torch.full((grp.numel(),), low, dtype=col.dtype, device=col.device)
            best.scatter_reduce_(0, inv[alive], col[alive], "amax")
            alive &= col == best[inv]
        win = alive.nonzero(as_tuple=True)[0]
        owner, key, eid, t, val, target = owner[win], key[win], eid[win], t[win], val[win], target[win]
        kf, ef, tf = self.keys.view(-1), self.eids.view(-1), self.times.view(-1)
        vf = self.values.view(-1, self.value_dim)
        cur = kf[target]
        draw = _ref.replace_draw(self.seed, owner, h, key, t) < _ref.threshold53(self.replace_prob)
        write = (cur < 0) | (cur == key) | draw
        tw = target[write]
        kf[tw] = key[write]
        ef[tw] = eid[write]
        tf[tw] = t[write]
        vf[tw] = val[write]

    # ---- lookup / pair_features ----------------------------------------------------------------------------

    def _fetch(self, op: str, nodes, err, names):
        """Rows of the given tables for nodes [n] (any owners); collective. Distinct nodes are requested once."""
        w, dev = self.world_size, self.keys.device
        if err is None:
            uniq, inv = torch.unique(nodes, return_inverse=True)
            dest = owner_of(uniq, w)
            order = torch.argsort(dest, stable=True)
            req = uniq[order]
            counts = torch.bincount(dest, minlength=w).cpu()
        else:
            req = torch.empty(0, dtype=torch.int64, device=dev)
            counts = torch.zeros(w, dtype=torch.int64)
        recv_counts = self._a2a_counts(op, counts, err is None, err)
        asked = self._a2a(op, req, counts.tolist(), recv_counts)
        lrow = asked // w
        tables = [getattr(self, name) for name in names]
        answer = self._a2a(op, _pack(*(tb[lrow] for tb in tables)), recv_counts, counts.tolist())
        cols = _unpack(answer, *((tb.dtype, tb.shape[1:]) for tb in tables))
        out = []
        for c in cols:
            full = torch.empty_like(c)
            full[order] = c
            out.append(full[inv])
        return out

    @torch.no_grad()
    def probe(self, nodes, keys, hop: int) -> Lookup:
        """One entry per request from its owner: the single-process :meth:`NCache.probe` for this rank's
        requests (any owners). Collective; the request is (node, column), the answer the entry itself."""
        op = "NCache.probe"
        self.last_exchange = {"sent": 0, "received": 0}
        self._dense()
        w, dev, err = self.world_size, self.keys.device, None
        try:
            nodes, col = self._probe_args(nodes, keys, hop)
            dest = owner_of(nodes, w)
            order = torch.argsort(dest, stable=True)
            req = torch.stack([nodes, col], 1)[order]
            counts = torch.bincount(dest, minlength=w).cpu()
        except Exception as e:  # noqa: BLE001  (re-raised on every rank)
            err, order = e, None
            req = torch.empty(0, 2, dtype=torch.int64, device=dev)
            counts = torch.zeros(w, dtype=torch.int64)
        recv_counts = self._a2a_counts(op, counts, err is None, err)
        asked = self._a2a(op, req, counts.tolist(), recv_counts)
        lrow, lcol = asked[:, 0] // w, asked[:, 1]
        tables = (self.keys, self.eids, self.times, self.values)
        answer = self._a2a(op, _pack(*(tb[lrow, lcol] for tb in tables)), recv_counts, counts.tolist())
        cols = _unpack(answer, *((tb.dtype, tb.shape[2:]) for tb in tables))
        out = []
        for c in cols:
            full = torch.empty_like(c)
            full[order] = c
            out.append(full)
        return Lookup(*out)

    @torch.no_grad()
    def lookup(self, nodes) -> Lookup:
        """keys, eids, times and values of all hops for this rank's nodes [B] (any owners): [B, S] (values
        [B, S, D]), the same as a single-process NCache. Collective; a bad ``nodes`` on any rank raises on every
        rank."""
        op = "NCache.lookup"
        self.last_exchange = {"sent": 0, "received": 0}
        self._dense()
        err = None
        try:
            nodes = _ops._ids("nodes", nodes, self.keys.device)
            if nodes.numel() and bool(((nodes < 0) | (nodes >= self.num_nodes)).any()):
                raise IndexError(f"ncache.lookup: nodes has ids out of range [0, {self.num_nodes})")
        except Exception as e:  # noqa: BLE001  (re-raised on every rank)
            err = e
        return Lookup(*self._fetch(op, nodes, err, ("keys", "eids", "times", "values")))

    @torch.no_grad()
    def pair_features(self, u, v) -> PairFeatures:
        """Joint neighbourhood of this rank's pairs (u[p], v[p]), any owners: the single-process result (see
        :func:`fastlayers.ops.ncache_pair_features` for the outputs). Collective; the two rows of every pair are
        fetched from their owners, then the pair kernel runs here."""
        op = "NCache.pair_features"
        self.last_exchange = {"sent": 0, "received": 0}
        self._dense()
        err, P = None, 0
        try:
            u = _ops._ids("u", u, self.keys.device)
            P = u.numel()
            v = _ops._ids("v", v, self.keys.device, P)
            for name, x in (("u", u), ("v", v)):
                if P and bool(((x < 0) | (x >= self.num_nodes)).any()):
                    raise IndexError(f"ncache.pair_features: {name} has ids out of range [0, {self.num_nodes})")
        except Exception as e:  # noqa: BLE001  (re-raised on every rank)
            err = e
        nodes = torch.cat([u, v]) if err is None else None
        keys, values = self._fetch(op, nodes, err, ("keys", "values"))
        idx = torch.arange(P, device=keys.device)
        return PairFeatures(*_ops.ncache_pair_features(keys, values, idx, idx + P, self.sizes, self.seed))

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", rank={self.rank}, world_size={self.world_size}, "
                f"num_local_nodes={self.num_local_nodes}")


def _collective(op: str, rank: int, fn) -> None:
    try:
        fn()
    except RuntimeError as e:
        raise RuntimeError(f"{op}: a collective over the process group failed on rank {rank} (another rank died, "
                           f"timed out, or called a different method): {e}") from e


def _raise_if_failed(op: str, err, flags, rank: int, world: int, group) -> None:
    """Raise on every rank when any rank flagged a bad argument: the failing ranks' messages are gathered (only
    on this error path) so every rank reports the same cause."""
    if all(flags):
        return
    msgs = [None] * world
    mine = None if err is None else (type(err).__name__, str(err))
    _collective(op, rank, lambda: dist.all_gather_object(msgs, mine, group=group))
    q = next(i for i, f in enumerate(flags) if not f)
    kind, text = msgs[q] if msgs[q] is not None else ("RuntimeError", "failed")
    exc = _ERRORS.get(kind, RuntimeError)(f"{op} (sharded): rank {q}: {text}")
    if err is not None and q == rank:
        raise exc from err
    raise exc
