"""N-cache: C++ (CPU) and CUDA kernels against the plain-PyTorch reference on random temporal streams."""

import pathlib

import pytest
import torch
from fastlayers import NCache
from fastlayers.reference import ncache as R


def _stream(n, batches, max_batch, D, gen, t0=1.7e9, hubs=True):
    """Random batches (src, dst, t, eid, values): non-decreasing float64 Unix-like times with ties, unique large
    edge ids in random order, self loops, repeated pairs and (with hubs) a few high-degree nodes."""
    t = t0
    eids = torch.randperm(batches * max_batch, generator=gen) * 7919 + (1 << 40)
    k = 0
    for _ in range(batches):
        B = int(torch.randint(0, max_batch + 1, (), generator=gen))
        src = torch.randint(0, n, (B,), generator=gen)
        dst = torch.randint(0, n, (B,), generator=gen)
        if hubs and B:
            hub = torch.rand(B, generator=gen) < 0.3
            src[hub] = torch.randint(0, 3, (int(hub.sum()),), generator=gen)
        steps = torch.randint(0, 3, (B,), generator=gen).double() * 0.25  # a third of the steps are ties
        tt = t + steps.cumsum(0)
        if B:
            t = float(tt[-1])
        yield src, dst, tt, eids[k:k + B].clone(), torch.randn(B, D, generator=gen)
        k += B


def _t(*times):
    return torch.tensor(times, dtype=torch.float64)


def _ref_tables(c):
    return {name: getattr(c, name).clone() for name in ("keys", "eids", "times", "values")}


def _assert_same_tables(c, ref, where=""):
    for name, want in ref.items():
        got = getattr(c, name)
        assert torch.equal(got, want), f"{name} differs {where}: {(got != want).nonzero()[:5].tolist()}"


def _run_both(n, sizes, D, p, seed, batches=25, max_batch=60, gseed=0, device="cpu"):
    gen = torch.Generator().manual_seed(gseed)
    c = NCache(n, sizes, D, replace_prob=p, seed=seed, device=device)
    ref = _ref_tables(NCache(n, sizes, D))
    for i, (s, d, t, e, v) in enumerate(_stream(n, batches, max_batch, D, gen)):
        c.update(s.to(device), d.to(device), t.to(device), e.to(device), v.to(device))
        R.ncache_update(ref["keys"], ref["eids"], ref["times"], ref["values"], s, d, t, e, v, sizes, p, seed)
        _assert_same_tables(c.to("cpu") if device != "cpu" else c, ref, f"after batch {i}")
        if device != "cpu":
            c.to(device)
    return c, ref


@pytest.mark.parametrize("sizes", [(32, 16), (8, 4), (5,), (4, 3, 2)])
@pytest.mark.parametrize("p", [0.0, 0.5, 0.9, 1.0])
def test_update_matches_reference(sizes, p):
    c, _ = _run_both(40, sizes, 3, p, seed=11)
    assert (c.keys[:, 1:] >= 0).sum() > 0


def test_update_without_values_writes_zeros_and_copies():
    c = NCache(10, (8, 4), 2)
    ref = _ref_tables(c)
    gen = torch.Generator().manual_seed(3)
    for s, d, t, e, v in _stream(10, 10, 20, 2, gen):
        c.update(s, d, t, e)
        R.ncache_update(ref["keys"], ref["eids"], ref["times"], ref["values"], s, d, t, e, None, (8, 4), 0.9, 0)
    _assert_same_tables(c, ref)
    assert torch.all(c.values == 0)


def test_keys_sit_at_their_hash_slot_and_hop0_is_self():
    c, _ = _run_both(30, (8, 4), 2, 0.7, seed=5)
    assert torch.all((c.keys[:, 0] == -1) | (c.keys[:, 0] == torch.arange(30)))
    for h, m in ((1, 8), (2, 4)):
        k = c.hop(h).keys
        slot = torch.arange(m).expand_as(k)
        full = k >= 0
        assert full.any()
        assert torch.equal(R.slot_of(k[full], 5, m), slot[full])


def test_slots_reach_every_index():
    # The reference's (id*s + id^2*(s+1)) mod 32 reaches 7 slots for even s; the mixer must reach all of them.
    ids = torch.arange(10_000)
    assert R.slot_of(ids, 0, 32).unique().numel() == 32
    assert R.nat_slot_of(ids, 0, 32).unique().numel() < 32


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_replacement_draws_are_uniform(p):
    # The counter-based draw must behave like a uniform variate: over many (owner, key, time) the replacement
    # rate is p, and the slot index is uniform over the hop.
    gen = torch.Generator().manual_seed(0)
    n = 200_000
    owner = torch.randint(0, 1 << 20, (n,), generator=gen)
    key = torch.randint(0, 1 << 20, (n,), generator=gen)
    t = torch.rand(n, generator=gen, dtype=torch.float64) * 1e9
    rate = (R.replace_draw(3, owner, 1, key, t) < R.threshold53(p)).double().mean().item()
    assert abs(rate - p) < 0.005
    counts = torch.bincount(R.slot_of(key, 3, 32), minlength=32).double()
    assert counts.min() > 0.9 * n / 32 and counts.max() < 1.1 * n / 32


def test_hop2_comes_from_partner_hop1_before_the_batch():
    # 0-1 at t=1, then 1-2 at t=2: hop 2 of 2 gets 1's hop-1 entry for 0 (edge 10, t=1), not the new edge 1-2.
    c = NCache(4, (8, 8), 1, replace_prob=1.0)
    c.update(torch.tensor([0]), torch.tensor([1]), _t(1.0), torch.tensor([10]), torch.ones(1, 1))
    c.update(torch.tensor([1]), torch.tensor([2]), _t(2.0), torch.tensor([20]), 2 * torch.ones(1, 1))
    h2 = c.hop(2)
    row = h2.keys[2]
    assert set(row[row >= 0].tolist()) == {0}
    j = int((row == 0).nonzero())
    assert int(h2.eids[2, j]) == 10 and float(h2.times[2, j]) == 1.0 and float(h2.values[2, j, 0]) == 1.0
    # 0's hop 2 is still empty: it had no edge in the second batch.
    assert torch.all(c.hop(2).keys[0] == -1)
    # 1's hop 2 received 2's hop 1 as it was before the batch (empty) and 0's nothing (0 not in the batch).
    assert torch.all(c.hop(2).keys[1] == -1)


def test_conflict_latest_time_then_largest_eid():
    # One slot per hop: every partner of node 0 in the batch competes for it.
    c = NCache(8, (1,), 1, replace_prob=0.0)
    src = torch.tensor([0, 0, 0, 0])
    dst = torch.tensor([3, 5, 6, 4])
    t = torch.tensor([1.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    eid = torch.tensor([100, 7, 9, 8])
    c.update(src, dst, t, eid)
    assert int(c.keys[0, 1]) == 6 and int(c.eids[0, 1]) == 9
    assert int(c.keys[0, 0]) == 0 and int(c.eids[0, 0]) == 9
    # replace_prob 0: an occupied slot keeps its key; the same key is refreshed.
    c.update(torch.tensor([0]), torch.tensor([4]), _t(3.0), torch.tensor([1]))
    assert int(c.keys[0, 1]) == 6 and int(c.eids[0, 1]) == 9
    c.update(torch.tensor([6]), torch.tensor([0]), _t(4.0), torch.tensor([2]))
    assert int(c.keys[0, 1]) == 6 and int(c.eids[0, 1]) == 2 and float(c.times[0, 1]) == 4.0


def test_batch_order_and_thread_count_do_not_matter():
    gen = torch.Generator().manual_seed(7)
    n, B = 300, 3000
    src, dst = torch.randint(0, n, (B,), generator=gen), torch.randint(0, n, (B,), generator=gen)
    src[:500] = 0  # a hub
    eid = torch.randperm(B, generator=gen)
    vals = torch.randn(B, 4, generator=gen)
    warm = NCache(n, (16, 8), 4, replace_prob=0.6)
    warm.update(src, dst, torch.zeros(B, dtype=torch.float64), eid, vals)
    results = []
    threads = torch.get_num_threads()
    for perm, nthreads in ((torch.arange(B), threads), (torch.randperm(B, generator=gen), threads),
                           (torch.randperm(B, generator=gen), 1)):
        c = NCache(n, (16, 8), 4, replace_prob=0.6)
        c.load_state_dict(warm.state_dict())
        torch.set_num_threads(nthreads)
        try:
            c.update(src[perm], dst[perm], torch.ones(B, dtype=torch.float64), eid[perm], vals[perm])
        finally:
            torch.set_num_threads(threads)
        results.append(_ref_tables(c))
    for other in results[1:]:
        for name in other:
            assert torch.equal(results[0][name], other[name]), name


def test_lookup_matches_reference():
    c, _ = _run_both(50, (32, 16), 4, 0.9, seed=1, batches=10)
    nodes = torch.randint(0, 50, (77,))
    got = c.lookup(nodes)
    want = R.ncache_lookup(c.keys, c.eids, c.times, c.values, nodes)
    for g, w in zip(got, want):
        assert torch.equal(g, w)
    assert got.keys.shape == (77, 49) and got.values.shape == (77, 49, 4)
    nc = got.keys[:, :0]
    assert nc.shape == (77, 0)
    empty = c.lookup(torch.empty(0, dtype=torch.long))
    assert empty.keys.shape == (0, 49) and empty.values.shape == (0, 49, 4)


@pytest.mark.parametrize("sizes", [(32, 16), (8, 4), (5,), (4, 3, 2)])
def test_pair_features_match_reference(sizes):
    c, _ = _run_both(40, sizes, 3, 0.8, seed=2, batches=15)
    gen = torch.Generator().manual_seed(1)
    u = torch.randint(0, 45, (200,), generator=gen).clamp_max(39)
    v = torch.randint(0, 45, (200,), generator=gen).clamp_max(39)
    u[:10] = v[:10]  # u == v
    got = c.pair_features(u, v)
    want = R.ncache_pair_features(c.keys, c.values, u, v, sizes)
    K, H = 2 * c.num_slots, c.num_hops
    assert got.keys.shape == (200, K) and got.feats.shape == (200, K, 3) and got.counts.shape == (200, H, H)
    for name, g, w in zip(got._fields, got, want):
        if g.dtype.is_floating_point:
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(g, w), name
    assert got.mask.any() and not got.mask.all()
    assert torch.equal(got.mask, got.keys >= 0)


def test_pair_codes_on_a_small_graph():
    # 0-1 at t=1, 1-2 at t=2. For the pair (0, 2) with H = 3 (bits: u hops 1,2,4; v hops 8,16,32):
    # key 0 = u itself (1) and in 2's hop 2 (32); key 1 in both hop-1 tables (2 + 16); key 2 = v itself (8).
    c = NCache(3, (32, 16), 1, replace_prob=1.0)
    c.update(torch.tensor([0]), torch.tensor([1]), _t(1.0), torch.tensor([0]), torch.full((1, 1), 1.0))
    c.update(torch.tensor([1]), torch.tensor([2]), _t(2.0), torch.tensor([1]), torch.full((1, 1), 10.0))
    f = c.pair_features(torch.tensor([0]), torch.tensor([2]))
    n = int(f.mask.sum())
    got = dict(zip(f.keys[0, :n].tolist(), f.codes[0, :n].tolist()))
    assert got == {0: 1 + 32, 1: 2 + 16, 2: 8}
    assert f.keys[0, :n].tolist() == [0, 1, 2]  # first appearance: u's row, then v's
    feats = dict(zip(f.keys[0, :n].tolist(), f.feats[0, :n, 0].tolist()))
    assert feats == {0: 1.0 + 1.0, 1: 1.0 + 10.0, 2: 10.0}
    counts = f.counts[0]
    assert counts[1, 1] == 1 and counts[0, 2] == 1 and counts.sum() == 2


def test_pair_features_on_empty_cache_and_empty_query():
    c = NCache(5, (4, 2), 2)
    f = c.pair_features(torch.tensor([0, 3]), torch.tensor([1, 3]))
    assert torch.all(f.keys == -1) and not f.mask.any() and torch.all(f.codes == 0) and torch.all(f.feats == 0)
    assert torch.all(f.counts == 0)
    e = c.pair_features(torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long))
    assert e.keys.shape == (0, 14) and e.counts.shape == (0, 3, 3)


def test_empty_batch_is_a_noop():
    c, _ = _run_both(20, (4, 2), 2, 0.9, seed=0, batches=3)
    before = _ref_tables(c)
    last = c.last_time.clone()
    z = torch.empty(0, dtype=torch.long)
    c.update(z, z, torch.empty(0, dtype=torch.float64), z, torch.empty(0, 2))
    _assert_same_tables(c, before)
    assert torch.equal(c.last_time, last)


def test_state_dict_round_trip_and_reset():
    gen = torch.Generator().manual_seed(4)
    batches = list(_stream(30, 12, 30, 3, gen))
    a = NCache(30, (8, 4), 3, seed=9)
    for s, d, t, e, v in batches[:6]:
        a.update(s, d, t, e, v)
    b = NCache(30, (8, 4), 3, seed=9)
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"keys", "eids", "times", "values", "last_time"}
    for s, d, t, e, v in batches[6:]:
        a.update(s, d, t, e, v)
        b.update(s, d, t, e, v)
    _assert_same_tables(b, _ref_tables(a))
    a.reset()
    assert torch.all(a.keys == -1) and torch.all(a.values == 0) and float(a.last_time) == 0.0
    s, d, t, e, v = batches[0]
    a.update(s, d, t, e, v)  # a reset cache accepts the stream again


def test_foreign_state_cannot_make_kernels_read_out_of_bounds():
    # Keys are only compared, never used as indices: a loaded state with keys off their hash slots, huge or
    # negative, still gives well-formed results (such keys are simply not matched where they are misplaced).
    c = NCache(16, (4, 2), 2)
    gen = torch.Generator().manual_seed(5)
    state = c.state_dict()
    state["keys"] = torch.randint(-3, 1 << 40, state["keys"].shape, generator=gen)
    state["keys"][:, :3] = torch.randint(0, 16, (16, 3), generator=gen)
    state["values"] = torch.randn(state["values"].shape, generator=gen)
    c.load_state_dict(state)
    f = c.pair_features(torch.arange(16), torch.arange(16).flip(0))
    assert torch.isfinite(f.feats).all() and torch.equal(f.mask, f.keys >= 0)
    assert f.codes.max() < 64 and f.counts.min() >= 0
    before = c.keys[:, 0].clone()
    c.update(torch.arange(16), torch.arange(16).flip(0), torch.ones(16, dtype=torch.float64), torch.arange(16))
    # hop 0 held a foreign key: replaced by the node itself with probability replace_prob, else kept.
    assert torch.all((c.keys[:, 0] == torch.arange(16)) | (c.keys[:, 0] == before))
    assert (c.keys[:, 0] == torch.arange(16)).any()


def test_module_to_keeps_table_dtypes():
    c = NCache(4, (2, 2), 2)
    c.to(torch.float16)
    assert c.times.dtype == torch.float64 and c.values.dtype == torch.float32 and c.keys.dtype == torch.int64
    c.update(torch.tensor([0]), torch.tensor([1]), _t(1.0), torch.tensor([0]))


def test_integer_times_and_ids_are_accepted():
    c = NCache(6, (4, 2), 1)
    ref = NCache(6, (4, 2), 1)
    c.update(torch.tensor([0, 1], dtype=torch.int32), torch.tensor([2, 3], dtype=torch.int32),
             torch.tensor([5, 6]), torch.tensor([0, 1], dtype=torch.int32))
    ref.update(torch.tensor([0, 1]), torch.tensor([2, 3]), _t(5.0, 6.0), torch.tensor([0, 1]))
    _assert_same_tables(c, _ref_tables(ref))


def test_exact_reference_differs_from_nat_mode_only_in_hash_and_draws():
    # NAT mode (the benchmark peer) keeps the structure: hop 0 = self, keys at the NAT hash slot.
    gen = torch.Generator().manual_seed(8)
    c = NCache(30, (8, 4), 2)
    for s, d, t, e, v in _stream(30, 8, 30, 2, gen):
        R.ncache_update(c.keys, c.eids, c.times, c.values, s, d, t, e, v, (8, 4), 0.9, 0, exact=False)
    assert torch.all((c.keys[:, 0] == -1) | (c.keys[:, 0] == torch.arange(30)))
    k = c.hop(1).keys
    full = k >= 0
    assert full.any()
    assert torch.equal(R.nat_slot_of(k[full], 0, 8), torch.arange(8).expand_as(k)[full])


# ---- bad input ------------------------------------------------------------------------------------------------


def _cache():
    c = NCache(10, (4, 2), 2)
    c.update(torch.tensor([1]), torch.tensor([2]), _t(5.0), torch.tensor([0]))
    return c


def _one(x, dtype=torch.long):
    return torch.tensor([x], dtype=dtype)


@pytest.mark.parametrize("src, dst, exc, match", [
    (10, 1, IndexError, "src"), (-1, 1, IndexError, "src"), (1, 10, IndexError, "dst"), (1, -3, IndexError, "dst"),
])
def test_ids_out_of_range(src, dst, exc, match):
    c = _cache()
    before = _ref_tables(c)
    with pytest.raises(exc, match=match):
        c.update(_one(src), _one(dst), _one(6.0, torch.float64), _one(1))
    _assert_same_tables(c, before)


@pytest.mark.parametrize("t, match", [
    ([float("nan")], "finite"), ([-1.0], "finite and >= 0"), ([float("inf")], "finite"),
    ([7.0, 6.0], "non-decreasing"), ([4.0], "older than the cache's latest time"),
])
def test_bad_times(t, match):
    c = _cache()
    B = len(t)
    with pytest.raises(ValueError, match=match):
        c.update(torch.ones(B, dtype=torch.long), torch.zeros(B, dtype=torch.long),
                 torch.tensor(t, dtype=torch.float64), torch.arange(B))


def test_mismatched_lengths():
    c = _cache()
    with pytest.raises(ValueError, match="dst"):
        c.update(torch.tensor([1, 2]), torch.tensor([1]), _t(6.0, 6.0), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="t must be"):
        c.update(torch.tensor([1, 2]), torch.tensor([1, 3]), _t(6.0), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="eid"):
        c.update(torch.tensor([1, 2]), torch.tensor([1, 3]), _t(6.0, 6.0), torch.tensor([0]))
    with pytest.raises(ValueError, match="values"):
        c.update(torch.tensor([1]), torch.tensor([1]), _t(6.0), torch.tensor([0]), torch.ones(1, 3))
    with pytest.raises(ValueError, match="v has"):
        c.pair_features(torch.tensor([1, 2]), torch.tensor([1]))


def test_bad_dtypes():
    c = _cache()
    with pytest.raises(TypeError, match="t must be float64"):
        c.update(_one(1), _one(2), torch.tensor([6.0], dtype=torch.float32), _one(1))
    with pytest.raises(TypeError, match="src"):
        c.update(_t(1.0), _one(2), _one(6.0, torch.float64), _one(1))
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        c.update([1], _one(2), _one(6.0, torch.float64), _one(1))
    with pytest.raises(ValueError, match="1-D"):
        c.lookup(torch.tensor([[1]]))


def test_lookup_and_pair_features_out_of_range():
    c = _cache()
    with pytest.raises(IndexError, match="nodes"):
        c.lookup(torch.tensor([0, 10]))
    with pytest.raises(IndexError, match="u"):
        c.pair_features(torch.tensor([-1]), torch.tensor([0]))
    with pytest.raises(IndexError, match="v"):
        c.pair_features(torch.tensor([0]), torch.tensor([12]))


def test_constructor_arguments():
    with pytest.raises(ValueError, match="sizes"):
        NCache(4, (4, 0))
    with pytest.raises(ValueError, match="sizes"):
        NCache(4, (1, 1, 1, 1))
    with pytest.raises(ValueError, match="replace_prob"):
        NCache(4, replace_prob=1.5)
    with pytest.raises(ValueError, match="value_dim"):
        NCache(4, value_dim=0)


def test_huge_page_tables_hold_the_same_state():
    # 30k nodes: each key/eid/time table is about 12 MB, over the 8 MiB advice threshold.
    gen = torch.Generator().manual_seed(5)
    a, b = NCache(30_000, huge_pages=True), NCache(30_000, huge_pages=False)
    for s, d, t, e, v in _stream(30_000, 6, 300, 4, gen):
        a.update(s, d, t, e, v)
        b.update(s, d, t, e, v)
    _assert_same_tables(a, _ref_tables(b))
    u = torch.randint(0, 30_000, (500,), generator=gen)
    for x, y in zip(a.pair_features(u, u.flip(0)), b.pair_features(u, u.flip(0))):
        assert torch.equal(x, y)


def test_advise_huge_pages_edges():
    import os

    from fastlayers import _C

    big = torch.empty(16 << 20, dtype=torch.uint8)
    thp = "/sys/kernel/mm/transparent_hugepage/enabled"
    took = _C.advise_huge_pages(big.data_ptr(), big.numel())
    if os.path.exists(thp) and "[never]" not in pathlib.Path(thp).read_text():
        assert took is True
    # No whole 2 MiB page inside: nothing to advise, and no error.
    assert _C.advise_huge_pages(big.data_ptr() + 1, 4096) is False
    assert _C.advise_huge_pages(big.data_ptr(), 0) is False
    with pytest.raises(TypeError):
        _C.advise_huge_pages("x", 1)


# ---- op registration --------------------------------------------------------------------------------------------


def test_opcheck():
    c, _ = _run_both(12, (4, 2), 2, 0.9, seed=0, batches=4)
    t = c.last_time.clone() + torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64)  # equal times: replayable
    args = (c.keys.clone(), c.eids.clone(), c.times.clone(), c.values.clone(), c.last_time.clone(),
            torch.tensor([0, 3, 5]), torch.tensor([1, 3, 7]), t, torch.tensor([100, 101, 102]), torch.randn(3, 2),
            [4, 2], 0.9, 0)
    torch.library.opcheck(torch.ops.fastlayers.ncache_update, args)
    torch.library.opcheck(torch.ops.fastlayers.ncache_lookup, (c.keys, c.eids, c.times, c.values,
                                                                torch.tensor([0, 4, 4])))
    torch.library.opcheck(torch.ops.fastlayers.ncache_pair_features, (c.keys, c.values, torch.tensor([0, 2]),
                                                                       torch.tensor([1, 2]), [4, 2], 0))
    # The aligned shortcuts (c was written by update only, so its keys sit at their slots).
    torch.library.opcheck(torch.ops.fastlayers.ncache_update, args[:-1] + (0, True))
    torch.library.opcheck(torch.ops.fastlayers.ncache_pair_features, (c.keys, c.values, torch.tensor([0, 2, 5]),
                                                                       torch.tensor([1, 2, 3]), [4, 2], 0, True))


# ---- CUDA: bit-identical to the CPU kernel ------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("sizes", [(32, 16), (4, 3, 2)])
def test_cuda_update_bit_identical_to_cpu(sizes):
    gen = torch.Generator().manual_seed(12)
    cpu = NCache(60, sizes, 4, replace_prob=0.7, seed=3)
    gpu = NCache(60, sizes, 4, replace_prob=0.7, seed=3, device="cuda")
    for s, d, t, e, v in _stream(60, 20, 200, 4, gen):
        cpu.update(s, d, t, e, v)
        gpu.update(s.cuda(), d.cuda(), t.cuda(), e.cuda(), v.cuda())
    for name in ("keys", "eids", "times", "values", "last_time"):
        assert torch.equal(getattr(gpu, name).cpu(), getattr(cpu, name)), name
    u = torch.randint(0, 60, (300,), generator=gen)
    v = torch.randint(0, 60, (300,), generator=gen)
    for g, c in zip(gpu.pair_features(u.cuda(), v.cuda()), cpu.pair_features(u, v)):
        assert torch.equal(g.cpu(), c)
    for g, c in zip(gpu.lookup(u.cuda()), cpu.lookup(u)):
        assert torch.equal(g.cpu(), c)


@pytest.mark.cuda
def test_cuda_bad_input_and_opcheck():
    c = NCache(10, (4, 2), 2, device="cuda")
    c.update(torch.tensor([1], device="cuda"), torch.tensor([2], device="cuda"),
             torch.tensor([5.0], dtype=torch.float64, device="cuda"), torch.tensor([0], device="cuda"))
    with pytest.raises(IndexError, match="src"):
        c.update(torch.tensor([10], device="cuda"), torch.tensor([2], device="cuda"),
                 torch.tensor([6.0], dtype=torch.float64, device="cuda"), torch.tensor([1], device="cuda"))
    with pytest.raises(ValueError, match="older"):
        c.update(torch.tensor([1], device="cuda"), torch.tensor([2], device="cuda"),
                 torch.tensor([4.0], dtype=torch.float64, device="cuda"), torch.tensor([1], device="cuda"))
    torch.library.opcheck(torch.ops.fastlayers.ncache_pair_features,
                          (c.keys, c.values, torch.tensor([0, 1], device="cuda"),
                           torch.tensor([2, 2], device="cuda"), [4, 2], 0))


def test_benchmark_case_runs_on_a_tiny_shape():
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import bench_ncache

    case = bench_ncache.build((20, 300, "update + pair_features"), "cpu")
    batch = case.make_inputs(0)
    ours, peer = case.ours(*batch), case.peer(*batch)
    assert [tuple(x.shape) for x in ours] == [tuple(x.shape) for x in peer]
    assert ours.mask.any() and case.extra["edges/call"] == 20
    assert case.extra["warm_edges"] >= 8 * 300 - 20 and 0 < case.extra["hop1_occupancy"] <= 1
    # A stream: the same batch again and a new one, each at a later time than every earlier insert (the update
    # refuses time going backwards).
    case.ours(*batch), case.peer(*batch), case.ours(*case.make_inputs(1)), case.peer(*case.make_inputs(1))
    for part in bench_ncache.PARTS[1:]:
        case = bench_ncache.build((20, 300, part), "cpu")
        batch = case.make_inputs(0)
        case.ours(*batch), case.peer(*batch)


@pytest.mark.parametrize("sizes", [(32, 16), (5,)])
def test_nat_joint_features_peer_holds_what_pair_features_holds(sizes):
    c, _ = _run_both(40, sizes, 3, 0.8, seed=4, batches=12)
    gen = torch.Generator().manual_seed(2)
    u = torch.randint(0, 40, (60,), generator=gen)
    v = torch.randint(0, 40, (60,), generator=gen)
    pf = c.pair_features(u, v)
    rows, sums = R.nat_joint_features(c.keys, c.values, u, v, sizes)
    p, k = pf.mask.nonzero(as_tuple=True)
    ours = {(int(pf.keys[i, j]), int(i)): (pf.feats[i, j], int(pf.codes[i, j])) for i, j in zip(p, k)}
    theirs = {(int(r[0]), int(r[1])): (s[:-1], int(s[-1])) for r, s in zip(rows, sums)}
    assert ours.keys() == theirs.keys() and len(ours) > 0
    for key, (f, code) in ours.items():
        assert code == theirs[key][1], key
        torch.testing.assert_close(f, theirs[key][0], rtol=1e-6, atol=1e-6)


# ---- aligned shortcuts: the kernels skip the hash when every key sits at its slot --------------------------------

_PAIR = torch.ops.fastlayers.ncache_pair_features.default
_UPDATE = torch.ops.fastlayers.ncache_update.default


def _pair_probe_set(n, gen, src, dst, P=300):
    """Pairs that share neighbours: u == v, the batch's own edges (both ways), partners of partners, random."""
    u = torch.randint(0, n, (P,), generator=gen)
    v = torch.randint(0, n, (P,), generator=gen)
    v[:30] = u[:30]
    k = min(60, src.numel())
    u[30:30 + k], v[30:30 + k] = src[:k], dst[:k]
    u[100:100 + k], v[100:100 + k] = dst[:k], src[:k]
    return u, v


# NAT's (32, 16) takes the 4-lane vector path; the others the column loop (r = 0, 2, 5 and a hop-1 of 64).
@pytest.mark.parametrize("sizes, D", [((32, 16), 4), ((32, 16), 3), ((8, 2), 4), ((16, 16), 2), ((64, 2), 1),
                                      ((64, 32), 4), ((4, 1), 4), ((2, 1), 2)])
def test_aligned_pair_features_equal_the_hashed_probes(sizes, D):
    gen = torch.Generator().manual_seed(sum(sizes) + D)
    n = 60
    c = NCache(n, sizes, D, replace_prob=0.8, seed=3)
    for s, d, t, e, v in _stream(n, 30, 40, D, gen):
        c.update(s, d, t, e, v)
    assert _MISPLACED(c) == 0
    u, v = _pair_probe_set(n, gen, s, d)
    hashed = _PAIR(c.keys, c.values, u, v, list(sizes), 3, False)
    aligned = _PAIR(c.keys, c.values, u, v, list(sizes), 3, True)
    for name, a, b in zip(PairFeatures_fields, hashed, aligned):
        # Bit for bit: the same entries, order, codes, and sums in the same order.
        assert a.shape == b.shape and torch.equal(a.view(torch.uint8), b.view(torch.uint8)), name
    codes = hashed[1]
    assert ((codes & 7 != 0) & (codes >> 3 != 0)).any(), "the probe set must hold common neighbours"
    assert hashed[4].sum() > 0


PairFeatures_fields = ("keys", "codes", "feats", "mask", "counts")


def _MISPLACED(c):
    return torch.ops.fastlayers.ncache_misplaced(c.keys, list(c.sizes), c.seed)


@pytest.mark.parametrize("sizes", [(32, 16), (8, 2), (16, 16), (4, 3, 2), (5,)])
@pytest.mark.parametrize("threads", [1, 2])
def test_aligned_update_equals_the_hashed_update(sizes, threads):
    gen = torch.Generator().manual_seed(len(sizes) + threads)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = NCache(50, sizes, 2, replace_prob=0.7, seed=1), NCache(50, sizes, 2, replace_prob=0.7, seed=1)
        for s, d, t, e, v in _stream(50, 30, 70, 2, gen):
            for c, aligned in ((a, False), (b, True)):
                _UPDATE(c.keys, c.eids, c.times, c.values, c.last_time, s, d, t, e, v, list(sizes), 0.7, 1, aligned)
        _assert_same_tables(b, _ref_tables(a))
        assert (a.hop(len(sizes)).keys >= 0).float().mean() > 0.5
    finally:
        torch.set_num_threads(before)


def test_misplaced_counts_keys_off_their_slot():
    c = NCache(20, (8, 4), 2, seed=4)
    assert _MISPLACED(c) == 0
    for s, d, t, e, v in _stream(20, 5, 20, 2, torch.Generator().manual_seed(0)):
        c.update(s, d, t, e, v)
    assert _MISPLACED(c) == 0
    occupied = (c.keys[:, 1:9] >= 0).nonzero()[0]  # a hop-1 entry (columns 1..8)
    row, col = int(occupied[0]), 1 + int(occupied[1])
    c.keys[row, 1 + col % 8] = c.keys[row, col]  # the same key copied one hop-1 slot over
    assert _MISPLACED(c) == 1
    with pytest.raises(ValueError, match="columns"):
        torch.ops.fastlayers.ncache_misplaced(c.keys, [8, 5], 4)
    # a raw stable-ABI op reports a dtype as ValueError (csrc/common/errors.h: no std exception maps to TypeError)
    with pytest.raises(ValueError, match="int64"):
        torch.ops.fastlayers.ncache_misplaced(c.keys.double(), [8, 4], 4)


def _hashed_pairs(c, u, v):
    return _PAIR(c.keys, c.values, u, v, list(c.sizes), c.seed, False)


def test_ncache_notices_a_state_it_did_not_write():
    # A state loaded from a cache with another seed has its keys off this cache's slots: pair features must be
    # those of the hashed probes (off-slot keys are not matched), not of the column shortcut.
    gen = torch.Generator().manual_seed(7)
    other = NCache(40, (32, 16), 4, seed=11)
    for s, d, t, e, v in _stream(40, 20, 40, 4, gen):
        other.update(s, d, t, e, v)
    c = NCache(40, (32, 16), 4, seed=0)
    u, v = _pair_probe_set(40, gen, s, d)
    assert c._aligned(c.keys)
    c.load_state_dict(other.state_dict())
    got = c.pair_features(u, v)
    assert not c._aligned(c.keys)
    for name, a, b in zip(PairFeatures_fields, _hashed_pairs(c, u, v), got):
        assert torch.equal(a, b), name
    assert not torch.equal(_PAIR(c.keys, c.values, u, v, [32, 16], 0, True)[1], got.codes)  # the shortcut differs
    # An update keeps the state as it is (misaligned); reset makes it aligned again without a check.
    c.update(s, d, t - t[0] + float(c.last_time) + 1.0, e, torch.randn(s.numel(), 4, generator=gen))
    assert not c._aligned(c.keys)
    c.reset()
    assert c._aligned_state[2] and c._aligned(c.keys)
    # An in-place edit bumps the version counter: checked again.
    for s, d, t, e, vals in _stream(40, 5, 40, 4, gen):
        c.update(s, d, t, e, vals)
    assert c._aligned(c.keys)
    col = int((c.keys[3, 1:33] >= 0).nonzero()[0]) + 1
    c.keys[3, 1 + (col % 32)] = c.keys[3, col]
    assert not c._aligned(c.keys)
    for name, a, b in zip(PairFeatures_fields, _hashed_pairs(c, u, v), c.pair_features(u, v)):
        assert torch.equal(a, b), name
