"""mp (message passing): fastlayers.ops.scatter / segment vs torch_scatter (scatter, segment_csr) and
Tensor.index_add_, on E = 1M rows reduced into N = 100k slots by an unsorted (scatter) or sorted (segment) index;
fastlayers.ops.spmm vs torch.sparse.mm on CSR and torch_scatter (gather + scatter), forward and forward+backward,
on a random graph with N = 100k nodes and E = 1M (and 4M) edges; GCNConv / GATConv against PyG."""

import warnings

import torch
from fastlayers import Graph
from fastlayers.ops import scatter, segment, spmm
from harness import Case

try:
    import torch_scatter
except ImportError:
    torch_scatter = None
try:
    import torch_geometric.nn as pyg_nn
except ImportError:
    pyg_nn = None

N = 100_000


def specs(device, quick):
    """Each case tagged with its part: ("scatter", op, E, F, reduce, peer) or ("spmm", E, F, reduce, mode, peer)."""
    return [("scatter", *s) for s in _scatter_specs(device, quick)] + [("spmm", *s) for s in _spmm_specs(device, quick)]


def build(spec, device):
    part, *rest = spec
    return _scatter_build(tuple(rest), device) if part == "scatter" else _spmm_build(tuple(rest), device)


# ---- scatter / segment ------------------------------------------------------------------------------------------


def _scatter_specs(device, quick):
    if quick and device != "cpu":  # the device check: real sizes, fewer cases
        out = [("scatter", 1_000_000, 64, "sum", "torch_scatter"), ("scatter", 1_000_000, 64, "max", "torch_scatter"),
               ("segment", 1_000_000, 64, "sum", "torch_scatter")]
    elif quick:
        out = [("scatter", 200_000, 64, "sum", "torch_scatter"), ("segment", 200_000, 64, "sum", "torch_scatter")]
    else:
        out = _scatter_full()
    if torch_scatter is None:  # e.g. the GPU check machine: torch's own scatter_reduce_ / segment_reduce instead
        out = [(*s[:-1], "torch") if s[-1] == "torch_scatter" else s for s in out]
    return out


def _scatter_full():
    out = [("scatter", 1_000_000, F, "sum", "torch_scatter") for F in (16, 64, 256)]
    out += [("scatter", 1_000_000, 64, "sum", "index_add_"), ("scatter", 1_000_000, 64, "sum+backward", "torch_scatter"),
            ("scatter", 1_000_000, 64, "mean", "torch_scatter"), ("scatter", 1_000_000, 64, "max", "torch_scatter")]
    out += [("segment", 1_000_000, F, "sum", "torch_scatter") for F in (16, 64)]
    out += [("segment", 1_000_000, 64, "max", "torch_scatter")]
    return out


def _scatter_build(spec, device):
    op, E, F, reduce, peer_name = spec
    gen = torch.Generator().manual_seed(E + F)
    # The index is the graph's (fixed across a training run); the rows are each step's (fresh).
    index = torch.randint(0, N, (E,), generator=gen).to(device)
    backward = reduce.endswith("+backward")
    red = reduce.split("+")[0]

    def make_inputs(i):
        src = torch.randn(E, F, device=device)
        return (src.requires_grad_(), torch.randn(N, F, device=device)) if backward else (src,)

    if op == "segment":
        index = index.sort().values
        indptr = torch.zeros(N + 1, dtype=torch.long, device=device)
        indptr[1:] = torch.cumsum(torch.bincount(index, minlength=N), 0)

        def ours(src):
            with torch.no_grad():
                return segment(src, indptr, red)

        if peer_name == "torch":
            lengths = indptr.diff()

            def peer(src):
                with torch.no_grad():
                    return torch.segment_reduce(src, red, lengths=lengths, unsafe=True)
            label = "torch.segment_reduce"
        else:
            def peer(src):
                with torch.no_grad():
                    return torch_scatter.segment_csr(src, indptr, reduce=red)
            label = "torch_scatter.segment_csr"
    else:
        if peer_name == "torch":  # what a user writes without torch_scatter
            idx = index.view(-1, 1).expand(E, F)
            amode = {"sum": "sum", "mean": "mean", "max": "amax", "min": "amin"}[red]

            def peer_op(src):
                return torch.zeros(N, F, device=device).scatter_reduce_(0, idx, src, amode, include_self=False)
        else:
            def peer_op(src):
                return torch_scatter.scatter(src, index, 0, dim_size=N, reduce=red)
        if backward:
            def ours(src, go):
                return torch.autograd.grad(scatter(src, index, 0, N, red), src, go)

            def peer(src, go):
                return torch.autograd.grad(peer_op(src), src, go)
        else:
            def ours(src):
                with torch.no_grad():
                    return scatter(src, index, 0, N, red)
            if peer_name == "index_add_":
                def peer(src):
                    return torch.zeros(N, F, device=device).index_add_(0, index, src)
            else:
                def peer(src):
                    with torch.no_grad():
                        return peer_op(src)
        label = ("Tensor.index_add_" if peer_name == "index_add_" else
                 f"Tensor.scatter_reduce_ {amode}" if peer_name == "torch" else "torch_scatter.scatter")
    min_bytes = E * F * 4 + E * 8 + N * F * 4
    if backward:
        min_bytes += E * F * 4 + N * F * 4 + E * 8
    return Case(name=f"{op} {reduce}" + (" (unsorted index)" if op == "scatter" else ""),
                shape=f"E={E // 1000}k N=100k F={F}", ours=ours, peer=peer, peer_name=label, min_bytes=min_bytes,
                make_inputs=make_inputs, input_bytes=E * F * 4 + (N * F * 4 if backward else 0))

# ---- spmm, GCNConv, GATConv -------------------------------------------------------------------------------------
# torch.sparse_csr_tensor warns that CSR support is in beta on every call.
warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
_GRAPHS = {}


def _graph(E, device):
    """One random graph per size, shared by the cases (building it is not what is timed)."""
    key = (E, device)
    if key not in _GRAPHS:
        _GRAPHS.clear()
        gen = torch.Generator().manual_seed(E)
        ei = torch.randint(0, N, (2, E), generator=gen).to(device)
        g = Graph.from_edge_index(ei, num_nodes=N)
        csr = torch.sparse_csr_tensor(g.rowptr, g.col, torch.ones(E, device=device), (N, N))
        _GRAPHS[key] = (g, csr)
    return _GRAPHS[key]


def _spmm_specs(device, quick):
    if quick and device != "cpu":  # the device check: real sizes, fewer cases
        out = [(1_000_000, 64, "sum", "forward", "sparse.mm"), (1_000_000, 64, "sum", "forward+backward", "sparse.mm"),
               (1_000_000, 64, "max", "forward", "sparse.mm"), (4_000_000, 64, "sum", "forward", "sparse.mm")]
        return out + ([(1_000_000, 64, "gcn", "forward+backward", "pyg")] if pyg_nn is not None else [])
    if quick:
        return ([("cora", 16, "gcn", "forward+backward", "pyg")] if pyg_nn is not None else []) + [(200_000, 64, "sum", "forward", "sparse.mm"), (200_000, 64, "sum", "forward+backward", "sparse.mm"),
                (200_000, 64, "max", "forward", "sparse.mm")]
    out = []
    for F in (16, 64, 256):
        out += [(1_000_000, F, "sum", "forward", "sparse.mm"), (1_000_000, F, "sum", "forward+backward", "sparse.mm"),
                (1_000_000, F, "max", "forward", "sparse.mm")]
    out += [(1_000_000, 64, "mean", "forward", "sparse.mm"), (1_000_000, 64, "max", "forward+backward", "sparse.mm")]
    if torch_scatter is not None:
        out += [(1_000_000, 64, "sum", "forward", "torch_scatter"),
                (1_000_000, 64, "sum", "forward+backward", "torch_scatter")]
    out += [(4_000_000, 64, "sum", "forward", "sparse.mm"), (4_000_000, 64, "sum", "forward+backward", "sparse.mm")]
    if pyg_nn is not None:
        out += [(1_000_000, 64, "gcn", "forward+backward", "pyg"), ("cora", 16, "gcn", "forward+backward", "pyg"),
                (1_000_000, 16, "gat", "forward+backward", "pyg")]
    return out


def _gat_case(E, F, device):
    """A 4-head GAT layer (64 -> 4 x 16) vs PyG's GATConv with the same weights."""
    from fastlayers.nn import GATConv

    g, _ = _graph(E, device)
    peer = pyg_nn.GATConv(64, F, heads=4).to(device)
    ours = GATConv(64, F, heads=4).to(device)
    ours.load_state_dict(peer.state_dict())
    ours(torch.randn(N, 64, device=device), g)  # builds the graph with self loops once
    ei = g.edge_index

    def run(m, graph, x):
        y = m(x, graph)
        return torch.autograd.grad(y, list(m.parameters()), torch.ones_like(y))
    return Case(name="GATConv forward+backward", shape=f"N=100k E={E / 1e6:g}M 64->4x{F}",
                ours=lambda x: run(ours, g, x), peer=lambda x: run(peer, ei, x), peer_name="PyG GATConv",
                min_bytes=N * 64 * 4 + 2 * ei.numel() * 8, make_inputs=lambda i: (torch.randn(N, 64, device=device),),
                input_bytes=N * 64 * 4)


def _gcn_case(E, F, device):
    """A GCN layer (self loops, symmetric normalisation, linear map) vs PyG's GCNConv with the same weights."""
    from fastlayers.nn import GCNConv

    if E == "cora":
        import os

        from fastlayers.data import load_planetoid_npz

        path = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "nodeclf", "cora", "cora.npz")
        d = load_planetoid_npz(path)
        x0, g, shape = d.x.to(device), d.graph.to(device), "Cora: N=2708 E=10556 1433->16"
        # Cora's features are one fixed matrix: fresh inputs are its rows' features permuted per call.
        make = (lambda i: (x0,) if i == 0 else (x0[torch.randperm(x0.size(0), device=device)],))
    else:
        g, _ = _graph(E, device)
        x0, shape = torch.randn(N, F, device=device), f"N=100k E={E / 1e6:g}M {F}->{F}"
        make = (lambda i: (x0,) if i == 0 else (torch.randn(N, F, device=device),))
    peer = pyg_nn.GCNConv(x0.size(1), F).to(device)
    ours = GCNConv(x0.size(1), F).to(device)
    ours.load_state_dict(peer.state_dict())
    ours(x0, g)  # builds the graph with self loops once, as PyG's cached=False recomputes its normalisation
    ei = g.edge_index

    def run(m, graph, x):
        y = m(x, graph)
        return torch.autograd.grad(y, list(m.parameters()), torch.ones_like(y))
    min_bytes = x0.numel() * 4 + 2 * ei.numel() * 8
    return Case(name="GCNConv forward+backward", shape=shape, ours=lambda x: run(ours, g, x),
                peer=lambda x: run(peer, ei, x), peer_name="PyG GCNConv", min_bytes=min_bytes, make_inputs=make,
                input_bytes=x0.numel() * 4)


def _spmm_build(spec, device):
    E, F, reduce, mode, peer_name = spec
    if reduce == "gcn":
        return _gcn_case(E, F, device)
    if reduce == "gat":
        return _gat_case(E, F, device)
    g, csr = _graph(E, device)
    src, dst = g.edge_index
    if peer_name == "sparse.mm" and reduce != "sum" and device != "cpu":
        # torch.sparse.mm takes non-sum reductions on CPU CSR only: on GPUs the peer is scatter_reduce.
        idx = dst.view(-1, 1).expand(E, F)
        amode = {"mean": "mean", "max": "amax", "min": "amin"}[reduce]

        def peer_fn(x):
            return x.new_zeros(N, F).scatter_reduce_(0, idx, x[src], amode, include_self=False)
        peer_label = f"Tensor.scatter_reduce_ {amode}"
    elif peer_name == "sparse.mm":
        peer_reduce = {"sum": "sum", "mean": "mean", "max": "amax", "min": "amin"}[reduce]

        def peer_fn(x):
            return torch.sparse.mm(csr, x, peer_reduce) if reduce != "sum" else torch.sparse.mm(csr, x)
        peer_label = "torch.sparse.mm CSR" + ("" if reduce == "sum" else f" {peer_reduce}")
    else:
        def peer_fn(x):
            return torch_scatter.scatter(x[src], dst, 0, dim_size=N, reduce=reduce)
        peer_label = f"torch_scatter {reduce}"

    def ours_fn(x):
        return spmm(g, x, reduce=reduce)

    nbytes_x = N * F * 4
    idx_bytes = E * 8 + (N + 1) * 8
    forward = mode == "forward"

    def make_inputs(i):
        x = torch.randn(N, F, device=device)
        return (x,) if forward else (x.requires_grad_(), torch.randn(N, F, device=device))

    if forward:
        def run(fn, x):
            with torch.no_grad():
                return fn(x)
        min_bytes = idx_bytes + 2 * nbytes_x
    else:
        def run(fn, x, go):
            return torch.autograd.grad(fn(x), x, go)
        min_bytes = 2 * idx_bytes + 5 * nbytes_x
    return Case(name=f"spmm {reduce} {mode}", shape=f"N=100k E={E / 1e6:g}M F={F}", ours=lambda *a: run(ours_fn, *a),
                peer=lambda *a: run(peer_fn, *a), peer_name=peer_label, min_bytes=min_bytes, make_inputs=make_inputs,
                input_bytes=nbytes_x * (1 if forward else 2))
