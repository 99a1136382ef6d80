"""The lean plain-PyTorch N-cache a competent user writes in an afternoon: the N-cache benchmark's second peer.

One float64 table per hop, [num_nodes, M_h, 3 + D] with rows (key, edge id, time, values) per (node, slot); NAT's
slot hash (key * s + key^2 * (s + 1)) mod M_h; inserts by ``index_put_`` (hop 1: each endpoint gets the other;
hop 2: each endpoint gets its partner's hop-1 entries, read before anything is written), a slot held by another
key replaced with probability ``replace_prob``; common neighbours of a pair as equal keys at equal slots (a key has
one slot per hop in every node's table). It computes less than ``NCache.pair_features``: no distinct-key list, no
hop codes, no summed values; per pair it returns the same-slot equality masks of each hop and their counts.
"""

from __future__ import annotations

import torch


class LeanNCache:
    def __init__(self, num_nodes: int, sizes=(32, 16), value_dim: int = 4, replace_prob: float = 0.9, seed: int = 0,
                 device=None):
        self.sizes, self.p, self.s = tuple(sizes), float(replace_prob), seed % 100
        self.tables = []
        for m in self.sizes:
            t = torch.zeros(num_nodes, m, 3 + value_dim, dtype=torch.float64, device=device)
            t[:, :, 0] = -1.0
            self.tables.append(t)

    def _slot(self, keys: torch.Tensor, m: int) -> torch.Tensor:
        return (keys * self.s + keys * keys * (self.s + 1)).remainder(m)

    def _insert(self, table, owners, keys, records):
        slot = self._slot(keys, table.shape[1])
        cur = table[owners, slot, 0]
        write = (cur < 0) | (cur == keys) | (torch.rand(keys.shape, device=keys.device) < self.p)
        table.index_put_((owners[write], slot[write]), records[write])

    def update(self, src, dst, t, eid, values) -> None:
        """Insert edges (src[b], dst[b]) at times t[b] with edge ids eid[b] and vectors values [B, D]."""
        owners = torch.cat([src, dst])
        partners = torch.cat([dst, src])
        rec1 = torch.cat([partners[:, None].double(), torch.cat([eid, eid])[:, None].double(),
                          torch.cat([t, t])[:, None], torch.cat([values, values]).double()], 1)
        hop2 = []
        for h in range(1, len(self.tables)):  # hop h + 1 gets the partners' hop-h entries, read first
            rows = self.tables[h - 1][partners]  # [2B, M_h, 3 + D]
            keep = rows[:, :, 0] >= 0
            o = owners[:, None].expand(-1, rows.shape[1])[keep]
            hop2.append((h, o, rows[keep]))
        self._insert(self.tables[0], owners, partners, rec1)
        for h, o, rec in hop2:
            self._insert(self.tables[h], o, rec[:, 0].long(), rec)

    def pair_common(self, u, v):
        """Per hop, [P, M_h] bool: the slots where u and v hold the same key; and [P, hops] counts of them."""
        masks = []
        for table in self.tables:
            ku, kv = table[u, :, 0], table[v, :, 0]
            masks.append((ku == kv) & (ku >= 0))
        return masks, torch.stack([m.sum(1) for m in masks], 1)
