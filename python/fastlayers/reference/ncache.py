"""N-cache in plain PyTorch: index_put_ inserts, gather lookups, unique + scatter_add pair codes.

The state is the kernels' layout: keys/eids [N, S] int64 (-1 = empty), times [N, S] float64, values [N, S, D]
float32, hop h in columns off[h]:off[h+1] (hop 0 one column). With ``exact=True`` (the default, used by the tests)
the semantics are the kernels' bit for bit: splitmix64 slots, counter-based replacement draws and the total order
(time, edge id, key, rank) for same-slot candidates. With ``exact=False`` it is the NAT reference's algorithm: its
hash ``(id*s + id^2*(s+1)) mod M`` with ``s = seed % 100``, torch.rand draws, and whichever duplicate index_put_
keeps (the benchmark peer).
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def _s64(c: int) -> int:
    """A uint64 constant as the int64 with the same bits (torch has no uint64 arithmetic)."""
    c &= _MASK64
    return c - (1 << 64) if c >= 1 << 63 else c


_C0, _C1, _C2 = _s64(0x9E3779B97F4A7C15), _s64(0xBF58476D1CE4E5B9), _s64(0x94D049BB133111EB)
_SEED_SALT = 0x5EEDC0DE5EEDC0DE


def _lsr(z: torch.Tensor, k: int) -> torch.Tensor:
    # torch's >> on int64 is arithmetic; masking the sign-extended bits makes it logical.
    return (z >> k) & ((1 << (64 - k)) - 1)


def mix64(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (wrapping arithmetic), as csrc/common/ncache_hash.h."""
    z = z + _C0
    z = (z ^ _lsr(z, 30)) * _C1
    z = (z ^ _lsr(z, 27)) * _C2
    return z ^ _lsr(z, 31)


def _mix64_int(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def seed_mix(seed: int) -> int:
    return _s64(_mix64_int((seed & _MASK64) ^ _SEED_SALT))


def slot_of(keys: torch.Tensor, seed: int, m: int) -> torch.Tensor:
    """Slot of each key in a hop of m slots: ((mix64(key ^ seed_mix(seed)) >> 32) * m) >> 32 (int64)."""
    return (_lsr(mix64(keys ^ seed_mix(seed)), 32) * m) >> 32


def nat_slot_of(keys: torch.Tensor, seed: int, m: int) -> torch.Tensor:
    """The NAT reference's slot hash, kept for the benchmark peer (reaches few slots for even s)."""
    s = seed % 100
    return (keys * s + keys * keys * (s + 1)).remainder(m)


def replace_draw(seed: int, owner, hop: int, key, t: torch.Tensor) -> torch.Tensor:
    """53 uniform bits per candidate from (seed, owner, hop, key, time); replace iff draw < threshold53(p)."""
    tb = torch.where(t == 0, torch.zeros((), dtype=torch.float64, device=t.device), t).view(torch.int64)
    h = mix64(owner ^ seed_mix(seed))
    h = mix64(h ^ key)
    h = mix64(h ^ tb)
    h = mix64(h ^ hop)
    return _lsr(h, 11)


def threshold53(p: float) -> int:
    return 1 << 53 if p >= 1.0 else int(p * float(1 << 53))


def offsets(sizes) -> list[int]:
    off = [0, 1]
    for m in sizes:
        off.append(off[-1] + int(m))
    return off


def _last_per_target(target, t, eid, key, rank):
    """Index of the winner per distinct target: the maximum of (t, eid, key, rank), by stable lexsort."""
    order = torch.arange(target.numel(), device=target.device)
    for col in (rank, key, eid, t, target):  # least significant first
        order = order[torch.sort(col[order], stable=True).indices]
    tg = target[order]
    last = torch.ones_like(tg, dtype=torch.bool)
    last[:-1] = tg[1:] != tg[:-1]
    return order[last]


def ncache_update(keys, eids, times, values, src, dst, t, eid, edge_values=None, sizes=(32, 16), replace_prob=0.9,
                  seed=0, exact=True, generator=None) -> None:
    """Insert a batch of edges (src[b], dst[b], eid[b], t[b]) into the tables in place (see module docstring).

    src, dst, eid: [B] int64; t: [B] float64, non-decreasing; edge_values: [B, D] float32 or None (zeros).
    """
    B = src.numel()
    if B == 0:
        return
    _n, S = keys.shape
    D = values.shape[2]
    off = offsets(sizes)
    hops = len(off) - 1
    dev = keys.device
    if edge_values is None:
        edge_values = torch.zeros(B, D, dtype=values.dtype, device=dev)
    b = torch.arange(B, device=dev)
    owner = torch.stack([src, dst], 1).reshape(-1)  # incidence j = 2b + side
    partner = torch.stack([dst, src], 1).reshape(-1)
    jb = b.repeat_interleave(2)
    j = torch.arange(2 * B, device=dev)
    slot_fn = slot_of if exact else nat_slot_of
    kf, ef, tf, vf = keys.view(-1), eids.view(-1), times.view(-1), values.view(-1, D)

    cands = []  # (hop, owner, key, eid, t, value, rank), all read before anything is written
    cands.append((0, owner, owner, eid[jb], t[jb], edge_values[jb], j))
    cands.append((1, owner, partner, eid[jb], t[jb], edge_values[jb], j))
    for h in range(2, hops):
        pm = off[h] - off[h - 1]
        cols = torch.arange(off[h - 1], off[h], device=dev)
        pk = keys[partner][:, cols]  # [2B, pm] gather
        ok = pk >= 0
        jj, cc = ok.nonzero(as_tuple=True)
        src_flat = partner[jj] * S + cols[cc]
        cands.append((h, owner[jj], kf[src_flat], ef[src_flat], tf[src_flat], vf[src_flat], jj * pm + cc))

    thr = threshold53(replace_prob)
    for h, o, k, e, tt, v, rank in cands:
        if k.numel() == 0:
            continue
        m = off[h + 1] - off[h]
        target = o * S + off[h] + (slot_fn(k, seed, m) if h > 0 else torch.zeros_like(k))
        if exact:
            w = _last_per_target(target, tt, e, k, rank)
            o, k, e, tt, v, target = o[w], k[w], e[w], tt[w], v[w], target[w]
        cur = kf[target]
        if exact:
            draw_ok = replace_draw(seed, o, h, k, tt) < thr
        else:
            draw_ok = torch.rand(k.shape, device=dev, generator=generator) < replace_prob
        write = (cur < 0) | (cur == k) | draw_ok
        tw = target[write]
        kf.index_put_((tw,), k[write])
        ef.index_put_((tw,), e[write])
        tf.index_put_((tw,), tt[write])
        vf.index_put_((tw,), v[write])


def ncache_lookup(keys, eids, times, values, nodes):
    """Rows of the tables for nodes [B]: keys/eids [B, S] int64, times [B, S] float64, values [B, S, D]."""
    return keys[nodes], eids[nodes], times[nodes], values[nodes]


def _pair_rows(keys, values, u, v, sizes):
    """Both rows of every pair side by side: (bit [2S]: side * H + hop of each column, keys [P, 2S],
    values [P, 2S, D]), u's row first."""
    off = offsets(sizes)
    H = len(off) - 1
    hop_of = torch.repeat_interleave(torch.arange(H, device=keys.device), torch.tensor(
        [off[h + 1] - off[h] for h in range(H)], device=keys.device))
    bit = torch.cat([hop_of, hop_of + H])
    return bit, torch.cat([keys[u], keys[v]], 1), torch.cat([values[u], values[v]], 1)


def ncache_pair_features(keys, values, u, v, sizes=(32, 16)):
    """Joint neighbourhood of each pair (u[p], v[p]) by unique + scatter_add.

    Returns keys [P, K] int64 (-1 padding), codes [P, K] int64 (bit side*H + hop for every place the key is
    found; H = 1 + len(sizes)), feats [P, K, D] (values summed over those places), mask [P, K] bool and common
    counts [P, H, H] int64. K = 2S; distinct keys are in order of first appearance (u's row, then v's row).
    """
    H, S = len(sizes) + 1, offsets(sizes)[-1]
    P = u.numel()
    D = values.shape[2]
    dev = keys.device
    K = 2 * S
    bit, allk, allv = _pair_rows(keys, values, u, v, sizes)
    pid, q = (allk >= 0).nonzero(as_tuple=True)
    k = allk[pid, q]
    out_k = torch.full((P, K), -1, dtype=torch.int64, device=dev)
    out_c = torch.zeros((P, K), dtype=torch.int64, device=dev)
    out_f = torch.zeros((P, K, D), dtype=values.dtype, device=dev)
    out_m = torch.zeros((P, K), dtype=torch.bool, device=dev)
    counts = torch.zeros((P, H, H), dtype=torch.int64, device=dev)
    if k.numel() == 0:
        return out_k, out_c, out_f, out_m, counts
    base = int(keys.max().item()) + 2
    grp, inv = torch.unique(pid * base + k, return_inverse=True)
    G = grp.numel()
    code = torch.zeros(G, dtype=torch.int64, device=dev).scatter_add_(0, inv, torch.ones_like(q) << bit[q])
    feat = torch.zeros(G, D, dtype=values.dtype, device=dev).index_add_(0, inv, allv[pid, q])
    first = torch.full((G,), K, dtype=torch.int64, device=dev).scatter_reduce_(0, inv, q, "amin")
    gpid = grp // base
    gkey = grp % base
    order = torch.argsort(gpid * K + first)
    gpid, gkey, code, feat = gpid[order], gkey[order], code[order], feat[order]
    starts = torch.zeros(P + 1, dtype=torch.int64, device=dev)
    starts[1:] = torch.bincount(gpid, minlength=P).cumsum(0)
    pos = torch.arange(G, device=dev) - starts[gpid]
    out_k[gpid, pos] = gkey
    out_c[gpid, pos] = code
    out_f[gpid, pos] = feat
    out_m[gpid, pos] = True
    hb = torch.arange(H, device=dev)
    in_u = (code[:, None] >> hb) & 1  # [G, H]
    in_v = (code[:, None] >> (hb + H)) & 1
    counts.view(P, H * H).index_add_(0, gpid, (in_u[:, :, None] * in_v[:, None, :]).view(G, H * H))
    return out_k, out_c, out_f, out_m, counts


def nat_joint_features(keys, values, u, v, sizes=(32, 16)):
    """The NAT reference's joint features, its algorithm and output layout (a second benchmark peer).

    Gathers both rows of every pair, keeps the occupied entries, finds the distinct (key, pair) rows with
    ``unique(dim=0)`` and scatter-adds each entry's values and hop bit (side * H + hop) onto its row. Returns
    (rows [G, 2] int64 (key, pair), sums [G, D + 1] float32: summed values, then the code as a float), G distinct
    keys over all pairs in unique's order: no padding, no first-appearance order, no common-neighbour counts.
    """
    S = offsets(sizes)[-1]
    D = values.shape[2]
    dev = keys.device
    bit, allk, allv = _pair_rows(keys, values, u, v, sizes)
    allk, allv = allk.view(-1), allv.view(-1, D)
    present = (allk >= 0).nonzero(as_tuple=True)[0]
    pair, q = present // (2 * S), present % (2 * S)
    rows, inv = torch.stack([allk[present], pair], 1).unique(return_inverse=True, dim=0)
    hidden = torch.cat([allv[present], (1 << bit[q]).unsqueeze(1).to(values.dtype)], 1)
    sums = torch.zeros(rows.shape[0], D + 1, dtype=values.dtype, device=dev)
    return rows, sums.scatter_add_(0, inv.unsqueeze(1).expand(-1, D + 1), hidden)
