"""N-cache: one NAT training step's cache work per batch -- update(B edges) + pair_features(B positive and B
negative pairs) -- fastlayers kernels vs the plain-PyTorch reference (NAT's algorithm: index_put_ inserts,
unique + scatter_add pair codes) on the same warmed-up state.

Rows: the step (the issue's target), then its two halves, and pair_features against a second peer written as NAT's
published get_joint_feature (unique over (key, pair) rows with dim=0, scatter_add of values and hop bits): that one
returns a compact, unordered list without common-neighbour counts, so it does less than pair_features does. Last,
the step against the lean peer of benchmarks/ncache_lean.py (one table per hop, same-slot common keys), fed the
same stream."""

import torch
from fastlayers import NCache
from fastlayers.reference import ncache as ref
from harness import Case
from ncache_lean import LeanNCache

SIZES = (32, 16)
D = 4
# (edges per batch, nodes): NAT's batch on a small graph, and a large batch on a million-node graph.
SHAPES = [(200, 10_000), (2000, 1_000_000)]
QUICK_SHAPES = [(200, 10_000), (2000, 100_000)]
WARM_EDGES_PER_NODE = 8


PARTS = ("update + pair_features", "update", "pair_features", "pair_features vs NAT's joint features",
         "update + pair_features vs a lean peer")


def specs(device, quick):
    if quick and device != "cpu":  # the device check: the real sizes, the step, its halves, the lean peer
        return [(b, n, part) for b, n in SHAPES for part in (*PARTS[:3], PARTS[4])]
    return [(b, n, part) for b, n in (QUICK_SHAPES if quick else SHAPES) for part in PARTS]


def _batch(B, n, gen, device):
    src = torch.randint(0, n, (B,), generator=gen).to(device)
    dst = torch.randint(0, n, (B,), generator=gen).to(device)
    neg = torch.randint(0, n, (B,), generator=gen).to(device)
    eid = torch.randint(0, 1 << 40, (B,), generator=gen).to(device)
    return src, dst, neg, eid, torch.randn(B, D, generator=gen).to(device)


def build(spec, device):
    B, n, part = spec
    gen = torch.Generator().manual_seed(0)
    ours = NCache(n, SIZES, D, device=device)
    lean = LeanNCache(n, SIZES, D, device=device) if part.endswith("lean peer") else None
    # Steady state: WARM_EDGES_PER_NODE edges per node streamed in first, as a NAT run meets the cache after
    # millions of earlier edges (hop-1 occupancy stops rising well before that).
    warm = max(1, WARM_EDGES_PER_NODE * n // B)
    for i in range(warm):
        src, dst, _, eid, v = _batch(B, n, gen, device)
        t = torch.full((B,), float(i), dtype=torch.float64, device=device)
        ours.update(src, dst, t, eid, v)
        if lean is not None:  # the same stream
            lean.update(src, dst, t, eid, v)
    # The peer's tables are an NCache's too (same memory layout and page advice), holding the same state.
    twin = NCache(n, SIZES, D, device=device)
    twin.load_state_dict(ours.state_dict())
    peer = {k: getattr(twin, k) for k in ("keys", "eids", "times", "values")}

    def make_inputs(i):
        src, dst, neg, eid, vals = _batch(B, n, gen, device)
        return src, dst, eid, vals, torch.cat([src, src]), torch.cat([dst, neg])

    # Each side's clock: every timed call inserts its batch at a later time than all before it, as a stream does.
    clock = {"ours": float(warm), "peer": float(warm)}

    def now(side):
        clock[side] += 1.0
        return torch.full((B,), clock[side], dtype=torch.float64, device=device)

    def ours_update(src, dst, eid, vals, pu, pv):
        ours.update(src, dst, now("ours"), eid, vals)

    def ours_pairs(src, dst, eid, vals, pu, pv):
        return ours.pair_features(pu, pv)

    def peer_update(src, dst, eid, vals, pu, pv):
        ref.ncache_update(peer["keys"], peer["eids"], peer["times"], peer["values"], src, dst, now("peer"), eid, vals,
                          SIZES, 0.9, 0, exact=False)

    def peer_pairs(src, dst, eid, vals, pu, pv):
        return ref.ncache_pair_features(peer["keys"], peer["values"], pu, pv, SIZES)

    def nat_pairs(src, dst, eid, vals, pu, pv):
        return ref.nat_joint_features(peer["keys"], peer["values"], pu, pv, SIZES)

    def run_ours(*batch):
        ours_update(*batch)
        return ours_pairs(*batch)

    def run_peer(*batch):
        peer_update(*batch)
        return peer_pairs(*batch)

    def run_lean(src, dst, eid, vals, pu, pv):
        lean.update(src, dst, now("peer"), eid, vals)
        return lean.pair_common(pu, pv)

    S = ours.num_slots
    entry = 8 + 8 + 8 + 4 * D  # key, edge id, time, value
    # update: read the partners' hop-1 entries, write the owners' rows; pair_features: read both rows (keys and
    # values), write [2B, 2S] keys, codes, mask, feats and the 3x3 counts.
    update_bytes = 2 * B * SIZES[0] * entry + 2 * B * S * entry
    pair_bytes = 2 * B * 2 * S * (8 + 4 * D) + 2 * B * (2 * S * (8 + 8 + 1 + 4 * D) + 9 * 8)
    ref_name = "plain PyTorch (NAT reference algorithm)"
    cases = {
        "update + pair_features": (run_ours, run_peer, ref_name, update_bytes + pair_bytes),
        "update": (ours_update, peer_update, ref_name, update_bytes),
        "pair_features": (ours_pairs, peer_pairs, ref_name, pair_bytes),
        "pair_features vs NAT's joint features": (ours_pairs, nat_pairs,
                                                  "NAT's get_joint_feature (compact, no counts)", pair_bytes),
        "update + pair_features vs a lean peer": (run_ours, run_lean, ("lean PyTorch (one table per hop, "
                                                   "same-slot common keys)"), update_bytes + pair_bytes),
    }
    ours_fn, peer_fn, peer_name, min_bytes = cases[part]
    hop1 = ours.hop(1).keys  # columns 1 .. SIZES[0]: column 0 is hop 0, always occupied once a node has an edge
    occupancy = float((hop1 >= 0).sum()) / hop1.numel()
    return Case(name=part, shape=f"B={B}, nodes={n}", ours=ours_fn, peer=peer_fn, peer_name=peer_name,
                min_bytes=min_bytes, extra={"edges/call": B, "hop1_occupancy": occupancy, "warm_edges": warm * B},
                make_inputs=make_inputs, input_bytes=B * (5 * 8 + 4 * D + 4 * 8))
