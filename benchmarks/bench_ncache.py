"""N-cache: one NAT training step's cache work per batch -- update(B edges) + pair_features(B positive and B
negative pairs) -- fastlayers kernels vs the plain-PyTorch reference (NAT's algorithm: index_put_ inserts,
unique + scatter_add pair codes) on the same warmed-up state."""

import torch
from harness import Case

from fastlayers import NCache
from fastlayers.reference import ncache as ref

SIZES = (32, 16)
D = 4
# (edges per batch, nodes): NAT's batch on a small graph, and a large batch on a million-node graph.
SHAPES = [(200, 10_000), (2000, 1_000_000)]
QUICK_SHAPES = [(200, 10_000), (2000, 100_000)]
WARM_BATCHES = 50


def specs(device, quick):
    return list(QUICK_SHAPES if quick else SHAPES)


def _batch(B, n, gen, device):
    src = torch.randint(0, n, (B,), generator=gen).to(device)
    dst = torch.randint(0, n, (B,), generator=gen).to(device)
    neg = torch.randint(0, n, (B,), generator=gen).to(device)
    eid = torch.randint(0, 1 << 40, (B,), generator=gen).to(device)
    return src, dst, neg, eid, torch.randn(B, D, generator=gen).to(device)


def build(spec, device):
    B, n = spec
    gen = torch.Generator().manual_seed(0)
    ours = NCache(n, SIZES, D, device=device)
    for i in range(WARM_BATCHES):  # a cache with content: every batch node gets its hop-1/hop-2 entries
        src, dst, _, eid, v = _batch(B, n, gen, device)
        ours.update(src, dst, torch.full((B,), float(i), dtype=torch.float64, device=device), eid, v)
    peer = {k: getattr(ours, k).clone() for k in ("keys", "eids", "times", "values")}
    src, dst, neg, eid, vals = _batch(B, n, gen, device)
    # Every timed call inserts the same batch at one time >= all earlier ones: valid and repeatable.
    t = torch.full((B,), float(WARM_BATCHES), dtype=torch.float64, device=device)
    pu, pv = torch.cat([src, src]), torch.cat([dst, neg])

    def run_ours():
        ours.update(src, dst, t, eid, vals)
        return ours.pair_features(pu, pv)

    def run_peer():
        ref.ncache_update(peer["keys"], peer["eids"], peer["times"], peer["values"], src, dst, t, eid, vals, SIZES,
                          0.9, 0, exact=False)
        return ref.ncache_pair_features(peer["keys"], peer["values"], pu, pv, SIZES)

    S = ours.num_slots
    entry = 8 + 8 + 8 + 4 * D  # key, edge id, time, value
    # update: read the partners' hop-1 entries, write the owners' rows; pair_features: read both rows (keys and
    # values), write [2B, 2S] keys, codes, mask, feats and the 3x3 counts.
    min_bytes = (2 * B * SIZES[0] * entry + 2 * B * S * entry
                 + 2 * B * 2 * S * (8 + 4 * D) + 2 * B * (2 * S * (8 + 8 + 1 + 4 * D) + 9 * 8))
    return Case(name="update + pair_features", shape=f"B={B}, nodes={n}", ours=run_ours, peer=run_peer,
                peer_name="plain PyTorch (NAT reference algorithm)", min_bytes=min_bytes,
                extra={"edges/call": B})
