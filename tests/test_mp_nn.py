"""fastlayers.nn graph convolutions against PyG's layers with the same weights (float64), Graph vs edge_index
inputs, gradients, and an empty edge list."""

import pytest
import torch
from fastlayers import Graph
from fastlayers import nn as fnn

from .conftest import importorskip

pyg = importorskip("torch_geometric.nn")

D = torch.float64


def _edges(n=30, e=150, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n - 3, (2, e), generator=g)  # the last 3 nodes are isolated
    ei[:, :4] = torch.tensor([[1, 1, 2, 4], [1, 1, 3, 4]])  # self loops (one duplicated) and a plain edge
    return ei


def _same(ours, peer, x, *graph_args, peer_args=None, tol=1e-10):
    """Load peer's weights into ours; compare outputs and input/parameter gradients for the same upstream grad."""
    ours.load_state_dict(peer.state_dict())
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    ya = ours(xa, *graph_args)
    yb = peer(xb, *(peer_args if peer_args is not None else graph_args))
    torch.testing.assert_close(ya, yb, rtol=tol, atol=tol)
    go = torch.randn_like(ya)
    ya.backward(go)
    yb.backward(go)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=tol, atol=tol)
    pa, pb = dict(ours.named_parameters()), dict(peer.named_parameters())
    for name, p in pa.items():
        torch.testing.assert_close(p.grad, pb[name].grad, rtol=tol, atol=tol, msg=name)
    return ya


@pytest.mark.parametrize("add_self_loops", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("use_graph", [False, True])
def test_gcn_matches_pyg(add_self_loops, weighted, use_graph):
    ei = _edges()
    w = torch.rand(ei.size(1), dtype=D) + 0.1 if weighted else None
    x = torch.randn(30, 7, dtype=D)
    peer = pyg.GCNConv(7, 5, add_self_loops=add_self_loops).double()
    ours = fnn.GCNConv(7, 5, add_self_loops=add_self_loops).double()
    g = Graph.from_edge_index(ei, num_nodes=30) if use_graph else ei
    _same(ours, peer, x, g, w, peer_args=(ei, w))


def test_gcn_improved_and_unnormalised():
    ei, x = _edges(), torch.randn(30, 4, dtype=D)
    w = torch.rand(ei.size(1), dtype=D)
    for kw in ({"improved": True}, {"normalize": False}, {"bias": False}):
        _same(fnn.GCNConv(4, 3, **kw).double(), pyg.GCNConv(4, 3, **kw).double(), x, ei)
        _same(fnn.GCNConv(4, 3, **kw).double(), pyg.GCNConv(4, 3, **kw).double(), x, ei, w)


@pytest.mark.parametrize("aggr", ["mean", "sum", "max"])
@pytest.mark.parametrize("root_weight", [True, False])
def test_sage_matches_pyg(aggr, root_weight):
    ei, x = _edges(), torch.randn(30, 6, dtype=D)
    peer = pyg.SAGEConv(6, 4, aggr=aggr, root_weight=root_weight).double()
    ours = fnn.SAGEConv(6, 4, aggr=aggr, root_weight=root_weight).double()
    _same(ours, peer, x, Graph.from_edge_index(ei, num_nodes=30), peer_args=(ei,))
    _same(fnn.SAGEConv(6, 4, normalize=True).double(), pyg.SAGEConv(6, 4, normalize=True).double(), x, ei)


@pytest.mark.parametrize("train_eps", [False, True])
def test_gin_matches_pyg(train_eps):
    ei, x = _edges(), torch.randn(30, 5, dtype=D)

    def mlp():
        return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).double()

    _same(fnn.GINConv(mlp(), eps=0.3, train_eps=train_eps), pyg.GINConv(mlp(), eps=0.3, train_eps=train_eps), x, ei)


@pytest.mark.parametrize("heads, concat", [(1, True), (3, True), (2, False)])
@pytest.mark.parametrize("add_self_loops", [True, False])
def test_gat_matches_pyg(heads, concat, add_self_loops):
    ei, x = _edges(), torch.randn(30, 6, dtype=D)
    kw = dict(heads=heads, concat=concat, add_self_loops=add_self_loops)
    peer = pyg.GATConv(6, 4, **kw).double()
    ours = fnn.GATConv(6, 4, **kw).double()
    torch.nn.init.normal_(peer.bias)  # PyG starts at 0: a random bias checks that it is added
    _same(ours, peer, x, Graph.from_edge_index(ei, num_nodes=30), peer_args=(ei,))


@pytest.mark.parametrize("inner", ["gcn", "sage"])
def test_dirgnn_matches_pyg(inner):
    ei, x = _edges(), torch.randn(30, 6, dtype=D)
    conv = {"gcn": (fnn.GCNConv(6, 4), pyg.GCNConv(6, 4)), "sage": (fnn.SAGEConv(6, 4), pyg.SAGEConv(6, 4))}[inner]
    ours = fnn.DirGNNConv(conv[0], alpha=0.3).double()
    peer = pyg.DirGNNConv(conv[1], alpha=0.3).double()
    _same(ours, peer, x, Graph.from_edge_index(ei, num_nodes=30), peer_args=(ei,))


@pytest.mark.parametrize("first_aggr", [True, False])
def test_signed_matches_pyg(first_aggr):
    ei = _edges(e=200)
    sign = torch.rand(ei.size(1)) < 0.7
    pos, neg = ei[:, sign], ei[:, ~sign]
    c = 5
    x = torch.randn(30, c if first_aggr else 2 * c, dtype=D)
    peer = pyg.SignedConv(c, 4, first_aggr=first_aggr).double()
    ours = fnn.SignedConv(c, 4, first_aggr=first_aggr).double()
    gp, gn = Graph.from_edge_index(pos, num_nodes=30), Graph.from_edge_index(neg, num_nodes=30)
    y = _same(ours, peer, x, gp, gn, peer_args=(pos, neg))
    assert y.shape == (30, 8)


def test_empty_edge_list_and_bad_graph():
    x = torch.randn(6, 4)
    empty = torch.empty(2, 0, dtype=torch.long)
    gcn = fnn.GCNConv(4, 3)
    y = gcn(x, empty)  # node count from x; only the self loops remain
    torch.testing.assert_close(y, gcn.lin(x) + gcn.bias)
    torch.testing.assert_close(fnn.SAGEConv(4, 3, root_weight=False, bias=False)(x, empty), torch.zeros(6, 3))
    with pytest.raises(ValueError, match="graph has 5 nodes"):
        gcn(x, Graph.from_edge_index(torch.tensor([[0], [4]])))
    with pytest.raises(TypeError, match="edge_index must be a fastlayers.Graph or"):
        gcn(x, [[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="aggr"):
        fnn.SAGEConv(4, 3, aggr="lstm")


def test_graph_reused_across_layers_keeps_derived_structures():
    g = Graph.from_edge_index(_edges(), num_nodes=30)
    x = torch.randn(30, 6)
    a, b = fnn.GCNConv(6, 6), fnn.GATConv(6, 6)
    a(x, g)
    b(x, g)
    cached = dict(g._derived)
    a(x, g)
    b(x, g)
    assert set(cached) == {"remaining_self_loops", "self_loops"}
    assert all(g._derived[k] is v for k, v in cached.items())


def _map(f, maps, d):
    if maps == "diag":
        return torch.diag(f)
    if maps == "general":
        return f.view(d, d)
    a = torch.zeros(d, d, dtype=f.dtype)
    k = 0
    for i in range(d):
        for j in range(i + 1, d):
            a = a + f[k] * (torch.eye(d, dtype=f.dtype)[:, [i]] @ torch.eye(d, dtype=f.dtype)[[j], :])
            k += 1
    return torch.linalg.matrix_exp(a - a.t())


def _dense_sheaf(m, x, ei):
    """NSD's step with a dense [N d, N d] Laplacian built edge by edge from W [x_v, x_u] (the unsplit map)."""
    n, d, c = x.size(0), m.d, m.channels
    W = torch.cat([m.map_dst.weight, m.map_src.weight], 1)
    L = torch.zeros(n * d, n * d, dtype=x.dtype)
    Dg = torch.zeros(n * d, n * d, dtype=x.dtype)  # the diagonal blocks alone: they set the normalisation
    for u, v in ei.t().tolist():
        fv = torch.tanh(W @ torch.cat([x[v], x[u]]) + m.map_dst.bias)
        fu = torch.tanh(W @ torch.cat([x[u], x[v]]) + m.map_dst.bias)
        fv, fu = (_map(f, m.maps, d) for f in (fv, fu))
        L[v * d:(v + 1) * d, u * d:(u + 1) * d] -= fv.t() @ fu
        Dg[v * d:(v + 1) * d, v * d:(v + 1) * d] += fv.t() @ fv
    L = L + Dg
    s = (torch.diagonal(Dg) + 1).pow(-0.5)
    h = (m.lin_left.weight @ x.view(n, d, c)) @ m.lin_right.weight.t()
    lh = (s[:, None] * L * s[None, :]) @ h.reshape(n * d, c)
    lh = torch.nn.functional.elu(lh).view(n, d, c)
    return ((1 + torch.tanh(m.eps)).view(1, d, 1) * x.view(n, d, c) - lh).reshape(n, d * c)


@pytest.mark.parametrize("maps", ["diag", "orthogonal", "general"])
@pytest.mark.parametrize("d", [2, 3])
def test_sheaf_matches_dense_laplacian(maps, d):
    torch.manual_seed(1)
    ei = _edges(n=12, e=40)
    ei = torch.cat([ei, ei.flip(0)], 1)  # undirected: both directions
    m = fnn.SheafConv(4, d, maps).double()
    for p in m.parameters():  # move off the identity initialisation
        torch.nn.init.normal_(p, std=0.5)
    x = torch.randn(12, d * 4, dtype=D, requires_grad=True)
    y = m(x, Graph.from_edge_index(ei, num_nodes=12))
    xr = x.detach().clone().requires_grad_()
    r = _dense_sheaf(m, xr, ei)
    torch.testing.assert_close(y, r, rtol=1e-10, atol=1e-10)
    go = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, x, go)[0], torch.autograd.grad(r, xr, go)[0])
    small = Graph.from_edge_index(torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]]), num_nodes=4)
    xs = torch.randn(4, d * 4, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: m(t, small), (xs,))


def test_sheaf_bad_args():
    with pytest.raises(ValueError, match="maps"):
        fnn.SheafConv(4, 2, maps="householder")
    with pytest.raises(ValueError, match="d >= 2"):
        fnn.SheafConv(4, 1, maps="orthogonal")
    with pytest.raises(ValueError, match="x must be"):
        fnn.SheafConv(4, 2)(torch.randn(5, 7), torch.tensor([[0], [1]]))


@pytest.mark.slow
def test_torch_compile_fullgraph_over_the_layers():
    ei = _edges()
    g = Graph.from_edge_index(torch.cat([ei, ei.flip(0)], 1), num_nodes=30)
    layers = torch.nn.ModuleList([fnn.GCNConv(8, 8), fnn.GATConv(8, 4, heads=2), fnn.SAGEConv(8, 8),
                                  fnn.DirGNNConv(fnn.GCNConv(8, 8)), fnn.SheafConv(4, 2),
                                  fnn.GINConv(torch.nn.Linear(8, 8))])

    def f(x):
        for m in layers:
            x = torch.tanh(m(x, g))
        return x

    x = torch.randn(30, 8, requires_grad=True)
    # One eager call builds the graphs the layers derive (self loops, reverse); compiled code reuses them.
    ref = f(x)
    # aot_eager traces forward and backward through the fake kernels as inductor does, without its C++ codegen
    # (a minute on 2 cores); test_mp_ops.py compiles the ops with inductor.
    y = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    y.sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in layers.parameters() if p.requires_grad)
