"""fastlayers.Graph: the CSR/CSC indexes, reverse/to, and its argument checks."""

import pytest
import torch
from fastlayers import Graph


def _edges(n=30, e=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    ei = torch.randint(0, n, (2, e), generator=g)
    ei[:, :5] = torch.tensor([[3, 3, 3, 4, 7], [3, 3, 9, 4, 9]])  # self loops and a duplicate edge
    return ei


def _check_index(rowptr, other, perm, key, val, n):
    assert rowptr.dtype == other.dtype == perm.dtype == torch.int64
    assert rowptr.shape == (n + 1,) and rowptr[0] == 0 and rowptr[-1] == key.numel()
    assert torch.equal(other, val[perm])
    assert torch.equal(torch.sort(perm).values, torch.arange(key.numel()))
    for v in range(n):
        slots = perm[rowptr[v]:rowptr[v + 1]]
        assert torch.all(key[slots] == v)
        assert torch.all(slots[1:] > slots[:-1]), "stable: a row keeps the caller's edge order"


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_csr_and_csc(dtype):
    ei = _edges().to(dtype)
    g = Graph.from_edge_index(ei, num_nodes=35)  # nodes 30..34 isolated
    src, dst = ei.long()
    assert g.num_nodes == 35 and g.num_edges == ei.size(1)
    _check_index(g.rowptr, g.col, g.perm, dst, src, 35)
    _check_index(g.colptr, g.row, g.cperm, src, dst, 35)
    assert torch.equal(g.in_degree, torch.bincount(dst, minlength=35))
    assert torch.equal(g.out_degree, torch.bincount(src, minlength=35))
    assert torch.all(g.in_degree[30:] == 0)


def test_default_num_nodes_and_empty():
    ei = torch.tensor([[0, 5], [2, 1]])
    assert Graph.from_edge_index(ei).num_nodes == 6
    g = Graph.from_edge_index(torch.empty(2, 0, dtype=torch.long))
    assert g.num_nodes == 0 and g.num_edges == 0 and g.rowptr.tolist() == [0]
    g = Graph.from_edge_index(torch.empty(2, 0, dtype=torch.long), num_nodes=4)
    assert g.rowptr.tolist() == [0] * 5 and g.in_degree.tolist() == [0] * 4


def test_reverse_matches_flipped_edges():
    ei = _edges()
    g = Graph.from_edge_index(ei, num_nodes=31)
    r = g.reverse()
    f = Graph.from_edge_index(ei.flip(0), num_nodes=31)
    for name in ("edge_index", "rowptr", "col", "perm", "colptr", "row", "cperm", "in_degree", "out_degree"):
        assert torch.equal(getattr(r, name), getattr(f, name)), name
    assert torch.equal(r.reverse().rowptr, g.rowptr)


def test_to_and_stored_weight():
    ei = _edges()
    w = torch.rand(ei.size(1))
    g = Graph.from_edge_index(ei, edge_weight=w)
    m = g.to("meta")
    assert m.device.type == "meta" and m.rowptr.device.type == "meta" and m.edge_weight.device.type == "meta"
    assert m.num_nodes == g.num_nodes
    assert g.reverse().edge_weight is w
    assert g.with_edge_weight(None).edge_weight is None
    assert "num_edges=200" in repr(g)


@pytest.mark.parametrize(
    "ei, kw, exc, match",
    [
        (torch.rand(2, 4), {}, TypeError, "edge_index must have dtype"),
        (torch.zeros(2, 4, dtype=torch.int16), {}, TypeError, "edge_index must have dtype"),
        ([[0, 1], [1, 0]], {}, TypeError, "edge_index must be a torch.Tensor"),
        (torch.zeros(3, 4, dtype=torch.long), {}, ValueError, r"edge_index must have shape \[2, E\]"),
        (torch.zeros(8, dtype=torch.long), {}, ValueError, r"edge_index must have shape \[2, E\]"),
        (torch.tensor([[0, -1], [1, 0]]), {}, IndexError, "negative"),
        (torch.tensor([[0, 5], [1, 0]]), {"num_nodes": 5}, ValueError, "num_nodes"),
        (torch.tensor([[0, 1], [1, 0]]), {"num_nodes": -1}, ValueError, "num_nodes"),
        (torch.tensor([[0, 1], [1, 0]]), {"num_nodes": 2.0}, TypeError, "num_nodes"),
        (torch.tensor([[0, 1], [1, 0]]), {"edge_weight": torch.rand(3)}, ValueError, "edge_weight"),
        (torch.tensor([[0, 1], [1, 0]]), {"edge_weight": torch.ones(2, dtype=torch.long)}, TypeError, "edge_weight"),
        (torch.tensor([[0, 1], [1, 0]]), {"edge_weight": torch.rand(2, device="meta")}, ValueError, "edge_weight is on"),
    ],
)
def test_bad_input(ei, kw, exc, match):
    with pytest.raises(exc, match=match):
        Graph.from_edge_index(ei, **kw)


@pytest.mark.cuda
def test_to_cuda():
    g = Graph.from_edge_index(_edges())
    c = g.to("cuda")
    assert c.rowptr.is_cuda and torch.equal(c.perm.cpu(), g.perm)


def test_large_graph_matches_a_stable_sort_and_opcheck():
    # Large enough for the threaded counting sort (its slices must join in order to stay stable).
    gen = torch.Generator().manual_seed(3)
    ei = torch.randint(0, 5000, (2, 300_000), generator=gen)
    g = Graph.from_edge_index(ei, num_nodes=5001)
    for key, other, rowptr, col, perm in ((ei[1], ei[0], g.rowptr, g.col, g.perm),
                                          (ei[0], ei[1], g.colptr, g.row, g.cperm)):
        order = torch.sort(key, stable=True).indices
        assert torch.equal(perm, order) and torch.equal(col, other[order])
        assert torch.equal(rowptr[1:] - rowptr[:-1], torch.bincount(key, minlength=5001))
    torch.library.opcheck(torch.ops.fastlayers.csr_index, (ei[1][:1000].contiguous(), 5001))


@pytest.mark.cuda
def test_build_on_cuda_matches_cpu():
    ei = _edges()
    g = Graph.from_edge_index(ei, num_nodes=32)
    c = Graph.from_edge_index(ei.cuda(), num_nodes=32)
    for name in ("rowptr", "col", "perm", "colptr", "row", "cperm", "in_degree", "out_degree"):
        assert torch.equal(getattr(c, name).cpu(), getattr(g, name)), name
