"""fastlayers.ops.isonet_layer (fused IsoNet++ node layer) against its eager reference."""

import pytest
import torch
from fastlayers import Graph
from fastlayers.ops import isonet_layer
from fastlayers.reference import isonet_layer as ref_isonet_layer


def _weights(d, hid, z, m1, m, dtype=torch.float64, scale=0.5):
    shapes = [(hid, 2 * d), (hid,), (z, hid), (z,), (m1, 2 * z), (m1,), (m, m1), (m,), (3 * d, m), (3 * d, d),
              (3 * d,), (3 * d,)]
    return [(torch.randn(s, dtype=dtype) * scale) for s in shapes]


def _case(n=37, d=10, hid=10, z=10, m1=20, m=20, e=90, dtype=torch.float64, partner=True):
    h = torch.randn(n, d, dtype=dtype)
    p = torch.randn(n, d, dtype=dtype) if partner else None
    src = torch.randint(0, n, (e,))
    dst = torch.randint(0, n, (e,))
    # A duplicate edge, a self loop, and a padding node (3) that sends into a real node (4).
    edge_index = torch.cat([torch.stack([src, dst]), torch.tensor([[src[0], 5, 3], [dst[0], 5, 4]])], 1)
    mask = torch.rand(n) > 0.3
    mask[3], mask[4] = False, True
    return h, p, edge_index, mask, _weights(d, hid, z, m1, m, dtype)


# Model sizes, then odd sizes (nothing a multiple of the vector width), then widths past the register kernels.
SIZES = [dict(d=10, hid=10, z=10, m1=20, m=20), dict(d=3, hid=5, z=4, m1=7, m=6), dict(d=30, hid=70, z=9, m1=40, m=33)]


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("partner", [True, False])
def test_matches_reference_float64(sizes, partner):
    h, p, ei, mask, w = _case(partner=partner, **sizes)
    out = isonet_layer(h, p, ei, mask, *w)
    want = ref_isonet_layer(h, p, ei, mask, *w)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-10)
    assert (out[~mask] == 0).all()
    assert (out[mask] != 0).any()


def test_matches_reference_float32_with_graph():
    h, p, ei, mask, w = _case(n=300, e=800, dtype=torch.float32)
    g = Graph.from_edge_index(ei, 300)
    out = isonet_layer(h, p, g, mask, *w)
    # The kernel folds consecutive Linears into one product: float32 rounding differs by a few ulps of the sums.
    torch.testing.assert_close(out, ref_isonet_layer(h, p, ei, mask, *w), rtol=1e-4, atol=1e-4)


def test_no_edges_and_no_nodes():
    h, p, _, mask, w = _case(n=9)
    empty = torch.zeros(2, 0, dtype=torch.int64)
    torch.testing.assert_close(isonet_layer(h, p, empty, mask, *w), ref_isonet_layer(h, p, empty, mask, *w))
    h0 = torch.zeros(0, 10, dtype=torch.float64)
    out = isonet_layer(h0, None, empty, torch.zeros(0, dtype=torch.bool), *w)
    assert out.shape == (0, 10)


@pytest.mark.parametrize("partner", [True, False])
def test_gradcheck(partner):
    h, p, ei, mask, w = _case(n=7, d=3, hid=4, z=3, m1=5, m=4, e=12, partner=partner)
    inputs = [t.requires_grad_() for t in [h] + ([p] if partner else []) + w]

    def f(*xs):
        hh, rest = xs[0], list(xs[1:])
        pp = rest.pop(0) if partner else None
        return isonet_layer(hh, pp, ei, mask, *rest)
    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("sizes", SIZES)
@pytest.mark.parametrize("partner", [True, False])
def test_gradients_match_reference(sizes, partner):
    # The CPU backward kernel (folded form, per-node factors + GEMMs) against autograd through the reference.
    h, p, ei, mask, w = _case(dtype=torch.float64, partner=partner, **sizes)
    leaves = [t.requires_grad_() for t in [h] + ([p] if partner else []) + w]
    g = torch.randn(h.shape, dtype=torch.float64)

    def run(layer):
        pp = leaves[1] if partner else None
        return torch.autograd.grad(layer(leaves[0], pp, ei, mask, *leaves[-12:]), leaves, g)

    for a, b in zip(run(isonet_layer), run(ref_isonet_layer)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
        assert b.abs().sum() > 0


@pytest.mark.parametrize("transpose", [False, True])
def test_transport_gradients_match_reference_float32(transpose):
    h, ei, mask, w, P, other = _transport_case(transpose=transpose, dtype=torch.float32)
    leaves = [t.requires_grad_() for t in [h, P, other] + w]
    g = torch.randn(h.shape)

    def run(layer):
        out = layer(leaves[0], None, ei, mask, *leaves[3:], P=leaves[1], other=leaves[2], transpose=transpose)
        return torch.autograd.grad(out, leaves, g)

    for a, b in zip(run(isonet_layer), run(ref_isonet_layer)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
        assert b.abs().sum() > 0


def test_opcheck():
    h, p, ei, mask, w = _case(n=11, d=3, hid=4, z=3, m1=5, m=4, e=20)
    g = Graph.from_edge_index(ei, 11)
    h.requires_grad_()
    for partner in (p.requires_grad_(), None):
        torch.library.opcheck(torch.ops.fastlayers.isonet_layer_fwd,
                              (h, partner, None, None, False, g.rowptr, g.col, mask, *w))


def _transport_case(b=5, n=7, n_o=6, transpose=False, dtype=torch.float64, **sizes):
    h, _, ei, mask, w = _case(n=b * n, e=3 * b * n, dtype=dtype, **sizes)
    d = h.shape[1]
    P = torch.rand((b, n_o, n) if transpose else (b, n, n_o), dtype=dtype)
    other = torch.randn(b * n_o, d, dtype=dtype)
    return h, ei, mask, w, P, other


@pytest.mark.parametrize("transpose", [False, True])
@pytest.mark.parametrize("sizes", SIZES[:2])
def test_transport_partner_matches_reference(transpose, sizes):
    h, ei, mask, w, P, other = _transport_case(transpose=transpose, **sizes)
    out = isonet_layer(h, None, ei, mask, *w, P=P, other=other, transpose=transpose)
    torch.testing.assert_close(out, ref_isonet_layer(h, None, ei, mask, *w, P=P, other=other, transpose=transpose),
                               rtol=1e-10, atol=1e-10)
    # The same as handing the layer the transported partner itself.
    Pt = P.transpose(1, 2) if transpose else P
    partner = torch.bmm(Pt, other.view(Pt.shape[0], Pt.shape[2], -1)).reshape(h.shape)
    torch.testing.assert_close(out, isonet_layer(h, partner, ei, mask, *w), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("transpose", [False, True])
def test_transport_gradcheck_and_opcheck(transpose):
    h, ei, mask, w, P, other = _transport_case(b=2, n=4, n_o=3, transpose=transpose, d=3, hid=4, z=3, m1=5, m=4)
    inputs = [t.requires_grad_() for t in [h, P, other] + w]

    def f(hh, pp, oo, *ws):
        return isonet_layer(hh, None, ei, mask, *ws, P=pp, other=oo, transpose=transpose)
    assert torch.autograd.gradcheck(f, inputs)
    g = Graph.from_edge_index(ei, h.shape[0])
    torch.library.opcheck(torch.ops.fastlayers.isonet_layer_fwd,
                          (h, None, P, other, transpose, g.rowptr, g.col, mask, *w))


def test_transport_bad_arguments():
    h, ei, mask, w, P, other = _transport_case()
    with pytest.raises(ValueError, match="either partner or P"):
        isonet_layer(h, h, ei, mask, *w, P=P, other=other)
    with pytest.raises(ValueError, match="pass P too"):
        isonet_layer(h, None, ei, mask, *w, other=other)
    with pytest.raises(ValueError, match="P must be 3-D"):
        isonet_layer(h, None, ei, mask, *w, P=P[0], other=other)
    with pytest.raises(ValueError, match="h must have B \\* n = 5 \\* 6 rows"):
        isonet_layer(h, None, ei, mask, *w, P=P, other=other, transpose=True)
    with pytest.raises(ValueError, match=r"other must have shape \[30, 10\]"):
        isonet_layer(h, None, ei, mask, *w, P=P, other=other[:-1])
    with pytest.raises(TypeError, match="P must have h's dtype"):
        isonet_layer(h, None, ei, mask, *w, P=P.float(), other=other)
    with pytest.raises(TypeError, match="transpose must be a bool"):
        isonet_layer(h, None, ei, mask, *w, P=P, other=other, transpose=1)


def test_bad_arguments():
    h, p, ei, mask, w = _case(n=8)
    with pytest.raises(ValueError, match="h must be 2-D"):
        isonet_layer(h[None], p, ei, mask, *w)
    with pytest.raises(TypeError, match="h must have a floating dtype"):
        isonet_layer(h.long(), p, ei, mask, *w)
    with pytest.raises(ValueError, match="partner must have h's shape"):
        isonet_layer(h, p[:-1], ei, mask, *w)
    with pytest.raises(TypeError, match="partner must have h's dtype"):
        isonet_layer(h, p.float(), ei, mask, *w)
    with pytest.raises(TypeError, match="mask must be a bool"):
        isonet_layer(h, p, ei, mask.float(), *w)
    with pytest.raises(ValueError, match=r"mask must have shape \[8\]"):
        isonet_layer(h, p, ei, mask[:-1], *w)
    with pytest.raises(ValueError, match="the graph has 9 nodes"):
        isonet_layer(h, p, Graph.from_edge_index(ei, 9), mask, *w)
    with pytest.raises(ValueError, match="larger than the largest node id"):
        isonet_layer(h, p, ei + 8, mask, *w)
    bad = list(w)
    bad[4] = w[4][:, :-1]
    with pytest.raises(ValueError, match=r"msg_w1 must have shape \[20, 20\]"):
        isonet_layer(h, p, ei, mask, *bad)
    bad = list(w)
    bad[9] = w[9].float()
    with pytest.raises(TypeError, match="w_hh must have h's dtype"):
        isonet_layer(h, p, ei, mask, *bad)


def test_non_contiguous_inputs():
    h, p, ei, mask, w = _case()
    # Column-major copies: same values, strides the kernel must not assume away.
    hn, pn = h.t().contiguous().t(), p.t().contiguous().t()
    wn = [t.t().contiguous().t() if t.dim() == 2 else t for t in w]
    assert not hn.is_contiguous() and not wn[0].is_contiguous()
    torch.testing.assert_close(isonet_layer(hn, pn, ei, mask, *wn), ref_isonet_layer(h, p, ei, mask, *w),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("transpose", [None, False, True])
def test_folded_formulation_matches_reference(transpose):
    # _folded_layer is the backward's recompute on devices without the C++ kernel (CUDA): checked here on the CPU,
    # values and gradients, for an explicit partner and for the transport in both directions.
    from fastlayers.ops.isonet_layer import _folded_layer

    h, ei, mask, w, P, other = _transport_case(transpose=bool(transpose))
    p = torch.randn(h.shape, dtype=h.dtype) if transpose is None else None
    P, other = (None, None) if transpose is None else (P, other)
    g = Graph.from_edge_index(ei, h.shape[0])
    deg = g.rowptr.diff()
    dst = torch.repeat_interleave(torch.arange(h.shape[0]), deg)
    leaves = [t.requires_grad_() for t in [h] + [x for x in (p, P, other) if x is not None] + w]

    def args():
        it = iter(leaves[1:-12])
        pp = next(it) if p is not None else None
        PP, oo = (next(it), next(it)) if P is not None else (None, None)
        return leaves[0], pp, PP, oo

    hh, pp, PP, oo = args()
    got = _folded_layer(hh, pp, PP, oo, bool(transpose), g.col, dst, deg.to(h.dtype), mask, *leaves[-12:])
    want = ref_isonet_layer(hh, pp, ei, mask, *leaves[-12:], P=PP, other=oo, transpose=bool(transpose))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    gr = torch.randn(h.shape, dtype=h.dtype)
    for a, b in zip(torch.autograd.grad(got, leaves, gr), torch.autograd.grad(want, leaves, gr)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
