"""Fuzz cases of the message-passing family: the public functions on valid graphs (with NaN and empty cases),
checked against fastlayers.reference.mp in float64 (forward, and backward where the input has no NaN), and the raw
``torch.ops.fastlayers`` ops with one index tensor broken in one way."""

from __future__ import annotations

import fastlayers.ops as F
import hypothesis.strategies as st
import torch
from fastlayers import Graph
from fastlayers.reference import mp as R

from fuzz.common import Case, grads, kinds_strategy, pick, torch_gen

OPS = torch.ops.fastlayers
REDUCES = ("sum", "mean", "min", "max")


def _values(draw, g, shape, nan_ok=True):
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if nan_ok and x.numel() and draw(st.integers(0, 9)) == 0:
        x.view(-1)[draw(st.integers(0, x.numel() - 1))] = float("nan")
    return x


def _graph(draw, g, min_nodes=0):
    n = draw(st.integers(min_nodes, 9))
    e = draw(st.integers(0, 3 * n)) if n else 0
    ei = torch.randint(0, max(n, 1), (2, e), generator=g)
    return Graph.from_edge_index(ei, num_nodes=n)


def _public(draw, name, fn, ref, inputs, g):
    with_grad = not any(torch.isnan(t).any() for t in inputs) and draw(st.booleans())
    if with_grad:
        return Case(name, "valid", lambda: grads(fn, inputs, g), lambda: grads(ref, inputs, g))
    return Case(name, "valid", lambda: fn(*inputs), lambda: ref(*inputs))


def spmm_case(draw):
    g = torch_gen(draw)
    graph = _graph(draw, g)
    H, Fd = draw(st.integers(1, 3)), draw(st.integers(0, 5))
    heads = draw(st.booleans())
    x = _values(draw, g, (graph.num_nodes, H, Fd) if heads else (graph.num_nodes, Fd))
    reduce = pick(draw, (REDUCES))
    wmode = pick(draw, (("none", "edge", "head")))
    if wmode == "none":
        return _public(draw, "spmm", lambda x: F.spmm(graph, x, reduce=reduce),
                       lambda x: R.spmm(graph, x, reduce=reduce), [x], g)
    w = _values(draw, g, (graph.num_edges, H) if (wmode == "head" and heads) else (graph.num_edges,))
    return _public(draw, "spmm", lambda x, w: F.spmm(graph, x, w, reduce=reduce),
                   lambda x, w: R.spmm(graph, x, w, reduce=reduce), [x, w], g)


def sddmm_case(draw):
    g = torch_gen(draw)
    graph = _graph(draw, g)
    shape = (graph.num_nodes, draw(st.integers(1, 3)), draw(st.integers(0, 5)))
    if draw(st.booleans()):
        shape = (shape[0], shape[2])
    a, b = _values(draw, g, shape), _values(draw, g, shape)
    return _public(draw, "sddmm", lambda a, b: F.sddmm(graph, a, b), lambda a, b: R.sddmm(graph, a, b), [a, b], g)


def edge_softmax_case(draw):
    g = torch_gen(draw)
    graph = _graph(draw, g)
    shape = (graph.num_edges, draw(st.integers(1, 3))) if draw(st.booleans()) else (graph.num_edges,)
    s = _values(draw, g, shape) * pick(draw, ((1.0, 30.0)))
    return _public(draw, "edge_softmax", lambda s: F.edge_softmax(graph, s), lambda s: R.edge_softmax(graph, s),
                   [s], g)


def block_spmm_case(draw):
    g = torch_gen(draw)
    graph = _graph(draw, g)
    d, Fd = draw(st.integers(1, 4)), draw(st.integers(0, 4))
    x = _values(draw, g, (graph.num_nodes, d, Fd))
    blocks = _values(draw, g, (graph.num_edges, d) if draw(st.booleans()) else (graph.num_edges, d, d))
    return _public(draw, "block_spmm", lambda b, x: F.block_spmm(graph, b, x), lambda b, x: R.block_spmm(graph, b, x),
                   [blocks, x], g)


def scatter_case(draw):
    g = torch_gen(draw)
    L, n = draw(st.integers(0, 20)), draw(st.integers(0, 8))
    shape = [draw(st.integers(0, 3)), L, draw(st.integers(1, 3))]
    dim = draw(st.integers(0, 2))
    shape[1], shape[dim] = shape[dim], L
    src = _values(draw, g, tuple(shape))
    if n == 0 and L:
        n = 1
    index = torch.randint(0, max(n, 1), (L,), generator=g)
    reduce = pick(draw, (REDUCES))
    return _public(draw, "scatter", lambda s: F.scatter(s, index, dim, n, reduce),
                   lambda s: R.scatter(s, index, dim, n, reduce), [src], g)


def segment_case(draw):
    g = torch_gen(draw)
    n, E = draw(st.integers(0, 8)), draw(st.integers(0, 20))
    cuts = torch.sort(torch.randint(0, E + 1, (n + 1,), generator=g)).values
    src = _values(draw, g, (E, draw(st.integers(0, 4))))
    reduce = pick(draw, (REDUCES))
    return _public(draw, "segment", lambda s: F.segment(s, cuts, reduce), lambda s: R.segment(s, cuts, reduce),
                   [src], g)


def graph_case(draw):
    """Graph construction from hostile edge lists and counts."""
    g = torch_gen(draw)
    n = draw(st.integers(0, 6))
    e = draw(st.integers(0, 8)) if n else 0  # no node, no edge
    ei = torch.randint(0, max(n, 1), (2, e), generator=g)
    defect = pick(draw, (("valid", "negative id", "id >= num_nodes", "bool num_nodes", "float num_nodes",
                                   "huge id", "edge_index 3 rows", "float edge_index")))
    num_nodes = n
    arg = "edge_index"
    if defect == "valid":
        return Case("Graph.from_edge_index", "valid", lambda: Graph.from_edge_index(ei, num_nodes=n).rowptr,
                    lambda: torch.cat([torch.zeros(1, dtype=torch.long),
                                       torch.bincount(ei[1], minlength=n).cumsum(0)]) if n else
                    torch.zeros(1, dtype=torch.long))
    if defect in ("negative id", "id >= num_nodes", "huge id"):
        if e == 0:
            ei = torch.zeros((2, 1), dtype=torch.long)
        ei = ei.clone()
        ei[draw(st.integers(0, 1)), 0] = {"negative id": -1, "id >= num_nodes": n, "huge id": 2**40}[defect]
        arg = None  # negative ids name no argument beyond 'id'; the message is checked by the tests
        if defect == "id >= num_nodes" and draw(st.booleans()):
            num_nodes = None  # inferred: then it is valid
            return Case("Graph.from_edge_index", "valid", lambda: int(Graph.from_edge_index(ei).num_nodes),
                        lambda: int(ei.max()) + 1)
        if defect == "huge id":
            num_nodes = None if draw(st.booleans()) else n
            arg = None
            if num_nodes is None:
                defect = "huge id, num_nodes inferred"
    elif defect == "bool num_nodes":
        num_nodes, arg = torch.tensor(True), "num_nodes"
    elif defect == "float num_nodes":
        num_nodes, arg = float(n) + 0.5, "num_nodes"
    elif defect == "edge_index 3 rows":
        ei = torch.zeros((3, e), dtype=torch.long)
    elif defect == "float edge_index":
        ei = ei.double()
    if defect == "huge id, num_nodes inferred":
        # 2**40 nodes of CSR would take 8 TB: must be refused, not allocated.
        return Case("Graph.from_edge_index", defect, lambda: Graph.from_edge_index(ei), arg="num")
    return Case("Graph.from_edge_index", defect, lambda: Graph.from_edge_index(ei, num_nodes=num_nodes), arg=arg)


# ---- raw ops with one broken index tensor ---------------------------------------------------------------------


def _csr(graph):
    return [t.clone() for t in (graph.rowptr, graph.col, graph.perm, graph.colptr, graph.row, graph.cperm)]


def _break_csr(draw, ptr, idx, perm, n_idx, names):
    """Breaks one of (ptr, idx, perm) in place; returns (what, argument name)."""
    E = idx.numel()
    choices = ["ptr past end", "ptr decreasing", "ptr start"]
    if E:
        choices += ["idx past end", "idx negative", "idx huge", "perm past end", "perm negative"]
    what = pick(draw, (choices))
    if what == "ptr past end":
        ptr[-1] = E + pick(draw, ((1, 10**6)))
        return what, names[0]
    if what == "ptr decreasing":
        if ptr.numel() < 3:
            ptr[-1] = E + 1
            return "ptr past end", names[0]
        k = draw(st.integers(1, ptr.numel() - 2))
        ptr[k] = ptr[-1] + 1
        return what, names[0]
    if what == "ptr start":
        ptr[0] = -1 if draw(st.booleans()) else 1
        if ptr[0] == 1 and E == 0:
            ptr[0] = -1
        return what, names[0]
    k = draw(st.integers(0, E - 1))
    if what.startswith("idx"):
        idx[k] = {"idx past end": n_idx, "idx negative": -1, "idx huge": 2**40}[what]
        return what, names[1]
    perm[k] = E if what == "perm past end" else -1
    return what, names[2]


def raw_spmm_case(draw):
    g = torch_gen(draw)
    graph = _graph(draw, g, min_nodes=1)
    rowptr, col, perm, colptr, row, cperm = _csr(graph)
    H, Fd = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    x = torch.randn(graph.num_nodes, H, Fd, generator=g, dtype=torch.float64)
    w = torch.randn(graph.num_edges, generator=g, dtype=torch.float64) if draw(st.booleans()) else None
    reduce = pick(draw, (REDUCES))
    if w is None:
        what, arg = _break_csr(draw, rowptr, col, perm.clone(), graph.num_nodes, ("rowptr", "col", "perm"))
        if what.startswith("perm"):  # perm is only read with a weight: break col instead
            return raw_spmm_case(draw)
    else:
        what, arg = _break_csr(draw, rowptr, col, perm, graph.num_nodes, ("rowptr", "col", "perm"))
    return Case("raw.spmm_fwd", what, lambda: OPS.spmm_fwd(rowptr, col, perm, colptr, row, cperm, w, x, reduce,
                                                            reduce in ("min", "max")), arg=arg)


def raw_spmm_arg_bwd_case(draw):
    g = torch_gen(draw)
    graph = _graph(draw, g, min_nodes=1)
    H, Fd = 1, draw(st.integers(1, 3))
    x = torch.randn(graph.num_nodes, H, Fd, generator=g, dtype=torch.float64)
    w = torch.randn(graph.num_edges, generator=g, dtype=torch.float64) if draw(st.booleans()) else None
    out, arg = OPS.spmm_fwd(graph.rowptr, graph.col, graph.perm, graph.colptr, graph.row, graph.cperm, w, x, "max",
                            True)
    go = torch.randn_like(out)
    _rowptr, _col, _perm, colptr, row, cperm = _csr(graph)
    arg = arg.clone()
    if draw(st.booleans()) or graph.num_edges == 0:
        arg.view(-1)[draw(st.integers(0, arg.numel() - 1))] = pick(draw, ((graph.num_edges + 1, -1,
                                                                                     2**40)))
        what, name = "arg out of range", "arg"
    else:
        what, name = _break_csr(draw, colptr, row, cperm, graph.num_nodes, ("colptr", "row", "cperm"))
        if what.startswith("perm") and w is None:
            return raw_spmm_arg_bwd_case(draw)
    return Case("raw.spmm_arg_bwd", what, lambda: OPS.spmm_arg_bwd(colptr, row, cperm, w, x, go, arg, True,
                                                                    w is not None), arg=name)


def raw_sddmm_case(draw):
    g = torch_gen(draw)
    graph = _graph(draw, g, min_nodes=1)
    rowptr, col, perm, colptr, row, cperm = _csr(graph)
    a = torch.randn(graph.num_nodes, 1, 3, generator=g, dtype=torch.float64)
    b = torch.randn_like(a)
    what, arg = _break_csr(draw, rowptr, col, perm, graph.num_nodes, ("rowptr", "col", "perm"))
    return Case("raw.sddmm", what, lambda: OPS.sddmm(rowptr, col, perm, colptr, row, cperm, a, b), arg=arg)


def raw_edge_softmax_case(draw):
    g = torch_gen(draw)
    graph = _graph(draw, g, min_nodes=1)
    rowptr, _, perm, _, _, _ = _csr(graph)
    s = torch.randn(graph.num_edges, 2, generator=g, dtype=torch.float64)
    dummy = torch.zeros(graph.num_edges, dtype=torch.long)
    what, arg = _break_csr(draw, rowptr, dummy, perm, graph.num_nodes, ("rowptr", "col", "perm"))
    if what.startswith("idx"):
        return raw_edge_softmax_case(draw)
    if draw(st.booleans()):
        return Case("raw.edge_softmax_fwd", what, lambda: OPS.edge_softmax_fwd(rowptr, perm, s), arg=arg)
    out = F.edge_softmax(graph, s)
    return Case("raw.edge_softmax_bwd", what, lambda: OPS.edge_softmax_bwd(rowptr, perm, out, torch.randn_like(out)),
                arg=arg)


def raw_segment_case(draw):
    g = torch_gen(draw)
    n, E = draw(st.integers(1, 6)), draw(st.integers(1, 12))
    indptr = torch.sort(torch.randint(0, E + 1, (n + 1,), generator=g)).values
    src = torch.randn(E, 3, generator=g, dtype=torch.float64)
    reduce = pick(draw, (REDUCES))
    if draw(st.booleans()) and reduce in ("min", "max"):
        out, arg = OPS.segment_fwd(src, indptr, reduce, True)
        arg = arg.clone()
        arg.view(-1)[draw(st.integers(0, arg.numel() - 1))] = pick(draw, ((E + 1, -1, 2**40)))
        return Case("raw.segment_bwd", "arg out of range",
                    lambda: OPS.segment_bwd(torch.randn_like(out), indptr, arg, E, reduce), arg="arg")
    indptr = indptr.clone()
    what = pick(draw, (("ptr past end", "ptr negative", "ptr decreasing")))
    if what == "ptr past end":
        indptr[-1] = E + pick(draw, ((1, 10**6)))
    elif what == "ptr negative":
        indptr[0] = -1
    else:
        indptr[0] = E
        indptr[-1] = 0
    return Case("raw.segment_fwd", what, lambda: OPS.segment_fwd(src, indptr, reduce, reduce in ("min", "max")),
                arg="indptr")


def raw_scatter_case(draw):
    g = torch_gen(draw)
    L, n = draw(st.integers(1, 12)), draw(st.integers(1, 6))
    src = torch.randn(2, L, 3, generator=g, dtype=torch.float64)
    index = torch.randint(0, n, (L,), generator=g)
    reduce = pick(draw, (REDUCES))
    if draw(st.booleans()) and reduce in ("min", "max"):
        out, arg = OPS.scatter_fwd(src, index, n, reduce, True)
        arg = arg.clone()
        arg.view(-1)[draw(st.integers(0, arg.numel() - 1))] = pick(draw, ((L + 1, -1, 2**40)))
        return Case("raw.scatter_bwd", "arg out of range",
                    lambda: OPS.scatter_bwd(torch.randn_like(out), index, arg, reduce), arg="arg")
    what = pick(draw, (("index past end", "index negative", "index huge", "dim_size negative")))
    index = index.clone()
    size = n
    if what == "dim_size negative":
        size = -1
        arg = "dim_size"
    else:
        index[draw(st.integers(0, L - 1))] = {"index past end": n, "index negative": -1, "index huge": 2**40}[what]
        arg = "index"
    return Case("raw.scatter_fwd", what, lambda: OPS.scatter_fwd(src, index, size, reduce, reduce in ("min", "max")),
                arg=arg)


def raw_block_case(draw):
    g = torch_gen(draw)
    graph = _graph(draw, g, min_nodes=1)
    rowptr, col, perm, colptr, row, cperm = _csr(graph)
    d = draw(st.integers(1, 3))
    diag = draw(st.booleans())
    x = torch.randn(graph.num_nodes, d, 2, generator=g, dtype=torch.float64)
    blocks = torch.randn((graph.num_edges, d) if diag else (graph.num_edges, d, d), generator=g, dtype=torch.float64)
    what, arg = _break_csr(draw, rowptr, col, perm, graph.num_nodes, ("rowptr", "col", "perm"))
    if draw(st.booleans()):
        return Case("raw.block_spmm_fwd", what,
                    lambda: OPS.block_spmm_fwd(rowptr, col, perm, colptr, row, cperm, blocks, x, False), arg=arg)
    go = torch.randn_like(x)
    return Case("raw.block_spmm_bwd_blocks", what,
                lambda: OPS.block_spmm_bwd_blocks(rowptr, col, perm, go, x, diag), arg=arg)


def raw_csr_index_case(draw):
    g = torch_gen(draw)
    n, E = draw(st.integers(1, 6)), draw(st.integers(1, 12))
    key = torch.randint(0, n, (E,), generator=g)
    key[draw(st.integers(0, E - 1))] = pick(draw, ((n, -1, 2**40)))
    return Case("raw.csr_index", "key out of range", lambda: OPS.csr_index(key, n), arg="key")


KINDS = [spmm_case, sddmm_case, edge_softmax_case, block_spmm_case, scatter_case, segment_case, graph_case,
         raw_spmm_case, raw_spmm_arg_bwd_case, raw_sddmm_case, raw_edge_softmax_case, raw_segment_case,
         raw_scatter_case, raw_block_case, raw_csr_index_case]


def cases():
    return kinds_strategy(KINDS)
