"""Message-passing ops (spmm, scatter, segment, sddmm, edge_softmax): C++ kernels against the plain-PyTorch
reference in float64, gradcheck, opcheck, torch_scatter, edge cases and argument checks."""

import pytest
import torch
from fastlayers import Graph, ops
from fastlayers.reference import mp as ref

from .conftest import needs

REDUCES = ["sum", "mean", "max", "min"]
D = torch.float64


def _graph(n=40, e=300, extra_isolated=5, seed=0, device="cpu"):
    """Random multigraph with self loops, duplicate edges and isolated nodes (ids n..n+extra_isolated-1)."""
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    ei[:, :6] = torch.tensor([[1, 1, 2, 2, 2, 5], [1, 1, 3, 3, 2, 5]])
    return Graph.from_edge_index(ei.to(device), num_nodes=n + extra_isolated)


def _grads(out, inputs, g):
    inputs = [t for t in inputs if t is not None and t.requires_grad]
    return torch.autograd.grad(out, inputs, g)


# ---- spmm -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("weight, heads", [("none", 0), ("E", 0), ("none", 3), ("E", 3), ("EH", 3)])
def test_spmm_matches_reference(reduce, weight, heads):
    g = _graph()
    shape = (g.num_nodes, 5) if heads == 0 else (g.num_nodes, heads, 5)
    x = torch.randn(shape, dtype=D, requires_grad=True)
    w = {"none": None, "E": torch.randn(g.num_edges, dtype=D),
         "EH": torch.randn(g.num_edges, heads, dtype=D)}[weight]
    if w is not None:
        w.requires_grad_()
    y = ops.spmm(g, x, w, reduce)
    r = ref.spmm(g, x, w, reduce)
    assert y.shape == x.shape and not torch.isnan(y).any()
    torch.testing.assert_close(y, r, rtol=1e-12, atol=1e-12)
    assert torch.all(y[40:] == 0), "isolated nodes give 0"
    go = torch.randn_like(y)
    for a, b in zip(_grads(y, (x, w), go), _grads(r, (x, w), go)):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("reduce", REDUCES)
def test_spmm_gradcheck(reduce):
    g = _graph(n=8, e=30, extra_isolated=2)
    x = torch.randn(g.num_nodes, 2, 3, dtype=D, requires_grad=True)
    w = torch.randn(g.num_edges, 2, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ops.spmm(g, a, b, reduce), (x, w))
    w1 = torch.randn(g.num_edges, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ops.spmm(g, a, b, reduce), (x, w1))


@pytest.mark.parametrize("reduce", ["max", "min"])
def test_spmm_ties_go_to_lowest_edge_id(reduce):
    # Integer features: many exact ties. Each out[v, f] must take its gradient from exactly one edge, the lowest id.
    g = _graph(n=10, e=80, extra_isolated=1)
    x = torch.randint(-2, 3, (g.num_nodes, 4)).to(D).requires_grad_()
    y = ops.spmm(g, x, reduce=reduce)
    r = ref.spmm(g, x, reduce=reduce)
    torch.testing.assert_close(y, r, rtol=0, atol=0)
    go = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, go)
    (rx,) = torch.autograd.grad(r, x, go)
    torch.testing.assert_close(gx, rx, rtol=1e-12, atol=1e-12)
    # Independent check of the rule: with unit weights the winner of (v, f) is the lowest e into v with x[src, f]
    # equal to the extreme.
    src, dst = g.edge_index
    expect = torch.zeros_like(x)
    for v in range(g.num_nodes):
        es = (dst == v).nonzero().flatten()
        for f in range(x.size(1)):
            if es.numel():
                vals = x[src[es], f]
                best = vals.max() if reduce == "max" else vals.min()
                e = es[(vals == best).nonzero()[0, 0]]
                expect[src[e], f] += go[v, f]
    torch.testing.assert_close(gx, expect)


def test_spmm_uses_stored_weight_and_float32_large():
    g = _graph(n=3000, e=40000, extra_isolated=10, seed=1)
    w = torch.rand(g.num_edges)
    gw = g.with_edge_weight(w)
    x = torch.randn(g.num_nodes, 48)
    for reduce in REDUCES:
        torch.testing.assert_close(ops.spmm(gw, x, reduce=reduce), ref.spmm(g, x, w, reduce), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ops.spmm(gw, x), ops.spmm(g, x, w))


def test_spmm_deterministic_across_thread_counts():
    g = _graph(n=2000, e=30000, seed=2)
    x = torch.randn(g.num_nodes, 32, requires_grad=True)
    w = torch.randn(g.num_edges, requires_grad=True)
    go = torch.randn(g.num_nodes, 32)
    old = torch.get_num_threads()
    runs = []
    try:
        for t in (1, old, old):
            torch.set_num_threads(t)
            y = ops.spmm(g, x, w)
            runs.append((y,) + torch.autograd.grad(y, (x, w), go))
    finally:
        torch.set_num_threads(old)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert torch.equal(a, b)


def test_noncontiguous_inputs_and_a_hub_node():
    # A hub with most of the edges (one chunk owns it, the others share the rest) and strided feature views.
    n, e = 3000, 60000
    gen = torch.Generator().manual_seed(5)
    ei = torch.randint(0, n, (2, e), generator=gen)
    ei[1, : e // 2] = 7
    g = Graph.from_edge_index(ei, num_nodes=n)
    x = torch.randn(24, n, dtype=D).t()  # [N, 24], transposed storage
    w = torch.randn(e, 2, dtype=D)[:, 1]  # strided weights
    for reduce in REDUCES:
        torch.testing.assert_close(ops.spmm(g, x, w, reduce), ref.spmm(g, x, w, reduce), rtol=1e-10, atol=1e-10)
    src = torch.randn(9, e, dtype=D)[::3].t()  # [E, 3], strided
    torch.testing.assert_close(ops.scatter(src, ei[1], 0, n, "max"), ref.scatter(src, ei[1], 0, n, "max"))
    indptr = g.rowptr
    torch.testing.assert_close(ops.segment(src, indptr, "mean"), ref.segment(src, indptr, "mean"))


@pytest.mark.parametrize("reduce", REDUCES)
def test_spmm_empty_graph(reduce):
    g = Graph.from_edge_index(torch.empty(2, 0, dtype=torch.long), num_nodes=4)
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    w = torch.randn(0, dtype=D, requires_grad=True)
    y = ops.spmm(g, x, w, reduce)
    assert torch.equal(y, torch.zeros(4, 3, dtype=D))
    gx, gw = torch.autograd.grad(y, (x, w), torch.randn_like(y))
    assert torch.equal(gx, torch.zeros_like(x)) and gw.shape == (0,)
    g0 = Graph.from_edge_index(torch.empty(2, 0, dtype=torch.long))
    assert ops.spmm(g0, torch.randn(0, 3), reduce=reduce).shape == (0, 3)


@needs("torch_scatter")
@pytest.mark.parametrize("reduce", REDUCES)
def test_spmm_matches_torch_scatter(reduce):
    import torch_scatter

    g = _graph(n=500, e=5000, seed=3)
    x = torch.randn(g.num_nodes, 16)
    w = torch.rand(g.num_edges)
    src, dst = g.edge_index
    peer = torch_scatter.scatter(x[src] * w[:, None], dst, 0, dim_size=g.num_nodes, reduce=reduce)
    torch.testing.assert_close(ops.spmm(g, x, w, reduce), peer, rtol=1e-5, atol=1e-5)


def test_spmm_opcheck():
    g = _graph(n=12, e=50)
    x = torch.randn(g.num_nodes, 2, 3, dtype=D, requires_grad=True)
    w = torch.randn(g.num_edges, 2, dtype=D, requires_grad=True)
    csr = (g.rowptr, g.col, g.perm, g.colptr, g.row, g.cperm)
    for reduce in REDUCES:
        torch.library.opcheck(torch.ops.fastlayers.spmm_fwd, (*csr, w, x, reduce, True))
        # Without need_arg a max/min forward keeps no arg, so it is only valid where no gradient is wanted.
        torch.library.opcheck(torch.ops.fastlayers.spmm_fwd, (*csr, None, x.detach(), reduce, False))
    _, arg = torch.ops.fastlayers.spmm_fwd(*csr, w.detach(), x.detach(), "max", True)
    go = torch.randn(x.shape, dtype=D)
    torch.library.opcheck(torch.ops.fastlayers.spmm_arg_bwd,
                          (g.colptr, g.row, g.cperm, w.detach(), x.detach(), go, arg, True, True))
    torch.library.opcheck(torch.ops.fastlayers.spmm_arg_bwd,
                          (g.colptr, g.row, g.cperm, None, x.detach(), go, arg, True, False))


def test_spmm_bad_input():
    g = _graph(n=6, e=10, extra_isolated=0)
    x = torch.randn(6, 3)
    with pytest.raises(TypeError, match="graph must be a fastlayers.Graph"):
        ops.spmm(g.edge_index, x)
    with pytest.raises(ValueError, match="x has 5 rows"):
        ops.spmm(g, torch.randn(5, 3))
    with pytest.raises(ValueError, match="x must be"):
        ops.spmm(g, torch.randn(6))
    with pytest.raises(TypeError, match="x must have a floating"):
        ops.spmm(g, torch.ones(6, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="x is on meta"):
        ops.spmm(g, torch.randn(6, 3, device="meta"))
    with pytest.raises(ValueError, match="edge_weight must have shape"):
        ops.spmm(g, x, torch.rand(9))
    with pytest.raises(ValueError, match="edge_weight is on meta"):
        ops.spmm(g, x, torch.rand(10, device="meta"))
    with pytest.raises(ValueError, match="heads"):
        ops.spmm(g, torch.randn(6, 2, 3), torch.rand(10, 3))
    with pytest.raises(ValueError, match="reduce must be"):
        ops.spmm(g, x, reduce="prod")


# ---- scatter / segment ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("shape, dim", [((50,), 0), ((50, 4), 0), ((3, 50, 2), 1), ((2, 3, 50), -1)])
def test_scatter_matches_reference(reduce, shape, dim):
    src = torch.randn(shape, dtype=D, requires_grad=True)
    index = torch.randint(0, 12, (50,))
    y = ops.scatter(src, index, dim, 15, reduce)  # slots 12..14 empty
    r = ref.scatter(src, index, dim, 15, reduce)
    torch.testing.assert_close(y, r, rtol=1e-12, atol=1e-12)
    go = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, src, go)[0], torch.autograd.grad(r, src, go)[0])


@pytest.mark.parametrize("reduce", REDUCES)
def test_scatter_gradcheck(reduce):
    src = torch.randn(20, 3, dtype=D, requires_grad=True)
    index = torch.randint(0, 6, (20,))
    assert torch.autograd.gradcheck(lambda s: ops.scatter(s, index, 0, 7, reduce), (src,))


@needs("torch_scatter")
@pytest.mark.parametrize("reduce", REDUCES)
def test_scatter_matches_torch_scatter(reduce):
    import torch_scatter

    src = torch.randn(400, 8)
    index = torch.randint(0, 60, (400,))
    torch.testing.assert_close(ops.scatter(src, index, 0, reduce=reduce),
                               torch_scatter.scatter(src, index, 0, reduce=reduce))
    src3 = torch.randn(2, 400, 3)
    torch.testing.assert_close(ops.scatter(src3, index, 1, 70, reduce),
                               torch_scatter.scatter(src3, index, 1, dim_size=70, reduce=reduce))


@needs("torch_scatter")
@pytest.mark.parametrize("which", ["max", "min"])
def test_scatter_arg_matches_torch_scatter(which):
    import torch_scatter

    src = torch.randn(300, 5)
    index = torch.randint(0, 40, (300,))
    ours = getattr(ops, f"scatter_{which}")(src, index, 0, 45)
    peer = getattr(torch_scatter, f"scatter_{which}")(src, index, 0, dim_size=45)
    torch.testing.assert_close(ours[0], peer[0])
    assert torch.equal(ours[1], peer[1])  # no ties in random floats; empty slots get src.size(0)


@pytest.mark.parametrize("reduce", REDUCES)
def test_scatter_streaming_and_sorted_paths_agree(reduce):
    # Up to 8 threads stream src in order; more threads sort the index into a CSR first. Both reduce each row in
    # increasing position, so they agree bit for bit (ties included), whatever the thread count.
    src = (torch.randint(-3, 4, (100_000, 8)).float() + torch.rand(100_000, 1).round()).unsqueeze(0)
    index = torch.randint(0, 30_000, (100_000,))
    old = torch.get_num_threads()
    try:
        runs = []
        for t in (1, old, 12):  # 12 threads: L * B is large enough for all of them, so the sorted path runs
            torch.set_num_threads(t)
            runs.append(torch.ops.fastlayers.scatter_fwd(src, index, 30_005, reduce, True))
    finally:
        torch.set_num_threads(old)
    for out, arg in runs[1:]:
        assert torch.equal(out, runs[0][0])
        assert torch.equal(arg, runs[0][1])
    torch.testing.assert_close(runs[0][0][0], ref.scatter(src[0], index, 0, 30_005, reduce))


def test_scatter_ties_and_broadcast_index():
    src = torch.tensor([[1.0, 2.0], [1.0, 5.0], [0.0, 5.0]], requires_grad=True)
    index = torch.tensor([0, 0, 0])
    out, arg = ops.scatter_max(src, index.view(3, 1), 0, 2)
    assert out.tolist() == [[1.0, 5.0], [0.0, 0.0]] and arg.tolist() == [[0, 1], [3, 3]]
    out.sum().backward()
    assert src.grad.tolist() == [[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]


@pytest.mark.parametrize("reduce", REDUCES)
def test_segment_matches_reference(reduce):
    src = torch.randn(60, 2, 3, dtype=D, requires_grad=True)
    indptr = torch.tensor([2, 2, 10, 11, 30, 30, 55])  # empty segments, rows 0-1 and 55-59 outside
    y = ops.segment(src, indptr, reduce)
    r = ref.segment(src, indptr, reduce)
    torch.testing.assert_close(y, r, rtol=1e-12, atol=1e-12)
    go = torch.randn_like(y)
    (gs,) = torch.autograd.grad(y, src, go)
    torch.testing.assert_close(gs, torch.autograd.grad(r, src, go)[0])
    assert torch.all(gs[:2] == 0) and torch.all(gs[55:] == 0)
    assert torch.autograd.gradcheck(lambda s: ops.segment(s, indptr, reduce), (src[:56].detach().requires_grad_(),))


@needs("torch_scatter")
@pytest.mark.parametrize("reduce", REDUCES)
def test_segment_matches_torch_scatter(reduce):
    import torch_scatter

    src = torch.randn(60, 2, 3, dtype=D)
    indptr = torch.tensor([2, 2, 10, 11, 30, 30, 55])
    torch.testing.assert_close(ops.segment(src, indptr, reduce), torch_scatter.segment_csr(src, indptr, reduce=reduce))


def test_scatter_segment_empty():
    for reduce in REDUCES:
        assert ops.scatter(torch.randn(0, 3), torch.empty(0, dtype=torch.long), 0, 4, reduce).eq(0).all()
        assert ops.scatter(torch.randn(0, 3), torch.empty(0, dtype=torch.long), 0, None, reduce).shape == (0, 3)
        assert ops.segment(torch.randn(0, 3), torch.tensor([0, 0]), reduce).eq(0).all()
        assert ops.segment(torch.randn(4, 3), torch.tensor([0]), reduce).shape == (0, 3)


def test_scatter_segment_opcheck():
    src = torch.randn(2, 30, 3, dtype=D, requires_grad=True)
    index = torch.randint(0, 8, (30,))
    for reduce in REDUCES:
        torch.library.opcheck(torch.ops.fastlayers.scatter_fwd, (src, index, 9, reduce, True))
        out, arg = torch.ops.fastlayers.scatter_fwd(src.detach(), index, 9, reduce, True)
        torch.library.opcheck(torch.ops.fastlayers.scatter_bwd, (torch.randn_like(out), index, arg, reduce))
        s2 = src[0].detach().requires_grad_()
        indptr = torch.tensor([0, 4, 4, 20, 29])
        torch.library.opcheck(torch.ops.fastlayers.segment_fwd, (s2, indptr, reduce, True))
        out, arg = torch.ops.fastlayers.segment_fwd(s2.detach(), indptr, reduce, True)
        torch.library.opcheck(torch.ops.fastlayers.segment_bwd, (torch.randn_like(out), indptr, arg, 30, reduce))


@pytest.mark.parametrize(
    "src, index, kw, exc, match",
    [
        (torch.randn(5, 2), torch.rand(5), {}, TypeError, "index must have dtype"),
        (torch.randn(5, 2), torch.tensor([0, 1, -1, 0, 0]), {}, IndexError, "negative"),
        (torch.randn(5, 2), torch.tensor([0, 1, 4, 0, 0]), {"dim_size": 3}, IndexError, "dim_size"),
        (torch.randn(5, 2), torch.tensor([0, 1, 0]), {}, ValueError, "index must have"),
        (torch.randn(5, 2), torch.zeros(5, 2, dtype=torch.long), {}, ValueError, "index must be 1-D"),
        (torch.randn(5, 2), torch.zeros(5, dtype=torch.long), {"dim": 2}, IndexError, "dim"),
        (torch.randn(5, 2), torch.zeros(5, dtype=torch.long), {"reduce": "mul"}, ValueError, "reduce"),
        (torch.ones(5, 2, dtype=torch.long), torch.zeros(5, dtype=torch.long), {}, TypeError, "src must have"),
        (torch.randn(5, 2), torch.zeros(5, dtype=torch.long, device="meta"), {}, ValueError, "index is on meta"),
        (torch.randn(5, 2), torch.zeros(5, dtype=torch.long), {"dim_size": -2}, ValueError, "dim_size"),
    ],
)
def test_scatter_bad_input(src, index, kw, exc, match):
    with pytest.raises(exc, match=match):
        ops.scatter(src, index, **kw)


def test_kernels_reject_bad_indices_on_direct_calls():
    # The public functions validate; the C++ boundary still refuses what would read out of bounds.
    src = torch.randn(1, 200_000, 8)
    index = torch.randint(0, 10, (200_000,))
    old = torch.get_num_threads()
    try:
        for t in (1, old, 12):  # the streaming path, then the sorted path (more than 8 threads)
            torch.set_num_threads(t)
            for bad in (10, -3):
                index[150_000] = bad
                with pytest.raises(RuntimeError, match="out of range"):
                    torch.ops.fastlayers.scatter_fwd(src, index, 10, "sum", False)
    finally:
        torch.set_num_threads(old)
    with pytest.raises(RuntimeError, match="indptr"):
        torch.ops.fastlayers.segment_fwd(torch.randn(5, 2), torch.tensor([0, 4, 2]), "sum", False)
    with pytest.raises(RuntimeError, match="indptr"):
        torch.ops.fastlayers.segment_fwd(torch.randn(5, 2), torch.tensor([0, 6]), "sum", False)


def test_segment_bad_input():
    src = torch.randn(6, 2)
    with pytest.raises(ValueError, match="non-decreasing"):
        ops.segment(src, torch.tensor([0, 3, 2]))
    with pytest.raises(IndexError, match="indptr values"):
        ops.segment(src, torch.tensor([0, 3, 7]))
    with pytest.raises(IndexError, match="indptr values"):
        ops.segment(src, torch.tensor([-1, 3]))
    with pytest.raises(TypeError, match="indptr must have dtype"):
        ops.segment(src, torch.tensor([0.0, 3.0]))
    with pytest.raises(ValueError, match="indptr must be 1-D"):
        ops.segment(src, torch.tensor([[0, 3]]))


# ---- sddmm / edge_softmax -------------------------------------------------------------------------------------


@pytest.mark.parametrize("heads", [0, 2])
def test_sddmm(heads):
    g = _graph()
    shape = (g.num_nodes, 6) if heads == 0 else (g.num_nodes, heads, 6)
    a = torch.randn(shape, dtype=D, requires_grad=True)
    b = torch.randn(shape, dtype=D, requires_grad=True)
    y = ops.sddmm(g, a, b)
    r = ref.sddmm(g, a, b)
    torch.testing.assert_close(y, r, rtol=1e-12, atol=1e-12)
    go = torch.randn_like(y)
    for p, q in zip(torch.autograd.grad(y, (a, b), go), torch.autograd.grad(r, (a, b), go)):
        torch.testing.assert_close(p, q)
    gs = _graph(n=6, e=20, extra_isolated=1)
    sa = torch.randn((7, 2, 3) if heads else (7, 3), dtype=D, requires_grad=True)
    sb = torch.randn_like(sa, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, q: ops.sddmm(gs, p, q), (sa, sb))
    csr = (g.rowptr, g.col, g.perm, g.colptr, g.row, g.cperm)
    a3 = a if heads else a.unsqueeze(1)
    b3 = b if heads else b.unsqueeze(1)
    torch.library.opcheck(torch.ops.fastlayers.sddmm, (*csr, a3, b3))


@pytest.mark.parametrize("heads", [0, 3])
def test_edge_softmax(heads):
    g = _graph()
    s = torch.randn((g.num_edges,) if heads == 0 else (g.num_edges, heads), dtype=D, requires_grad=True)
    y = ops.edge_softmax(g, s)
    r = ref.edge_softmax(g, s)
    torch.testing.assert_close(y, r, rtol=1e-12, atol=1e-12)
    sums = torch.zeros((g.num_nodes,) + s.shape[1:], dtype=D).index_add(0, g.edge_index[1], y.detach())
    torch.testing.assert_close(sums[g.in_degree > 0], torch.ones_like(sums[g.in_degree > 0]))
    go = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, s, go)[0], torch.autograd.grad(r, s, go)[0])
    gs = _graph(n=6, e=20, extra_isolated=1)
    ss = torch.randn((20, 2) if heads else (20,), dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.edge_softmax(gs, t), (ss,))
    s2 = s.detach() if heads else s.detach().unsqueeze(1)
    torch.library.opcheck(torch.ops.fastlayers.edge_softmax_fwd, (g.rowptr, g.perm, s2.requires_grad_()))
    torch.library.opcheck(torch.ops.fastlayers.edge_softmax_bwd, (g.rowptr, g.perm, s2.detach().softmax(0),
                                                                  torch.randn_like(s2)))


def test_sddmm_edge_softmax_bad_input():
    g = _graph(n=6, e=8, extra_isolated=0)
    with pytest.raises(ValueError, match="a and b must have one shape"):
        ops.sddmm(g, torch.randn(6, 3), torch.randn(6, 4))
    with pytest.raises(ValueError, match="b has 4 rows"):
        ops.sddmm(g, torch.randn(6, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="scores must be"):
        ops.edge_softmax(g, torch.randn(7))
    with pytest.raises(TypeError, match="scores must have a floating"):
        ops.edge_softmax(g, torch.ones(8, dtype=torch.long))


# ---- block_spmm -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("diag", [False, True])
@pytest.mark.parametrize("d", [1, 3])
def test_block_spmm(diag, d):
    g = _graph()
    x = torch.randn(g.num_nodes, d, 5, dtype=D, requires_grad=True)
    b = torch.randn((g.num_edges, d) if diag else (g.num_edges, d, d), dtype=D, requires_grad=True)
    y = ops.block_spmm(g, b, x)
    r = ref.block_spmm(g, b, x)
    torch.testing.assert_close(y, r, rtol=1e-12, atol=1e-12)
    assert torch.all(y[40:] == 0)
    go = torch.randn_like(y)
    for p, q in zip(torch.autograd.grad(y, (b, x), go), torch.autograd.grad(r, (b, x), go)):
        torch.testing.assert_close(p, q, rtol=1e-11, atol=1e-12)
    gs = _graph(n=6, e=20, extra_isolated=1)
    xs = torch.randn(7, d, 2, dtype=D, requires_grad=True)
    bs = torch.randn((20, d) if diag else (20, d, d), dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, q: ops.block_spmm(gs, p, q), (bs, xs))
    csr = (g.rowptr, g.col, g.perm, g.colptr, g.row, g.cperm)
    for tr in (False, True):
        torch.library.opcheck(torch.ops.fastlayers.block_spmm_fwd, (*csr, b, x, tr))
    torch.library.opcheck(torch.ops.fastlayers.block_spmm_bwd_blocks, (g.rowptr, g.col, g.perm, go, x.detach(), diag))


def test_block_spmm_transposed_and_bad_input():
    g = _graph(n=10, e=40)
    x = torch.randn(g.num_nodes, 2, 3, dtype=D, requires_grad=True)
    b = torch.randn(g.num_edges, 2, 2, dtype=D, requires_grad=True)
    csr = (g.rowptr, g.col, g.perm, g.colptr, g.row, g.cperm)
    y = torch.ops.fastlayers.block_spmm_fwd(*csr, b, x, True)
    torch.testing.assert_close(y, ref.block_spmm(g, b.transpose(1, 2), x))
    assert torch.autograd.gradcheck(lambda p, q: torch.ops.fastlayers.block_spmm_fwd(*csr, p, q, True), (b, x))
    with pytest.raises(ValueError, match="blocks must be"):
        ops.block_spmm(g, torch.randn(g.num_edges, 3, 3), torch.randn(g.num_nodes, 2, 3))
    with pytest.raises(ValueError, match="blocks must be"):
        ops.block_spmm(g, torch.randn(5, 2), torch.randn(g.num_nodes, 2, 3))
    with pytest.raises(ValueError, match=r"x must be \[N, d, F\]"):
        ops.block_spmm(g, torch.randn(g.num_edges, 2), torch.randn(g.num_nodes, 2))
    with pytest.raises(TypeError, match="blocks must have a floating"):
        ops.block_spmm(g, torch.ones(g.num_edges, 2, dtype=torch.long), torch.randn(g.num_nodes, 2, 3))


@pytest.mark.slow
@pytest.mark.compiler
def test_torch_compile_fullgraph():
    g = _graph(n=50, e=400)
    x = torch.randn(g.num_nodes, 8, requires_grad=True)
    w = torch.rand(g.num_edges, requires_grad=True)

    def f(x, w):
        s = ops.edge_softmax(g, ops.sddmm(g, x, x))
        return ops.spmm(g, x, w * s, "sum") + ops.spmm(g, x, reduce="max")

    y = torch.compile(f, fullgraph=True)(x, w)
    torch.testing.assert_close(y, f(x, w))
    y.sum().backward()
    assert x.grad is not None and w.grad is not None


# ---- CUDA (run by benchmarks/device_check.sh) ----------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("reduce", REDUCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_cuda_spmm_matches_cpu(reduce, dtype):
    g = _graph(n=300, e=3000, seed=4)
    x = torch.randn(g.num_nodes, 2, 40, dtype=torch.float64)
    w = torch.rand(g.num_edges, 2, dtype=torch.float64)
    gc = g.to("cuda")
    xc = x.to("cuda", dtype).requires_grad_()
    wc = w.to("cuda", dtype).requires_grad_()
    y = ops.spmm(gc, xc, wc, reduce)
    tol = 1e-5 if dtype != torch.float16 else 2e-2
    torch.testing.assert_close(y.double().cpu(), ref.spmm(g, xc.detach().double().cpu(), wc.detach().double().cpu(),
                                                          reduce), rtol=tol, atol=tol)
    y.float().sum().backward()
    assert torch.isfinite(xc.grad).all() and torch.isfinite(wc.grad).all()


@pytest.mark.cuda
@pytest.mark.parametrize("reduce", REDUCES)
def test_cuda_scatter_segment_sddmm_softmax_block_match_cpu(reduce):
    src = torch.randint(-3, 4, (5000, 7)).float()  # ties: the arg rule must agree with the CPU's
    index = torch.randint(0, 900, (5000,))
    out, arg = torch.ops.fastlayers.scatter_fwd(src.unsqueeze(0), index, 910, reduce, True)
    oc, ac = torch.ops.fastlayers.scatter_fwd(src.cuda().unsqueeze(0), index.cuda(), 910, reduce, True)
    torch.testing.assert_close(oc.cpu(), out)
    if reduce in ("max", "min"):
        assert torch.equal(ac.cpu(), arg)
    indptr = torch.tensor([0, 10, 10, 3000, 4999])
    torch.testing.assert_close(ops.segment(src.cuda(), indptr.cuda(), reduce).cpu(), ops.segment(src, indptr, reduce))
    g = _graph(n=200, e=3000)
    gc = g.to("cuda")
    a, b = torch.randn(g.num_nodes, 2, 8), torch.randn(g.num_nodes, 2, 8)
    torch.testing.assert_close(ops.sddmm(gc, a.cuda(), b.cuda()).cpu(), ops.sddmm(g, a, b), rtol=1e-5, atol=1e-5)
    s = torch.randn(g.num_edges, 2)
    torch.testing.assert_close(ops.edge_softmax(gc, s.cuda()).cpu(), ops.edge_softmax(g, s), rtol=1e-5, atol=1e-6)
    blk = torch.randn(g.num_edges, 2, 2)
    torch.testing.assert_close(ops.block_spmm(gc, blk.cuda(), a.cuda()).cpu(), ops.block_spmm(g, blk, a),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.cuda
def test_cuda_gradcheck_and_opcheck():
    g = _graph(n=10, e=40).to("cuda")
    x = torch.randn(g.num_nodes, 3, dtype=D, device="cuda", requires_grad=True)
    w = torch.randn(g.num_edges, dtype=D, device="cuda", requires_grad=True)
    for reduce in REDUCES:
        assert torch.autograd.gradcheck(lambda a, b, reduce=reduce: ops.spmm(g, a, b, reduce), (x, w))
    s = torch.randn(g.num_edges, dtype=D, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.edge_softmax(g, t), (s,))
    assert torch.autograd.gradcheck(lambda a, b: ops.sddmm(g, a, b), (x, x.detach().clone().requires_grad_()))
    src = torch.randn(40, 3, dtype=D, device="cuda", requires_grad=True)
    index = torch.randint(0, 9, (40,), device="cuda")
    indptr = torch.tensor([0, 5, 5, 30], device="cuda")
    for reduce in REDUCES:
        assert torch.autograd.gradcheck(lambda t, reduce=reduce: ops.scatter(t, index, 0, 10, reduce), (src,))
        assert torch.autograd.gradcheck(lambda t, reduce=reduce: ops.segment(t, indptr, reduce), (src,))
    csr = (g.rowptr, g.col, g.perm, g.colptr, g.row, g.cperm)
    torch.library.opcheck(torch.ops.fastlayers.spmm_fwd, (*csr, w, x.unsqueeze(1), "max", True))
    xb = torch.randn(g.num_nodes, 3, 4, dtype=D, device="cuda", requires_grad=True)
    for shape in ((g.num_edges, 3), (g.num_edges, 3, 3)):
        b = torch.randn(shape, dtype=D, device="cuda", requires_grad=True)
        assert torch.autograd.gradcheck(lambda p, q: ops.block_spmm(g, p, q), (b, xb))


# ---- property test over random small graphs -------------------------------------------------------------------

@needs("hypothesis")
def test_spmm_property():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=40, deadline=None)
    @given(n=st.integers(0, 12), e=st.integers(0, 40), f=st.integers(1, 5), heads=st.integers(0, 2),
           reduce=st.sampled_from(REDUCES), weighted=st.booleans(), seed=st.integers(0, 2**31 - 1))
    def check(n, e, f, heads, reduce, weighted, seed):
        gen = torch.Generator().manual_seed(seed)
        e = e if n else 0
        g = Graph.from_edge_index(torch.randint(0, max(n, 1), (2, e), generator=gen), num_nodes=n)
        shape = (n, f) if heads == 0 else (n, heads, f)
        # Small integers: frequent exact ties for max/min.
        x = torch.randint(-2, 3, shape, generator=gen).to(D).requires_grad_()
        w = torch.randint(1, 3, (e,), generator=gen).to(D).requires_grad_() if weighted else None
        y, r = ops.spmm(g, x, w, reduce), ref.spmm(g, x, w, reduce)
        torch.testing.assert_close(y, r, rtol=1e-12, atol=1e-12)
        go = torch.randn(y.shape, dtype=D, generator=gen)
        for a, b in zip(_grads(y, (x, w), go), _grads(r, (x, w), go)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

    check()


@needs("hypothesis")
def test_scatter_property():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=40, deadline=None)
    @given(L=st.integers(0, 50), n=st.integers(1, 10), b=st.integers(1, 6), reduce=st.sampled_from(REDUCES),
           seed=st.integers(0, 2**31 - 1))
    def check(L, n, b, reduce, seed):
        gen = torch.Generator().manual_seed(seed)
        src = torch.randint(-2, 3, (L, b), generator=gen).to(D).requires_grad_()
        index = torch.randint(0, n, (L,), generator=gen)
        y, r = ops.scatter(src, index, 0, n, reduce), ref.scatter(src, index, 0, n, reduce)
        torch.testing.assert_close(y, r, rtol=1e-12, atol=1e-12)
        go = torch.randn(y.shape, dtype=D, generator=gen)
        torch.testing.assert_close(torch.autograd.grad(y, src, go)[0], torch.autograd.grad(r, src, go)[0])

    check()
