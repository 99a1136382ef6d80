"""ECA forward and backward in Triton, one launch each.

A program owns one sample's block of BC channels (plus the PAD channels either side that the channel conv reads,
its halo). Forward: pass 1 sums x over the spatial dims for the block and the halo; the gate of each block channel
is the conv of those means, done as a small matrix product (each row holds the weights at the columns of the
channels its taps hit, so zero padding, circular wrap and any k are one code path); pass 2 re-reads the block,
mostly from L2, and writes y. Backward has the same shape: pass 1 sums g * x, the transposed conv of
ga = gs * s * (1 - s) gives the pooled gradient, pass 2 writes dx = g * s + gp / S, and each program leaves its
partial weight gradient for one small sum on the host side.

The grid is persistent (a few programs per multiprocessor looping over the work) so the blocks in flight between
the two passes fit in L2: the traffic approaches 2|x| forward and 3|x| backward instead of 3|x| and 4|x|, and a
layer is one launch instead of two or three. Spatial dims are flattened; strides cover contiguous and channels-last.
"""

import functools

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from .._validate import is_channels_last_dense
from . import _alloc


@triton.jit
def _tap(c, j, PAD, C, CIRCULAR: tl.constexpr):
    # Channel read by tap j of the conv at channel c; out of [0, C) (never a valid channel) in the zero padding.
    t = c + j - PAD
    if CIRCULAR:
        t = t % C
        t = tl.where(t < 0, t + C, t)
    return t


@triton.jit
def _halo(c0, c_end, C, PAD, CIRCULAR: tl.constexpr, HP: tl.constexpr):
    # The PAD channels before c0 and after c_end (wrapped when circular), and which of them exist.
    h = tl.arange(0, HP)
    ch = tl.where(h < PAD, c0 - PAD + h, c_end + h - PAD)
    if CIRCULAR:
        ch = ch % C
        ch = tl.where(ch < 0, ch + C, ch)
        ok = h < 2 * PAD
    else:
        ok = (h < 2 * PAD) & (ch >= 0) & (ch < C)
    return ch, ok


@triton.jit
def _conv_matrix(rows, cols, cols_ok, w_ptr, K, PAD, C, CIRCULAR: tl.constexpr, TRANSPOSE: tl.constexpr,
                 ACC: tl.constexpr):
    # A[r, q] = sum_j w[j] [tap(rows[r], j) == cols[q]]: (A @ v)[r] = conv(v)[rows[r]] for v indexed by cols.
    # TRANSPOSE: A[r, q] = sum_j w[j] [tap(cols[q], j) == rows[r]], the transposed conv (the gradient's).
    a = (rows[:, None] * 0 + cols[None, :] * 0).to(ACC)
    for j in range(K):
        wj = tl.load(w_ptr + j).to(ACC)
        if TRANSPOSE:
            hit = _tap(cols[None, :], j, PAD, C, CIRCULAR) == rows[:, None]
        else:
            hit = _tap(rows[:, None], j, PAD, C, CIRCULAR) == cols[None, :]
        a += tl.where(hit & cols_ok[None, :], wj, 0.0)
    return a


@triton.jit
def _plane_sums(a_ptr, b_ptr, item, C, S, PAD, n_cb, stride_n, stride_c, stride_s, HAS_B: tl.constexpr,
                CIRCULAR: tl.constexpr, HALO: tl.constexpr, ACC: tl.constexpr, BC: tl.constexpr, BS: tl.constexpr,
                HP: tl.constexpr):
    # Pass 1 of work item `item` (sample n, channel block c0): sum over S of a (a * b with HAS_B) for the block's
    # channels and, with HALO, for its halo. Returns (n, rows, row_ok, base, row_off, sums, halo ch, ok, sums).
    n = item // n_cb
    c0 = (item % n_cb) * BC
    rows = c0 + tl.arange(0, BC)
    row_ok = rows < C
    base = tl.cast(n, tl.int64) * stride_n
    row_off = rows.to(tl.int64)[:, None] * stride_c
    hch, hok = _halo(c0, tl.minimum(c0 + BC, C), C, PAD, CIRCULAR, HP)
    acc = tl.zeros([BC, BS], dtype=ACC)
    hacc = tl.zeros([HP, BS], dtype=ACC)
    for s0 in range(0, S, BS):
        offs_s = s0 + tl.arange(0, BS)
        s_off = offs_s.to(tl.int64)[None, :] * stride_s
        off = base + row_off + s_off
        mask = row_ok[:, None] & (offs_s < S)[None, :]
        v = tl.load(a_ptr + off, mask=mask, other=0.0).to(ACC)
        if HAS_B:
            v = v * tl.load(b_ptr + off, mask=mask, other=0.0).to(ACC)
        acc += v
        if HALO:
            hoff = base + hch.to(tl.int64)[:, None] * stride_c + s_off
            hmask = hok[:, None] & (offs_s < S)[None, :]
            hv = tl.load(a_ptr + hoff, mask=hmask, other=0.0).to(ACC)
            if HAS_B:
                hv = hv * tl.load(b_ptr + hoff, mask=hmask, other=0.0).to(ACC)
            hacc += hv
    return n, rows, row_ok, base, row_off, tl.sum(acc, axis=1), hch, hok, tl.sum(hacc, axis=1)


@triton.jit
def _fwd_kernel(x_ptr, y_ptr, w_ptr, pooled_ptr, gate_ptr, N, C, S, K, PAD, n_cb, stride_n, stride_c, stride_s,
                CIRCULAR: tl.constexpr, HALO: tl.constexpr, ACC: tl.constexpr, BC: tl.constexpr,
                BS: tl.constexpr, HP: tl.constexpr):
    # 1 / S in ACC from the integer S: a float argument reaches a compiled kernel as fp32 (the interpreter keeps
    # Python floats), which would cost float64 inputs 7 digits. S = 0 (empty planes) pools to 0.
    inv_s = 1.0 / tl.cast(tl.maximum(S, 1), ACC)
    for item in range(tl.program_id(0), N * n_cb, tl.num_programs(0)):
        n, rows, row_ok, base, row_off, sums, hch, hok, hsums = _plane_sums(
            x_ptr, x_ptr, item, C, S, PAD, n_cb, stride_n, stride_c, stride_s, False, CIRCULAR, HALO, ACC, BC, BS, HP)
        p = sums * inv_s
        a = tl.sum(_conv_matrix(rows, rows, row_ok, w_ptr, K, PAD, C, CIRCULAR, False, ACC) * p[None, :], axis=1)
        if HALO:
            ph = hsums * inv_s
            a += tl.sum(_conv_matrix(rows, hch, hok, w_ptr, K, PAD, C, CIRCULAR, False, ACC) * ph[None, :], axis=1)
        gate = 1.0 / (1.0 + tl.exp(-a))
        tl.store(pooled_ptr + n * C + rows, p, mask=row_ok)
        tl.store(gate_ptr + n * C + rows, gate, mask=row_ok)
        for s0 in range(0, S, BS):
            offs_s = s0 + tl.arange(0, BS)
            off = base + row_off + offs_s.to(tl.int64)[None, :] * stride_s
            mask = row_ok[:, None] & (offs_s < S)[None, :]
            x = tl.load(x_ptr + off, mask=mask, other=0.0)
            tl.store(y_ptr + off, (x.to(ACC) * gate[:, None]).to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(g_ptr, x_ptr, dx_ptr, w_ptr, pooled_ptr, gate_ptr, dw_part_ptr, N, C, S, K, PAD, n_cb, stride_n,
                stride_c, stride_s, CIRCULAR: tl.constexpr, HALO: tl.constexpr, ACC: tl.constexpr,
                BC: tl.constexpr, BS: tl.constexpr, HP: tl.constexpr):
    inv_s = 1.0 / tl.cast(tl.maximum(S, 1), ACC)
    for item in range(tl.program_id(0), N * n_cb, tl.num_programs(0)):
        n, rows, row_ok, base, row_off, gs, hch, hok, hgs = _plane_sums(
            g_ptr, x_ptr, item, C, S, PAD, n_cb, stride_n, stride_c, stride_s, True, CIRCULAR, HALO, ACC, BC, BS, HP)
        s = tl.load(gate_ptr + n * C + rows, mask=row_ok, other=0.0)
        ga = gs * s * (1.0 - s)
        gp = tl.sum(_conv_matrix(rows, rows, row_ok, w_ptr, K, PAD, C, CIRCULAR, True, ACC) * ga[None, :], axis=1)
        if HALO:
            sh = tl.load(gate_ptr + n * C + hch, mask=hok, other=0.0)
            gah = hgs * sh * (1.0 - sh)
            gp += tl.sum(_conv_matrix(rows, hch, hok, w_ptr, K, PAD, C, CIRCULAR, True, ACC) * gah[None, :], axis=1)
        # dw[j] = sum over block channels c of ga[c] * p[tap(c, j)]: this program's share.
        for j in range(K):
            t = _tap(rows, j, PAD, C, CIRCULAR)
            pv = tl.load(pooled_ptr + n * C + t, mask=row_ok & (t >= 0) & (t < C), other=0.0)
            tl.store(dw_part_ptr + tl.cast(item, tl.int64) * K + j, tl.sum(ga * pv, axis=0))
        gp = gp * inv_s
        for s0 in range(0, S, BS):
            offs_s = s0 + tl.arange(0, BS)
            off = base + row_off + offs_s.to(tl.int64)[None, :] * stride_s
            mask = row_ok[:, None] & (offs_s < S)[None, :]
            g = tl.load(g_ptr + off, mask=mask, other=0.0).to(ACC)
            tl.store(dx_ptr + off, (g * s[:, None] + gp[:, None]).to(dx_ptr.dtype.element_ty), mask=mask)


# ---- launchers -------------------------------------------------------------------------------------------------

_TILE = 1024  # elements per [BC, BS] tile: 4 registers a thread at 8 warps (larger tiles spilled, make gpu-check)
_NUM_WARPS = 8  # the [BC, BS] tiles and the [BC, BC] conv matrix live together: 4 warps spill (make gpu-check)
_BLOCK_ELEMS = 1 << 15  # elements of one block (BC x S) the two passes share through L2
_PROGRAMS_PER_SM = 4


@functools.cache
def _num_programs(device_index: int) -> int:
    return _PROGRAMS_PER_SM * torch.cuda.get_device_properties(device_index).multi_processor_count


def _grid(work: int, device: torch.device) -> int:
    if device.type == "cuda":
        return max(1, min(work, _num_programs(device.index if device.index is not None else
                                               torch.cuda.current_device())))
    return max(1, min(work, 3))  # interpreter: a few programs, so the persistent loop is exercised


def _pow2_floor(v: int) -> int:
    return 1 << (max(int(v), 1).bit_length() - 1)


def _blocks(c: int, s: int, pad: int, circular: bool, channels_last: bool):
    """(BC, BS, HP, halo) for C channels of S elements and a conv of half-width pad.

    BC: channels per program. Contiguous x: few enough that the block (BC x S) stays in L2 between the passes,
    at least 8 so the halo stays a small overhead, at most 64 (the conv matrix is BC x BC in registers).
    Channels-last: at least 16 channels, since they are the unit-stride axis of each load.
    A circular conv whose wrapped halo would overlap the block (C < BC + 2 pad) takes all C channels in one block.
    """
    lo = 16 if channels_last else 8
    bc = min(64, max(lo, _pow2_floor(_BLOCK_ELEMS // max(s, 1))))
    bc = min(bc, max(triton.next_power_of_2(c), 1))
    halo = c > bc
    if halo and circular and c < bc + 2 * pad:
        bc, halo = triton.next_power_of_2(c), False
    bs = max(1, min(triton.next_power_of_2(max(s, 1)), _TILE // bc))
    hp = max(2, triton.next_power_of_2(2 * pad)) if halo and pad > 0 else 2
    return bc, bs, hp, halo and pad > 0


def _layout(x):
    """(x in a kernel layout, N, C, S, strides (n, c, s), channels_last). Channels-last is decided by the same
    predicate as the fake kernels' (fastlayers._validate), so the output strides they predict are the ones written."""
    n, c = x.shape[0], x.shape[1]
    s = 1
    for d in x.shape[2:]:
        s *= d
    if is_channels_last_dense(x):
        return x, n, c, s, (c * s, 1, c), True
    return x.contiguous(), n, c, s, (c * s, s, 1), False


def _acc(dtype):
    return (torch.float64, tl.float64) if dtype == torch.float64 else (torch.float32, tl.float32)


def _check(op, x, weight):
    # The registered op is public: the kernel reads k = weight.numel() taps around each channel and assumes an
    # odd, 1-D, floating kernel; anything else would be cast silently or read past its end.
    if x.dim() < 3 or not x.dtype.is_floating_point:
        raise ValueError(f"{op}: x must be a floating [N, C, *spatial] tensor, got {x.dtype} of shape "
                         f"{tuple(x.shape)}")
    if weight.dim() != 1:
        raise ValueError(f"{op}: weight must be 1-D [k], got shape {tuple(weight.shape)}")
    if weight.numel() % 2 != 1:
        raise ValueError(f"{op}: weight length k must be odd and positive, got {weight.numel()}")
    if not weight.dtype.is_floating_point:
        raise TypeError(f"{op}: weight must have a floating dtype, got {weight.dtype}")
    if weight.device != x.device:
        raise ValueError(f"{op}: weight is on {weight.device} but x is on {x.device}")


def eca_fwd(x, weight, circular):
    """Triton launcher of fastlayers::eca_fwd: returns (y like x, pooled [N, C], gate [N, C]) (float32, or
    float64 for float64 x)."""
    _check("eca_fwd", x, weight)
    x, n, c, s, (sn, sc, ss), cl = _layout(x)
    acc_t, acc_tl = _acc(x.dtype)
    y = _alloc.empty_like(x)
    pooled = _alloc.empty((n, c), acc_t, x.device)
    gate = _alloc.empty((n, c), acc_t, x.device)
    if n * c == 0:
        return y, pooled, gate
    w = weight.to(acc_t).contiguous()
    k = w.numel()
    pad = (k - 1) // 2
    bc, bs, hp, halo = _blocks(c, s, pad, circular, cl)
    n_cb = triton.cdiv(c, bc)
    wrap_triton(_fwd_kernel)[(_grid(n * n_cb, x.device),)](x, y, w, pooled, gate, n, c, s, k, pad, n_cb, sn, sc, ss,
                                               CIRCULAR=circular, HALO=halo, ACC=acc_tl,
                                               BC=bc, BS=bs, HP=hp, num_warps=_NUM_WARPS)
    return y, pooled, gate


def eca_bwd(grad_y, x, weight, pooled, gate, circular):
    """Triton launcher of fastlayers::eca_bwd: returns (grad_x like x, grad_weight [k] in weight's dtype)."""
    _check("eca_bwd", x, weight)
    if tuple(grad_y.shape) != tuple(x.shape):
        raise ValueError(f"eca_bwd: grad_y must have x's shape {tuple(x.shape)}, got {tuple(grad_y.shape)}")
    for name, t in (("pooled", pooled), ("gate", gate)):
        if tuple(t.shape) != tuple(x.shape[:2]):
            raise ValueError(f"eca_bwd: {name} must be [N, C] = {list(x.shape[:2])}, got {tuple(t.shape)}")
    x, n, c, s, (sn, sc, ss), cl = _layout(x)
    acc_t, acc_tl = _acc(x.dtype)
    g = grad_y.to(x.dtype)
    if g.stride() != x.stride():
        g = g.movedim(1, -1).contiguous().movedim(-1, 1) if cl else g.contiguous()
    dx = _alloc.empty_like(x)
    k = weight.numel()
    if n * c == 0:
        return dx, torch.zeros_like(weight)
    w = weight.to(acc_t).contiguous()
    pad = (k - 1) // 2
    bc, bs, hp, halo = _blocks(c, s, pad, circular, cl)
    n_cb = triton.cdiv(c, bc)
    dw_part = _alloc.empty((n * n_cb, k), acc_t, x.device)
    wrap_triton(_bwd_kernel)[(_grid(n * n_cb, x.device),)](g, x, dx, w, pooled.to(acc_t).contiguous(),
                                                           gate.to(acc_t).contiguous(),
                                               dw_part, n, c, s, k, pad, n_cb, sn, sc, ss,
                                               CIRCULAR=circular, HALO=halo, ACC=acc_tl, BC=bc, BS=bs, HP=hp,
                                               num_warps=_NUM_WARPS)
    return dx, dw_part.sum(0).to(weight.dtype)
