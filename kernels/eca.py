"""ECA forward and backward in Triton.

Forward: one pass pools x into p [N, C] (float32 or float64 accumulation); a second pass recomputes each
channel's gate from the k neighbouring means (k loads per program, cheaper than another launch) and rescales.
Backward: one pass computes gs = sum_spatial(g * x); a second recomputes ga = gs * s * (1 - s) on the k
neighbours to form the transposed conv gp and writes dx = g * s + gp / S; a tiny per-sample kernel forms the
weight gradient. Spatial dims are flattened; strides cover both contiguous and channels-last layouts.
"""

import torch
import triton
import triton.language as tl

from . import _alloc


@triton.jit
def _tap(offs_c, j, PAD, C, CIRCULAR: tl.constexpr):
    # Channel index of tap j around each of offs_c, with a validity mask (False in the zero padding).
    i = offs_c + j - PAD
    if CIRCULAR:
        i = i % C
        i = tl.where(i < 0, i + C, i)
        valid = offs_c < C
    else:
        valid = (i >= 0) & (i < C)
    return i, valid


@triton.jit
def _channel_sum_kernel(a_ptr, b_ptr, out_ptr, C, S, stride_n, stride_c, stride_s, scale,
                        HAS_B: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    # out[n, c] = scale * sum_s a[n, c, s] (* b[n, c, s] when HAS_B)
    n = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    base = n * stride_n + offs_c[:, None].to(tl.int64) * stride_c
    acc = tl.zeros([BLOCK_C, BLOCK_S], dtype=ACC)
    for s0 in range(0, S, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        mask = mask_c[:, None] & (offs_s[None, :] < S)
        off = base + offs_s[None, :].to(tl.int64) * stride_s
        v = tl.load(a_ptr + off, mask=mask, other=0.0).to(ACC)
        if HAS_B:
            v = v * tl.load(b_ptr + off, mask=mask, other=0.0).to(ACC)
        acc += v
    tl.store(out_ptr + n * C + offs_c, tl.sum(acc, axis=1) * scale, mask=mask_c)


@triton.jit
def _scale_kernel(x_ptr, y_ptr, p_ptr, w_ptr, gate_ptr, C, S, K, PAD, stride_n, stride_c, stride_s,
                  CIRCULAR: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pid_s = tl.program_id(2)
    mask_c = offs_c < C
    a = tl.zeros([BLOCK_C], dtype=ACC)
    for j in range(0, K):
        i, valid = _tap(offs_c, j, PAD, C, CIRCULAR)
        pv = tl.load(p_ptr + n * C + i, mask=valid & mask_c, other=0.0)
        a += tl.load(w_ptr + j).to(ACC) * pv
    gate = 1.0 / (1.0 + tl.exp(-a))
    if pid_s == 0:
        tl.store(gate_ptr + n * C + offs_c, gate, mask=mask_c)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = mask_c[:, None] & (offs_s[None, :] < S)
    off = n * stride_n + offs_c[:, None].to(tl.int64) * stride_c + offs_s[None, :].to(tl.int64) * stride_s
    x = tl.load(x_ptr + off, mask=mask, other=0.0)
    tl.store(y_ptr + off, (x.to(ACC) * gate[:, None]).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_x_kernel(g_ptr, dx_ptr, gs_ptr, gate_ptr, w_ptr, C, S, K, PAD, inv_S, stride_n, stride_c, stride_s,
                   CIRCULAR: tl.constexpr, ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    # gp[c] = sum_j w[j] * ga[c - j + PAD]: the transposed conv, taps mirrored (j -> K - 1 - j).
    n = tl.program_id(0).to(tl.int64)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pid_s = tl.program_id(2)
    mask_c = offs_c < C
    gp = tl.zeros([BLOCK_C], dtype=ACC)
    for j in range(0, K):
        i, valid = _tap(offs_c, K - 1 - j, PAD, C, CIRCULAR)
        valid = valid & mask_c
        sv = tl.load(gate_ptr + n * C + i, mask=valid, other=0.0)
        gsv = tl.load(gs_ptr + n * C + i, mask=valid, other=0.0)
        gp += tl.load(w_ptr + j).to(ACC) * (gsv * sv * (1.0 - sv))
    gate = tl.load(gate_ptr + n * C + offs_c, mask=mask_c, other=0.0)
    offs_s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)
    mask = mask_c[:, None] & (offs_s[None, :] < S)
    off = n * stride_n + offs_c[:, None].to(tl.int64) * stride_c + offs_s[None, :].to(tl.int64) * stride_s
    g = tl.load(g_ptr + off, mask=mask, other=0.0).to(ACC)
    dx = g * gate[:, None] + (gp * inv_S)[:, None]
    tl.store(dx_ptr + off, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _grad_w_kernel(gs_ptr, gate_ptr, p_ptr, out_ptr, C, K, PAD, CIRCULAR: tl.constexpr, ACC: tl.constexpr,
                   BLOCK_C: tl.constexpr):
    # out[n, j] = sum_c ga[n, c] * p[n, tap(c, j)]
    n = tl.program_id(0).to(tl.int64)
    for j in range(0, K):
        acc = tl.zeros([BLOCK_C], dtype=ACC)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            mask_c = offs_c < C
            sv = tl.load(gate_ptr + n * C + offs_c, mask=mask_c, other=0.0)
            gsv = tl.load(gs_ptr + n * C + offs_c, mask=mask_c, other=0.0)
            i, valid = _tap(offs_c, j, PAD, C, CIRCULAR)
            pv = tl.load(p_ptr + n * C + i, mask=valid & mask_c, other=0.0)
            acc += gsv * sv * (1.0 - sv) * pv
        tl.store(out_ptr + n * K + j, tl.sum(acc, axis=0))


def _is_channels_last(x):
    return x.dim() >= 3 and not x.is_contiguous() and x.movedim(1, -1).is_contiguous()


def _geometry(x):
    """(x in a kernel layout, N, C, S, strides (n, c, s), channels_last)."""
    if not _is_channels_last(x):
        x = x.contiguous()
    n, c = x.shape[:2]
    s = x[0, 0].numel() if x.numel() else int(torch.tensor(x.shape[2:]).prod())
    cl = _is_channels_last(x)
    strides = (c * s, 1, c) if cl else (c * s, s, 1)
    return x, n, c, s, strides, cl


def _blocks(c, s, cl):
    # Tiles of about 4K elements, long along the unit-stride dim so loads coalesce.
    if cl:
        bc = min(triton.next_power_of_2(max(c, 1)), 256)
        bs = max(1, min(triton.next_power_of_2(max(s, 1)), 4096 // bc))
    else:
        bs = min(triton.next_power_of_2(max(s, 1)), 1024)
        bc = max(1, min(triton.next_power_of_2(max(c, 1)), 4096 // bs))
    return bc, bs


def _acc(x):
    return (torch.float64, tl.float64) if x.dtype == torch.float64 else (torch.float32, tl.float32)


def eca_forward(x, weight, circular):
    """Triton launcher of fastlayers::eca_fwd: returns (y, pooled [N, C], gate [N, C])."""
    x, n, c, s, (sn, sc, ss), cl = _geometry(x)
    acc_t, acc_tl = _acc(x)
    y = _alloc.empty_like(x)
    pooled = _alloc.empty((n, c), acc_t, x.device)
    gate = _alloc.empty((n, c), acc_t, x.device)
    if n * c == 0:
        return y, pooled, gate
    w = weight.to(acc_t).contiguous()
    k = w.numel()
    bc, bs = _blocks(c, s, cl)
    _channel_sum_kernel[(n, triton.cdiv(c, bc))](x, x, pooled, c, s, sn, sc, ss, 1.0 / s if s else 0.0,
                                                  HAS_B=False, ACC=acc_tl, BLOCK_C=bc, BLOCK_S=bs)
    _scale_kernel[(n, triton.cdiv(c, bc), max(1, triton.cdiv(s, bs)))](
        x, y, pooled, w, gate, c, s, k, (k - 1) // 2, sn, sc, ss,
        CIRCULAR=circular, ACC=acc_tl, BLOCK_C=bc, BLOCK_S=bs)
    return y, pooled, gate


def eca_backward(grad_y, x, weight, pooled, gate, circular):
    """Triton launcher of fastlayers::eca_bwd: returns (grad_x, grad_weight)."""
    x, n, c, s, (sn, sc, ss), cl = _geometry(x)
    acc_t, acc_tl = _acc(x)
    g = grad_y.to(x.dtype)
    g = g.movedim(1, -1).contiguous().movedim(-1, 1) if cl else g.contiguous()
    dx = _alloc.empty_like(x)
    k = weight.numel()
    if n * c == 0:
        return dx, torch.zeros_like(weight)
    w = weight.to(acc_t).contiguous()
    p = pooled.to(acc_t).contiguous()
    sg = gate.to(acc_t).contiguous()
    gs = _alloc.empty((n, c), acc_t, x.device)
    bc, bs = _blocks(c, s, cl)
    _channel_sum_kernel[(n, triton.cdiv(c, bc))](g, x, gs, c, s, sn, sc, ss, 1.0,
                                                  HAS_B=True, ACC=acc_tl, BLOCK_C=bc, BLOCK_S=bs)
    _grad_x_kernel[(n, triton.cdiv(c, bc), max(1, triton.cdiv(s, bs)))](
        g, dx, gs, sg, w, c, s, k, (k - 1) // 2, 1.0 / s if s else 0.0, sn, sc, ss,
        CIRCULAR=circular, ACC=acc_tl, BLOCK_C=bc, BLOCK_S=bs)
    dw_n = _alloc.empty((n, k), acc_t, x.device)
    _grad_w_kernel[(n,)](gs, sg, p, dw_n, c, k, (k - 1) // 2, CIRCULAR=circular, ACC=acc_tl,
                         BLOCK_C=min(triton.next_power_of_2(c), 1024))
    return dx, dw_n.sum(0).to(weight.dtype)
