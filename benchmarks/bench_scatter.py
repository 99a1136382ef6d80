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
    if quick:
        return [("scatter", 200_000, 64, "sum", "torch_scatter"), ("segment", 200_000, 64, "sum", "torch_scatter")]
    out = [("scatter", 1_000_000, F, "sum", "torch_scatter") for F in (16, 64, 256)]
    out += [("scatter", 1_000_000, 64, "sum", "index_add_"), ("scatter", 1_000_000, 64, "sum+backward", "torch_scatter"),
            ("scatter", 1_000_000, 64, "mean", "torch_scatter"), ("scatter", 1_000_000, 64, "max", "torch_scatter")]
    out += [("segment", 1_000_000, F, "sum", "torch_scatter") for F in (16, 64)]
    out += [("segment", 1_000_000, 64, "max", "torch_scatter")]
    if torch_scatter is None:
        out = [s for s in out if s[-1] != "torch_scatter"]
    return out


def build(spec, device):
    op, E, F, reduce, peer_name = spec
    gen = torch.Generator().manual_seed(E + F)
    index = torch.randint(0, N, (E,), generator=gen).to(device)
    src = torch.randn(E, F, device=device)
    backward = reduce.endswith("+backward")
    red = reduce.split("+")[0]
    if op == "segment":
        index = index.sort().values
        indptr = torch.zeros(N + 1, dtype=torch.long, device=device)
        indptr[1:] = torch.cumsum(torch.bincount(index, minlength=N), 0)

        def ours():
            with torch.no_grad():
                return segment(src, indptr, red)

        def peer():
            with torch.no_grad():
                return torch_scatter.segment_csr(src, indptr, reduce=red)
        label = "torch_scatter.segment_csr"
    else:
        if backward:
            src.requires_grad_()
            go = torch.randn(N, F, device=device)

            def ours():
                return torch.autograd.grad(scatter(src, index, 0, N, red), src, go)

            def peer():
                return torch.autograd.grad(torch_scatter.scatter(src, index, 0, dim_size=N, reduce=red), src, go)
        else:
            def ours():
                with torch.no_grad():
                    return scatter(src, index, 0, N, red)
            if peer_name == "index_add_":
                def peer():
                    return torch.zeros(N, F, device=device).index_add_(0, index, src)
            else:
                def peer():
                    with torch.no_grad():
                        return torch_scatter.scatter(src, index, 0, dim_size=N, reduce=red)
        label = "Tensor.index_add_" if peer_name == "index_add_" else "torch_scatter.scatter"
    min_bytes = E * F * 4 + E * 8 + N * F * 4
    if backward:
        min_bytes += E * F * 4 + N * F * 4 + E * 8
    return Case(name=f"{op} {reduce}" + (" (unsorted index)" if op == "scatter" else ""),
                shape=f"E={E // 1000}k N=100k F={F}", ours=ours, peer=peer, peer_name=label, min_bytes=min_bytes)
