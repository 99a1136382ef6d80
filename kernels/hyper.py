"""hyper_linear forward and backward in Triton (the CUDA kernels of fastlayers::hyper_linear_fwd/_bwd).

Layout as on the CPU: weight [O*I + O, h]; its first O*I rows read as Hm [O, I*h] hold T[o, i, j] at
Hm[o, i*h + j]; the last O rows (Hb) and the static w0 [O, I], b0 [O] are plain GEMMs left to torch.

T = 1: the outer-product form. y = Z Hm^T with Z_b = x_b (outer) phi_b is one GEMM of K = I*h whose left tiles
(x_b[i] * phi_b[j-block]) are formed in registers; backward: dHm = G^T Z (same tiles) and V = G Hm, contracted
on chip with phi (dx) and x (dphi, partial sums per input block, added by torch).
T > 1: a program owns one sample and generates W_b tiles [BO, BI] from phi_b in registers, then applies them to
a block of tokens with tl.dot; backward regenerates them for dx, and forms the per-sample weight gradient
dW_b = G_b^T X_b tile by tile for dH (summed over samples in-program) and dphi (partial sums per output block).
Nothing of size B*O*I is written in either direction.
"""

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from . import _alloc


@triton.jit
def _outer_fwd_kernel(x_ptr, phi_ptr, hm_ptr, base_ptr, y_ptr, B, I, O, H,
                      ACC: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BO: tl.constexpr, BJ: tl.constexpr):
    offs_b = tl.program_id(0) * BM + tl.arange(0, BM)
    offs_o = tl.program_id(1) * BO + tl.arange(0, BO)
    mb = offs_b < B
    mo = offs_o < O
    rows = offs_b.to(tl.int64)
    cols_o = offs_o.to(tl.int64) * I * H
    acc = tl.zeros([BM, BO], dtype=ACC)
    for i in range(I):
        xi = tl.load(x_ptr + rows * I + i, mask=mb, other=0.0).to(ACC)
        for j0 in range(0, H, BJ):
            offs_j = j0 + tl.arange(0, BJ)
            mj = offs_j < H
            p = tl.load(phi_ptr + rows[:, None] * H + offs_j[None, :], mask=mb[:, None] & mj[None, :], other=0.0)
            a = (xi[:, None] * p.to(ACC)).to(hm_ptr.dtype.element_ty)
            w = tl.load(hm_ptr + cols_o[None, :] + i * H + offs_j[:, None], mask=mj[:, None] & mo[None, :],
                        other=0.0)
            acc = tl.dot(a, w, acc, input_precision=PREC, out_dtype=ACC)
    off = rows[:, None] * O + offs_o[None, :]
    m = mb[:, None] & mo[None, :]
    base = tl.load(base_ptr + off, mask=m, other=0.0).to(ACC)
    tl.store(y_ptr + off, (acc + base).to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _gen_tile(hm_ptr, phi_ptr, w0_ptr, b, offs_o, offs_i, I, O, H, ACC: tl.constexpr, HAS_W0: tl.constexpr,
              ABS: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr):
    # W_b[o-block, i-block] = sum_j T[o, i, j] phi_b[j] (+ w0), or its absolute value, in registers.
    if HAS_W0:
        w = tl.load(w0_ptr + offs_o[:, None] * I + offs_i[None, :], mask=(offs_o[:, None] < O) & (offs_i[None, :] < I),
                    other=0.0).to(ACC)
    else:
        w = tl.zeros([BO, BI], dtype=ACC)
    m_oi = (offs_o[:, None, None] < O) & (offs_i[None, :, None] < I)
    base = (offs_o.to(tl.int64)[:, None, None] * I + offs_i[None, :, None]) * H
    for j0 in range(0, H, BJ):
        offs_j = j0 + tl.arange(0, BJ)
        mj = offs_j < H
        p = tl.load(phi_ptr + b * H + offs_j, mask=mj, other=0.0).to(ACC)
        t = tl.load(hm_ptr + base + offs_j[None, None, :], mask=m_oi & mj[None, None, :], other=0.0).to(ACC)
        w += tl.sum(t * p[None, None, :], axis=2)
    if ABS:
        w = tl.abs(w)
    return w


@triton.jit
def _tile_fwd_kernel(x_ptr, phi_ptr, hm_ptr, w0_ptr, base_ptr, y_ptr, T, I, O, H,
                     ACC: tl.constexpr, PREC: tl.constexpr, HAS_W0: tl.constexpr, ABS: tl.constexpr,
                     HAS_BASE: tl.constexpr, BT: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    offs_o = tl.program_id(1) * BO + tl.arange(0, BO)
    offs_t = tl.program_id(2) * BT + tl.arange(0, BT)
    mt = offs_t < T
    mo = offs_o < O
    acc = tl.zeros([BT, BO], dtype=ACC)
    for i0 in range(0, I, BI):
        offs_i = i0 + tl.arange(0, BI)
        w = _gen_tile(hm_ptr, phi_ptr, w0_ptr, b, offs_o, offs_i, I, O, H, ACC, HAS_W0, ABS, BO, BI, BJ)
        xt = tl.load(x_ptr + (b * T + offs_t[:, None]) * I + offs_i[None, :],
                     mask=mt[:, None] & (offs_i[None, :] < I), other=0.0)
        acc = tl.dot(xt.to(ACC), tl.trans(w), acc, input_precision=PREC, out_dtype=ACC)
    off = (b * T + offs_t[:, None]) * O + offs_o[None, :]
    m = mt[:, None] & mo[None, :]
    if HAS_BASE:
        acc += tl.load(base_ptr + off, mask=m, other=0.0).to(ACC)
    tl.store(y_ptr + off, acc.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _outer_dhm_kernel(g_ptr, x_ptr, phi_ptr, dhm_ptr, B, I, O, H,
                      ACC: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BO: tl.constexpr, BJ: tl.constexpr):
    # dHm[o-block, i*h + j-block] = sum_b G[b, o] x[b, i] phi[b, j]
    offs_o = tl.program_id(0) * BO + tl.arange(0, BO)
    i = tl.program_id(1)
    offs_j = tl.program_id(2) * BJ + tl.arange(0, BJ)
    mo = offs_o < O
    mj = offs_j < H
    acc = tl.zeros([BO, BJ], dtype=ACC)
    for b0 in range(0, B, BM):
        offs_b = b0 + tl.arange(0, BM)
        mb = offs_b < B
        rows = offs_b.to(tl.int64)
        gt = tl.load(g_ptr + rows[None, :] * O + offs_o[:, None], mask=mo[:, None] & mb[None, :], other=0.0)
        xi = tl.load(x_ptr + rows * I + i, mask=mb, other=0.0).to(ACC)
        p = tl.load(phi_ptr + rows[:, None] * H + offs_j[None, :], mask=mb[:, None] & mj[None, :], other=0.0)
        z = (xi[:, None] * p.to(ACC)).to(gt.dtype)
        acc = tl.dot(gt, z, acc, input_precision=PREC, out_dtype=ACC)
    off = offs_o.to(tl.int64)[:, None] * I * H + i * H + offs_j[None, :]
    tl.store(dhm_ptr + off, acc.to(dhm_ptr.dtype.element_ty), mask=mo[:, None] & mj[None, :])


@triton.jit
def _outer_dinput_kernel(g_ptr, x_ptr, phi_ptr, hm_ptr, dx_base_ptr, dx_ptr, dphi_part_ptr, B, I, O, H,
                         ACC: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BO: tl.constexpr,
                         BI: tl.constexpr, BJ: tl.constexpr):
    # V[b, i, j] = sum_o G[b, o] Hm[o, i*h + j]; dx[b, i] = <V[b, i], phi_b>; dphi part += x[b, i] V[b, i].
    offs_b = tl.program_id(0) * BM + tl.arange(0, BM)
    pid_i = tl.program_id(1)
    i0 = pid_i * BI
    mb = offs_b < B
    rows = offs_b.to(tl.int64)
    cols_i = tl.arange(0, BI)
    dx_acc = tl.zeros([BM, BI], dtype=ACC)
    for j0 in range(0, H, BJ):
        offs_j = j0 + tl.arange(0, BJ)
        mj = offs_j < H
        p = tl.load(phi_ptr + rows[:, None] * H + offs_j[None, :], mask=mb[:, None] & mj[None, :], other=0.0)
        p = p.to(ACC)
        dphi_acc = tl.zeros([BM, BJ], dtype=ACC)
        for ii in range(BI):
            i = i0 + ii
            v = tl.zeros([BM, BJ], dtype=ACC)
            for o0 in range(0, O, BO):
                offs_o = o0 + tl.arange(0, BO)
                mo = offs_o < O
                g = tl.load(g_ptr + rows[:, None] * O + offs_o[None, :], mask=mb[:, None] & mo[None, :], other=0.0)
                w = tl.load(hm_ptr + offs_o.to(tl.int64)[:, None] * I * H + i * H + offs_j[None, :],
                            mask=mo[:, None] & mj[None, :] & (i < I), other=0.0)
                v = tl.dot(g, w, v, input_precision=PREC, out_dtype=ACC)
            xi = tl.load(x_ptr + rows * I + i, mask=mb & (i < I), other=0.0).to(ACC)
            dphi_acc += v * xi[:, None]
            s = tl.sum(v * p, axis=1)
            dx_acc += tl.where(cols_i[None, :] == ii, s[:, None], 0.0)
        tl.store(dphi_part_ptr + (pid_i * B + rows[:, None]) * H + offs_j[None, :], dphi_acc,
                 mask=mb[:, None] & mj[None, :])
    offs_i = i0 + cols_i
    off = rows[:, None] * I + offs_i[None, :]
    m = mb[:, None] & (offs_i[None, :] < I)
    base = tl.load(dx_base_ptr + off, mask=m, other=0.0).to(ACC)
    tl.store(dx_ptr + off, (dx_acc + base).to(dx_ptr.dtype.element_ty), mask=m)


@triton.jit
def _tile_dx_kernel(g_ptr, phi_ptr, hm_ptr, w0_ptr, dx_base_ptr, dx_ptr, T, I, O, H,
                    ACC: tl.constexpr, PREC: tl.constexpr, HAS_W0: tl.constexpr, ABS: tl.constexpr,
                    HAS_BASE: tl.constexpr, BT: tl.constexpr, BO: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr):
    # dx[b, t-block, i-block] = sum_o G[b, t, o] W_b[o, i], W_b regenerated tile by tile.
    b = tl.program_id(0).to(tl.int64)
    offs_i = tl.program_id(1) * BI + tl.arange(0, BI)
    offs_t = tl.program_id(2) * BT + tl.arange(0, BT)
    mt = offs_t < T
    mi = offs_i < I
    acc = tl.zeros([BT, BI], dtype=ACC)
    for o0 in range(0, O, BO):
        offs_o = o0 + tl.arange(0, BO)
        w = _gen_tile(hm_ptr, phi_ptr, w0_ptr, b, offs_o, offs_i, I, O, H, ACC, HAS_W0, ABS, BO, BI, BJ)
        g = tl.load(g_ptr + (b * T + offs_t[:, None]) * O + offs_o[None, :],
                    mask=mt[:, None] & (offs_o[None, :] < O), other=0.0)
        acc = tl.dot(g.to(ACC), w, acc, input_precision=PREC, out_dtype=ACC)
    off = (b * T + offs_t[:, None]) * I + offs_i[None, :]
    m = mt[:, None] & mi[None, :]
    if HAS_BASE:
        acc += tl.load(dx_base_ptr + off, mask=m, other=0.0).to(ACC)
    tl.store(dx_ptr + off, acc.to(dx_ptr.dtype.element_ty), mask=m)


@triton.jit
def _sample_grad_tile(g_ptr, x_ptr, phi_ptr, hm_ptr, w0_ptr, offs_b, o, offs_i, B, T, I, O, H, ACC: tl.constexpr,
                      PREC: tl.constexpr, HAS_W0: tl.constexpr, ABS: tl.constexpr, BM: tl.constexpr,
                      BI: tl.constexpr, BJ: tl.constexpr):
    # dW[b, o, i-block] = sum_t G[b, t, o] x[b, t, i] for a block of samples: [BM, BI]. With ABS (y = |W| x) the
    # gradient of W is that times sign(W[b, o, i-block]), generated here with a tl.dot over h.
    mb = offs_b < B
    mi = offs_i < I
    rows = offs_b.to(tl.int64)
    dw = tl.zeros([BM, BI], dtype=ACC)
    for t in range(T):
        g = tl.load(g_ptr + (rows * T + t) * O + o, mask=mb, other=0.0).to(ACC)
        xv = tl.load(x_ptr + (rows[:, None] * T + t) * I + offs_i[None, :], mask=mb[:, None] & mi[None, :],
                     other=0.0).to(ACC)
        dw += g[:, None] * xv
    if ABS:
        if HAS_W0:
            w = tl.load(w0_ptr + o * I + offs_i, mask=mi, other=0.0).to(ACC)[None, :] + tl.zeros([BM, BI], ACC)
        else:
            w = tl.zeros([BM, BI], dtype=ACC)
        for j0 in range(0, H, 16):  # K = 16 (see K_BLOCK): a wider K spilled at BJ = 64
            offs_j = j0 + tl.arange(0, 16)
            mj = offs_j < H
            p = tl.load(phi_ptr + rows[:, None] * H + offs_j[None, :], mask=mb[:, None] & mj[None, :], other=0.0)
            hm = tl.load(hm_ptr + (o * I + offs_i.to(tl.int64)[None, :]) * H + offs_j[:, None],
                        mask=mj[:, None] & mi[None, :], other=0.0)
            w = tl.dot(p.to(ACC), hm.to(ACC), w, input_precision=PREC, out_dtype=ACC)
        dw = tl.where(w > 0, dw, tl.where(w < 0, -dw, 0.0))
    return dw


@triton.jit
def _tile_dh_kernel(g_ptr, x_ptr, phi_ptr, hm_ptr, w0_ptr, dhm_ptr, dw0_ptr, B, T, I, O, H,
                    ACC: tl.constexpr, PREC: tl.constexpr, HAS_W0: tl.constexpr, ABS: tl.constexpr,
                    BM: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr):
    # dH[o*I + i-block, j-block] = sum_b dW[b, o, i] phi[b, j]; with ABS also dw0[o, i-block] = sum_b dW[b, o, i].
    o = tl.program_id(0)
    offs_i = tl.program_id(1) * BI + tl.arange(0, BI)
    offs_j = tl.program_id(2) * BJ + tl.arange(0, BJ)
    mj = offs_j < H
    acc = tl.zeros([BI, BJ], dtype=ACC)
    dw0 = tl.zeros([BI], dtype=ACC)
    for b0 in range(0, B, BM):
        offs_b = b0 + tl.arange(0, BM)
        dw = _sample_grad_tile(g_ptr, x_ptr, phi_ptr, hm_ptr, w0_ptr, offs_b, o, offs_i, B, T, I, O, H, ACC, PREC,
                               HAS_W0, ABS, BM, BI, BJ)
        dw0 += tl.sum(dw, axis=0)
        p = tl.load(phi_ptr + offs_b.to(tl.int64)[:, None] * H + offs_j[None, :],
                    mask=(offs_b[:, None] < B) & mj[None, :], other=0.0).to(ACC)
        acc = tl.dot(tl.trans(dw), p, acc, input_precision=PREC, out_dtype=ACC)
    off = (o.to(tl.int64) * I + offs_i[:, None]) * H + offs_j[None, :]
    tl.store(dhm_ptr + off, acc.to(dhm_ptr.dtype.element_ty), mask=(offs_i[:, None] < I) & mj[None, :])
    if ABS:
        tl.store(dw0_ptr + o * I + offs_i, dw0.to(dw0_ptr.dtype.element_ty), mask=(offs_i < I) & (tl.program_id(2) == 0))


@triton.jit
def _tile_dphi_kernel(g_ptr, x_ptr, phi_ptr, hm_ptr, w0_ptr, dphi_part_ptr, B, T, I, O, H, O_PER,
                      ACC: tl.constexpr, PREC: tl.constexpr, HAS_W0: tl.constexpr, ABS: tl.constexpr,
                      BM: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr):
    # dphi part[o-chunk, b, j-block] = sum_{o in chunk, i} dW[b, o, i] T[o, i, j]
    offs_b = tl.program_id(0) * BM + tl.arange(0, BM)
    offs_j = tl.program_id(1) * BJ + tl.arange(0, BJ)
    pid_o = tl.program_id(2)
    mj = offs_j < H
    acc = tl.zeros([BM, BJ], dtype=ACC)
    for o in range(pid_o * O_PER, tl.minimum(O, (pid_o + 1) * O_PER)):
        for i0 in range(0, I, BI):
            offs_i = i0 + tl.arange(0, BI)
            dw = _sample_grad_tile(g_ptr, x_ptr, phi_ptr, hm_ptr, w0_ptr, offs_b, o, offs_i, B, T, I, O, H, ACC,
                                   PREC, HAS_W0, ABS, BM, BI, BJ)
            w = tl.load(hm_ptr + (o * I + offs_i.to(tl.int64)[:, None]) * H + offs_j[None, :],
                        mask=(offs_i[:, None] < I) & mj[None, :], other=0.0).to(ACC)
            acc = tl.dot(dw, w, acc, input_precision=PREC, out_dtype=ACC)
    off = (pid_o * B + offs_b.to(tl.int64)[:, None]) * H + offs_j[None, :]
    tl.store(dphi_part_ptr + off, acc, mask=(offs_b[:, None] < B) & mj[None, :])


# ---- launchers ------------------------------------------------------------------------------------------------


def _acc(dtype):
    if dtype == torch.float64:
        return torch.float64, tl.float64, "ieee"
    # float32 tiles follow torch's matmul setting (TF32 only where the user allowed it for torch.matmul).
    prec = "tf32" if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32 else "ieee"
    return torch.float32, tl.float32, prec


# The contraction (K) side of every tl.dot tile. float32 products in IEEE precision run as FMA dots, which hold a
# thread's whole K-strip of both operands in registers: at K = 32-64 the kernels spilled hundreds of bytes to
# 75 KB a thread (make gpu-check); at 16 they stay in registers, and 16 is the tensor cores' K as well.
K_BLOCK = 16


def _gen_bj(bo, bi, dtype):
    # _gen_tile holds a [BO, BI, BJ] block of T in registers: at most 4096 float32 (2048 float64) values, about 32
    # registers a thread at 4 warps. At BJ = 32 the tile kernels spilled tens of KB (make gpu-check).
    return max(1, min(16, (2048 if dtype == torch.float64 else 4096) // (bo * bi)))


def _warps(*tile_areas):
    # 64 x 64 accumulator and operand tiles at 4 warps spill; 8 warps halve the registers each thread holds.
    return 8 if max(tile_areas) >= 4096 else 4


def _pow2(n, lo, hi):
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


def _check(op, x, phi, weight, per_row, w0=None, b0=None):
    """Shapes, dtypes and devices the kernels index (the registered ops are public: direct torch.ops calls get
    no other check). per_row: weight rows per output, I + 1 (hyper_linear) or I (hyper_abs_linear)."""
    if x.dim() != 3 or phi.dim() != 2 or weight.dim() != 2:
        raise ValueError(f"{op}: x must be [B, T, I], phi [B, h], weight 2-D; got shapes {tuple(x.shape)}, "
                         f"{tuple(phi.shape)}, {tuple(weight.shape)}")
    if phi.shape[0] != x.shape[0] or weight.shape[1] != phi.shape[1]:
        raise ValueError(f"{op}: phi must be [B, h] with B = {x.shape[0]} and weight [rows, h]; got phi "
                         f"{tuple(phi.shape)}, weight {tuple(weight.shape)}")
    if per_row == 0:
        raise ValueError(f"{op}: x must have I >= 1 input features, got shape {tuple(x.shape)}")
    if weight.shape[0] % per_row:
        raise ValueError(f"{op}: weight rows must be a multiple of {per_row} (I = {x.shape[2]}), got "
                         f"{weight.shape[0]}")
    n_out, n_in = weight.shape[0] // per_row, x.shape[2]
    named = {"x": x, "phi": phi, "weight": weight}
    for name, t, shape in (("w0", w0, (n_out, n_in)), ("b0", b0, (n_out,))):
        if t is not None:
            if tuple(t.shape) != shape:
                raise ValueError(f"{op}: {name} must be {list(shape)}, got {tuple(t.shape)}")
            named[name] = t
    for name, t in named.items():
        if t.dtype != x.dtype or not t.dtype.is_floating_point:
            raise TypeError(f"{op}: {name} must have x's floating dtype {x.dtype}, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")


def _dims(x, phi, weight):
    n_batch, n_tok, n_in = x.shape
    h = phi.shape[1]
    return n_batch, n_tok, n_in, weight.shape[0] // (n_in + 1), h


def hyper_linear_fwd(x, phi, weight, w0, b0):
    """Triton launcher of fastlayers::hyper_linear_fwd: x [B, T, I], phi [B, h], weight [O*I + O, h],
    w0 [O, I] or None, b0 [O] or None; returns y [B, T, O] in x's dtype."""
    _check("hyper_linear_fwd", x, phi, weight, x.shape[-1] + 1 if x.dim() == 3 else 1, w0, b0)
    n_batch, n_tok, n_in, n_out, h = _dims(x, phi, weight)
    y = _alloc.empty((n_batch, n_tok, n_out), x.dtype, x.device)
    if y.numel() == 0:
        return y
    x, phi, weight = x.contiguous(), phi.contiguous(), weight.contiguous()
    hb = weight[n_out * n_in:]
    base = (phi @ hb.t()).unsqueeze(1).expand(n_batch, n_tok, n_out)
    if b0 is not None:
        base = base + b0
    if w0 is not None:
        base = base + x @ w0.t()
    base = base.contiguous()
    if n_in == 0 or h == 0:
        return y.copy_(base)
    _, acc_tl, prec = _acc(x.dtype)
    if n_tok == 1:
        bm, bo = _pow2(n_batch, 16, 64), _pow2(n_out, 16, 64)
        grid = (triton.cdiv(n_batch, bm), triton.cdiv(n_out, bo))
        wrap_triton(_outer_fwd_kernel)[grid](x, phi, weight, base, y, n_batch, n_in, n_out, h,
                                ACC=acc_tl, PREC=prec, BM=bm, BO=bo, BJ=K_BLOCK, num_warps=_warps(bm * bo))
    else:
        bt, bo = _pow2(n_tok, 16, 64), _pow2(n_out, 16, 32)
        grid = (n_batch, triton.cdiv(n_out, bo), triton.cdiv(n_tok, bt))
        wrap_triton(_tile_fwd_kernel)[grid](x, phi, weight, x, base, y, n_tok, n_in, n_out, h, ACC=acc_tl, PREC=prec,
                               HAS_W0=False, ABS=False, HAS_BASE=True, BT=bt, BO=bo, BI=K_BLOCK,
                               BJ=_gen_bj(bo, K_BLOCK, x.dtype), num_warps=_warps(bt * bo))
    return y


def hyper_linear_bwd(grad_y, x, phi, weight, w0, need_input, need_weight):
    """Triton launcher of fastlayers::hyper_linear_bwd: returns (grad_x [B, T, I], grad_phi [B, h],
    grad_weight [O*I + O, h], grad_w0 [O, I], grad_b0 [O]). Gradients not asked for (need_input for x and phi,
    need_weight for the first O*I rows of weight) come back as zeros."""
    _check("hyper_linear_bwd", x, phi, weight, x.shape[-1] + 1 if x.dim() == 3 else 1, w0)
    n_batch, n_tok, n_in, n_out, h = _dims(x, phi, weight)
    if tuple(grad_y.shape) != (n_batch, n_tok, n_out):
        raise ValueError(f"hyper_linear_bwd: grad_y must be [B, T, O] = {[n_batch, n_tok, n_out]}, got "
                         f"{tuple(grad_y.shape)}")
    x, phi, weight = x.contiguous(), phi.contiguous(), weight.contiguous()
    g = grad_y.to(x.dtype).contiguous()
    acc_t, acc_tl, prec = _acc(x.dtype)
    g2, x2 = g.reshape(-1, n_out), x.reshape(-1, n_in)
    gs = g.sum(1)
    hb = weight[n_out * n_in:]
    grad_b0 = g2.sum(0)
    grad_w0 = g2.t() @ x2
    grad_weight = _alloc.empty(tuple(weight.shape), weight.dtype, x.device)
    grad_weight[n_out * n_in:] = gs.t() @ phi
    dphi = gs @ hb
    dx_base = (g2 @ w0).view(x.shape) if w0 is not None else torch.zeros_like(x)
    contract = n_batch * n_tok * n_in * n_out * h > 0
    bj = _pow2(h, 16, 64)
    outer = n_tok == 1
    bm = _pow2(n_batch, 16, 64 if outer else 32)
    bo = _pow2(n_out, 16, 64 if outer else 32)
    bi = _pow2(n_in, 16, 16 if outer else 32)
    if not (need_weight and contract):
        grad_weight[: n_out * n_in] = 0
    elif outer:
        wrap_triton(_outer_dhm_kernel)[(triton.cdiv(n_out, bo), n_in, triton.cdiv(h, bj))](
            g, x, phi, grad_weight, n_batch, n_in, n_out, h, ACC=acc_tl, PREC=prec, BM=K_BLOCK, BO=bo, BJ=bj,
            num_warps=_warps(bo * bj))
    else:
        wrap_triton(_tile_dh_kernel)[(n_out, triton.cdiv(n_in, bi), triton.cdiv(h, bj))](
            g, x, phi, weight, x, grad_weight, x, n_batch, n_tok, n_in, n_out, h, ACC=acc_tl, PREC=prec,
            HAS_W0=False, ABS=False, BM=K_BLOCK, BI=bi, BJ=bj, num_warps=_warps(bi * bj))
    if not (need_input and contract):
        return dx_base, dphi, grad_weight, grad_w0, grad_b0
    dx = _alloc.empty(tuple(x.shape), x.dtype, x.device)
    if outer:
        n_parts = triton.cdiv(n_in, bi)
        part = _alloc.empty((n_parts, n_batch, h), acc_t, x.device)
        wrap_triton(_outer_dinput_kernel)[(triton.cdiv(n_batch, bm), n_parts)](
            g, x, phi, weight, dx_base, dx, part, n_batch, n_in, n_out, h,
            ACC=acc_tl, PREC=prec, BM=bm, BO=K_BLOCK, BI=bi, BJ=min(bj, 32),
            num_warps=_warps(2 * bm * min(bj, 32)))  # V and the dphi accumulator: two [BM, BJ] tiles
    else:
        bt = _pow2(n_tok, 16, 64)
        wrap_triton(_tile_dx_kernel)[(n_batch, triton.cdiv(n_in, bi), triton.cdiv(n_tok, bt))](
            g, phi, weight, x, dx_base, dx, n_tok, n_in, n_out, h, ACC=acc_tl, PREC=prec,
            HAS_W0=False, ABS=False, HAS_BASE=True, BT=bt, BO=K_BLOCK, BI=bi, BJ=_gen_bj(K_BLOCK, bi, x.dtype),
            num_warps=_warps(bt * bi))
        o_per = 16  # output rows per dphi program: partial sums of cdiv(O, 16) x B x h, added below
        n_parts = triton.cdiv(n_out, o_per)
        part = _alloc.empty((n_parts, n_batch, h), acc_t, x.device)
        wrap_triton(_tile_dphi_kernel)[(triton.cdiv(n_batch, bm), triton.cdiv(h, bj), n_parts)](
            g, x, phi, weight, x, part, n_batch, n_tok, n_in, n_out, h, o_per, ACC=acc_tl, PREC=prec,
            HAS_W0=False, ABS=False, BM=bm, BI=K_BLOCK, BJ=bj, num_warps=_warps(bm * bj))
    dphi = dphi + part.sum(0).to(dphi.dtype)
    return dx, dphi, grad_weight, grad_w0, grad_b0


def hyper_abs_linear_fwd(x, phi, weight, w0):
    """Triton launcher of fastlayers::hyper_abs_linear_fwd: y[b, t] = |reshape(weight phi_b) + w0| x[b, t];
    x [B, T, I], phi [B, h], weight [O*I, h], w0 [O, I] or None. Tiles of W_b are generated in registers."""
    _check("hyper_abs_linear_fwd", x, phi, weight, x.shape[-1] if x.dim() == 3 else 1, w0)
    n_batch, n_tok, n_in = x.shape
    h, n_out = phi.shape[1], weight.shape[0] // max(n_in, 1)
    y = _alloc.empty((n_batch, n_tok, n_out), x.dtype, x.device)
    if y.numel() == 0:
        return y
    x, phi, weight = x.contiguous(), phi.contiguous(), weight.contiguous()
    w0c = w0.contiguous() if w0 is not None else x
    _, acc_tl, prec = _acc(x.dtype)
    bt, bo = _pow2(n_tok, 16, 64), _pow2(n_out, 16, 32)
    wrap_triton(_tile_fwd_kernel)[(n_batch, triton.cdiv(n_out, bo), triton.cdiv(n_tok, bt))](
        x, phi, weight, w0c, x, y, n_tok, n_in, n_out, h, ACC=acc_tl, PREC=prec, HAS_W0=w0 is not None, ABS=True,
        HAS_BASE=False, BT=bt, BO=bo, BI=K_BLOCK, BJ=_gen_bj(bo, K_BLOCK, x.dtype), num_warps=_warps(bt * bo))
    return y


def hyper_abs_linear_bwd(grad_y, x, phi, weight, w0):
    """Triton launcher of fastlayers::hyper_abs_linear_bwd: returns (grad_x, grad_phi, grad_weight, grad_w0)."""
    _check("hyper_abs_linear_bwd", x, phi, weight, x.shape[-1] if x.dim() == 3 else 1, w0)
    n_batch, n_tok, n_in = x.shape
    h, n_out = phi.shape[1], weight.shape[0] // max(n_in, 1)
    x, phi, weight = x.contiguous(), phi.contiguous(), weight.contiguous()
    if n_batch * n_tok * n_in * n_out == 0:
        return (torch.zeros_like(x), torch.zeros_like(phi), torch.zeros_like(weight),
                x.new_zeros((n_out, n_in)))
    g = grad_y.to(x.dtype).contiguous()
    w0c = w0.contiguous() if w0 is not None else x
    acc_t, acc_tl, prec = _acc(x.dtype)
    bt, bi, bj = _pow2(n_tok, 16, 64), _pow2(n_in, 16, 32), _pow2(h, 16, 64)
    bm = _pow2(n_batch, 16, 32)
    has_w0 = w0 is not None
    dx = _alloc.empty(tuple(x.shape), x.dtype, x.device)
    wrap_triton(_tile_dx_kernel)[(n_batch, triton.cdiv(n_in, bi), triton.cdiv(n_tok, bt))](
        g, phi, weight, w0c, x, dx, n_tok, n_in, n_out, h, ACC=acc_tl, PREC=prec, HAS_W0=has_w0, ABS=True,
        HAS_BASE=False, BT=bt, BO=K_BLOCK, BI=bi, BJ=_gen_bj(K_BLOCK, bi, x.dtype), num_warps=_warps(bt * bi))
    grad_weight = _alloc.empty(tuple(weight.shape), weight.dtype, x.device)
    grad_w0 = _alloc.empty((n_out, n_in), x.dtype, x.device)
    wrap_triton(_tile_dh_kernel)[(n_out, triton.cdiv(n_in, bi), triton.cdiv(h, bj))](
        g, x, phi, weight, w0c, grad_weight, grad_w0, n_batch, n_tok, n_in, n_out, h, ACC=acc_tl, PREC=prec,
        HAS_W0=has_w0, ABS=True, BM=K_BLOCK, BI=bi, BJ=bj, num_warps=_warps(bi * bj))
    o_per = 16
    n_parts = triton.cdiv(n_out, o_per)
    part = _alloc.empty((n_parts, n_batch, h), acc_t, x.device)
    wrap_triton(_tile_dphi_kernel)[(triton.cdiv(n_batch, bm), triton.cdiv(h, bj), n_parts)](
        g, x, phi, weight, w0c, part, n_batch, n_tok, n_in, n_out, h, o_per, ACC=acc_tl, PREC=prec,
        HAS_W0=has_w0, ABS=True, BM=bm, BI=K_BLOCK, BJ=bj, num_warps=_warps(bm * bj))
    return dx, part.sum(0).to(phi.dtype), grad_weight, grad_w0
