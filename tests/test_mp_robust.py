"""Robustness of the message-passing ops (issue 18): the registered ops torch.ops.fastlayers.* are public
(torch.compile / torch.export graphs call them with any tensors), so malformed indices must raise a clear error
naming the op and the argument, never crash, read out of bounds or drop data silently.

Each malformed raw-op call runs in a child process: a regression to a segfault or heap corruption then fails its
test (the child dies with a signal) instead of killing pytest."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from fastlayers import Graph, ops

D = torch.float64

# The child's common set-up: a 5-node graph with isolated node 4, E = 6, and the raw CSR/CSC of it.
_PRELUDE = textwrap.dedent("""
    import torch, fastlayers
    from fastlayers import Graph
    T = torch.ops.fastlayers
    N, E = 5, 6
    ei = torch.tensor([[0, 1, 2, 3, 0, 2], [1, 2, 3, 0, 2, 1]])
    g = Graph.from_edge_index(ei, num_nodes=N)
    rowptr, col, perm = g.rowptr.clone(), g.col.clone(), g.perm.clone()
    colptr, row, cperm = g.colptr.clone(), g.row.clone(), g.cperm.clone()
    x = torch.randn(N, 1, 4, dtype=torch.float64)
    w = torch.rand(E, dtype=torch.float64)
""")


def _run_child(body: str):
    """Runs PRELUDE + body in a fresh interpreter; the body's exception (if any) is printed as ERR:<type>:<msg>."""
    code = _PRELUDE + textwrap.dedent("""
        try:
    """) + textwrap.indent(textwrap.dedent(body), "    ") + textwrap.dedent("""
        except Exception as e:
            print("ERR:" + type(e).__name__ + ":" + str(e).splitlines()[0], flush=True)
        else:
            print("NOERR", flush=True)
    """)
    env = dict(os.environ, OMP_NUM_THREADS="2")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    return p.returncode, p.stdout, p.stderr


# (name, child body, substrings the error message must contain). Each of these crashed the process, wrote out of
# bounds or read garbage before the kernels checked their indices.
CRASHES = [
    ("spmm_col_far", "col[2] = 10**9\nT.spmm_fwd(rowptr, col, perm, colptr, row, cperm, None, x, 'sum', False)",
     ["spmm_fwd", "col[2] = 1000000000", "[0, 5)"]),
    ("spmm_col_negative", "col[0] = -3\nT.spmm_fwd(rowptr, col, perm, colptr, row, cperm, None, x, 'max', True)",
     ["spmm_fwd", "col[0] = -3"]),
    # one past the end: read silently (garbage, no fault) before
    ("spmm_col_one_past", "col[5] = N\nT.spmm_fwd(rowptr, col, perm, colptr, row, cperm, None, x, 'sum', False)",
     ["spmm_fwd", "col[5] = 5", "[0, 5)"]),
    ("spmm_rowptr_past_end", "rowptr[-1] = 10**6\nT.spmm_fwd(rowptr, col, perm, colptr, row, cperm, None, x, 'sum', False)",
     ["spmm_fwd", "rowptr[-1]", "1000000", "(6)"]),
    ("spmm_rowptr_not_monotone", "rowptr[1] = 5\nT.spmm_fwd(rowptr, col, perm, colptr, row, cperm, None, x, 'sum', False)",
     ["spmm_fwd", "non-decreasing", "rowptr[1] = 5 > rowptr[2] = 3"]),
    ("spmm_rowptr_start", "rowptr[0] = -2\nT.spmm_fwd(rowptr, col, perm, colptr, row, cperm, None, x, 'sum', False)",
     ["spmm_fwd", "rowptr[0] must be 0", "-2"]),
    ("spmm_perm_weighted", "perm[3] = 10**7\nT.spmm_fwd(rowptr, col, perm, colptr, row, cperm, w, x, 'sum', False)",
     ["spmm_fwd", "perm[3] = 10000000", "[0, 6)"]),
    ("spmm_perm_arg", "perm[1] = E\nT.spmm_fwd(rowptr, col, perm, colptr, row, cperm, None, x, 'max', True)",
     ["spmm_fwd", "perm[1] = 6", "[0, 6)"]),
    ("sddmm_col", "col[4] = 2**40\nT.sddmm(rowptr, col, perm, colptr, row, cperm, x, x)",
     ["sddmm", f"col[4] = {2**40}", "[0, 5)"]),
    ("sddmm_perm", "perm[0] = -1\nT.sddmm(rowptr, col, perm, colptr, row, cperm, x, x)",
     ["sddmm", "perm[0] = -1", "[0, 6)"]),
    ("edge_softmax_fwd_perm", "perm[2] = 100\nT.edge_softmax_fwd(rowptr, perm, torch.randn(E, 2, dtype=torch.float64))",
     ["edge_softmax_fwd", "perm[2] = 100", "[0, 6)"]),
    ("edge_softmax_bwd_perm",
     "perm[2] = 100\ny = torch.rand(E, 2, dtype=torch.float64)\nT.edge_softmax_bwd(rowptr, perm, y, y)",
     ["edge_softmax_bwd", "perm[2] = 100"]),
    ("block_fwd_col", ("col[1] = 10**9\nT.block_spmm_fwd(rowptr, col, perm, colptr, row, cperm, "
                       "torch.rand(E, 1, 1, dtype=torch.float64), x, False)"),
     ["block_spmm_fwd", "col[1] = 1000000000", "[0, 5)"]),
    ("block_fwd_perm", ("perm[1] = 10**9\nT.block_spmm_fwd(rowptr, col, perm, colptr, row, cperm, "
                        "torch.rand(E, 1, dtype=torch.float64), x, False)"),
     ["block_spmm_fwd", "perm[1] = 1000000000", "[0, 6)"]),
    # corrupted the heap ("free(): invalid next size") before
    ("block_bwd_perm", "perm[:] = 10**5\nT.block_spmm_bwd_blocks(rowptr, col, perm, x, x, False)",
     ["block_spmm_bwd_blocks", "perm[0] = 100000", "[0, 6)"]),
    ("block_bwd_col", "col[3] = -7\nT.block_spmm_bwd_blocks(rowptr, col, perm, x, x, True)",
     ["block_spmm_bwd_blocks", "col[3] = -7"]),
    ("block_bwd_rowptr", "rowptr[-1] = 2**40\nT.block_spmm_bwd_blocks(rowptr, col, perm, x, x, False)",
     ["block_spmm_bwd_blocks", "rowptr[-1]"]),
    ("spmm_arg_bwd_row", ("row[2] = 99\nT.spmm_arg_bwd(colptr, row, cperm, w, x, x, torch.zeros(N, 1, 4, "
                          "dtype=torch.long), True, True)"),
     ["spmm_arg_bwd", "row[2] = 99", "[0, 5)"]),
    ("spmm_arg_bwd_cperm", ("cperm[2] = 99\nT.spmm_arg_bwd(colptr, row, cperm, w, x, x, torch.zeros(N, 1, 4, "
                            "dtype=torch.long), True, True)"),
     ["spmm_arg_bwd", "cperm[2] = 99", "[0, 6)"]),
    ("spmm_arg_bwd_colptr", ("colptr[1] = 10**6\nT.spmm_arg_bwd(colptr, row, cperm, w, x, x, torch.zeros(N, 1, 4, "
                             "dtype=torch.long), True, True)"),
     ["spmm_arg_bwd", "colptr"]),
]

# arg values past the source size were compared, never matched, and the gradient came back as zeros silently.
SILENT = [
    ("segment_bwd_arg", ("src = torch.randn(6, 3, dtype=torch.float64)\nindptr = torch.tensor([0, 2, 6])\n"
                         "arg = torch.tensor([[0, 1, 7], [2, 3, 4]])\n"
                         "T.segment_bwd(torch.ones(2, 3, dtype=torch.float64), indptr, arg, 6, 'max')"),
     ["segment_bwd", "arg", "= 7", "[0, 6)"]),
    ("spmm_arg_bwd_arg", ("a = torch.zeros(N, 1, 4, dtype=torch.long)\na[1, 0, 2] = 10**6\n"
                          "T.spmm_arg_bwd(colptr, row, cperm, None, x, x, a, True, False)"),
     ["spmm_arg_bwd", "arg", "= 1000000", "[0, 6)"]),
    ("scatter_bwd_arg", ("arg = torch.tensor([[[0], [9]]])\n"
                         "T.scatter_bwd(torch.ones(1, 2, 1, dtype=torch.float64), torch.tensor([0, 1, 1]), arg, 'max')"),
     ["scatter_bwd", "arg", "= 9", "[0, 3)"]),
    ("scatter_fwd_index", ("T.scatter_fwd(torch.ones(1, 3, 2, dtype=torch.float64), torch.tensor([0, 5, 1]), 2, "
                           "'sum', False)"),
     ["scatter_fwd", "index[1] = 5", "[0, dim_size = 2)"]),
]


@pytest.mark.parametrize("name, body, expected", CRASHES + SILENT, ids=[c[0] for c in CRASHES + SILENT])
def test_bad_index_raises_in_child(name, body, expected):
    rc, out, err = _run_child(body)
    assert rc == 0, f"{name}: the child died (rc {rc}); stderr:\n{err[-2000:]}"
    line = [ln for ln in out.splitlines() if ln.startswith(("ERR:", "NOERR"))]
    assert line and line[-1].startswith("ERR:RuntimeError:"), f"{name}: expected a RuntimeError, got {out!r}"
    for s in expected:
        assert s in line[-1], f"{name}: {s!r} not in {line[-1]!r}"


def test_sentinel_args_are_accepted():
    """The forward's 'no element' sentinel (source size) in arg is valid input to the backward ops."""
    g = Graph.from_edge_index(torch.tensor([[0, 1], [1, 1]]), num_nodes=3)  # nodes 0 and 2 receive nothing
    x = torch.randn(3, 1, 2, dtype=D)
    _out, arg = torch.ops.fastlayers.spmm_fwd(g.rowptr, g.col, g.perm, g.colptr, g.row, g.cperm, None, x, "max", True)
    assert (arg[0] == g.num_edges).all() and (arg[2] == g.num_edges).all()
    gx, _ = torch.ops.fastlayers.spmm_arg_bwd(g.colptr, g.row, g.cperm, None, x, torch.ones_like(x), arg, True, False)
    assert gx.shape == x.shape
    src = torch.randn(4, 2, dtype=D)
    indptr = torch.tensor([0, 0, 4])
    _, sarg = torch.ops.fastlayers.segment_fwd(src, indptr, "min", True)
    assert (sarg[0] == 4).all()
    gs = torch.ops.fastlayers.segment_bwd(torch.ones(2, 2, dtype=D), indptr, sarg, 4, "min")
    assert gs.shape == (4, 2) and gs.sum() == 2
    s3 = torch.randn(1, 3, 2, dtype=D)
    _, carg = torch.ops.fastlayers.scatter_fwd(s3, torch.tensor([0, 0, 2]), 3, "max", True)
    assert (carg[0, 1] == 3).all()
    gsc = torch.ops.fastlayers.scatter_bwd(torch.ones(1, 3, 2, dtype=D), torch.tensor([0, 0, 2]), carg, "max")
    assert gsc.shape == (1, 3, 2) and gsc.sum() == 4


def test_scatter_huge_dim_size_on_empty_src_allocates_no_scratch():
    """An empty src with dim_size 2**31 + 1: nothing to reduce, so only the (here zero-byte) output is allocated;
    before, a rowptr and a histogram of dim_size int64 each (~34 GB) were. The child runs under a 6 GB address-space
    limit, so scratch of that size fails there."""
    if os.environ.get("FASTLAYERS_UNDER_ASAN") == "1":
        pytest.skip("an address-space limit cannot hold AddressSanitizer's shadow memory (make asan)")
    body = """
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))
    out, arg = T.scatter_fwd(torch.empty(1, 0, 0), torch.empty(0, dtype=torch.long), 2**31 + 1, 'max', True)
    assert out.shape == (1, 2**31 + 1, 0) and arg.shape == (1, 2**31 + 1, 0), (out.shape, arg.shape)
    out, _ = T.scatter_fwd(torch.empty(1, 0, 3), torch.empty(0, dtype=torch.long), 1000, 'sum', False)
    assert out.shape == (1, 1000, 3) and (out == 0).all()
    """
    rc, out, err = _run_child(body)
    assert rc == 0, f"the child died (rc {rc}); stderr:\n{err[-2000:]}"
    assert "NOERR" in out, out


# ---- Graph built from raw CSR ----------------------------------------------------------------------------------


def _fields(g: Graph) -> dict:
    return {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in g._fields().items()}


@pytest.fixture
def small():
    return Graph.from_edge_index(torch.tensor([[0, 1, 2, 3, 0, 2], [1, 2, 3, 0, 2, 1]]), num_nodes=5)


def test_graph_raw_csr_valid_roundtrip(small):
    g = Graph(**_fields(small))
    x = torch.randn(5, 3, dtype=D)
    torch.testing.assert_close(ops.spmm(g, x), ops.spmm(small, x))


@pytest.mark.parametrize("field, mutate, exc, pattern", [
    ("rowptr", lambda t: t.__setitem__(2, 6), ValueError, r"rowptr must be non-decreasing, got rowptr\[2\] = 6"),
    ("rowptr", lambda t: t.__setitem__(-1, 10**6), ValueError, r"rowptr\[-1\] must equal the number of edges \(6\)"),
    ("rowptr", lambda t: t.__setitem__(0, 1), ValueError, r"rowptr\[0\] must be 0"),
    ("colptr", lambda t: t.__setitem__(3, 0), ValueError, r"colptr must be non-decreasing"),
    ("col", lambda t: t.__setitem__(1, 2**40), ValueError, rf"col\[1\] = {2**40} is out of range.*\[0, 5\)"),
    ("row", lambda t: t.__setitem__(0, -1), ValueError, r"row\[0\] = -1 is out of range"),
    ("perm", lambda t: t.__setitem__(0, 6), ValueError, r"perm\[0\] = 6 is out of range.*\[0, 6\)"),
    ("perm", lambda t: t.__setitem__(0, int(t[1])), ValueError, r"perm must be a permutation of \[0, 6\)"),
    ("cperm", lambda t: t.__setitem__(slice(None), t.flip(0)), ValueError, r"cperm|row"),
    ("col", lambda t: t.__setitem__(0, (int(t[0]) + 1) % 5), ValueError, r"col\[0\] = .* does not match edge_index"),
    ("in_degree", lambda t: t.__setitem__(0, 3), ValueError, r"in_degree\[0\] = 3 does not match rowptr"),
])
def test_graph_raw_csr_is_validated(small, field, mutate, exc, pattern):
    f = _fields(small)
    mutate(f[field])
    with pytest.raises(exc, match=pattern):
        Graph(**f)


def test_graph_raw_csr_types(small):
    f = _fields(small)
    f["col"] = f["col"].to(torch.int32)
    with pytest.raises(TypeError, match="col must have dtype int64"):
        Graph(**f)
    f = _fields(small)
    f["rowptr"] = f["rowptr"][:-1]
    with pytest.raises(ValueError, match=r"rowptr must have shape \[6\]"):
        Graph(**f)
    f = _fields(small)
    f["num_nodes"] = True
    with pytest.raises(TypeError, match="num_nodes must be an int"):
        Graph(**f)


def test_from_edge_index_refuses_bool_num_nodes():
    ei = torch.tensor([[0], [0]])
    with pytest.raises(TypeError, match="num_nodes must be an int"):
        Graph.from_edge_index(ei, num_nodes=torch.tensor(True))
    with pytest.raises(TypeError, match="num_nodes must be an int"):
        Graph.from_edge_index(ei, num_nodes=True)
    assert Graph.from_edge_index(ei, num_nodes=torch.tensor(3)).num_nodes == 3


def test_graph_internal_paths_still_work(small):
    r = small.reverse()
    assert r.reverse() is small
    assert small.to("cpu").num_edges == 6
    assert small.with_edge_weight(torch.rand(6)).edge_weight.shape == (6,)


# ---- NaN in max/min follows torch ------------------------------------------------------------------------------


def _scatter_ref(src, index, n, reduce):
    out = torch.zeros(n, *src.shape[1:], dtype=src.dtype)
    idx = index.view(-1, *([1] * (src.dim() - 1))).expand_as(src)
    return out.scatter_reduce(0, idx, src, "amax" if reduce == "max" else "amin", include_self=False)


@pytest.mark.parametrize("reduce", ["max", "min"])
def test_scatter_and_segment_propagate_nan(reduce):
    src = torch.randn(12, 4, dtype=D)
    src[3, 0] = float("nan")  # not the first of its row: the old kernels dropped it
    src[0, 1] = float("nan")  # the first of its row
    src[7, 2] = src[9, 2] = float("nan")
    index = torch.tensor([0, 1, 0, 0, 2, 2, 1, 1, 0, 1, 2, 2])
    ref = _scatter_ref(src, index, 4, reduce)
    out = ops.scatter(src, index, dim=0, dim_size=4, reduce=reduce)
    torch.testing.assert_close(out, ref, equal_nan=True)
    assert out.isnan().sum() >= 3
    # segment: the same rows sorted by index
    order = torch.sort(index, stable=True).indices
    indptr = torch.tensor([0, 4, 8, 12])
    seg = ops.segment(src[order], indptr, reduce=reduce)
    torch.testing.assert_close(seg, _scatter_ref(src[order], index[order], 3, reduce), equal_nan=True)


@pytest.mark.parametrize("reduce", ["max", "min"])
@pytest.mark.parametrize("weighted", [False, True])
def test_spmm_propagates_nan(reduce, weighted):
    g = Graph.from_edge_index(torch.tensor([[0, 1, 2, 3, 0, 2, 1], [1, 1, 1, 0, 2, 2, 0]]), num_nodes=5)
    x = torch.randn(5, 3, dtype=D)
    x[2, 0] = float("nan")  # the last edge into node 1 for feature 0
    x[1, 2] = float("nan")
    w = torch.rand(g.num_edges, dtype=D) + 0.5 if weighted else None
    out = ops.spmm(g, x, edge_weight=w, reduce=reduce)
    src, dst = g.edge_index
    msg = x[src] * (w.view(-1, 1) if weighted else 1)
    ref = _scatter_ref(msg, dst, 5, reduce)
    torch.testing.assert_close(out, ref, equal_nan=True)
    assert out[1, 0].isnan() and out[0, 2].isnan()


def test_nan_arg_points_at_first_nan():
    src = torch.tensor([[1.0], [float("nan")], [5.0], [float("nan")]], dtype=D)
    out, arg = torch.ops.fastlayers.segment_fwd(src, torch.tensor([0, 4]), "max", True)
    assert out.isnan().all() and arg.item() == 1


# ---- valid edge cases keep working -----------------------------------------------------------------------------


def test_empty_and_degenerate_inputs():
    empty = Graph.from_edge_index(torch.empty(2, 0, dtype=torch.long), num_nodes=0)
    assert ops.spmm(empty, torch.empty(0, 3, dtype=D)).shape == (0, 3)
    isolated = Graph.from_edge_index(torch.empty(2, 0, dtype=torch.long), num_nodes=4)
    for reduce in ("sum", "mean", "max", "min"):
        out = ops.spmm(isolated, torch.randn(4, 3, dtype=D), reduce=reduce)
        assert out.shape == (4, 3) and (out == 0).all()
    g = Graph.from_edge_index(torch.tensor([[0, 1], [1, 2]]), num_nodes=4)
    assert ops.spmm(g, torch.randn(4, 0, dtype=D)).shape == (4, 0)
    assert ops.sddmm(g, torch.randn(4, 0, dtype=D), torch.randn(4, 0, dtype=D)).shape[0] == 2
    assert ops.edge_softmax(g, torch.randn(2, dtype=D)).shape == (2,)
    assert ops.block_spmm(g, torch.rand(2, 2, 2, dtype=D), torch.randn(4, 2, 3, dtype=D)).shape == (4, 2, 3)
    assert ops.segment(torch.randn(0, 3, dtype=D), torch.zeros(3, dtype=torch.long), reduce="max").shape == (2, 3)
    out = ops.scatter(torch.randn(0, 3, dtype=D), torch.empty(0, dtype=torch.long), dim=0, dim_size=5, reduce="max")
    assert out.shape == (5, 3) and (out == 0).all()
    out = ops.scatter(torch.randn(3, 0, dtype=D), torch.tensor([0, 2, 2]), dim=0, dim_size=4, reduce="sum")
    assert out.shape == (4, 0)


def test_graph_with_huge_inferred_num_nodes_says_to_relabel():
    """An id of 2**40 with num_nodes inferred asks for 2**40 rows of CSR: refused by name, not an allocator trace."""
    with pytest.raises(ValueError, match=r"num_nodes = 1099511627777 \(edge_index.max\(\) \+ 1\).*relabel"):
        Graph.from_edge_index(torch.tensor([[0], [2**40]]))
