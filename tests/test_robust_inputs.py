"""Bad and odd inputs of the ncache, align, eca and hyper families (issue 18): no input may crash the process or
return garbage silently; every rejection names the op, the argument and what was expected.

Inputs that used to crash the process run in a child interpreter, so a regression to a segfault fails its test
instead of killing the test run."""

import subprocess
import sys
import textwrap

import pytest
import torch
from fastlayers import NCache, ops, reference

from .conftest import triton_available

# ---- helpers -------------------------------------------------------------------------------------------------

_CHILD_PRELUDE = """
import sys, torch, fastlayers
from fastlayers import ops
def expect(fn):
    try:
        fn()
    except Exception as e:
        print("RAISED", type(e).__name__, str(e).splitlines()[0])
        return
    print("NO ERROR")
"""


def _in_child(body: str) -> str:
    """Runs body in a fresh interpreter; fails unless it exits cleanly. Returns its stdout."""
    code = _CHILD_PRELUDE + textwrap.dedent(body)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"child exited with {r.returncode} (a crash?):\n{r.stdout}\n{r.stderr[-3000:]}"
    return r.stdout


def _raised(out: str, exc: str, *texts: str) -> None:
    lines = [ln for ln in out.splitlines() if ln.startswith(("RAISED", "NO ERROR"))]
    assert lines, out
    for ln in lines:
        assert ln.startswith(f"RAISED {exc}"), ln
        for t in texts:
            assert t in ln, f"{t!r} not in {ln!r}"


def _filled_cache(n=12, sizes=(4, 2), d=3, seed=5):
    c = NCache(n, sizes=sizes, value_dim=d, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for step in range(4):
        src = torch.randint(0, n, (9,), generator=g)
        dst = torch.randint(0, n, (9,), generator=g)
        t = torch.arange(9, dtype=torch.float64) + 10.0 * step
        c.update(src, dst, t, torch.arange(9) + 9 * step, torch.randn(9, d, generator=g))
    return c


# ---- ncache: tables that disagree with keys (former segfaults / out-of-bounds reads) -------------------------

_TABLES = """
N, S, D = 6, 7, 3
keys = torch.full((N, S), -1, dtype=torch.int64)
eids = torch.full((N, S), -1, dtype=torch.int64)
times = torch.zeros(N, S, dtype=torch.float64)
values = torch.zeros(N, S, D)
nodes = torch.tensor([N - 1, 0])
"""


@pytest.mark.parametrize("bad, name", [
    ("eids = eids[:-1]", "eids"),
    ("times = times[:1]", "times"),
    ("values = values[:-1]", "values"),
    ("values = torch.zeros(N, S - 1, D)", "values"),
])
def test_lookup_tables_disagreeing_with_keys_raise_in_raw_op(bad, name):
    out = _in_child(_TABLES + bad + """
expect(lambda: torch.ops.fastlayers.ncache_lookup(keys, eids, times, values, nodes))
""")
    _raised(out, "ValueError", "ncache.lookup", name)


@pytest.mark.parametrize("bad, name", [
    ("eids = eids[:-1]", "eids"),
    ("times = times[:1]", "times"),
    ("values = values[:-1]", "values"),
])
def test_lookup_tables_disagreeing_with_keys_raise_in_public_op(bad, name):
    out = _in_child(_TABLES + bad + """
expect(lambda: ops.ncache_lookup(keys, eids, times, values, nodes))
""")
    _raised(out, "ValueError", "ncache.lookup", name)


@pytest.mark.parametrize("bad, name", [
    ("eids = eids[:-1]", "eids"),
    ("times = times[:1]", "times"),
    ("values = values[:-1]", "values"),
    ("times = times.t().contiguous().t()", "contiguous"),
])
def test_update_tables_checked_in_raw_op(bad, name):
    out = _in_child(_TABLES + bad + """
last = torch.zeros(1, dtype=torch.float64)
src, dst = torch.tensor([0, 5]), torch.tensor([5, 1])
t, eid = torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([0, 1])
expect(lambda: torch.ops.fastlayers.ncache_update(keys, eids, times, values, last, src, dst, t, eid, None, [4, 2],
                                                  0.5, 0))
expect(lambda: ops.ncache_update(keys, eids, times, values, last, src, dst, t, eid, sizes=(4, 2)))
""")
    _raised(out, "ValueError", "ncache.update", name)


def test_pair_features_tables_checked_in_raw_op():
    out = _in_child(_TABLES + """
u, v = torch.tensor([5]), torch.tensor([0])
expect(lambda: torch.ops.fastlayers.ncache_pair_features(keys, values[:-1], u, v, [4, 2], 0))
expect(lambda: torch.ops.fastlayers.ncache_pair_features(keys, values.double(), u, v, [4, 2], 0))
expect(lambda: torch.ops.fastlayers.ncache_pair_features(keys, values, u, v, [4, 3], 0))
""")
    lines = [ln for ln in out.splitlines() if ln.startswith(("RAISED", "NO ERROR"))]
    assert lines[0].startswith("RAISED ValueError") and "values" in lines[0], lines
    # a dtype from a raw stable-ABI op is a ValueError (csrc/common/errors.h)
    assert lines[1].startswith("RAISED ValueError") and "values must be float32" in lines[1], lines
    assert lines[2].startswith("RAISED ValueError") and "sizes" in lines[2], lines


def test_public_update_refuses_non_contiguous_tables():
    c = _filled_cache()
    keys = c.keys.t().contiguous().t()
    with pytest.raises(ValueError, match=r"ncache.update: keys must be contiguous"):
        ops.ncache_update(keys, c.eids, c.times, c.values, c.last_time, torch.tensor([0]), torch.tensor([1]),
                          torch.tensor([100.0], dtype=torch.float64), torch.tensor([0]), sizes=c.sizes)


# ---- ncache: non-contiguous and expanded tables give the contiguous result ------------------------------------

def _layouts(t):
    """t in three non-contiguous layouts with the same values."""
    yield t.transpose(0, 1).contiguous().transpose(0, 1)  # column-major
    wide = torch.zeros((t.shape[0], 2 * t.shape[1]) + tuple(t.shape[2:]), dtype=t.dtype)
    wide[:, ::2] = t
    yield wide[:, ::2]  # strided columns
    yield t[:1].expand(t.shape)  # stride-0 rows (its values: row 0 everywhere)


@pytest.mark.parametrize("which", range(3))
def test_lookup_of_non_contiguous_tables_matches_contiguous(which):
    c = _filled_cache()
    tabs = [list(_layouts(t))[which] for t in (c.keys, c.eids, c.times, c.values)]
    assert not any(t.is_contiguous() for t in tabs)
    nodes = torch.tensor([3, 0, 11, 3, 7])
    want = ops.ncache_lookup(*[t.contiguous() for t in tabs], nodes)
    for got in (ops.ncache_lookup(*tabs, nodes), torch.ops.fastlayers.ncache_lookup(*tabs, nodes)):
        for g, w in zip(got, want):
            assert torch.equal(g, w)


@pytest.mark.parametrize("which", range(3))
def test_pair_features_of_non_contiguous_tables_matches_contiguous(which):
    c = _filled_cache()
    keys, values = (list(_layouts(t))[which] for t in (c.keys, c.values))
    u, v = torch.tensor([0, 3, 5, 11]), torch.tensor([1, 3, 2, 4])
    want = ops.ncache_pair_features(keys.contiguous(), values.contiguous(), u, v, c.sizes, c.seed)
    for got in (ops.ncache_pair_features(keys, values, u, v, c.sizes, c.seed),
                torch.ops.fastlayers.ncache_pair_features(keys, values, u, v, list(c.sizes), c.seed)):
        for g, w in zip(got, want):
            assert torch.equal(g, w)


def test_ncache_after_load_state_dict_assign_with_views():
    ref = _filled_cache()
    c = NCache(12, sizes=(4, 2), value_dim=3, seed=5)
    state = {k: (v.transpose(0, 1).contiguous().transpose(0, 1) if v.dim() >= 2 else v.clone())
             for k, v in ref.state_dict().items()}
    c.load_state_dict(state, assign=True)
    nodes = torch.arange(12)
    for g, w in zip(c.lookup(nodes), ref.lookup(nodes)):
        assert torch.equal(g, w)
    # Updates after the load land in the module's tables, as they do for the cache it was saved from.
    args = (torch.tensor([0, 4]), torch.tensor([4, 9]), torch.tensor([50.0, 51.0], dtype=torch.float64),
            torch.tensor([100, 101]), torch.randn(2, 3))
    c.update(*args)
    ref.update(*args)
    for g, w in zip(c.lookup(nodes), ref.lookup(nodes)):
        assert torch.equal(g, w)
    for g, w in zip(c.pair_features(nodes, nodes.flip(0)), ref.pair_features(nodes, nodes.flip(0))):
        assert torch.equal(g, w)


# ---- ncache: argument types ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, exc, text", [
    (dict(num_nodes=True), TypeError, "num_nodes must be an int"),
    (dict(num_nodes=10.0), TypeError, "num_nodes must be an int"),
    (dict(sizes=(True, 4)), TypeError, "sizes[0] must be an int"),
    (dict(sizes=(4, 2.0)), TypeError, "sizes[1] must be an int"),
    (dict(sizes="44"), TypeError, "sizes must be a tuple"),
    (dict(sizes=(4, 0)), ValueError, "sizes[1] must be in [1, 2147483648)"),
    (dict(sizes=(1 << 40,)), ValueError, "sizes[0] must be in"),
    (dict(sizes=(2, 2, 2, 2)), ValueError, "sizes must have 1 to 3 entries"),
    (dict(seed="3"), TypeError, "seed must be an int"),
    (dict(seed=1.0), TypeError, "seed must be an int"),
    (dict(seed=1 << 64), ValueError, "seed must be in"),
    (dict(replace_prob="0.5"), TypeError, "replace_prob must be a number"),
    (dict(replace_prob=True), TypeError, "replace_prob must be a number"),
    (dict(replace_prob=float("nan")), ValueError, "replace_prob must be in [0, 1]"),
    (dict(value_dim=True), TypeError, "value_dim must be an int"),
    (dict(huge_pages=1), TypeError, "huge_pages must be a bool"),
])
def test_ncache_constructor_refuses_coercions(kwargs, exc, text):
    kwargs = {"num_nodes": 10, **kwargs}
    with pytest.raises(exc, match=_escape(text)):
        NCache(**kwargs)


def test_ncache_constructor_refuses_tables_too_large_to_allocate():
    with pytest.raises(ValueError, match="too large to allocate"):
        NCache(1 << 60)


def test_ncache_functional_ops_refuse_coercions():
    c = _filled_cache()
    one = (torch.tensor([0]), torch.tensor([1]), torch.tensor([100.0], dtype=torch.float64), torch.tensor([0]))
    with pytest.raises(TypeError, match="replace_prob must be a number"):
        ops.ncache_update(c.keys, c.eids, c.times, c.values, c.last_time, *one, sizes=c.sizes, replace_prob="0.5")
    with pytest.raises(TypeError, match="seed must be an int"):
        ops.ncache_update(c.keys, c.eids, c.times, c.values, c.last_time, *one, sizes=c.sizes, seed=1e30)
    with pytest.raises(TypeError, match=_escape("sizes[0] must be an int")):
        ops.ncache_pair_features(c.keys, c.values, one[0], one[1], sizes=(2.5, 2))
    with pytest.raises(ValueError, match=_escape("keys has 7 columns but sizes (4, 3) imply S")):
        ops.ncache_pair_features(c.keys, c.values, one[0], one[1], sizes=(4, 3))
    with pytest.raises(ValueError, match="seed must be in"):
        ops.ncache_pair_features(c.keys, c.values, one[0], one[1], sizes=c.sizes, seed=1 << 64)


def _escape(text):
    import re

    return re.escape(text)


# ---- align: Sinkhorn -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, text", [
    (dict(noise=float("inf")), "noise must be a finite number >= 0"),
    (dict(noise=float("nan")), "noise must be a finite number >= 0"),
    (dict(noise=-0.5), "noise must be a finite number >= 0"),
    (dict(tau=float("inf")), "tau must be a finite number > 0"),
    (dict(tau=float("nan")), "tau must be a finite number > 0"),
    (dict(num_iters=1 << 62), "num_iters must be an int in [1, "),
])
def test_sinkhorn_refuses_non_finite_scales(kwargs, text):
    with pytest.raises(ValueError, match=_escape(text)):
        ops.sinkhorn(torch.randn(2, 3, 4), **kwargs)


def test_raw_sinkhorn_refuses_huge_num_iters_with_a_message():
    rm, cm = torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="num_iters must be in"):
        torch.ops.fastlayers.sinkhorn_fwd(torch.randn(1, 2, 2), rm, cm, 0.1, 1 << 62, False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sinkhorn_reference_mode_noise_with_masks_matches_reference(dtype):
    b, n, m = 3, 5, 7
    x = torch.randn(b, n, m, dtype=dtype)
    rm = torch.rand(b, n) > 0.3
    cm = torch.rand(b, m) > 0.3
    rm[:, 0] = cm[:, 0] = True
    got = ops.sinkhorn(x, rm, cm, tau=0.5, num_iters=6, mode="reference", noise=0.7,
                       generator=torch.Generator().manual_seed(3))
    want = reference.align.sinkhorn(x, rm, cm, tau=0.5, num_iters=6, mode="reference", noise=0.7,
                                    generator=torch.Generator().manual_seed(3))
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_sinkhorn_reference_noise_touches_only_real_entries():
    # Noise then padding: the noisy reference is the noiseless one run on noisy logits, whatever noise the padded
    # entries drew (they are set to 0 after it).
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    rm = torch.tensor([[True, True, False, False], [True, True, True, True]])
    cm = torch.tensor([[True, True, True, False, False], [True, False, True, True, True]])
    noisy = x + 3.0 * reference.align.gumbel_noise(x.shape, x.dtype, x.device, torch.Generator().manual_seed(4))
    want = reference.align.sinkhorn(noisy, rm, cm, tau=0.5, num_iters=4, mode="reference")
    got = reference.align.sinkhorn(x, rm, cm, tau=0.5, num_iters=4, mode="reference", noise=3.0,
                                   generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["masked", "reference"])
@pytest.mark.parametrize("shape", [(2, 0, 4), (2, 4, 0), (0, 3, 4), (2, 0, 0)])
def test_sinkhorn_empty_inputs(mode, shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    p = ops.sinkhorn(x, num_iters=3, mode=mode)
    assert p.shape == shape
    p.sum().backward()
    assert x.grad.shape == shape


@pytest.mark.parametrize("reference_mode", [False, True])
def test_raw_sinkhorn_fwd_writes_every_lse_of_an_empty_side(reference_mode):
    for n, m in ((0, 5), (5, 0)):
        logits = torch.randn(2, n, m)
        rm, cm = torch.ones(2, n, dtype=torch.bool), torch.ones(2, m, dtype=torch.bool)
        P, rl, cl = torch.ops.fastlayers.sinkhorn_fwd(logits, rm, cm, 0.1, 3, reference_mode)
        assert P.shape == (2, n, m) and rl.shape == (2, 3, n) and cl.shape == (2, 3, m)
        # The outputs start as NaN (the poison fixture): an empty side's lse must still be written.
        assert torch.equal(rl, torch.zeros_like(rl)) and torch.equal(cl, torch.zeros_like(cl))


def test_raw_sinkhorn_checks_masks():
    logits = torch.randn(2, 3, 4)
    ok_r, ok_c = torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=_escape("sinkhorn: row_mask must be [B, N] = [2, 3], got shape [2, 2]")):
        torch.ops.fastlayers.sinkhorn_fwd(logits, ok_r[:, :2], ok_c, 0.1, 3, False)
    with pytest.raises(ValueError, match="sinkhorn_bwd: row_lse must be"):
        torch.ops.fastlayers.sinkhorn_bwd(logits, logits, ok_r, ok_c, torch.zeros(2, 3), torch.zeros(2, 1, 4), 0.1,
                                          False)


# ---- align: NaN propagation ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("which", ["hq", "hc", "P"])
@pytest.mark.parametrize("size", [(3, 5, 4), (130, 20, 8)])  # the fused kernel, then the GEMM path
def test_align_score_propagates_nan(dtype, which, size):
    n, m, d = size
    hq, hc, P = torch.randn(3, n, d, dtype=dtype), torch.randn(3, m, d, dtype=dtype), torch.rand(3, n, m, dtype=dtype)
    t = {"hq": hq, "hc": hc, "P": P}[which]
    t[1, 1, 2] = float("nan")
    got = ops.align_score(hq, hc, P)
    want = reference.align.align_score(hq.double(), hc.double(), P.double())
    assert want[1].isnan() and not want[[0, 2]].isnan().any()
    assert torch.equal(got.isnan(), want.isnan())
    torch.testing.assert_close(got.double(), want, equal_nan=True, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["masked", "reference"])
def test_sinkhorn_propagates_nan_like_reference(mode):
    # A NaN logit turns the reference's whole block (its pair's real entries; in reference mode all entries) into
    # NaN after one row and one column step; the scaled kernel's maxima and clamped exps must not hide it.
    g = torch.Generator().manual_seed(2)
    for trial in range(40):
        b, n, m = 3, 1 + trial % 5, 1 + (trial // 5) % 5
        x = torch.randn(b, n, m, dtype=torch.float64, generator=g)
        rm, cm = torch.rand(b, n, generator=g) > 0.3, torch.rand(b, m, generator=g) > 0.3
        x.view(-1)[int(torch.randint(0, x.numel(), (), generator=g))] = float("nan")
        a, c = x.clone().requires_grad_(), x.clone().requires_grad_()
        got = ops.sinkhorn(a, rm, cm, tau=0.3, num_iters=3, mode=mode)
        want = reference.align.sinkhorn(c, rm, cm, tau=0.3, num_iters=3, mode=mode)
        torch.testing.assert_close(got, want, equal_nan=True, rtol=1e-9, atol=1e-9)
        gp = torch.randn(got.shape, dtype=torch.float64, generator=g)
        (got * gp).sum().backward()
        (want * gp).sum().backward()
        torch.testing.assert_close(a.grad, c.grad, equal_nan=True, rtol=1e-7, atol=1e-7)


def _layer_case(n=37, d=10, hid=10, z=10, m1=20, m=20, e=90):
    g = torch.Generator().manual_seed(1)
    shapes = [(hid, 2 * d), (hid,), (z, hid), (z,), (m1, 2 * z), (m1,), (m, m1), (m,), (3 * d, m), (3 * d, d),
              (3 * d,), (3 * d,)]
    w = [torch.randn(s, dtype=torch.float64, generator=g) * 0.5 for s in shapes]
    h = torch.randn(n, d, dtype=torch.float64, generator=g)
    p = torch.randn(n, d, dtype=torch.float64, generator=g)
    ei = torch.stack([torch.randint(0, n, (e,), generator=g), torch.randint(0, n, (e,), generator=g)])
    mask = torch.rand(n, generator=g) > 0.2
    return h, p, ei, mask, w


_LAYER_SIZES = [dict(d=10, hid=10, z=10, m1=20, m=20), dict(d=3, hid=5, z=4, m1=7, m=6),
                dict(d=30, hid=70, z=9, m1=40, m=33)]


@pytest.mark.parametrize("sizes", _LAYER_SIZES)
@pytest.mark.parametrize("which", ["h", "partner"] + [f"w{i}" for i in range(12)])
def test_isonet_layer_propagates_nan_like_reference(sizes, which):
    h, p, ei, mask, w = _layer_case(**sizes)
    if which in ("h", "partner"):
        (h if which == "h" else p)[int(torch.nonzero(mask)[0]), 1] = float("nan")  # in a real node
    else:
        w[int(which[1:])].view(-1)[1] = float("nan")
    got = ops.isonet_layer(h, p, ei, mask, *w)
    want = reference.isonet_layer(h, p, ei, mask, *w)
    real = mask
    assert want[real].isnan().any()
    assert torch.equal(got[real].isnan(), want[real].isnan())
    torch.testing.assert_close(got[real], want[real], equal_nan=True, rtol=1e-9, atol=1e-9)
    assert torch.equal(got[~real], torch.zeros_like(got[~real]))  # padding rows are 0, NaN input or not


def test_isonet_layer_raw_op_checks_graph():
    out = _in_child("""
n, d = 5, 3
h = torch.randn(n, d)
shapes = [(4, 2 * d), (4,), (3, 4), (3,), (5, 6), (5,), (4, 5), (4,), (3 * d, 4), (3 * d, d), (3 * d,), (3 * d,)]
w = [torch.randn(s) for s in shapes]
mask = torch.ones(n, dtype=torch.bool)
rowptr = torch.tensor([0, 1, 2, 3, 4, 5])
def run(rp, col):
    return torch.ops.fastlayers.isonet_layer_fwd(h, None, None, None, False, rp, col, mask, *w)
expect(lambda: run(rowptr, torch.tensor([0, 1, 2, 3, 1 << 40])))
expect(lambda: run(rowptr, torch.tensor([0, 1, -7, 3, 4])))
expect(lambda: run(torch.tensor([0, 1, 2, 3, 4, 1 << 40]), torch.tensor([0, 1, 2, 3, 4])))
expect(lambda: run(torch.tensor([0, 3, 2, 3, 4, 5]), torch.tensor([0, 1, 2, 3, 4])))
expect(lambda: run(rowptr.int(), torch.tensor([0, 1, 2, 3, 4])))
g = torch.randn(n, d)
expect(lambda: torch.ops.fastlayers.isonet_layer_bwd(g, h, None, rowptr, torch.tensor([0, 1, 2, 9, 4]), mask,
                                                          *w))
""")
    lines = [ln for ln in out.splitlines() if ln.startswith(("RAISED", "NO ERROR"))]
    assert len(lines) == 6, out
    assert lines[0].startswith("RAISED IndexError") and "isonet_layer_fwd: col[4]" in lines[0], lines
    assert lines[1].startswith("RAISED IndexError") and "col[2] = -7" in lines[1], lines
    assert lines[2].startswith("RAISED ValueError") and "rowptr must run from 0 to E" in lines[2], lines
    assert lines[3].startswith("RAISED ValueError") and "rowptr must be non-decreasing" in lines[3], lines
    assert lines[4].startswith("RAISED TypeError") and "rowptr and col must be int64" in lines[4], lines
    assert lines[5].startswith("RAISED IndexError") and "isonet_layer_bwd: col[3] = 9" in lines[5], lines


# ---- eca -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_eca_checks_weight_for_every_input_dtype(dtype):
    x = torch.randn(2, 8, 4, 4).to(dtype)
    with pytest.raises(TypeError, match="weight must have a floating dtype, got torch.int64"):
        ops.eca(x, torch.ones(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=_escape("weight must be 1-D [k], got shape (1, 3)")):
        ops.eca(x, torch.ones(1, 3, dtype=dtype))
    with pytest.raises(ValueError, match="weight length k must be odd and positive, got 4"):
        ops.eca(x, torch.ones(4, dtype=dtype))


def test_raw_eca_checks_weight():
    x = torch.randn(2, 8, 4, 4)
    # ValueError from the raw stable-ABI op (csrc/common/errors.h); the public ops.eca raises TypeError
    with pytest.raises(ValueError, match="eca: weight must have a floating dtype, got Long"):
        torch.ops.fastlayers.eca_fwd(x, torch.ones(3, dtype=torch.int64), False)
    with pytest.raises(ValueError, match=_escape("eca: weight must be 1-D [k], got shape [1, 3]")):
        torch.ops.fastlayers.eca_fwd(x, torch.ones(1, 3), False)
    with pytest.raises(ValueError, match="eca: weight length k must be odd and positive, got 0"):
        torch.ops.fastlayers.eca_fwd(x, torch.ones(0), False)


@pytest.mark.skipif(not triton_available(), reason="needs triton")
def test_triton_launchers_check_arguments():
    from fastlayers.kernels import align as kalign
    from fastlayers.kernels import eca as keca
    from fastlayers.kernels import hyper as khyper

    x = torch.randn(2, 8, 4, 4)
    with pytest.raises(TypeError, match="eca_fwd: weight must have a floating dtype"):
        keca.eca_fwd(x, torch.ones(3, dtype=torch.int64), False)
    with pytest.raises(ValueError, match="eca_fwd: weight must be 1-D"):
        keca.eca_fwd(x, torch.ones(1, 3), False)
    logits = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=_escape("sinkhorn_fwd: col_mask must be [2, 4]")):
        kalign.sinkhorn_fwd(logits, torch.ones(2, 3, dtype=torch.bool), torch.ones(2, 3, dtype=torch.bool), 0.1, 3,
                            False)
    with pytest.raises(ValueError, match="align_score_fwd: hc must be"):
        kalign.align_score_fwd(torch.randn(2, 3, 4), torch.randn(2, 5, 3), torch.rand(2, 3, 5))
    with pytest.raises(ValueError, match="hyper_linear_fwd: weight rows must be a multiple of 4"):
        khyper.hyper_linear_fwd(torch.randn(2, 1, 3), torch.randn(2, 5), torch.randn(9, 5), None, None)
    with pytest.raises(ValueError, match="hyper_abs_linear_fwd: x must have I >= 1"):
        khyper.hyper_abs_linear_fwd(torch.randn(2, 1, 0), torch.randn(2, 5), torch.randn(0, 5), None)


# ---- hyper -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("tokens", [None, 3])
def test_interval_hyper_linear_with_no_input_features(tokens):
    b, h, o = 4, 5, 6
    xs = (b, 0) if tokens is None else (b, tokens, 0)
    x_c, x_r = torch.randn(xs, dtype=torch.float64), torch.rand(xs, dtype=torch.float64)
    phi_c, phi_r = torch.randn(b, h, dtype=torch.float64), torch.rand(b, h, dtype=torch.float64)
    weight, bias = torch.randn(o, h, dtype=torch.float64), torch.randn(o, dtype=torch.float64)
    y_c, y_r = ops.interval_hyper_linear(x_c, x_r, phi_c, phi_r, weight, bias)
    want_c, want_r = reference.hyper.interval_hyper_linear(x_c, x_r, phi_c, phi_r, weight, bias)
    out_shape = (b, o) if tokens is None else (b, tokens, o)
    assert y_c.shape == out_shape and y_r.shape == out_shape
    torch.testing.assert_close(y_c, want_c)
    torch.testing.assert_close(y_r, want_r)
    # With no inputs the output is the generated bias: weight phi + bias, its radius |weight| phi_r.
    torch.testing.assert_close(y_c.reshape(b, -1, o)[:, 0], phi_c @ weight.t() + bias)
    torch.testing.assert_close(y_r.reshape(b, -1, o)[:, 0], phi_r @ weight.abs().t())


def test_interval_hyper_linear_names_its_arguments():
    x, phi, w = torch.randn(2, 3), torch.randn(2, 4), torch.randn(8, 4)
    with pytest.raises(ValueError, match=_escape("x_c must be [B, I] or [B, T, I]")):
        ops.interval_hyper_linear(torch.randn(2, 3, 4, 5), torch.rand(2, 3, 4, 5), phi, phi.abs(), w)
    with pytest.raises(ValueError, match="phi_c has 3 rows but x_c has batch 2: one phi_c row per sample"):
        ops.interval_hyper_linear(x, x.abs(), torch.randn(3, 4), torch.rand(3, 4), w)
    with pytest.raises(TypeError, match="phi_c must be a torch.Tensor"):
        ops.interval_hyper_linear(x, x.abs(), [1.0], torch.rand(2, 4), w)
    with pytest.raises(ValueError, match="weight must have h = 4 columns .phi_c's width."):
        ops.interval_hyper_linear(x, x.abs(), phi, phi.abs(), torch.randn(8, 5))
    with pytest.raises(TypeError, match="phi_c has dtype torch.float64 but x_c has torch.float32"):
        ops.interval_hyper_linear(x, x.abs(), phi.double(), phi.abs().double(), w)
    with pytest.raises(ValueError, match="phi_r must have phi_c's shape"):
        ops.interval_hyper_linear(x, x.abs(), phi, torch.rand(2, 5), w)


def test_raw_hyper_abs_linear_refuses_no_input_features_clearly():
    with pytest.raises(ValueError, match="hyper_abs_linear: x must have I >= 1 input features"):
        torch.ops.fastlayers.hyper_abs_linear_fwd(torch.randn(2, 1, 0), torch.randn(2, 3), torch.randn(0, 3), None)


def test_hyper_linear_empty_batch_and_tokens():
    assert ops.hyper_linear(torch.randn(0, 4), torch.randn(0, 2), torch.randn(5 * 3, 2)).shape == (0, 3)
    assert ops.hyper_linear(torch.randn(2, 0, 3), torch.randn(2, 4), torch.randn(4 * 5, 4)).shape == (2, 0, 5)
