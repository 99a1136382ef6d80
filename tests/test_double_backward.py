"""Second derivatives (backward of backward, create_graph=True) through every differentiable op.

Ops whose backward is written in differentiable terms are checked by gradgradcheck in float64 and against the same
second derivative taken through the plain-PyTorch reference. The others must refuse: a clear error naming the op
at the moment a second derivative reaches it, never a silently wrong number, and no change to first order.
"""

import re
import warnings

import pytest
import torch
from fastlayers import Graph, ops, reference
from fastlayers.ops import DoubleBackwardError
from fastlayers.reference import mp as ref_mp
from torch.autograd import gradgradcheck

F64 = torch.float64


def _rand(*shape, grad=True):
    return torch.randn(*shape, dtype=F64).requires_grad_(grad)


def _graph(n=6):
    # A duplicate edge, a self loop, an isolated node (5) and a node with several in-edges (1).
    ei = torch.tensor([[0, 1, 2, 2, 3, 0, 3, 4, 4, 0], [1, 2, 0, 1, 1, 1, 2, 4, 3, 1]])
    return Graph.from_edge_index(ei, num_nodes=n)


def _randn(shape, gen):
    # Not randn_like: a reference output may be strided differently, and randn_like would lay the same draws
    # out differently.
    return torch.randn(tuple(shape), dtype=F64, generator=gen)


def _second_derivative(fn, inputs):
    """d/d inputs of <grad fn(inputs) . v> for fixed random v and a loss with a non-trivial Hessian."""
    gen = torch.Generator().manual_seed(1)
    out = fn(*inputs)
    loss = (out * _randn(out.shape, gen)).sum() + (out * out).sum()
    grads = torch.autograd.grad(loss, inputs, create_graph=True)
    pen = sum((g * _randn(g.shape, gen)).sum() for g in grads)
    return torch.autograd.grad(pen, inputs, allow_unused=True)


def _check_against_reference(ours, ref, inputs):
    with warnings.catch_warnings():
        # torch warns when a backward runs an op that has no autograd kernel: every op here must have one.
        warnings.simplefilter("error")
        a = _second_derivative(ours, inputs)
    b = _second_derivative(ref, inputs)
    for x, y, t in zip(a, b, inputs):
        # An input that the second derivative does not reach comes back None on one side and zeros on the other.
        x = torch.zeros_like(t) if x is None else x
        y = torch.zeros_like(t) if y is None else y
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)


# ---- supported ------------------------------------------------------------------------------------------------


REDUCES = ["sum", "mean", "max", "min"]


@pytest.mark.parametrize("reduce", REDUCES)
def test_scatter(reduce):
    src = _rand(3, 7, 2)
    index = torch.tensor([0, 3, 3, 1, 0, 3, 0])  # slot 2 is empty
    fn = lambda s: ops.scatter(s, index, 1, 4, reduce)
    ref = lambda s: reference.mp.scatter(s, index, 1, 4, reduce)
    assert gradgradcheck(lambda s: fn(s) ** 2, (src,))
    _check_against_reference(lambda s: fn(s) ** 2, lambda s: ref(s) ** 2, (src,))


@pytest.mark.parametrize("reduce", REDUCES)
def test_segment(reduce):
    src = _rand(8, 3)
    indptr = torch.tensor([1, 3, 3, 7])  # row 0 and row 7 outside every segment, segment 1 empty
    fn = lambda s: ops.segment(s, indptr, reduce) ** 2
    assert gradgradcheck(fn, (src,))
    _check_against_reference(fn, lambda s: ref_mp.segment(s, indptr, reduce) ** 2, (src,))


@pytest.mark.parametrize("reduce", ["sum", "mean"])
@pytest.mark.parametrize("layout", ["2d", "3d-shared-w", "3d-per-head-w", "no-w"])
def test_spmm(reduce, layout):
    g = _graph()
    x = _rand(6, 3) if layout == "2d" else _rand(6, 2, 3)
    w = {"2d": _rand(10), "3d-shared-w": _rand(10), "3d-per-head-w": _rand(10, 2), "no-w": None}[layout]
    inputs = (x,) if w is None else (x, w)
    fn = lambda x, w=None: ops.spmm(g, x, w, reduce) ** 2
    assert gradgradcheck(fn, inputs)
    _check_against_reference(fn, lambda x, w=None: ref_mp.spmm(g, x, w, reduce) ** 2, inputs)


@pytest.mark.parametrize("heads", [False, True])
def test_sddmm(heads):
    g = _graph()
    shape = (6, 2, 3) if heads else (6, 3)
    a, b = _rand(*shape), _rand(*shape)
    assert gradgradcheck(lambda a, b: ops.sddmm(g, a, b), (a, b))
    _check_against_reference(lambda a, b: ops.sddmm(g, a, b), lambda a, b: ref_mp.sddmm(g, a, b), (a, b))


@pytest.mark.parametrize("heads", [False, True])
def test_edge_softmax(heads):
    g = _graph()
    s = _rand(10, 2) if heads else _rand(10)
    assert gradgradcheck(lambda s: ops.edge_softmax(g, s), (s,))
    _check_against_reference(lambda s: ops.edge_softmax(g, s), lambda s: ref_mp.edge_softmax(g, s), (s,))


@pytest.mark.parametrize("diag", [False, True])
def test_block_spmm(diag):
    g = _graph()
    blocks = _rand(10, 3) if diag else _rand(10, 3, 3)
    x = _rand(6, 3, 2)
    assert gradgradcheck(lambda b, x: ops.block_spmm(g, b, x), (blocks, x))
    _check_against_reference(lambda b, x: ops.block_spmm(g, b, x), lambda b, x: ref_mp.block_spmm(g, b, x),
                             (blocks, x))


def test_reversed_graph_block_spmm():
    # The reversed graph swaps the CSR and CSC arrays: the adjoints must follow the arrays they are given.
    g = _graph().reverse()
    blocks, x = _rand(10, 3, 3), _rand(6, 3, 2)
    assert gradgradcheck(lambda b, x: ops.block_spmm(g, b, x), (blocks, x))


def test_mixed_penalty_matches_reference():
    # HEI/IRM-style: a gradient penalty on a GAT-like layer (sddmm -> edge_softmax -> spmm -> mean pooling).
    g = _graph()
    x, q = _rand(6, 2, 3), _rand(6, 2, 3)
    scale = torch.tensor(1.0, dtype=F64, requires_grad=True)

    def layer(impl, x, q, scale):
        att = impl.edge_softmax(g, impl.sddmm(g, q, x) * scale)
        h = impl.spmm(g, x, att, "sum")
        return impl.segment(h.reshape(6, 6), torch.tensor([0, 2, 6]), "mean")

    def penalty(impl):
        loss = (layer(impl, x, q, scale) * torch.linspace(-1, 1, 12, dtype=F64).view(2, 6)).sum()
        (gs,) = torch.autograd.grad(loss, scale, create_graph=True)
        return torch.autograd.grad(gs ** 2, (x, q, scale))

    for a, b in zip(penalty(ops), penalty(ref_mp)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---- refused --------------------------------------------------------------------------------------------------


def _eca():
    x, w = _rand(2, 5, 3, 3), _rand(3)
    return "eca", (lambda x, w: ops.eca(x, w)), (x, w)


def _hyper():
    x, phi, w, b = _rand(4, 3), _rand(4, 5), _rand(2 * 3 + 2, 5), _rand(2 * 3 + 2)
    return "hyper_linear", (lambda x, phi, w, b: ops.hyper_linear(x, phi, w, b)), (x, phi, w, b)


def _interval_hyper():
    x_c, x_r = _rand(4, 3), torch.rand(4, 3, dtype=F64).requires_grad_()
    phi_c, phi_r = _rand(4, 5), torch.rand(4, 5, dtype=F64).requires_grad_()
    w, b = _rand(2 * 3 + 2, 5), _rand(2 * 3 + 2)
    return ("interval_hyper_linear", (lambda *a: ops.interval_hyper_linear(*a)[1]),
            (x_c, x_r, phi_c, phi_r, w, b))


def _hyper_abs():
    # The |W_c| term of interval_hyper_linear alone (its op), so its own refusal is the one reached.
    x, phi, rows, w0 = torch.rand(4, 2, 3, dtype=F64), _rand(4, 5), _rand(2 * 3, 5), _rand(2, 3)
    x.requires_grad_()
    return ("interval_hyper_linear", (lambda *a: torch.ops.fastlayers.hyper_abs_linear_fwd(*a)),
            (x, phi, rows, w0))


def _sinkhorn():
    return "sinkhorn", (lambda a: ops.sinkhorn(a, tau=0.5, num_iters=4)), (_rand(2, 4, 5),)


def _align_score():
    hq, hc = _rand(2, 4, 3), _rand(2, 5, 3)
    P = torch.rand(2, 4, 5, dtype=F64).requires_grad_()
    return "align_score", (lambda hq, hc, P: ops.align_score(hq, hc, P)), (hq, hc, P)


def _partner():
    P, hq, hc = torch.rand(2, 4, 5, dtype=F64).requires_grad_(), _rand(2, 4, 3), _rand(2, 5, 3)
    return "partner", (lambda P, hq, hc: torch.cat([t.flatten() for t in ops.partner(P, hq, hc)])), (P, hq, hc)


def _isonet():
    n, d, hid, z, m1, m = 7, 3, 4, 3, 5, 4
    shapes = [(hid, 2 * d), (hid,), (z, hid), (z,), (m1, 2 * z), (m1,), (m, m1), (m,), (3 * d, m), (3 * d, d),
              (3 * d,), (3 * d,)]
    ws = [torch.randn(s, dtype=F64) * 0.5 for s in shapes]
    ei = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 1], [1, 2, 3, 4, 5, 6, 0, 3]])
    mask = torch.ones(n, dtype=torch.bool)
    h, p = _rand(n, d), _rand(n, d)
    w0 = ws[0].requires_grad_()
    return "isonet_layer", (lambda h, p, w0: ops.isonet_layer(h, p, ei, mask, w0, *ws[1:])), (h, p, w0)


def _spmm_arg(reduce):
    def case():
        g = _graph()
        return f"spmm(reduce='{reduce}')", (lambda x, w: ops.spmm(g, x, w, reduce)), (_rand(6, 2, 3), _rand(10, 2))
    return case


REFUSED = {"eca": _eca, "hyper_linear": _hyper, "interval_hyper_linear": _interval_hyper,
           "hyper_abs_linear": _hyper_abs, "sinkhorn": _sinkhorn, "align_score": _align_score, "partner": _partner,
           "isonet_layer": _isonet, "spmm-max": _spmm_arg("max"), "spmm-min": _spmm_arg("min")}


@pytest.mark.parametrize("case", REFUSED)
def test_refused_double_backward_raises(case):
    name, fn, inputs = REFUSED[case]()
    out = fn(*inputs)
    loss = (out * torch.randn_like(out)).sum()
    # Recording the backward is fine (the first-order gradients are right); differentiating it is not.
    grads = torch.autograd.grad(loss, inputs, create_graph=True)
    assert any(g.requires_grad for g in grads)
    pen = sum((g * g).sum() for g in grads)
    with pytest.raises(DoubleBackwardError, match=r"fastlayers\.ops\." + re.escape(name)) as info:
        pen.backward()
    assert "double backward is not supported" in str(info.value)
    assert "fastlayers.reference." in str(info.value)
    assert isinstance(info.value, NotImplementedError)


@pytest.mark.parametrize("case", REFUSED)
def test_refused_first_order_unchanged(case):
    _, fn, inputs = REFUSED[case]()
    out = fn(*inputs)
    r = torch.randn_like(out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = torch.autograd.grad((out * r).sum(), inputs, retain_graph=True)
        recorded = torch.autograd.grad((out * r).sum(), inputs, create_graph=True)
    for a, b in zip(plain, recorded):
        assert not a.requires_grad  # no extra node when create_graph=False
        torch.testing.assert_close(a, b.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("reduce", REDUCES)
def test_first_order_has_no_graph(reduce):
    # The double-backward paths exist only under create_graph=True: a plain backward returns plain tensors.
    g = _graph()
    x, w = _rand(6, 2, 3), _rand(10, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grads = torch.autograd.grad(ops.spmm(g, x, w, reduce).sum(), (x, w))
    assert all(t.grad_fn is None for t in grads)
