"""scatter / segment: fastlayers.ops.scatter and segment vs torch_scatter (scatter, segment_csr) and
Tensor.index_add_, on E = 1M rows reduced into N = 100k slots by an unsorted (scatter) or sorted (segment) index."""

import torch
from harness import Case

from fastlayers.ops import scatter, segment

try:
    import torch_scatter
except ImportError:
    torch_scatter = None

N = 100_000


def specs(device, quick):
    if quick and device != "cpu":  # the device check: real sizes, fewer cases
        out = [("scatter", 1_000_000, 64, "sum", "torch_scatter"), ("scatter", 1_000_000, 64, "max", "torch_scatter"),
               ("segment", 1_000_000, 64, "sum", "torch_scatter")]
    elif quick:
        out = [("scatter", 200_000, 64, "sum", "torch_scatter"), ("segment", 200_000, 64, "sum", "torch_scatter")]
    else:
        out = _full()
    if torch_scatter is None:  # e.g. the GPU check machine: torch's own scatter_reduce_ / segment_reduce instead
        out = [(*s[:-1], "torch") if s[-1] == "torch_scatter" else s for s in out]
    return out


def _full():
    out = [("scatter", 1_000_000, F, "sum", "torch_scatter") for F in (16, 64, 256)]
    out += [("scatter", 1_000_000, 64, "sum", "index_add_"), ("scatter", 1_000_000, 64, "sum+backward", "torch_scatter"),
            ("scatter", 1_000_000, 64, "mean", "torch_scatter"), ("scatter", 1_000_000, 64, "max", "torch_scatter")]
    out += [("segment", 1_000_000, F, "sum", "torch_scatter") for F in (16, 64)]
    out += [("segment", 1_000_000, 64, "max", "torch_scatter")]
    return out


def build(spec, device):
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
