"""Alignment refinement in Triton: batched log-domain Sinkhorn (forward and reverse sweep), the hinge score and
partner transport, with their backward kernels.

One program per pair keeps the whole N x M tile (N, M <= 64) in registers for all 2 * num_iters half-steps, so a
forward is one launch that reads the logits once and writes P and the per-half-step logsumexp vectors. The
backward recomputes every intermediate state as x0 - A_i - B_j from running sums A, B of those vectors while it
walks the half-steps in reverse (row step y = x - lse_row(x): dx = dy - exp(y) * rowsum(dy); columns alike).
Compute is float32 (float64 for float64 inputs); P and gradients come back in the input dtype.
"""

import struct

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from . import _alloc

MAX_SIDE = 64


@triton.jit
def _load_x0(l_ptr, rm_ptr, cm_ptr, pid, N, M, inv_tau, REFERENCE: tl.constexpr, ACC: tl.constexpr,
             BN: tl.constexpr, BM: tl.constexpr):
    # x0 = logits / tau on the active block: in-bounds entries (reference: padded ones set to 0) or real ones
    # (masked: the rest -inf). Returns (x0, active, real, row_active, col_active).
    offs_n = tl.arange(0, BN)
    offs_m = tl.arange(0, BM)
    in_n = offs_n < N
    in_m = offs_m < M
    rm = tl.load(rm_ptr + pid * N + offs_n, mask=in_n, other=0) != 0
    cm = tl.load(cm_ptr + pid * M + offs_m, mask=in_m, other=0) != 0
    inb = in_n[:, None] & in_m[None, :]
    real = rm[:, None] & cm[None, :]
    off = pid * N * M + offs_n[:, None] * M + offs_m[None, :]
    v = tl.load(l_ptr + off, mask=inb & real, other=0.0).to(ACC) * inv_tau
    if REFERENCE:
        active = inb
        row_active = in_n
        col_active = in_m
        # A pair with no column (or row) at all has nothing to normalise.
    else:
        active = inb & real
        row_active = in_n & rm & (tl.sum(cm.to(tl.int32), axis=0) > 0)
        col_active = in_m & cm & (tl.sum(rm.to(tl.int32), axis=0) > 0)
    x0 = tl.where(active, v, float("-inf"))
    return x0, active, real, row_active, col_active


@triton.jit
def _lse(x, axis: tl.constexpr, has):
    # logsumexp along axis; a line with no active entry (all -inf) gets 0 instead of NaN.
    mx = tl.max(x, axis=axis)
    mx = tl.where(has, mx, 0.0)
    if axis == 1:
        s = tl.sum(tl.exp(x - mx[:, None]), axis=1)
    else:
        s = tl.sum(tl.exp(x - mx[None, :]), axis=0)
    return tl.where(has, mx + tl.log(tl.where(has, s, 1.0)), 0.0)


@triton.jit
def _join(hi, lo, ACC: tl.constexpr):
    # A float argument reaches a compiled kernel as fp32: a float64 scalar travels as hi + lo (see _split).
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


@triton.jit
def _sinkhorn_fwd_kernel(l_ptr, rm_ptr, cm_ptr, p_ptr, rl_ptr, cl_ptr, N, M, inv_tau_hi, inv_tau_lo, ITERS,
                         REFERENCE: tl.constexpr, ACC: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    inv_tau = _join(inv_tau_hi, inv_tau_lo, ACC)
    x, active, _real, row_active, col_active = _load_x0(l_ptr, rm_ptr, cm_ptr, pid, N, M, inv_tau, REFERENCE, ACC,
                                                       BN, BM)
    offs_n = tl.arange(0, BN)
    offs_m = tl.arange(0, BM)
    for t in range(ITERS):
        a = _lse(x, 1, row_active)
        x = x - a[:, None]
        tl.store(rl_ptr + (pid * ITERS + t) * N + offs_n, a, mask=offs_n < N)
        b = _lse(x, 0, col_active)
        x = x - b[None, :]
        tl.store(cl_ptr + (pid * ITERS + t) * M + offs_m, b, mask=offs_m < M)
    p = tl.where(active, tl.exp(x), 0.0)
    off = pid * N * M + offs_n[:, None] * M + offs_m[None, :]
    tl.store(p_ptr + off, p.to(p_ptr.dtype.element_ty), mask=(offs_n < N)[:, None] & (offs_m < M)[None, :])


@triton.jit
def _sinkhorn_bwd_kernel(g_ptr, l_ptr, rm_ptr, cm_ptr, rl_ptr, cl_ptr, out_ptr, N, M, inv_tau_hi, inv_tau_lo,
                         ITERS, REFERENCE: tl.constexpr, ACC: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    inv_tau = _join(inv_tau_hi, inv_tau_lo, ACC)
    x0, active, real, _row_active, _col_active = _load_x0(l_ptr, rm_ptr, cm_ptr, pid, N, M, inv_tau, REFERENCE,
                                                        ACC, BN, BM)
    offs_n = tl.arange(0, BN)
    offs_m = tl.arange(0, BM)
    in_n = offs_n < N
    in_m = offs_m < M
    A = tl.zeros([BN], dtype=ACC)
    B = tl.zeros([BM], dtype=ACC)
    for t in range(ITERS):
        A += tl.load(rl_ptr + (pid * ITERS + t) * N + offs_n, mask=in_n, other=0.0).to(ACC)
        B += tl.load(cl_ptr + (pid * ITERS + t) * M + offs_m, mask=in_m, other=0.0).to(ACC)
    off = pid * N * M + offs_n[:, None] * M + offs_m[None, :]
    inb = in_n[:, None] & in_m[None, :]
    g = tl.load(g_ptr + off, mask=inb & active, other=0.0).to(ACC)
    g = g * tl.where(active, tl.exp(x0 - A[:, None] - B[None, :]), 0.0)
    for tt in range(ITERS):
        t = ITERS - 1 - tt
        e = tl.where(active, tl.exp(x0 - A[:, None] - B[None, :]), 0.0)
        g = g - e * tl.sum(g, axis=0)[None, :]
        B -= tl.load(cl_ptr + (pid * ITERS + t) * M + offs_m, mask=in_m, other=0.0).to(ACC)
        e = tl.where(active, tl.exp(x0 - A[:, None] - B[None, :]), 0.0)
        g = g - e * tl.sum(g, axis=1)[:, None]
        A -= tl.load(rl_ptr + (pid * ITERS + t) * N + offs_n, mask=in_n, other=0.0).to(ACC)
    # Reference mode overwrites padded logits with 0: they get no gradient.
    g = tl.where(active & real, g * inv_tau, 0.0)
    tl.store(out_ptr + off, g.to(out_ptr.dtype.element_ty), mask=inb)


def _split(v: float):
    """v as two float32-representable parts, hi + lo == v to about 2^-48 relative: how a float64 scalar reaches a
    compiled kernel, whose float arguments are float32."""
    try:
        hi = struct.unpack("f", struct.pack("f", v))[0]
    except OverflowError:
        raise ValueError(f"1 / tau = {v:g} is beyond float32's range: tau is too small for the Triton kernel") from None
    return hi, v - hi


def _acc(t):
    return (torch.float64, tl.float64) if t.dtype == torch.float64 else (torch.float32, tl.float32)


def _blocks(n, m):
    if n > MAX_SIDE or m > MAX_SIDE:
        raise ValueError(f"the Triton Sinkhorn keeps a pair on chip: N, M <= {MAX_SIDE}, got {n} x {m}")
    return max(triton.next_power_of_2(n), 2), max(triton.next_power_of_2(m), 2)


def _shape_error(op, name, want, t):
    return ValueError(f"{op}: {name} must be {want}, got shape {tuple(t.shape)}")


def _check_sinkhorn(op, logits, row_mask, col_mask, tau, num_iters):
    # The registered op is public (torch.compile, torch.export, direct torch.ops calls): a mask or lse vector of
    # the wrong shape would be read out of bounds by the kernel, so the launcher checks what the kernel indexes.
    if logits.dim() != 3:
        raise _shape_error(op, "logits", "3-D [B, N, M]", logits)
    if not logits.dtype.is_floating_point:
        raise TypeError(f"{op}: logits must have a floating dtype, got {logits.dtype}")
    b, n, m = logits.shape
    for name, mask, k in (("row_mask", row_mask, n), ("col_mask", col_mask, m)):
        if mask.dtype != torch.bool:
            raise TypeError(f"{op}: {name} must be bool, got {mask.dtype}")
        if tuple(mask.shape) != (b, k):
            raise _shape_error(op, name, f"[{b}, {k}]", mask)
        if mask.device != logits.device:
            raise ValueError(f"{op}: {name} is on {mask.device} but logits is on {logits.device}")
    if not (0 < tau < float("inf")):
        raise ValueError(f"{op}: tau must be finite and > 0, got {tau!r}")
    if num_iters < 1:
        raise ValueError(f"{op}: num_iters must be >= 1, got {num_iters}")


def sinkhorn_fwd(logits, row_mask, col_mask, tau, num_iters, reference):
    """Triton launcher of fastlayers::sinkhorn_fwd: (P [B, N, M], row_lse [B, T, N], col_lse [B, T, M])."""
    _check_sinkhorn("sinkhorn_fwd", logits, row_mask, col_mask, tau, num_iters)
    logits = logits.contiguous()
    b, n, m = logits.shape
    acc_t, acc_tl = _acc(logits)
    P = _alloc.empty((b, n, m), logits.dtype, logits.device)
    rl = _alloc.empty((b, num_iters, n), acc_t, logits.device)
    cl = _alloc.empty((b, num_iters, m), acc_t, logits.device)
    if b * n * m == 0:
        return P, rl.zero_(), cl.zero_()
    bn, bm = _blocks(n, m)
    wrap_triton(_sinkhorn_fwd_kernel)[(b,)](logits, row_mask.contiguous(), col_mask.contiguous(), P, rl, cl, n, m,
                               *_split(1.0 / tau), num_iters, REFERENCE=reference, ACC=acc_tl, BN=bn, BM=bm,
                               num_warps=_warps(bn * bm))
    return P, rl, cl


def sinkhorn_bwd(grad_P, logits, row_mask, col_mask, row_lse, col_lse, tau, reference):
    """Triton launcher of fastlayers::sinkhorn_bwd: grad_logits [B, N, M]."""
    if row_lse.dim() != 3:
        raise _shape_error("sinkhorn_bwd", "row_lse", "[B, T, N]", row_lse)
    _check_sinkhorn("sinkhorn_bwd", logits, row_mask, col_mask, tau, row_lse.shape[1])
    b, n, m = logits.shape
    t = row_lse.shape[1]
    for name, x, want in (("grad_P", grad_P, (b, n, m)), ("row_lse", row_lse, (b, t, n)),
                          ("col_lse", col_lse, (b, t, m))):
        if tuple(x.shape) != want:
            raise _shape_error("sinkhorn_bwd", name, list(want), x)
        if x.device != logits.device:
            raise ValueError(f"sinkhorn_bwd: {name} is on {x.device} but logits is on {logits.device}")
    logits = logits.contiguous()
    b, n, m = logits.shape
    acc_t, acc_tl = _acc(logits)
    out = _alloc.empty((b, n, m), logits.dtype, logits.device)
    if b * n * m == 0:
        return out
    bn, bm = _blocks(n, m)
    wrap_triton(_sinkhorn_bwd_kernel)[(b,)](grad_P.contiguous(), logits, row_mask.contiguous(), col_mask.contiguous(),
                               row_lse.to(acc_t).contiguous(), col_lse.to(acc_t).contiguous(), out, n, m,
                               *_split(1.0 / tau), row_lse.shape[1], REFERENCE=reference, ACC=acc_tl, BN=bn, BM=bm,
                               num_warps=_warps(bn * bm))
    return out


# ---- transport: hinge score and partner features -------------------------------------------------------------


@triton.jit
def _store(ptr, v, pid, R, C, BR: tl.constexpr, BC: tl.constexpr):
    offs_r = tl.arange(0, BR)
    offs_c = tl.arange(0, BC)
    tl.store(ptr + pid * R * C + offs_r[:, None] * C + offs_c[None, :], v.to(ptr.dtype.element_ty),
             mask=(offs_r < R)[:, None] & (offs_c < C)[None, :])


@triton.jit
def _load(ptr, pid, R, C, ACC: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    offs_r = tl.arange(0, BR)
    offs_c = tl.arange(0, BC)
    return tl.load(ptr + pid * R * C + offs_r[:, None] * C + offs_c[None, :],
                   mask=(offs_r < R)[:, None] & (offs_c < C)[None, :], other=0.0).to(ACC)


@triton.jit
def _mm(a_ptr, a_rs, a_ks, b_ptr, b_ks, b_cs, R, K, C, ACC: tl.constexpr, PREC: tl.constexpr, BR: tl.constexpr,
        BC: tl.constexpr):
    # sum_k A[r, k] B[k, c] for A[r, k] at a_ptr + r a_rs + k a_ks and B[k, c] at b_ptr + k b_ks + c b_cs (strides
    # give the transposes), r < R, c < C. The operands stream from memory (L1/L2: one pair's data) in K-chunks of
    # 16: holding whole 64 x 64 operands for an FMA dot needed over 128 registers a thread and spilled.
    offs_r = tl.arange(0, BR)
    offs_c = tl.arange(0, BC)
    acc = tl.zeros([BR, BC], dtype=ACC)
    for k0 in range(0, K, 16):
        offs_k = k0 + tl.arange(0, 16)
        mk = offs_k < K
        a = tl.load(a_ptr + offs_r[:, None] * a_rs + offs_k[None, :] * a_ks, mask=(offs_r < R)[:, None] & mk[None, :],
                    other=0.0).to(ACC)
        b = tl.load(b_ptr + offs_k[:, None] * b_ks + offs_c[None, :] * b_cs, mask=mk[:, None] & (offs_c < C)[None, :],
                    other=0.0).to(ACC)
        acc = tl.dot(a, b, acc, input_precision=PREC, out_dtype=ACC)
    return acc


@triton.jit
def _score_fwd_kernel(q_ptr, c_ptr, p_ptr, s_ptr, N, M, D, ACC: tl.constexpr, PREC: tl.constexpr,
                      BN: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    P, c = p_ptr + pid * N * M, c_ptr + pid * M * D
    t = _mm(P, M, 1, c, D, 1, N, M, D, ACC, PREC, BN, BD)  # P c
    r = _load(q_ptr, pid, N, D, ACC, BN, BD) - t
    r = tl.where(r < 0.0, 0.0, r)  # not tl.maximum: fmax would turn a NaN into 0, as torch.relu does not
    tl.store(s_ptr + pid, (-tl.sum(tl.sum(r, axis=1), axis=0)).to(s_ptr.dtype.element_ty))


@triton.jit
def _score_bwd_kernel(gs_ptr, q_ptr, c_ptr, p_ptr, gq_ptr, gc_ptr, gp_ptr, N, M, D, ACC: tl.constexpr,
                      PREC: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    P, c = p_ptr + pid * N * M, c_ptr + pid * M * D
    t = _mm(P, M, 1, c, D, 1, N, M, D, ACC, PREC, BN, BD)
    gs = tl.load(gs_ptr + pid).to(ACC)
    # ReLU's gradient is 0 at 0, as in torch. dR = grad_hq is stored, then read back in chunks by both products
    # (-gs is exact in the output dtype: grad_s has it).
    dR = tl.where(_load(q_ptr, pid, N, D, ACC, BN, BD) - t > 0, -gs, 0.0)
    _store(gq_ptr, dR, pid, N, D, BN, BD)
    tl.debug_barrier()  # the block's stores of dR are visible to all its threads
    gq = gq_ptr + pid * N * D
    _store(gp_ptr, -_mm(gq, D, 1, c, 1, D, N, D, M, ACC, PREC, BN, BM), pid, N, M, BN, BM)  # -dR c^T
    _store(gc_ptr, -_mm(P, 1, M, gq, D, 1, M, N, D, ACC, PREC, BM, BD), pid, M, D, BM, BD)  # -P^T dR


@triton.jit
def _partner_fwd_kernel(p_ptr, q_ptr, c_ptr, qp_ptr, cp_ptr, N, M, D, ACC: tl.constexpr, PREC: tl.constexpr,
                        BN: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    P, q, c = p_ptr + pid * N * M, q_ptr + pid * N * D, c_ptr + pid * M * D
    _store(qp_ptr, _mm(P, M, 1, c, D, 1, N, M, D, ACC, PREC, BN, BD), pid, N, D, BN, BD)  # P c
    _store(cp_ptr, _mm(P, 1, M, q, D, 1, M, N, D, ACC, PREC, BM, BD), pid, M, D, BM, BD)  # P^T q


@triton.jit
def _partner_bwd_kernel(gqp_ptr, gcp_ptr, p_ptr, q_ptr, c_ptr, gp_ptr, gq_ptr, gc_ptr, N, M, D,
                        ACC: tl.constexpr, PREC: tl.constexpr, BN: tl.constexpr, BM: tl.constexpr,
                        BD: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    P, q, c = p_ptr + pid * N * M, q_ptr + pid * N * D, c_ptr + pid * M * D
    a, e = gqp_ptr + pid * N * D, gcp_ptr + pid * M * D
    gP = _mm(a, D, 1, c, 1, D, N, D, M, ACC, PREC, BN, BM) + _mm(q, D, 1, e, 1, D, N, D, M, ACC, PREC, BN, BM)
    _store(gp_ptr, gP, pid, N, M, BN, BM)  # a c^T + q e^T
    _store(gq_ptr, _mm(P, M, 1, e, D, 1, N, M, D, ACC, PREC, BN, BD), pid, N, D, BN, BD)  # P e
    _store(gc_ptr, _mm(P, 1, M, a, D, 1, M, N, D, ACC, PREC, BM, BD), pid, M, D, BM, BD)  # P^T a


def _tblocks(P, hq):
    # tl.dot needs every tile side >= 16; pairs are at most 64 x 64 with D <= 64 (ops/align.py sends larger
    # ones to the reference), so the tiles are at most 64 x 64 and the products run on the tensor cores.
    _, n, m = P.shape
    d = hq.shape[2]
    if max(n, m, d) > MAX_SIDE:
        raise ValueError(f"the Triton transport kernels keep a pair on chip: N, M, D <= {MAX_SIDE}, got {n}, {m}, {d}")
    return tuple(max(triton.next_power_of_2(v), 16) for v in (n, m, d))


def _warps(*tile_areas):
    # A 64 x 64 tile holds 32 registers a thread at 4 warps and a kernel keeps a few at once: pairs of 64 take 16
    # warps, mid-sized ones 8 (fewer spilled, make gpu-check).
    area = max(tile_areas)
    return 16 if area >= 4096 else 8 if area >= 512 else 4


def _prec(t):
    # float32 products follow torch's matmul setting (TF32 only where the user allowed it for torch.matmul).
    return "tf32" if t.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"


def _check_transport(op, hq, hc, P):
    # What the kernels index: hq [B, N, D], hc [B, M, D], P [B, N, M], one dtype and device.
    for name, t in (("hq", hq), ("hc", hc), ("P", P)):
        if t.dim() != 3:
            raise _shape_error(op, name, "3-D", t)
        if t.dtype != P.dtype or not t.dtype.is_floating_point:
            raise TypeError(f"{op}: hq, hc and P must share one floating dtype, got {hq.dtype}, {hc.dtype}, "
                            f"{P.dtype}")
        if t.device != P.device:
            raise ValueError(f"{op}: {name} is on {t.device} but P is on {P.device}")
    b, n, m = P.shape
    if tuple(hq.shape[:2]) != (b, n):
        raise _shape_error(op, "hq", f"[{b}, {n}, D] to match P {tuple(P.shape)}", hq)
    if tuple(hc.shape) != (b, m, hq.shape[2]):
        raise _shape_error(op, "hc", f"[{b}, {m}, {hq.shape[2]}]", hc)


def _check_grads(op, pairs):
    for name, g, ref in pairs:
        if tuple(g.shape) != tuple(ref.shape):
            raise _shape_error(op, name, list(ref.shape), g)
        if g.device != ref.device:
            raise ValueError(f"{op}: {name} is on {g.device}, expected {ref.device}")


def align_score_fwd(hq, hc, P):
    """Triton launcher of fastlayers::align_score_fwd: s [B]."""
    _check_transport("align_score_fwd", hq, hc, P)
    hq, hc, P = hq.contiguous(), hc.contiguous(), P.contiguous()
    b, n, m = P.shape
    s = _alloc.empty((b,), P.dtype, P.device)
    if b == 0:
        return s
    if n * m * hq.shape[2] == 0:
        return s.zero_()
    bn, bm, bd = _tblocks(P, hq)
    wrap_triton(_score_fwd_kernel)[(b,)](hq, hc, P, s, n, m, hq.shape[2], ACC=_acc(P)[1], PREC=_prec(P), BN=bn,
                                         BM=bm, BD=bd,
                            num_warps=_warps(bn * bm, bn * bd, bm * bd))
    return s


def align_score_bwd(grad_s, hq, hc, P):
    """Triton launcher of fastlayers::align_score_bwd: (grad_hq, grad_hc, grad_P)."""
    _check_transport("align_score_bwd", hq, hc, P)
    if tuple(grad_s.shape) != (P.shape[0],):
        raise _shape_error("align_score_bwd", "grad_s", f"[{P.shape[0]}]", grad_s)
    hq, hc, P = hq.contiguous(), hc.contiguous(), P.contiguous()
    b, n, m = P.shape
    gq = _alloc.empty(hq.shape, hq.dtype, hq.device)
    gc = _alloc.empty(hc.shape, hc.dtype, hc.device)
    gp = _alloc.empty(P.shape, P.dtype, P.device)
    if b * n * m * hq.shape[2] == 0:
        return gq.zero_(), gc.zero_(), gp.zero_()
    bn, bm, bd = _tblocks(P, hq)
    wrap_triton(_score_bwd_kernel)[(b,)](grad_s.contiguous(), hq, hc, P, gq, gc, gp, n, m, hq.shape[2], ACC=_acc(P)[1],
                            PREC=_prec(P), BN=bn, BM=bm, BD=bd,
                            num_warps=_warps(bn * bm, bn * bd, bm * bd))
    return gq, gc, gp


def partner_fwd(P, hq, hc):
    """Triton launcher of fastlayers::partner_fwd: (P hc, P^T hq)."""
    _check_transport("partner_fwd", hq, hc, P)
    hq, hc, P = hq.contiguous(), hc.contiguous(), P.contiguous()
    b, n, m = P.shape
    qp = _alloc.empty(hq.shape, hq.dtype, hq.device)
    cp = _alloc.empty(hc.shape, hc.dtype, hc.device)
    if b * n * m * hq.shape[2] == 0:
        return qp.zero_(), cp.zero_()
    bn, bm, bd = _tblocks(P, hq)
    wrap_triton(_partner_fwd_kernel)[(b,)](P, hq, hc, qp, cp, n, m, hq.shape[2], ACC=_acc(P)[1], PREC=_prec(P),
                                           BN=bn, BM=bm,
                              BD=bd, num_warps=_warps(bn * bm, bn * bd, bm * bd))
    return qp, cp


def partner_bwd(grad_qp, grad_cp, P, hq, hc):
    """Triton launcher of fastlayers::partner_bwd: (grad_P, grad_hq, grad_hc)."""
    _check_transport("partner_bwd", hq, hc, P)
    _check_grads("partner_bwd", (("grad_q_partner", grad_qp, hq), ("grad_c_partner", grad_cp, hc)))
    hq, hc, P = hq.contiguous(), hc.contiguous(), P.contiguous()
    b, n, m = P.shape
    gp = _alloc.empty(P.shape, P.dtype, P.device)
    gq = _alloc.empty(hq.shape, hq.dtype, hq.device)
    gc = _alloc.empty(hc.shape, hc.dtype, hc.device)
    if b * n * m * hq.shape[2] == 0:
        return gp.zero_(), gq.zero_(), gc.zero_()
    bn, bm, bd = _tblocks(P, hq)
    wrap_triton(_partner_bwd_kernel)[(b,)](grad_qp.contiguous(), grad_cp.contiguous(), P, hq, hc, gp, gq, gc, n, m,
                              hq.shape[2], ACC=_acc(P)[1], PREC=_prec(P), BN=bn, BM=bm, BD=bd,
                            num_warps=_warps(bn * bm, bn * bd, bm * bd))
    return gp, gq, gc
