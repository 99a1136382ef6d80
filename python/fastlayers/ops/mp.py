"""Sparse message passing: scatter, segment, spmm, sddmm, edge_softmax, block_spmm.

Kernels: C++ on the CPU (csrc/mp/*_cpu.cpp), CUDA C++ (csrc/mp/*.cu) when the extension was built with CUDA.
This module holds the public functions (argument checks), the fake kernels and the autograd formulas; each
backward calls fastlayers ops (for spmm: spmm on the reversed graph and an sddmm), never a reference.
"""

from __future__ import annotations

import math

import torch

from .. import _validate as V
from ..graph import Graph, check_edge_weight
from ..reference import mp as _ref
from . import _backend as B
from ._double_backward import first_order_only

REDUCES = ("sum", "mean", "min", "max")


def _has_kernel(t: torch.Tensor, op: str) -> bool:
    """Whether ``op`` runs a compiled kernel (C++ CPU or CUDA C++) for ``t`` -- fastlayers.ops._backend's answer;
    False sends the caller to the reference. CUDA tensors in a build without CUDA kernels raise there."""
    return B.choose(op, t) != B.REFERENCE


_ops = torch.ops.fastlayers


def _reduce(reduce) -> str:
    if reduce not in REDUCES:
        raise ValueError(f"reduce must be one of {REDUCES}, got {reduce!r}")
    return reduce


def _needs_grad(*ts) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _index(name: str, t) -> torch.Tensor:
    V.tensor(name, t)
    if t.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{name} must have dtype int64 or int32, got {t.dtype}")
    return t.long()


def _graph(graph) -> Graph:
    if not isinstance(graph, Graph):
        raise TypeError(f"graph must be a fastlayers.Graph (Graph.from_edge_index), got {type(graph).__name__}")
    return graph


# ---- scatter --------------------------------------------------------------------------------------------------


def _check_scatter(src, index, dim, dim_size):
    V.tensor("src", src)
    V.floating("src", src)
    index = _index("index", index)
    V.same_device(src=src, index=index)
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    if src.dim() == 0:
        raise ValueError("src must have at least one dimension")
    if not -src.dim() <= dim < src.dim():
        raise IndexError(f"dim {dim} is out of range for src with {src.dim()} dims")
    dim %= src.dim()
    L = src.size(dim)
    # torch_scatter broadcasts a 1-D index along dim; an index of src's rank whose other dims are 1 is the same.
    if index.dim() != 1:
        if index.dim() == src.dim() and all(s == 1 for i, s in enumerate(index.shape) if i != dim):
            index = index.reshape(-1)
        else:
            raise ValueError(f"index must be 1-D with src.size(dim) = {L} entries (broadcast along dim), "
                             f"got shape {tuple(index.shape)}")
    if index.numel() != L:
        raise ValueError(f"index must have src.size(dim) = {L} entries, got {index.numel()}")
    if dim_size is not None and (isinstance(dim_size, bool) or not isinstance(dim_size, int) or dim_size < 0):
        raise ValueError(f"dim_size must be a non-negative int or None, got {dim_size!r}")
    if L and torch.compiler.is_compiling() and dim_size is not None:
        pass  # value checks need the data: traced code runs them eagerly first, the kernel guards the rest
    elif L:
        lo, hi = (int(v) for v in torch.aminmax(index))
        if lo < 0:
            raise IndexError(f"index has a negative value ({lo})")
        if dim_size is None:
            dim_size = hi + 1
        elif hi >= dim_size:
            raise IndexError(f"index value {hi} is out of range for dim_size {dim_size}")
    elif dim_size is None:
        dim_size = 0
    return index, dim, dim_size


def _scatter(src, index, dim, dim_size, reduce, want_arg):
    index, dim, n = _check_scatter(src, index, dim, dim_size)
    reduce = _reduce(reduce)
    shape = tuple(src.shape)
    out_shape = shape[:dim] + (n,) + shape[dim + 1:]
    if not _has_kernel(src, "scatter"):
        out, arg = _ref._scatter(src, index, dim, n, reduce)
        return out, arg
    A, B = math.prod(shape[:dim]), math.prod(shape[dim + 1:])
    need_arg = reduce in ("min", "max") and (want_arg or _needs_grad(src))
    out, arg = _ops.scatter_fwd(src.reshape(A, shape[dim], B), index, n, reduce, need_arg)
    return out.view(out_shape), (arg.view(out_shape) if want_arg else None)


def scatter(src: torch.Tensor, index: torch.Tensor, dim: int = 0, dim_size: int | None = None,
            reduce: str = "sum") -> torch.Tensor:
    """torch_scatter.scatter: reduce the slices of src along ``dim`` into ``dim_size`` slots given by index.

    Args:
        src: floating tensor (float32/float64 on CPU), any shape.
        index: int64/int32 [src.size(dim)] (broadcast along dim; an index of src's rank with size 1 in every other
            dim is accepted too), values in [0, dim_size); unsorted is fine.
        dim: the dimension reduced.
        dim_size: output size along dim; default ``index.max() + 1``. Not capped: the kernels index with int64, and
            an empty src allocates nothing but the (zero) output, so only the allocator can refuse a huge one.
        reduce: "sum", "mean" (divides by the count), "min" or "max". Empty slots give 0. min/max propagate NaN
            like ``torch.scatter_reduce`` with "amax"/"amin" (the arg of a NaN result is its first NaN).

    Returns:
        src's shape with ``dim`` resized to dim_size, src's dtype. Differentiable in src (min/max: the gradient
        goes to the lowest position among ties), to any order (double backward too). Deterministic.
    """
    return _scatter(src, index, dim, dim_size, reduce, False)[0]


def scatter_max(src, index, dim: int = 0, dim_size: int | None = None):
    """torch_scatter.scatter_max: (out, argmax), argmax int64 positions along dim (src.size(dim) if empty)."""
    return _scatter(src, index, dim, dim_size, "max", True)


def scatter_min(src, index, dim: int = 0, dim_size: int | None = None):
    """torch_scatter.scatter_min: (out, argmin), argmin int64 positions along dim (src.size(dim) if empty)."""
    return _scatter(src, index, dim, dim_size, "min", True)


@torch.library.register_fake("fastlayers::scatter_fwd")
def _scatter_fwd_fake(src, index, dim_size, reduce, need_arg):
    A, _, B = src.shape
    na = A if need_arg and reduce in ("min", "max") else 0
    return src.new_empty((A, dim_size, B)), src.new_empty((na, dim_size, B), dtype=torch.int64)


@torch.library.register_fake("fastlayers::scatter_bwd")
def _scatter_bwd_fake(grad_out, index, arg, reduce):
    A, _, B = grad_out.shape
    return grad_out.new_empty((A, index.size(0), B))


def _scatter_setup(ctx, inputs, output):
    _src, index, _dim_size, reduce, need_arg = inputs
    _, arg = output
    ctx.mark_non_differentiable(arg)
    ctx.save_for_backward(index, arg)
    ctx.reduce = reduce
    ctx.need_arg = need_arg


def _scatter_backward(ctx, grad_out, _grad_arg):
    index, arg = ctx.saved_tensors
    if ctx.reduce in ("min", "max") and not ctx.need_arg:
        raise RuntimeError("scatter_fwd: backward of min/max needs the forward called with need_arg=True")
    if torch.is_grad_enabled():  # create_graph=True: the backward must be differentiable itself
        return _ScatterBwd.apply(grad_out, index, arg, ctx.reduce), None, None, None, None
    return _ops.scatter_bwd(grad_out, index, arg, ctx.reduce), None, None, None, None


class _ScatterBwd(torch.autograd.Function):
    """scatter_bwd with its derivative, for double backward. scatter_bwd is linear in grad_out (its other inputs
    are indices), so its adjoint is the forward scatter for sum/mean (mean: the same 1/count per slot) and, for
    min/max, the gather of each slot's winning position (the second derivative of the piecewise-linear
    reduction itself is zero)."""

    @staticmethod
    def forward(ctx, grad_out, index, arg, reduce):
        ctx.save_for_backward(index, arg)
        ctx.reduce, ctx.n = reduce, grad_out.size(1)
        return _ops.scatter_bwd(grad_out, index, arg, reduce)

    @staticmethod
    def backward(ctx, gg):
        index, arg = ctx.saved_tensors
        if ctx.reduce in ("min", "max"):
            A, _L, B = gg.shape
            # Empty slots hold arg = L: the zero row appended at position L.
            return torch.cat([gg, gg.new_zeros(A, 1, B)], 1).gather(1, arg), None, None, None
        return _ops.scatter_fwd(gg.contiguous(), index, ctx.n, ctx.reduce, False)[0], None, None, None


torch.library.register_autograd("fastlayers::scatter_fwd", _scatter_backward, setup_context=_scatter_setup)


@torch.library.register_fake("fastlayers::csr_index")
def _csr_index_fake(key, n):
    return key.new_empty((n + 1,)), key.new_empty((key.size(0),))


# ---- segment --------------------------------------------------------------------------------------------------


def segment(src: torch.Tensor, indptr: torch.Tensor, reduce: str = "sum") -> torch.Tensor:
    """torch_scatter.segment_csr along dim 0: out[i] = reduce(src[indptr[i]:indptr[i+1]]).

    Args:
        src: floating [E, *] (float32/float64 on CPU).
        indptr: int64/int32 [N+1], non-decreasing, values in [0, E]; rows of src outside every segment are ignored.
        reduce: "sum", "mean", "min" or "max"; empty segments give 0; min/max propagate NaN like torch's amax/amin.

    Returns:
        [N, *] of src's dtype. Differentiable in src, to any order.
    """
    V.tensor("src", src)
    V.floating("src", src)
    indptr = _index("indptr", indptr)
    V.same_device(src=src, indptr=indptr)
    reduce = _reduce(reduce)
    if src.dim() == 0:
        raise ValueError("src must have at least one dimension")
    if indptr.dim() != 1 or indptr.numel() < 1:
        raise ValueError(f"indptr must be 1-D [N+1] with N >= 0, got shape {tuple(indptr.shape)}")
    E = src.size(0)
    if torch.compiler.is_compiling():
        pass  # value checks need the data; the kernel still rejects a malformed indptr
    elif indptr.numel() > 1 and bool((indptr[1:] < indptr[:-1]).any()):
        raise ValueError("indptr must be non-decreasing")
    elif int(indptr[0]) < 0 or int(indptr[-1]) > E:
        raise IndexError(f"indptr values must lie in [0, src.size(0) = {E}], got [{int(indptr[0])}, {int(indptr[-1])}]")
    n = indptr.numel() - 1
    if not _has_kernel(src, "segment"):
        return _ref.segment(src, indptr, reduce)
    need_arg = reduce in ("min", "max") and _needs_grad(src)
    out, _ = _ops.segment_fwd(src.reshape(E, math.prod(src.shape[1:])), indptr, reduce, need_arg)
    return out.view((n,) + tuple(src.shape[1:]))


@torch.library.register_fake("fastlayers::segment_fwd")
def _segment_fwd_fake(src, indptr, reduce, need_arg):
    n = indptr.size(0) - 1
    na = n if need_arg and reduce in ("min", "max") else 0
    return src.new_empty((n, src.size(1))), src.new_empty((na, src.size(1)), dtype=torch.int64)


@torch.library.register_fake("fastlayers::segment_bwd")
def _segment_bwd_fake(grad_out, indptr, arg, num_src, reduce):
    return grad_out.new_empty((num_src, grad_out.size(1)))


def _segment_setup(ctx, inputs, output):
    src, indptr, reduce, need_arg = inputs
    _, arg = output
    ctx.mark_non_differentiable(arg)
    ctx.save_for_backward(indptr, arg)
    ctx.reduce, ctx.need_arg, ctx.num_src = reduce, need_arg, src.size(0)


def _segment_backward(ctx, grad_out, _grad_arg):
    indptr, arg = ctx.saved_tensors
    if ctx.reduce in ("min", "max") and not ctx.need_arg:
        raise RuntimeError("segment_fwd: backward of min/max needs the forward called with need_arg=True")
    if torch.is_grad_enabled():  # create_graph=True: the backward must be differentiable itself
        return _SegmentBwd.apply(grad_out, indptr, arg, ctx.num_src, ctx.reduce), None, None, None
    return _ops.segment_bwd(grad_out, indptr, arg, ctx.num_src, ctx.reduce), None, None, None


class _SegmentBwd(torch.autograd.Function):
    """segment_bwd with its derivative, for double backward: linear in grad_out, so its adjoint is segment_fwd
    for sum/mean and, for min/max, the gather of each segment's winning row (see _ScatterBwd)."""

    @staticmethod
    def forward(ctx, grad_out, indptr, arg, num_src, reduce):
        ctx.save_for_backward(indptr, arg)
        ctx.reduce, ctx.num_src = reduce, num_src
        return _ops.segment_bwd(grad_out, indptr, arg, num_src, reduce)

    @staticmethod
    def backward(ctx, gg):
        indptr, arg = ctx.saved_tensors
        if ctx.reduce in ("min", "max"):
            # Empty segments hold arg = num_src: the zero row appended there.
            return torch.cat([gg, gg.new_zeros(1, gg.size(1))]).gather(0, arg), None, None, None, None
        return _ops.segment_fwd(gg.contiguous(), indptr, ctx.reduce, False)[0], None, None, None, None


torch.library.register_autograd("fastlayers::segment_fwd", _segment_backward, setup_context=_segment_setup)


# ---- spmm -----------------------------------------------------------------------------------------------------


def _node_features(graph: Graph, name: str, x) -> torch.Tensor:
    V.tensor(name, x)
    V.floating(name, x)
    if x.dim() not in (2, 3):
        raise ValueError(f"{name} must be [N, F] or [N, H, F], got shape {tuple(x.shape)}")
    if x.size(0) != graph.num_nodes:
        raise ValueError(f"{name} has {x.size(0)} rows but the graph has {graph.num_nodes} nodes")
    if x.device != graph.device:
        raise ValueError(f"{name} is on {x.device} but the graph is on {graph.device}")
    return x


def _csr_args(g: Graph):
    return g.rowptr, g.col, g.perm, g.colptr, g.row, g.cperm


def spmm(graph: Graph, x: torch.Tensor, edge_weight: torch.Tensor | None = None, reduce: str = "sum") -> torch.Tensor:
    """Fused gather-reduce: ``out[v] = reduce over edges u -> v of w_e * x[u]``; messages are never materialised.

    Args:
        graph: a :class:`fastlayers.Graph` on x's device.
        x: [N, F] or [N, H, F] float (float32/float64 on CPU).
        edge_weight: [E] (shared by heads) or [E, H] in the caller's edge order; default the graph's stored
            weights, else 1. Cast to x's dtype.
        reduce: "sum", "mean" (divides by the in-degree, not by the weight sum), "min" or "max" (of w_e * x[u];
            NaN propagates as in torch's amax/amin).
            Nodes without incoming edges get 0.

    Returns:
        x's shape and dtype. Differentiable in x and edge_weight (min/max: the gradient goes to the lowest edge id
        among ties). Deterministic. sum/mean support double backward; min/max are first order only (a second
        derivative raises DoubleBackwardError: use fastlayers.reference.mp.spmm for such a term).
    """
    graph = _graph(graph)
    reduce = _reduce(reduce)
    x = _node_features(graph, "x", x)
    if edge_weight is None:
        edge_weight = graph.edge_weight
    else:
        check_edge_weight(edge_weight, graph.num_edges, graph.device)
    H = x.size(1) if x.dim() == 3 else 1
    if edge_weight is not None:
        if edge_weight.dim() == 2 and edge_weight.size(1) not in (1, H):
            raise ValueError(f"edge_weight has {edge_weight.size(1)} heads but x has {H} (x must be [N, H, F])")
        edge_weight = edge_weight.to(x.dtype)
    if not _has_kernel(x, "spmm"):
        return _ref.spmm(graph, x, edge_weight, reduce)
    x3 = x if x.dim() == 3 else x.unsqueeze(1)
    need_arg = reduce in ("min", "max") and _needs_grad(x, edge_weight)
    out, _ = _ops.spmm_fwd(*_csr_args(graph), edge_weight, x3, reduce, need_arg)
    return out if x.dim() == 3 else out.squeeze(1)


@torch.library.register_fake("fastlayers::spmm_fwd")
def _spmm_fwd_fake(rowptr, col, perm, colptr, row, cperm, weight, x, reduce, need_arg):
    n = rowptr.size(0) - 1
    na = n if need_arg and reduce in ("min", "max") else 0
    return x.new_empty((n, x.size(1), x.size(2))), x.new_empty((na, x.size(1), x.size(2)), dtype=torch.int64)


@torch.library.register_fake("fastlayers::spmm_arg_bwd")
def _spmm_arg_bwd_fake(colptr, row, cperm, weight, x, grad_out, arg, need_x, need_weight):
    gx = x.new_empty((x.size(0) if need_x else 0, x.size(1), x.size(2)))
    gw = torch.empty_like(weight, memory_format=torch.contiguous_format) if (need_weight and weight is not None) \
        else x.new_empty((0,))
    return gx, gw


def _spmm_setup(ctx, inputs, output):
    rowptr, col, perm, colptr, row, cperm, weight, x, reduce, need_arg = inputs
    _, arg = output
    ctx.mark_non_differentiable(arg)
    ctx.save_for_backward(rowptr, col, perm, colptr, row, cperm, weight, x, arg)
    ctx.reduce, ctx.need_arg = reduce, need_arg


def _weight_grad(per_head: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Reduce a [E, H] per-head weight gradient to weight's shape ([E], [E, 1] or [E, H])."""
    if weight.dim() == 1:
        return per_head.sum(-1)
    return per_head if weight.size(1) == per_head.size(1) else per_head.sum(-1, keepdim=True)


def _spmm_backward(ctx, grad_out, _grad_arg):
    rowptr, col, perm, colptr, row, cperm, weight, x, arg = ctx.saved_tensors
    need_w = weight is not None and ctx.needs_input_grad[6]
    need_x = ctx.needs_input_grad[7]
    gx = gw = None
    if ctx.reduce in ("min", "max"):
        if not ctx.need_arg:
            raise RuntimeError("spmm_fwd: backward of min/max needs the forward called with need_arg=True")
        # Second derivatives of min/max spmm have cross terms (weight x grad_out gathered at arg) with no kernel
        # yet: refused rather than computed.
        gx, gw = first_order_only(
            f"spmm(reduce={ctx.reduce!r})", f"fastlayers.reference.mp.spmm(..., reduce={ctx.reduce!r})",
            lambda w, xx, g: _ops.spmm_arg_bwd(colptr, row, cperm, w, xx, g, arg, need_x, need_w),
            weight, x, grad_out)
        gx = gx if need_x else None
        gw = gw if need_w else None
    else:
        g = grad_out
        if ctx.reduce == "mean":
            deg = (rowptr[1:] - rowptr[:-1]).clamp(min=1).to(g.dtype)
            g = g / deg.view(-1, 1, 1)
        if need_x:
            # The transposed product: spmm over the reversed graph (its CSR is this graph's CSC).
            gx = _ops.spmm_fwd(colptr, row, cperm, rowptr, col, perm, weight, g, "sum", False)[0]
        if need_w:
            gw = _weight_grad(_ops.sddmm(rowptr, col, perm, colptr, row, cperm, g, x), weight)
    return None, None, None, None, None, None, gw, gx, None, None


torch.library.register_autograd("fastlayers::spmm_fwd", _spmm_backward, setup_context=_spmm_setup)


# ---- sddmm ----------------------------------------------------------------------------------------------------


def sddmm(graph: Graph, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-edge dot products ``a[target] . b[source]`` (attention scores), in the caller's edge order.

    Args:
        graph: a :class:`fastlayers.Graph` on the tensors' device.
        a, b: [N, F] or [N, H, F] floats of one shape and dtype.

    Returns:
        [E] for [N, F] inputs, [E, H] for [N, H, F]. Differentiable in a and b, to any order.
    """
    graph = _graph(graph)
    a = _node_features(graph, "a", a)
    b = _node_features(graph, "b", b)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype:
        raise TypeError(f"a and b must have one dtype, got {a.dtype} and {b.dtype}")
    if not _has_kernel(a, "sddmm"):
        return _ref.sddmm(graph, a, b)
    out = _ops.sddmm(*_csr_args(graph), a if a.dim() == 3 else a.unsqueeze(1), b if b.dim() == 3 else b.unsqueeze(1))
    return out if a.dim() == 3 else out.squeeze(1)


@torch.library.register_fake("fastlayers::sddmm")
def _sddmm_fake(rowptr, col, perm, colptr, row, cperm, a, b):
    return a.new_empty((col.size(0), a.size(1)))


def _sddmm_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _sddmm_backward(ctx, grad):
    rowptr, col, perm, colptr, row, cperm, a, b = ctx.saved_tensors
    ga = gb = None
    if ctx.needs_input_grad[6]:  # sum over v's in-edges of g_e b[u]
        ga = _ops.spmm_fwd(rowptr, col, perm, colptr, row, cperm, grad, b, "sum", False)[0]
    if ctx.needs_input_grad[7]:  # sum over u's out-edges of g_e a[v]
        gb = _ops.spmm_fwd(colptr, row, cperm, rowptr, col, perm, grad, a, "sum", False)[0]
    return None, None, None, None, None, None, ga, gb


torch.library.register_autograd("fastlayers::sddmm", _sddmm_backward, setup_context=_sddmm_setup)


# ---- edge softmax ---------------------------------------------------------------------------------------------


def edge_softmax(graph: Graph, scores: torch.Tensor) -> torch.Tensor:
    """Softmax of edge scores over each target's incoming edges (GAT attention), per head.

    Args:
        graph: a :class:`fastlayers.Graph` on scores' device.
        scores: [E] or [E, H] floats in the caller's edge order.

    Returns:
        scores' shape and dtype; the weights of each target's incoming edges sum to 1. Differentiable, to any
        order (double backward too).
    """
    graph = _graph(graph)
    V.tensor("scores", scores)
    V.floating("scores", scores)
    if scores.dim() not in (1, 2) or scores.size(0) != graph.num_edges:
        raise ValueError(f"scores must be [E] or [E, H] with E = {graph.num_edges}, got {tuple(scores.shape)}")
    if scores.device != graph.device:
        raise ValueError(f"scores is on {scores.device} but the graph is on {graph.device}")
    if not _has_kernel(scores, "edge_softmax"):
        return _ref.edge_softmax(graph, scores)
    out = _ops.edge_softmax_fwd(graph.rowptr, graph.perm, scores if scores.dim() == 2 else scores.unsqueeze(1))
    return out if scores.dim() == 2 else out.squeeze(1)


@torch.library.register_fake("fastlayers::edge_softmax_fwd")
def _edge_softmax_fwd_fake(rowptr, perm, scores):
    return torch.empty_like(scores, memory_format=torch.contiguous_format)


@torch.library.register_fake("fastlayers::edge_softmax_bwd")
def _edge_softmax_bwd_fake(rowptr, perm, out, grad_out):
    return torch.empty_like(out, memory_format=torch.contiguous_format)


def _edge_softmax_setup(ctx, inputs, output):
    rowptr, perm, _ = inputs
    ctx.save_for_backward(rowptr, perm, output)


def _edge_softmax_backward(ctx, grad):
    rowptr, perm, out = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the backward must be differentiable itself
        return None, None, _EdgeSoftmaxBwd.apply(rowptr, perm, out, grad)
    return None, None, _ops.edge_softmax_bwd(rowptr, perm, out, grad)


def _in_edge_sum(rowptr, perm, target, v):
    """Per edge (caller's order), the sum of v [E, H] over the incoming edges of its target; differentiable
    (segment_fwd over the CSR slots, deterministic, then a gather)."""
    return _ops.segment_fwd(v[perm].contiguous(), rowptr, "sum", False)[0][target]


class _EdgeSoftmaxBwd(torch.autograd.Function):
    """edge_softmax_bwd with its derivative, for double backward. With y the softmax output, g its gradient and
    S = sum of y g over the target's in-edges, the backward is r = y (g - S); given gg = dL/dr and
    T = sum of y gg over the in-edges: dL/dg = y (gg - T) and dL/dy = gg (g - S) - g T."""

    @staticmethod
    def forward(ctx, rowptr, perm, out, grad):
        ctx.save_for_backward(rowptr, perm, out, grad)
        return _ops.edge_softmax_bwd(rowptr, perm, out, grad)

    @staticmethod
    def backward(ctx, gg):
        rowptr, perm, out, grad = ctx.saved_tensors
        n, E = rowptr.numel() - 1, perm.numel()
        slot_target = torch.repeat_interleave(torch.arange(n, device=perm.device), rowptr.diff(), output_size=E)
        target = torch.empty_like(perm).index_copy_(0, perm, slot_target)
        S = _in_edge_sum(rowptr, perm, target, out * grad)
        T = _in_edge_sum(rowptr, perm, target, out * gg)
        d_out = d_grad = None
        if ctx.needs_input_grad[2]:
            d_out = gg * (grad - S) - grad * T
        if ctx.needs_input_grad[3]:
            d_grad = out * (gg - T)
        return None, None, d_out, d_grad


torch.library.register_autograd("fastlayers::edge_softmax_fwd", _edge_softmax_backward,
                                setup_context=_edge_softmax_setup)


# ---- block spmm -----------------------------------------------------------------------------------------------


def block_spmm(graph: Graph, blocks: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sheaf-style diffusion: ``out[v] = sum over edges e = u -> v of B_e x[u]`` with a d x d block per edge.

    Args:
        graph: a :class:`fastlayers.Graph` on x's device.
        blocks: [E, d, d] blocks, or [E, d] diagonal blocks, in the caller's edge order; cast to x's dtype.
        x: [N, d, F] floats (float32/float64 on CPU): d-dimensional stalks with F channels.

    Returns:
        [N, d, F]. Differentiable in blocks and x, to any order; nothing of size [E, d, F] is materialised.
    """
    graph = _graph(graph)
    x = _node_features(graph, "x", x)
    if x.dim() != 3:
        raise ValueError(f"x must be [N, d, F], got shape {tuple(x.shape)}")
    V.tensor("blocks", blocks)
    if not blocks.dtype.is_floating_point:
        raise TypeError(f"blocks must have a floating dtype, got {blocks.dtype}")
    d = x.size(1)
    if blocks.dim() not in (2, 3) or blocks.size(0) != graph.num_edges or tuple(blocks.shape[1:]) not in ((d,), (d, d)):
        raise ValueError(f"blocks must be [E, d, d] or [E, d] with E = {graph.num_edges}, d = {d}, "
                         f"got {tuple(blocks.shape)}")
    if blocks.device != graph.device:
        raise ValueError(f"blocks is on {blocks.device} but the graph is on {graph.device}")
    blocks = blocks.to(x.dtype)
    if not _has_kernel(x, "block_spmm"):
        return _ref.block_spmm(graph, blocks, x)
    return _ops.block_spmm_fwd(*_csr_args(graph), blocks, x, False)


@torch.library.register_fake("fastlayers::block_spmm_fwd")
def _block_spmm_fwd_fake(rowptr, col, perm, colptr, row, cperm, blocks, x, transpose):
    return x.new_empty((rowptr.size(0) - 1, x.size(1), x.size(2)))


@torch.library.register_fake("fastlayers::block_spmm_bwd_blocks")
def _block_spmm_bwd_blocks_fake(rowptr, col, perm, grad_out, x, diag):
    E, d = col.size(0), x.size(1)
    return x.new_empty((E, d) if diag else (E, d, d))


def _block_setup(ctx, inputs, output):
    *csr, blocks, x, transpose = inputs
    ctx.save_for_backward(*csr, blocks, x)
    ctx.transpose = transpose


def _block_backward(ctx, grad):
    rowptr, col, perm, colptr, row, cperm, blocks, x = ctx.saved_tensors
    gb = gx = None
    diag = blocks.dim() == 2
    if ctx.needs_input_grad[7]:  # the transposed operator: B_e^T over the reversed graph
        gx = _ops.block_spmm_fwd(colptr, row, cperm, rowptr, col, perm, blocks, grad, not ctx.transpose)
    if ctx.needs_input_grad[6]:
        if torch.is_grad_enabled():  # create_graph=True: the backward must be differentiable itself
            gb = _BlockBwdBlocks.apply(rowptr, col, perm, colptr, row, cperm, grad, x, diag)
        else:
            gb = _ops.block_spmm_bwd_blocks(rowptr, col, perm, grad, x, diag)
        if ctx.transpose and not diag:
            gb = gb.transpose(1, 2)
    return None, None, None, None, None, None, gb, gx, None


class _BlockBwdBlocks(torch.autograd.Function):
    """block_spmm_bwd_blocks with its derivative, for double backward. The blocks' gradient
    G_e = grad[v] x[u]^T (its diagonal for diag blocks) is bilinear; given gg_e = dL/dG_e the adjoints are
    block_spmm again: dL/dgrad[v] = sum over in-edges of gg_e x[u], dL/dx[u] = sum over out-edges of
    gg_e^T grad[v]."""

    @staticmethod
    def forward(ctx, rowptr, col, perm, colptr, row, cperm, grad, x, diag):
        ctx.save_for_backward(rowptr, col, perm, colptr, row, cperm, grad, x)
        return _ops.block_spmm_bwd_blocks(rowptr, col, perm, grad, x, diag)

    @staticmethod
    def backward(ctx, gg):
        rowptr, col, perm, colptr, row, cperm, grad, x = ctx.saved_tensors
        gg = gg.contiguous()
        d_grad = d_x = None
        if ctx.needs_input_grad[6]:
            d_grad = _ops.block_spmm_fwd(rowptr, col, perm, colptr, row, cperm, gg, x, False)
        if ctx.needs_input_grad[7]:
            d_x = _ops.block_spmm_fwd(colptr, row, cperm, rowptr, col, perm, gg, grad, True)
        return None, None, None, None, None, None, d_grad, d_x, None


torch.library.register_autograd("fastlayers::block_spmm_fwd", _block_backward, setup_context=_block_setup)
