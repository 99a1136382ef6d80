"""Message passing in plain PyTorch: materialises every [E, ...] message, then reduces with scatter_reduce.

The ground truth of the tests (float64) and the fallback on devices without a fastlayers kernel. Max/min route
the gradient to the lowest position among ties (the kernels' rule), not evenly as autograd of amax would.
"""

from __future__ import annotations

import torch

REDUCES = ("sum", "mean", "min", "max")


def reduce_rows(msg: torch.Tensor, index: torch.Tensor, n: int, reduce: str):
    """Reduce rows of msg [L, *] into n rows by index [L] (int64). Returns (out [n, *], arg or None).

    arg (max/min only): int64 [n, *], the lowest position p in [0, L) attaining the extreme, L for empty rows.
    Empty rows give 0.
    """
    L = msg.size(0)
    shape = (n,) + tuple(msg.shape[1:])
    idx = index.view((L,) + (1,) * (msg.dim() - 1)).expand_as(msg)
    if reduce in ("sum", "mean"):
        out = msg.new_zeros(shape).index_add(0, index, msg)
        if reduce == "mean":
            cnt = torch.bincount(index, minlength=n).clamp(min=1).to(msg.dtype)
            out = out / cnt.view((n,) + (1,) * (msg.dim() - 1))
        return out, None
    amode = "amax" if reduce == "max" else "amin"
    with torch.no_grad():
        ext = msg.new_zeros(shape).scatter_reduce(0, idx, msg, amode, include_self=False)
        pos = torch.arange(L, device=msg.device).view(idx.shape[:1] + (1,) * (msg.dim() - 1)).expand_as(msg)
        # NaN propagates as in scatter_reduce's amax/amin, and the arg of a NaN result is its first NaN (the
        # kernels' rule): NaN == NaN is false, so NaNs are matched explicitly.
        ext_g = ext.gather(0, idx)
        hit = (msg == ext_g) | (msg.isnan() & ext_g.isnan())
        cand = torch.where(hit, pos, torch.full_like(pos, L))
        arg = torch.full(shape, L, dtype=torch.int64, device=msg.device).scatter_reduce(0, idx, cand, "amin")
    empty = arg == L
    safe = torch.where(empty, torch.zeros_like(arg), arg)
    # No messages: zeros still connected to msg, so autograd sees a (zero) gradient as for the kernels.
    out = msg.gather(0, safe) if L else msg.new_zeros(shape) + 0 * msg.sum()
    out = torch.where(empty, torch.zeros_like(out), out)
    return out, arg


def scatter(src: torch.Tensor, index: torch.Tensor, dim: int = 0, dim_size: int | None = None,
            reduce: str = "sum") -> torch.Tensor:
    """torch_scatter.scatter with a 1-D index [src.size(dim)]."""
    return _scatter(src, index, dim, dim_size, reduce)[0]


def scatter_max(src, index, dim=0, dim_size=None):
    return _scatter(src, index, dim, dim_size, "max")


def scatter_min(src, index, dim=0, dim_size=None):
    return _scatter(src, index, dim, dim_size, "min")


def _scatter(src, index, dim, dim_size, reduce):
    dim = dim % src.dim()
    index = index.reshape(-1).long()
    n = dim_size if dim_size is not None else (int(index.max()) + 1 if index.numel() else 0)
    out, arg = reduce_rows(src.movedim(dim, 0), index, n, reduce)
    return out.movedim(0, dim), (arg.movedim(0, dim) if arg is not None else None)


def segment(src: torch.Tensor, indptr: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
    """torch_scatter.segment_csr along dim 0 with a 1-D indptr [N+1]; rows outside the segments are ignored."""
    indptr = indptr.long()
    n = indptr.numel() - 1
    counts = indptr[1:] - indptr[:-1]
    index = torch.repeat_interleave(torch.arange(n, device=src.device), counts)
    start = int(indptr[0])
    part = src[start:start + index.numel()]
    return reduce_rows(part, index, n, reduce)[0]


def _xw(graph, x, edge_weight):
    """Messages w_e * x[u] as [E, H, F] (x viewed as [N, H, F])."""
    x3 = x if x.dim() == 3 else x.unsqueeze(1)
    msg = x3[graph.edge_index[0]]
    if edge_weight is not None:
        w = edge_weight if edge_weight.dim() == 2 else edge_weight.unsqueeze(1)
        msg = msg * w.unsqueeze(-1)
    return msg


def spmm(graph, x: torch.Tensor, edge_weight: torch.Tensor | None = None, reduce: str = "sum") -> torch.Tensor:
    """out[v] = reduce over edges u -> v of w_e * x[u]; x [N, F] or [N, H, F], edge_weight [E] or [E, H]."""
    if edge_weight is None:
        edge_weight = graph.edge_weight
    msg = _xw(graph, x, edge_weight)
    out, _ = reduce_rows(msg, graph.edge_index[1], graph.num_nodes, reduce)
    return out if x.dim() == 3 else out.squeeze(1)


def sddmm(graph, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-edge a[target] . b[source]: a, b [N, F] -> [E]; [N, H, F] -> [E, H]."""
    src, dst = graph.edge_index
    return (a[dst] * b[src]).sum(-1)


def edge_softmax(graph, scores: torch.Tensor) -> torch.Tensor:
    """Softmax of scores [E] or [E, H] over each target's incoming edges."""
    dst = graph.edge_index[1]
    n = graph.num_nodes
    idx = dst.view(-1, *([1] * (scores.dim() - 1))).expand_as(scores)
    with torch.no_grad():
        m = scores.new_full((n,) + tuple(scores.shape[1:]), float("-inf")).scatter_reduce(
            0, idx, scores, "amax", include_self=True)
    e = torch.exp(scores - m.gather(0, idx))
    s = scores.new_zeros(m.shape).index_add(0, dst, e)
    return e / s.gather(0, idx)


def block_spmm(graph, blocks: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """out[v] = sum over edges u -> v of B_e x[u]; blocks [E, d, d] (or [E, d] diagonal), x [N, d, F]."""
    src, dst = graph.edge_index
    xs = x[src]
    msg = blocks.unsqueeze(-1) * xs if blocks.dim() == 2 else torch.bmm(blocks, xs)
    return x.new_zeros((graph.num_nodes,) + tuple(x.shape[1:])).index_add(0, dst, msg)
