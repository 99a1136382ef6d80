"""Fuzz cases of the N-cache: streams of random batches through NCache against the plain-PyTorch reference
(bit-identical tables, lookups and pair features), hostile constructor arguments, and the raw ops with tables that
disagree with each other, ids out of range, and sizes that do not match the tables."""

from __future__ import annotations

import fastlayers.ops as F
import hypothesis.strategies as st
import torch
from fastlayers import NCache
from fastlayers.reference import ncache as R

from fuzz.common import Case, kinds_strategy, pick, torch_gen

OPS = torch.ops.fastlayers


def _stream(draw, g, n, batches):
    """Batches (src, dst, t, eid, values) with non-decreasing times."""
    out, t0, e0 = [], 0.0, 0
    for _ in range(batches):
        B = draw(st.integers(0, 12))
        src = torch.randint(0, n, (B,), generator=g)
        dst = torch.randint(0, n, (B,), generator=g)
        # Integer-valued times make ties (same time, several edges) frequent: the tie rule is exercised.
        t = t0 + torch.sort(torch.randint(0, 4, (B,), generator=g)).values.double()
        eid = torch.arange(e0, e0 + B)
        t0, e0 = (float(t[-1]) if B else t0), e0 + B
        out.append((src, dst, t, eid, torch.randn(B, 2, generator=g, dtype=torch.float32)))
    return out


def _filled(draw, g):
    n = draw(st.integers(1, 8))
    sizes = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    prob = pick(draw, ((0.0, 0.5, 1.0)))
    seed = draw(st.integers(0, 5))
    stream = _stream(draw, g, n, draw(st.integers(1, 4)))
    return n, sizes, prob, seed, stream


def _cache(draw, g):
    """An NCache filled by a random stream: (n, sizes, replace_prob, seed, cache)."""
    n, sizes, prob, seed, stream = _filled(draw, g)
    c = NCache(n, sizes, value_dim=2, replace_prob=prob, seed=seed)
    for src, dst, t, eid, val in stream:
        c.update(src, dst, t, eid, val)
    return n, sizes, prob, seed, c


def stream_case(draw):
    """Feeds a stream through NCache and the reference; compares tables, a lookup and pair features."""
    g = torch_gen(draw)
    n, sizes, prob, seed, stream = _filled(draw, g)
    nodes = torch.randint(0, n, (draw(st.integers(0, 6)),), generator=g)
    u = torch.randint(0, n, (draw(st.integers(0, 6)),), generator=g)
    v = torch.randint(0, n, (u.numel(),), generator=g)

    def ours():
        c = NCache(n, sizes, value_dim=2, replace_prob=prob, seed=seed)
        for src, dst, t, eid, val in stream:
            c.update(src, dst, t, eid, val)
        return (c.keys, c.eids, c.times, c.values, tuple(c.lookup(nodes)), tuple(c.pair_features(u, v)))

    def ref():
        c = NCache(n, sizes, value_dim=2, replace_prob=prob, seed=seed)  # only for its empty tables
        for src, dst, t, eid, val in stream:
            R.ncache_update(c.keys, c.eids, c.times, c.values, src, dst, t, eid, val, list(sizes), prob, seed)
        return (c.keys, c.eids, c.times, c.values, R.ncache_lookup(c.keys, c.eids, c.times, c.values, nodes),
                R.ncache_pair_features(c.keys, c.values, u, v, list(sizes)))

    return Case("NCache stream", "valid", ours, ref, rtol=0, atol=0)


def constructor_case(draw):
    bad = pick(draw, ((("sizes", dict(sizes=(True, 4))), ("seed", dict(seed="3")),
                                ("replace_prob", dict(replace_prob="0.5")), ("replace_prob", dict(replace_prob=1.5)),
                                ("replace_prob", dict(replace_prob=float("nan"))), ("num_nodes", dict(num_nodes=-1)),
                                ("num_nodes", dict(num_nodes=True)), ("value_dim", dict(value_dim=0)),
                                ("sizes", dict(sizes=(0,))), ("sizes", dict(sizes=(2, 2, 2, 2))))))
    arg, kw = bad
    kw = {"num_nodes": 4, **kw}
    return Case("NCache()", f"bad {arg}", lambda: NCache(**kw), arg=arg)


def public_bad_case(draw):
    """Public functions with out-of-range ids, mismatched lengths, backwards times."""
    g = torch_gen(draw)
    n, _sizes, _prob, _seed, c = _cache(draw, g)
    what = pick(draw, (("lookup id past end", "lookup negative id", "pair u past end", "update dst past end",
                                 "update times backwards", "update lengths differ", "update nan time")))
    if what == "lookup id past end":
        return Case("NCache.lookup", what, lambda: c.lookup(torch.tensor([0, n])), arg="nodes")
    if what == "lookup negative id":
        return Case("NCache.lookup", what, lambda: c.lookup(torch.tensor([-1])), arg="nodes")
    if what == "pair u past end":
        return Case("NCache.pair_features", what, lambda: c.pair_features(torch.tensor([n]), torch.tensor([0])),
                    arg="u")
    last = float(c.last_time)
    if what == "update dst past end":
        return Case("NCache.update", what, lambda: c.update(torch.tensor([0]), torch.tensor([n]),
                                                            torch.tensor([last + 1.0], dtype=torch.float64), torch.tensor([99])), arg="dst")
    if what == "update times backwards":
        return Case("NCache.update", what, lambda: c.update(torch.tensor([0, 0]), torch.tensor([0, 0]),
                                                            torch.tensor([last + 2.0, last + 1.0], dtype=torch.float64),
                                                            torch.tensor([98, 99])), arg="t")
    if what == "update nan time":
        return Case("NCache.update", what, lambda: c.update(torch.tensor([0]), torch.tensor([0]),
                                                            torch.tensor([float("nan")], dtype=torch.float64), torch.tensor([99])), arg="t")
    return Case("NCache.update", what, lambda: c.update(torch.tensor([0, 0]), torch.tensor([0]),
                                                        torch.tensor([last + 1.0], dtype=torch.float64), torch.tensor([99])), arg="dst")


def raw_case(draw):
    """Raw ops with one table, id tensor or size list inconsistent with the others."""
    g = torch_gen(draw)
    n, sizes, prob, seed, c = _cache(draw, g)
    keys, eids, times, values, last = (c.keys.clone(), c.eids.clone(), c.times.clone(), c.values.clone(),
                                       c.last_time.clone())
    op = pick(draw, (("lookup", "pair_features", "update")))
    table_defects = ["eids one row short", "times one row", "values one row short", "values one slot short",
                     "keys one slot short"]
    if op == "lookup":
        what = pick(draw, (table_defects + ["nodes past end", "nodes negative"]))
        nodes = torch.randint(0, n, (3,), generator=g)
        arg = {"eids one row short": "eids", "times one row": "times", "values one row short": "values",
               "values one slot short": "values", "keys one slot short": "keys", "nodes past end": "nodes",
               "nodes negative": "nodes"}[what]
        if what == "eids one row short":
            eids = eids[:-1]
            nodes[0] = n - 1
        elif what == "times one row":
            times = times[:1]
            nodes[0] = n - 1
            if n == 1:
                times = times[:0]
        elif what == "values one row short":
            values = values[:-1]
            nodes[0] = n - 1
        elif what == "values one slot short":
            values = values[:, :-1]
        elif what == "keys one slot short":
            keys = keys[:, :-1]
        elif what == "nodes past end":
            nodes[0] = n
        else:
            nodes[0] = -1
        return Case("raw.ncache_lookup", what, lambda: OPS.ncache_lookup(keys, eids, times, values, nodes), arg=arg)
    if op == "pair_features":
        what = pick(draw, (("u past end", "v negative", "values one row short", "sizes too many slots",
                                     "sizes empty", "sizes zero")))
        u = torch.randint(0, n, (3,), generator=g)
        v = torch.randint(0, n, (3,), generator=g)
        sz = list(sizes)
        arg = "sizes"
        if what == "u past end":
            u[0], arg = n, "u"
        elif what == "v negative":
            v[0], arg = -1, "v"
        elif what == "values one row short":
            values, arg = values[:-1], "values"
            u[0] = n - 1
        elif what == "sizes too many slots":
            sz[-1] += 1
        elif what == "sizes empty":
            sz = []
        else:
            sz[0] = 0
        return Case("raw.ncache_pair_features", what,
                    lambda: OPS.ncache_pair_features(keys, values, u, v, sz, seed), arg=arg)
    what = pick(draw, (("src past end", "dst negative", "times one row", "sizes too few slots",
                                 "eid length", "edge_values rows", "last_time empty")))
    B = 3
    src = torch.randint(0, n, (B,), generator=g)
    dst = torch.randint(0, n, (B,), generator=g)
    t = float(last) + torch.arange(B, dtype=torch.float64)
    eid = torch.arange(100, 100 + B)
    ev = None
    sz = list(sizes)
    arg = {"src past end": "src", "dst negative": "dst", "times one row": "times", "sizes too few slots": "sizes",
           "eid length": "eid", "edge_values rows": "edge_values", "last_time empty": "last_time"}[what]
    if what == "src past end":
        src[0] = n
    elif what == "dst negative":
        dst[0] = -1
    elif what == "times one row":
        times = times[:1]
        src[0] = n - 1
        if n == 1:
            times = times[:0]
    elif what == "sizes too few slots":
        sz[-1] -= 1
        if sz[-1] == 0:
            sz[-1] = 5
    elif what == "eid length":
        eid = eid[:-1]
    elif what == "edge_values rows":
        ev = torch.zeros(B - 1, values.shape[2])
    else:
        last = last[:0]
    return Case("raw.ncache_update", what, lambda: OPS.ncache_update(keys, eids, times, values, last, src, dst, t,
                                                                      eid, ev, sz, prob, seed), arg=arg)


def noncontiguous_case(draw):
    """Tables that are views (transposed copies, expanded rows) must give the same rows as contiguous ones."""
    g = torch_gen(draw)
    n, _sizes, _prob, _seed, c = _cache(draw, g)
    nodes = torch.randint(0, n, (4,), generator=g)
    keys = c.keys.t().contiguous().t()
    times = c.times.t().contiguous().t()
    values = c.values.transpose(0, 1).contiguous().transpose(0, 1)
    return Case("ncache_lookup (strided tables)", "valid",
                lambda: F.ncache_lookup(keys, c.eids, times, values, nodes),
                lambda: R.ncache_lookup(c.keys, c.eids, c.times, c.values, nodes), rtol=0, atol=0)


KINDS = [stream_case, constructor_case, public_bad_case, raw_case, noncontiguous_case]


def cases():
    return kinds_strategy(KINDS)
