"""Alignment refinement: Sinkhorn, hinge score and partner transport (C++ CPU kernels, Triton through the
interpreter here, CUDA under -m cuda) against the eager reference of the published loop."""

import pytest
import torch
from fastlayers import reference
from fastlayers.ops import align_score, partner, sinkhorn

from .conftest import triton_available, triton_launchers

needs_triton = pytest.mark.skipif(not triton_available(), reason="triton not installed")
F64 = torch.float64


def _masks(kind, b, n, m, g=None):
    """Mask patterns: None (all real), prefix (graph sizes, as the loaders pad), random, and degenerate pairs."""
    if kind == "none":
        return None, None
    if kind == "prefix":
        rn = torch.randint(1, n + 1, (b,), generator=g)
        cn = torch.randint(1, m + 1, (b,), generator=g)
        return torch.arange(n) < rn[:, None], torch.arange(m) < cn[:, None]
    rm = torch.rand(b, n, generator=g) > 0.3
    cm = torch.rand(b, m, generator=g) > 0.3
    if kind == "degenerate":
        rm[0] = False  # a pair with no real row
        cm[1] = False  # a pair with no real column
        rm[2] = True
        cm[2] = False
        cm[2, 0] = True  # a single real column
    return rm, cm


MASKS = ["none", "prefix", "random", "degenerate"]
MODES = ["masked", "reference"]


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(4, 6, 6), (3, 5, 9), (3, 9, 4), (3, 1, 7), (3, 20, 20)])
@pytest.mark.parametrize("iters", [1, 3, 20])
def test_forward_matches_reference_float64(mask, mode, shape, iters):
    b, n, m = shape
    x = torch.randn(shape, dtype=F64) * 3
    rm, cm = _masks(mask, b, n, m)
    P = sinkhorn(x, rm, cm, tau=0.1, num_iters=iters, mode=mode)
    ref = reference.sinkhorn(x, rm, cm, tau=0.1, num_iters=iters, mode=mode)
    assert not torch.isnan(P).any()
    torch.testing.assert_close(P, ref, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(4, 6, 6), (3, 5, 9), (3, 9, 4)])
def test_backward_matches_reference_float64(mask, mode, shape):
    b, n, m = shape
    x = (torch.randn(shape, dtype=F64) * 3).requires_grad_()
    rm, cm = _masks(mask, b, n, m)
    g = torch.randn(shape, dtype=F64)
    (gx,) = torch.autograd.grad(sinkhorn(x, rm, cm, num_iters=7, mode=mode), x, g)
    (rx,) = torch.autograd.grad(reference.sinkhorn(x, rm, cm, num_iters=7, mode=mode), x, g)
    assert not torch.isnan(gx).any()
    torch.testing.assert_close(gx, rx, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tau", [0.1, 1.0])
def test_gradcheck(mode, tau):
    x = torch.randn(3, 4, 5, dtype=F64, requires_grad=True)
    rm, cm = _masks("random", 3, 4, 5)
    assert torch.autograd.gradcheck(lambda a: sinkhorn(a, rm, cm, tau=tau, num_iters=5, mode=mode), (x,))


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_through_rebases(mode):
    # A column 30 below the rest is 300 below after tau: its log-scale passes the float64 rebase bound (100) in
    # the forward, and the backward's scales against the final potentials pass it on the way back.
    x = torch.randn(2, 4, 5, dtype=F64)
    x[:, :, 1] -= 30
    x.requires_grad_()
    rm, cm = _masks("none", 2, 4, 5)
    assert torch.autograd.gradcheck(lambda a: sinkhorn(a, rm, cm, tau=0.1, num_iters=6, mode=mode), (x,))


def test_masked_equals_unpadded_problem():
    # mode="masked" must solve each pair's real sub-problem as if it had never been padded.
    x = torch.randn(3, 8, 10, dtype=F64)
    sizes = [(5, 7), (8, 10), (2, 9)]
    rm = torch.zeros(3, 8, dtype=torch.bool)
    cm = torch.zeros(3, 10, dtype=torch.bool)
    for k, (n, m) in enumerate(sizes):
        rm[k, :n] = True
        cm[k, :m] = True
    P = sinkhorn(x, rm, cm)
    for k, (n, m) in enumerate(sizes):
        alone = sinkhorn(x[k : k + 1, :n, :m].contiguous())
        torch.testing.assert_close(P[k : k + 1, :n, :m], alone, rtol=1e-12, atol=1e-13)
        assert torch.all(P[k, n:] == 0) and torch.all(P[k, :, m:] == 0)


def test_masked_padding_is_zero_and_columns_normalised():
    x = torch.randn(4, 7, 7, dtype=F64)
    rm, cm = _masks("random", 4, 7, 7)
    P = sinkhorn(x, rm, cm, num_iters=20)
    valid = rm[:, :, None] & cm[:, None, :]
    assert torch.all(P[~valid] == 0)
    # The last half-step normalises columns: every real column of a pair with a real row sums to 1.
    col = P.sum(1)
    has_row = rm.any(1, keepdim=True).expand_as(cm)
    torch.testing.assert_close(col[cm & has_row], torch.ones_like(col[cm & has_row]))


def test_fully_masked_gives_zeros_not_nan():
    x = torch.randn(2, 5, 6, requires_grad=True)
    rm = torch.zeros(2, 5, dtype=torch.bool)
    cm = torch.ones(2, 6, dtype=torch.bool)
    P = sinkhorn(x, rm, cm)
    assert torch.all(P == 0)
    (g,) = torch.autograd.grad(P.sum(), x)
    assert torch.all(g == 0)


def test_reference_mode_ignores_padded_logits():
    # The op itself sets padded logits to 0: whatever the caller left there changes neither P nor gradients.
    x = torch.randn(3, 6, 6, dtype=F64)
    rm, cm = _masks("prefix", 3, 6, 6)
    valid = rm[:, :, None] & cm[:, None, :]
    y = torch.where(valid, x, torch.randn_like(x) * 100)
    xa = x.clone().requires_grad_()
    ya = y.clone().requires_grad_()
    Pa = sinkhorn(xa, rm, cm, mode="reference")
    Pb = sinkhorn(ya, rm, cm, mode="reference")
    torch.testing.assert_close(Pa, Pb, rtol=0, atol=0)
    assert Pa[~valid].abs().sum() > 0, "reference padding keeps mass"
    g = torch.randn_like(x)
    (gb,) = torch.autograd.grad(Pb, ya, g)
    assert torch.all(gb[~valid] == 0)


def test_sharp_logits_and_underflowing_columns():
    # tau = 0.01 on logits of size 10 spans thousands in the exponent; column 0 sits far below every row max and
    # row 1 far below every column max, so their normalisations need the kernel's underflow fallbacks.
    x = torch.randn(3, 6, 6, dtype=F64) * 10
    x[:, :, 0] -= 1000
    x[:, 1, :] -= 1000
    for tau in (0.01, 0.1):
        P = sinkhorn(x, tau=tau)
        torch.testing.assert_close(P, reference.sinkhorn(x, tau=tau), rtol=1e-9, atol=1e-10)
    P32 = sinkhorn(x.float(), tau=0.1)
    assert torch.isfinite(P32).all()
    torch.testing.assert_close(P32.double(), reference.sinkhorn(x, tau=0.1), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("scale", [1, 5, 30])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("iters", [20, 100])
def test_rebases_and_line_fallbacks_match_reference(dtype, scale, mode, iters):
    # The CPU kernel iterates in scaling form (K = exp(x0 - alpha - beta) and per-line scales): logits / tau
    # spanning +-30 .. +-900 with a column and a row pushed far below (and a row far above) the rest move the
    # potentials by hundreds, so the kernel must rebase K in forward and backward and redo underflowing line sums
    # in the log domain; 100 iterations check that nothing drifts.
    b, n, m = 6, 11, 19
    x = torch.randn(b, n, m, dtype=F64) * scale
    x[:, :, 2] -= 8 * scale
    x[:, 3, :] -= 8 * scale
    x[:, 5, :] += 4 * scale
    rm, cm = _masks("random", b, n, m)
    g = torch.randn_like(x)
    xr = x.clone().requires_grad_()
    ref = reference.sinkhorn(xr, rm, cm, tau=0.1, num_iters=iters, mode=mode)
    (gref,) = torch.autograd.grad(ref, xr, g)
    xs = x.to(dtype).requires_grad_()
    P = sinkhorn(xs, rm, cm, tau=0.1, num_iters=iters, mode=mode)
    (gx,) = torch.autograd.grad(P, xs, g.to(dtype))
    assert torch.isfinite(P).all() and torch.isfinite(gx).all()
    p_tol = dict(rtol=1e-9, atol=1e-10) if dtype == F64 else dict(rtol=0, atol=5e-4)
    g_tol = dict(rtol=1e-9, atol=1e-10) if dtype == F64 else dict(rtol=0, atol=2e-3)
    torch.testing.assert_close(P.double(), ref.detach(), **p_tol)
    torch.testing.assert_close(gx.double(), gref, **g_tol)


@pytest.mark.parametrize("mode", MODES)
def test_float32_matches_float64_reference(mode):
    x = torch.randn(64, 20, 20, dtype=F64) * 2
    rm, cm = _masks("prefix", 64, 20, 20)
    P = sinkhorn(x.float(), rm, cm, mode=mode)
    torch.testing.assert_close(P.double(), reference.sinkhorn(x, rm, cm, mode=mode), rtol=1e-4, atol=1e-5)
    xf = x.float().requires_grad_()
    xd = x.clone().requires_grad_()
    g = torch.randn_like(x)
    (gf,) = torch.autograd.grad(sinkhorn(xf, rm, cm, mode=mode), xf, g.float())
    (gd,) = torch.autograd.grad(reference.sinkhorn(xd, rm, cm, mode=mode), xd, g)
    torch.testing.assert_close(gf.double(), gd, rtol=2e-3, atol=2e-3)


def test_noise_matches_reference_draws():
    x = torch.randn(3, 5, 5, dtype=F64)
    P = sinkhorn(x, noise=0.5, generator=torch.Generator().manual_seed(7))
    ref = reference.sinkhorn(x, noise=0.5, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(P, ref)
    assert (P - sinkhorn(x)).abs().max() > 1e-3


def test_non_contiguous_and_deterministic():
    x = torch.randn(4, 9, 7, dtype=F64).transpose(1, 2)
    P = sinkhorn(x)
    torch.testing.assert_close(P, reference.sinkhorn(x))
    xf = torch.randn(33, 20, 20, requires_grad=True)
    g = torch.randn(33, 20, 20)
    a = torch.autograd.grad(sinkhorn(xf), xf, g)[0]
    b = torch.autograd.grad(sinkhorn(xf), xf, g)[0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(0, 5, 5), (2, 0, 5), (2, 5, 0)])
def test_empty(shape):
    x = torch.randn(shape, requires_grad=True)
    P = sinkhorn(x)
    assert P.shape == x.shape
    P.sum().backward()
    assert x.grad.shape == x.shape


@pytest.mark.parametrize("mode", [False, True])
def test_opcheck_sinkhorn(mode):
    x = torch.randn(3, 4, 5, dtype=F64, requires_grad=True)
    rm, cm = _masks("random", 3, 4, 5)
    torch.library.opcheck(torch.ops.fastlayers.sinkhorn_fwd, (x, rm, cm, 0.1, 3, mode))
    P, rl, cl = torch.ops.fastlayers.sinkhorn_fwd(x.detach(), rm, cm, 0.1, 3, mode)
    torch.library.opcheck(torch.ops.fastlayers.sinkhorn_bwd, (torch.randn_like(P), x.detach(), rm, cm, rl, cl, 0.1,
                                                              mode))


# ---- hinge score and partner transport ---------------------------------------------------------------------


def _transport_inputs(b=4, n=6, m=8, d=5, dtype=F64):
    hq = torch.randn(b, n, d, dtype=dtype)
    hc = torch.randn(b, m, d, dtype=dtype)
    P = sinkhorn(torch.randn(b, n, m, dtype=dtype))
    return hq, hc, P


@pytest.mark.parametrize("shape", [(4, 6, 8, 5), (3, 20, 20, 10), (2, 1, 3, 1)])
def test_align_score_matches_reference(shape):
    hq, hc, P = _transport_inputs(*shape)
    torch.testing.assert_close(align_score(hq, hc, P), reference.align_score(hq, hc, P), rtol=1e-12, atol=1e-12)
    xs = [t.clone().requires_grad_() for t in (hq, hc, P)]
    rs = [t.clone().requires_grad_() for t in (hq, hc, P)]
    g = torch.randn(hq.shape[0], dtype=F64)
    ours = torch.autograd.grad(align_score(*xs), xs, g)
    ref = torch.autograd.grad(reference.align_score(*rs), rs, g)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("shape", [(5, 13, 7, 1), (4, 9, 17, 17), (3, 20, 20, 33), (2, 3, 1, 8), (3, 130, 20, 10),
                                   (2, 20, 20, 70)])
def test_align_score_kernel_shapes(dtype, shape):
    # Row counts off the kernel's 8/4-row blocks, D across one and several vectors (float lanes 16, double 8), and
    # sizes past the fused kernel's limits (N > 128, D > 64), which take the GEMM path.
    b, n, m, d = shape
    hq = torch.randn(b, n, d, dtype=F64)
    hc = torch.randn(b, m, d, dtype=F64)
    P = torch.rand(b, n, m, dtype=F64)
    g = torch.randn(b, dtype=F64)
    rs = [t.clone().requires_grad_() for t in (hq, hc, P)]
    ref_s = reference.align_score(*rs)
    ref = torch.autograd.grad(ref_s, rs, g)
    xs = [t.to(dtype).requires_grad_() for t in (hq, hc, P)]
    s = align_score(*xs)
    ours = torch.autograd.grad(s, xs, g.to(dtype))
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == F64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s.double(), ref_s.detach(), **tol)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a.double(), r, **tol)


def test_align_score_non_contiguous():
    hq = torch.randn(3, 10, 6, dtype=F64).transpose(1, 2)  # [3, 6, 10]
    hc = torch.randn(3, 10, 7, dtype=F64).transpose(1, 2)  # [3, 7, 10]
    P = torch.rand(3, 7, 6, dtype=F64).transpose(1, 2)  # [3, 6, 7]
    xs = [t.clone().requires_grad_() for t in (hq, hc, P)]
    rs = [t.clone().requires_grad_() for t in (hq, hc, P)]
    torch.testing.assert_close(align_score(*xs), reference.align_score(*rs))
    ours = torch.autograd.grad(align_score(*xs).sum(), xs)
    for a, r in zip(ours, torch.autograd.grad(reference.align_score(*rs).sum(), rs)):
        torch.testing.assert_close(a, r)


def test_align_score_relu_tie_has_zero_gradient_like_torch():
    # Padded query rows (hq = 0, P row = 0) give R = 0 exactly: torch's ReLU passes no gradient there.
    hq, hc, P = _transport_inputs()
    hq[:, -2:] = 0
    P[:, -2:] = 0
    xs = [t.clone().requires_grad_() for t in (hq, hc, P)]
    rs = [t.clone().requires_grad_() for t in (hq, hc, P)]
    ours = torch.autograd.grad(align_score(*xs).sum(), xs)
    ref = torch.autograd.grad(reference.align_score(*rs).sum(), rs)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    assert torch.all(ours[0][:, -2:] == 0)


@pytest.mark.parametrize("shape", [(4, 6, 8, 5), (3, 20, 20, 10)])
def test_partner_matches_reference(shape):
    hq, hc, P = _transport_inputs(*shape)
    for a, r in zip(partner(P, hq, hc), reference.partner(P, hq, hc)):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)
    xs = [t.clone().requires_grad_() for t in (P, hq, hc)]
    rs = [t.clone().requires_grad_() for t in (P, hq, hc)]
    gq, gc = torch.randn_like(hq), torch.randn_like(hc)
    ours = torch.autograd.grad(partner(*xs), xs, (gq, gc))
    ref = torch.autograd.grad(reference.partner(*rs), rs, (gq, gc))
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


def test_partner_one_output_used():
    hq, hc, P = _transport_inputs()
    xs = [t.clone().requires_grad_() for t in (P, hq, hc)]
    rs = [t.clone().requires_grad_() for t in (P, hq, hc)]
    ours = torch.autograd.grad(partner(*xs)[1].sum(), xs)
    # P^T hq does not involve hc: its gradient is zero.
    ref = torch.autograd.grad(reference.partner(*rs)[1].sum(), rs, allow_unused=True, materialize_grads=True)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r)
    assert torch.all(ours[2] == 0)


def test_transport_gradcheck():
    hq, hc, P = _transport_inputs(2, 3, 4, 3)
    xs = [t.clone().requires_grad_() for t in (hq, hc, P)]
    assert torch.autograd.gradcheck(align_score, xs)
    assert torch.autograd.gradcheck(lambda p, q, c: partner(p, q, c), [xs[2], xs[0], xs[1]])


def test_transport_opcheck_and_empty():
    hq, hc, P = _transport_inputs(3, 4, 5, 2)
    xs = [t.clone().requires_grad_() for t in (hq, hc, P)]
    torch.library.opcheck(torch.ops.fastlayers.align_score_fwd, tuple(xs))
    torch.library.opcheck(torch.ops.fastlayers.align_score_bwd, (torch.randn(3, dtype=F64), hq, hc, P))
    torch.library.opcheck(torch.ops.fastlayers.partner_fwd, (xs[2], xs[0], xs[1]))
    torch.library.opcheck(torch.ops.fastlayers.partner_bwd, (torch.randn_like(hq), torch.randn_like(hc), P, hq, hc))
    e = _transport_inputs(0, 4, 5, 2)
    assert align_score(*e).shape == (0,)
    z = torch.zeros(2, 3, 0)
    s = align_score(z, torch.zeros(2, 4, 0), torch.rand(2, 3, 4))
    assert torch.equal(s, torch.zeros(2))


# ---- bad input --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, kw, exc, match",
    [
        ((torch.randn(4, 5),), {}, ValueError, "logits must be 3-D"),
        ((torch.randn(2, 3, 4, 5),), {}, ValueError, "logits must be 3-D"),
        (([1.0],), {}, TypeError, "logits must be a torch.Tensor"),
        ((torch.ones(2, 3, 3, dtype=torch.int64),), {}, TypeError, "logits must have a floating"),
        ((torch.randn(2, 3, 4), torch.ones(2, 4, dtype=torch.bool)), {}, ValueError, r"row_mask must have shape \[2, 3\]"),
        ((torch.randn(2, 3, 4), None, torch.ones(2, 3, dtype=torch.bool)), {}, ValueError,
         r"col_mask must have shape \[2, 4\]"),
        ((torch.randn(2, 3, 4), torch.ones(2, 3)), {}, TypeError, "row_mask must be a bool"),
        ((torch.randn(2, 3, 4),), {"tau": 0.0}, ValueError, "tau must be"),
        ((torch.randn(2, 3, 4),), {"tau": -1.0}, ValueError, "tau must be"),
        ((torch.randn(2, 3, 4),), {"num_iters": 0}, ValueError, "num_iters must be"),
        ((torch.randn(2, 3, 4),), {"num_iters": 2.5}, ValueError, "num_iters must be"),
        ((torch.randn(2, 3, 4),), {"mode": "padded"}, ValueError, "mode must be"),
        ((torch.randn(2, 3, 4),), {"noise": -0.1}, ValueError, "noise must be"),
    ],
)
def test_sinkhorn_bad_input(args, kw, exc, match):
    with pytest.raises(exc, match=match):
        sinkhorn(*args, **kw)


@pytest.mark.parametrize(
    "hq, hc, P, exc, match",
    [
        (torch.randn(2, 3), torch.randn(2, 4, 5), torch.rand(2, 3, 4), ValueError, "hq must be 3-D"),
        (torch.randn(2, 3, 5), torch.randn(2, 4, 5), torch.rand(2, 4, 4), ValueError, "hq must be"),
        (torch.randn(2, 3, 5), torch.randn(2, 4, 6), torch.rand(2, 3, 4), ValueError, "hc must be"),
        (torch.randn(2, 3, 5), torch.randn(2, 4, 5).double(), torch.rand(2, 3, 4), TypeError, "share a dtype"),
    ],
)
def test_transport_bad_input(hq, hc, P, exc, match):
    with pytest.raises(exc, match=match):
        align_score(hq, hc, P)
    with pytest.raises(exc, match=match):
        partner(P, hq, hc)


# ---- Triton kernels (interpreter on CPU) --------------------------------------------------------------------


@needs_triton
@pytest.mark.parametrize("mode", [False, True])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_triton_sinkhorn_matches_reference_and_cpu(mode, dtype):
    tk = triton_launchers("align")

    x = torch.randn(4, 5, 7, dtype=dtype) * 3
    rm, cm = _masks("degenerate", 4, 5, 7)
    name = "reference" if mode else "masked"
    tol = dict(rtol=1e-11, atol=1e-12) if dtype == F64 else dict(rtol=1e-4, atol=1e-5)
    P, rl, cl = tk.sinkhorn_fwd(x, rm, cm, 0.1, 6, mode)
    torch.testing.assert_close(P, reference.sinkhorn(x, rm, cm, 0.1, 6, name), **tol)
    _Pc, rlc, clc = torch.ops.fastlayers.sinkhorn_fwd(x, rm, cm, 0.1, 6, mode)
    torch.testing.assert_close(rl, rlc, **tol)
    torch.testing.assert_close(cl, clc, **tol)
    g = torch.randn_like(x)
    xr = x.clone().requires_grad_()
    (rx,) = torch.autograd.grad(reference.sinkhorn(xr, rm, cm, 0.1, 6, name), xr, g)
    torch.testing.assert_close(tk.sinkhorn_bwd(g, x, rm, cm, rl, cl, 0.1, mode), rx, **tol)


@needs_triton
def test_triton_sinkhorn_rejects_large_pairs():
    tk = triton_launchers("align")

    m = torch.ones(1, 65, dtype=torch.bool)
    with pytest.raises(ValueError, match="N, M <= 64"):
        tk.sinkhorn_fwd(torch.randn(1, 65, 65), m, m, 0.1, 1, False)


@needs_triton
@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("nmd", [(5, 6, 3), (40, 64, 33), (64, 17, 64)])
def test_triton_transport_matches_reference(dtype, nmd):
    """Small pairs, and pairs whose products take several 16-wide chunks along each of N, M and D."""
    tk = triton_launchers("align")

    hq, hc, P = _transport_inputs(3, *nmd, dtype=dtype)
    tol = dict(rtol=1e-11, atol=1e-11) if dtype == F64 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(tk.align_score_fwd(hq, hc, P), reference.align_score(hq, hc, P), **tol)
    for a, r in zip(tk.partner_fwd(P, hq, hc), reference.partner(P, hq, hc)):
        torch.testing.assert_close(a, r, **tol)
    gs = torch.randn(3, dtype=dtype)
    rs = [t.clone().requires_grad_() for t in (hq, hc, P)]
    for a, r in zip(tk.align_score_bwd(gs, hq, hc, P), torch.autograd.grad(reference.align_score(*rs), rs, gs)):
        torch.testing.assert_close(a, r, **tol)
    gq, gc = torch.randn_like(hq), torch.randn_like(hc)
    rs = [t.clone().requires_grad_() for t in (P, hq, hc)]
    ref = torch.autograd.grad(reference.partner(*rs), rs, (gq, gc))
    for a, r in zip(tk.partner_bwd(gq, gc, P, hq, hc), ref):
        torch.testing.assert_close(a, r, **tol)


# ---- CUDA (run by benchmarks/device_check.sh) ----------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n", [20, 64])
def test_cuda_sinkhorn_matches_reference(mode, n):
    x = torch.randn(128, n, n, device="cuda", dtype=F64) * 3
    rm, cm = _masks("prefix", 128, n, n)
    rm, cm = rm.cuda(), cm.cuda()
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    # tau = 0.3: 1 / tau is not a float32 value, so a float64 scalar that reached the kernel as float32 fails here.
    P = sinkhorn(xa, rm, cm, tau=0.3, mode=mode)
    ref = reference.sinkhorn(xb, rm, cm, tau=0.3, mode=mode)
    torch.testing.assert_close(P, ref, rtol=1e-9, atol=1e-10)
    g = torch.randn_like(x)
    torch.testing.assert_close(torch.autograd.grad(P, xa, g)[0], torch.autograd.grad(ref, xb, g)[0], rtol=1e-7,
                               atol=1e-8)
    torch.library.opcheck(torch.ops.fastlayers.sinkhorn_fwd, (xa[:4], rm[:4], cm[:4], 0.1, 3, mode == "reference"))


@pytest.mark.cuda
def test_cuda_transport_gradcheck():
    hq, hc, P = (t.cuda() for t in _transport_inputs(2, 3, 4, 3))
    xs = [t.clone().requires_grad_() for t in (hq, hc, P)]
    assert torch.autograd.gradcheck(align_score, xs)
    assert torch.autograd.gradcheck(lambda p, q, c: partner(p, q, c), [xs[2], xs[0], xs[1]])


@pytest.mark.slow
@pytest.mark.compiler
def test_torch_compile_fullgraph():
    def f(x, rm, cm, hq, hc):
        P = sinkhorn(x, rm, cm, num_iters=5)
        qp, _ = partner(P, hq, hc)
        return align_score(qp, hc, P)

    x = torch.randn(3, 4, 5, requires_grad=True)
    rm, cm = _masks("random", 3, 4, 5)
    hq, hc = torch.randn(3, 4, 2), torch.randn(3, 5, 2)
    compiled = torch.compile(f, fullgraph=True)
    out = compiled(x, rm, cm, hq, hc)
    torch.testing.assert_close(out, f(x, rm, cm, hq, hc))
    (g,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(g, torch.autograd.grad(f(x, rm, cm, hq, hc).sum(), x)[0])


@pytest.mark.cuda
def test_cuda_large_pairs_fall_back_to_reference():
    x = torch.randn(2, 70, 66, device="cuda", dtype=F64)
    torch.testing.assert_close(sinkhorn(x), reference.sinkhorn(x))
