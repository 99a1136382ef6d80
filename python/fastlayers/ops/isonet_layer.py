"""One fused IsoNet++ node layer (interaction MLP, node-pair messages summed at the targets, GRU update, mask).

Kernel: C++ on the CPU (csrc/align/isonet_layer_fwd_cpu.cpp). Elsewhere (CUDA) the op runs its plain-PyTorch reference
(fastlayers.reference.isonet_layer); there is no GPU kernel yet (fastlayers.ops._backend decides). Backward on
the CPU: a C++ kernel for the per-node and per-edge part (csrc/align/isonet_layer_bwd_cpu.cpp), then node-level GEMMs for the weight gradients; on
other devices a recompute through the folded formulation (_folded_layer) under autograd.
"""

import torch
import torch.nn.functional as F

from .. import _validate as V
from ..graph import as_graph
from ..reference import isonet_layer as _ref_isonet_layer
from . import _backend as B

_WEIGHTS = ("inter_w1", "inter_b1", "inter_w2", "inter_b2", "msg_w1", "msg_b1", "msg_w2", "msg_b2", "w_ih", "w_hh",
            "b_ih", "b_hh")


def _check_weights(h, weights):
    for name, w in zip(_WEIGHTS, weights):
        V.tensor(name, w)
        if w.dtype != h.dtype:
            raise TypeError(f"{name} must have h's dtype {h.dtype}, got {w.dtype}")
        if w.device != h.device:
            raise ValueError(f"{name} is on {w.device} but h is on {h.device}; move them to one device")
    iw1, _ib1, iw2, _ib2, mw1, _mb1, mw2, _mb2, _w_ih, _w_hh, _b_ih, _b_hh = weights
    d = h.shape[1]
    hid = iw1.shape[0] if iw1.dim() == 2 else -1
    z = iw2.shape[0] if iw2.dim() == 2 else -1
    m1 = mw1.shape[0] if mw1.dim() == 2 else -1
    m = mw2.shape[0] if mw2.dim() == 2 else -1
    want = {"inter_w1": (hid, 2 * d), "inter_b1": (hid,), "inter_w2": (z, hid), "inter_b2": (z,),
            "msg_w1": (m1, 2 * z), "msg_b1": (m1,), "msg_w2": (m, m1), "msg_b2": (m,), "w_ih": (3 * d, m),
            "w_hh": (3 * d, d), "b_ih": (3 * d,), "b_hh": (3 * d,)}
    for name, w in zip(_WEIGHTS, weights):
        if w.dim() != len(want[name]) or min(want[name]) < 0 or tuple(w.shape) != want[name]:
            raise ValueError(f"{name} must have shape {list(want[name])} (D = {d} from h), got {tuple(w.shape)}")


def isonet_layer(h: torch.Tensor, partner, graph, mask: torch.Tensor, inter_w1, inter_b1, inter_w2, inter_b2,
                 msg_w1, msg_b1, msg_w2, msg_b2, w_ih, w_hh, b_ih, b_hh, P=None, other=None,
                 transpose: bool = False) -> torch.Tensor:
    """One IsoNet++ node layer, fused:
    ``z = W_i2 relu(W_i1 [h, partner] + b_i1) + b_i2``; for every edge u -> v the message
    ``W_m2 relu(W_m1 [z_u, z_v] + b_m1) + b_m2``, summed at v; ``h' = GRUCell(sum, h) * mask``.

    Args:
        h: [N, D] float32/float64 node states.
        partner: [N, D] partner features (P H of the other graph), or None for zeros (round 1).
        graph: fastlayers.Graph over the N nodes, or an int64 edge_index [2, E] (row 0 source, row 1 target;
            built into a Graph each call: pass a Graph when the layer runs several times on one batch).
        mask: bool [N], False for padding nodes (their output rows are 0).
        inter_w1 [H, 2D], inter_b1 [H], inter_w2 [Z, H], inter_b2 [Z]: the interaction MLP's Linears.
        msg_w1 [M1, 2Z], msg_b1 [M1], msg_w2 [M, M1], msg_b2 [M]: the message MLP's Linears.
        w_ih [3D, M], w_hh [3D, D], b_ih [3D], b_hh [3D]: the GRU cell (nn.GRUCell's layout, gates r, z, n).
        All weights in h's dtype and on h's device.
        P, other, transpose: the partner as an alignment transport instead (partner must then be None):
            P [B, n, n_o] and other [B * n_o, D] (the other graph's states) with N = B * n give
            partner = P other per pair, without the [N, D] partner tensor; with transpose, P is [B, n_o, n] and
            partner = P^T other (the corpus side of IsoNet++).

    Returns:
        [N, D] new states, h's dtype. Differentiable in h, partner (or P and other) and every weight.
        First order only: a second derivative (double backward) raises DoubleBackwardError.
    """
    V.tensor("h", h)
    if h.dim() != 2:
        raise ValueError(f"h must be 2-D [N, D], got shape {tuple(h.shape)}")
    V.floating("h", h)
    n = h.shape[0]
    if partner is not None:
        V.tensor("partner", partner)
        if partner.shape != h.shape:
            raise ValueError(f"partner must have h's shape {tuple(h.shape)}, got {tuple(partner.shape)}")
        if partner.dtype != h.dtype:
            raise TypeError(f"partner must have h's dtype {h.dtype}, got {partner.dtype}")
        V.same_device(h=h, partner=partner)
    transpose = V.boolean("transpose", transpose)
    if P is not None:
        _check_transport(h, partner, P, other, transpose)
    elif other is not None:
        raise ValueError("other is the transported side of P: pass P too (or pass partner)")
    V.tensor("mask", mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = real node), got {mask.dtype}")
    if tuple(mask.shape) != (n,):
        raise ValueError(f"mask must have shape [{n}], got {tuple(mask.shape)}")
    V.same_device(h=h, mask=mask)
    g = as_graph(graph, num_nodes=n, name="graph")
    if g.device != h.device:
        raise ValueError(f"graph is on {g.device} but h is on {h.device}; move them to one device")
    weights = (inter_w1, inter_b1, inter_w2, inter_b2, msg_w1, msg_b1, msg_w2, msg_b2, w_ih, w_hh, b_ih, b_hh)
    _check_weights(h, weights)
    if B.choose("isonet_layer", h) == B.REFERENCE:
        return _ref_isonet_layer(h, partner, g, mask, *weights, P=P, other=other, transpose=transpose)
    return torch.ops.fastlayers.isonet_layer_fwd(h, partner, P, other, transpose, g.rowptr, g.col, mask, *weights)


def _check_transport(h, partner, P, other, transpose):
    if partner is not None:
        raise ValueError("pass either partner or P (with other), not both")
    V.tensor("P", P)
    V.tensor("other", other)
    if P.dim() != 3:
        raise ValueError(f"P must be 3-D [B, N, M], got shape {tuple(P.shape)}")
    for name, t in (("P", P), ("other", other)):
        if t.dtype != h.dtype:
            raise TypeError(f"{name} must have h's dtype {h.dtype}, got {t.dtype}")
        V.same_device(h=h, **{name: t})
    b, n, n_o = P.shape[0], P.shape[2 if transpose else 1], P.shape[1 if transpose else 2]
    side = "columns" if transpose else "rows"
    if b * n != h.shape[0]:
        raise ValueError(f"h must have B * n = {b} * {n} rows (n = P's {side}), got {h.shape[0]}")
    if tuple(other.shape) != (b * n_o, h.shape[1]):
        raise ValueError(f"other must have shape [{b * n_o}, {h.shape[1]}] (B * P's other side, D), "
                         f"got {tuple(other.shape)}")


@torch.library.register_fake("fastlayers::isonet_layer_fwd")
def _isonet_layer_fake(h, partner, P, other, transpose, rowptr, col, mask, *weights):
    return h.new_empty(h.shape)


@torch.library.register_fake("fastlayers::isonet_layer_bwd")
def _isonet_layer_bwd_fake(grad, h, partner, rowptr, col, mask, iw1, ib1, iw2, ib2, mw1, mb1, mw2, *rest):
    def pad(k):
        return (k + 15) // 16 * 16

    n, d = h.shape
    m1p = pad(mw1.shape[0])
    widths = (pad(d), pad(d), pad(iw1.shape[0]), pad(iw1.shape[0]), 2 * m1p, m1p, pad(3 * d), pad(3 * d))
    return [h.new_empty(n, w) for w in widths]


from ._double_backward import first_order_only


def _setup(ctx, inputs, output):
    h, partner, P, other, transpose, rowptr, col, mask, *weights = inputs
    ctx.transpose = transpose
    ctx.save_for_backward(h, partner, P, other, rowptr, col, mask, *weights)


def _folded_layer(h, partner, P, other, transpose, src, dst, deg, mask, iw1, ib1, iw2, ib2, mw1, mb1, mw2, mb2,
                  w_ih, w_hh, b_ih, b_hh):
    """The layer as the kernel computes it, in differentiable PyTorch: the Linears that follow one another are
    folded (interaction output into the message's first Linear; the message's second Linear, which commutes with
    the sum over edges, into the GRU's input map), so the per-edge work is a gather, an add, a ReLU and a sum at
    M1 features, and every product is a node-level GEMM. Same function as the reference (the tests compare values
    and gradients); the op's backward recomputes through it on devices without the C++ backward kernel."""
    d, zd, m1 = h.shape[1], iw2.shape[0], mw1.shape[0]
    x1 = F.linear(h, iw1[:, :d], ib1)
    if P is not None:
        # P (W_p other) per pair: the partner's product with its weights taken on the other side's nodes first.
        q = F.linear(other, iw1[:, d:])
        Pt = P.transpose(1, 2) if transpose else P
        x1 = x1 + torch.bmm(Pt, q.view(Pt.shape[0], Pt.shape[2], -1)).reshape(x1.shape)
    elif partner is not None:
        x1 = x1 + F.linear(partner, iw1[:, d:])
    r = F.relu(x1)
    wu, wv = mw1[:, :zd], mw1[:, zd:]
    a = F.linear(r, torch.cat([wu @ iw2, wv @ iw2]), torch.cat([wu @ ib2, wv @ ib2 + mb1]))
    t = F.relu(a[:, :m1][src] + a[:, m1:][dst])
    s = torch.zeros(h.shape[0], m1, dtype=h.dtype, device=h.device).index_add(0, dst, t)
    gi = F.linear(s, w_ih @ mw2, b_ih) + deg[:, None] * (w_ih @ mb2)
    gh = F.linear(h, w_hh, b_hh)
    ir, iz, i_n = gi.chunk(3, 1)
    hr, hz, hn = gh.chunk(3, 1)
    zg = torch.sigmoid(iz + hz)
    n = torch.tanh(i_n + torch.sigmoid(ir + hr) * hn)
    return (n + zg * (h - n)) * mask[:, None].to(h.dtype)


def _backward(ctx, grad):
    h, partner, P, other, rowptr, col, mask, *weights = ctx.saved_tensors
    if torch.is_grad_enabled():
        # create_graph=True. Neither path is differentiable (the C++ backward kernel has no derivative; the
        # recompute below differentiates detached leaves), so the gradients are computed as usual (grad mode is
        # off inside first_order_only's call) and a second derivative through them raises.
        return first_order_only("isonet_layer", "fastlayers.reference.isonet_layer",
                                lambda g, *_: _backward(ctx, g), grad, h, partner, P, other, *weights)
    if B.choose("isonet_layer", h) == B.CPP:  # the C++ backward kernel; elsewhere the folded recompute
        return _backward_cpu(ctx.transpose, grad, h, partner, P, other, rowptr, col, mask, weights)
    need = ctx.needs_input_grad
    deg = rowptr.diff()
    dst = torch.repeat_interleave(torch.arange(h.shape[0], device=h.device), deg, output_size=col.numel())
    leaves = [h, partner, P, other] + list(weights)
    flags = [bool(f) and t is not None for t, f in zip(leaves, need[:4] + need[8:])]
    with torch.enable_grad():
        leaves = [None if t is None else t.detach().requires_grad_(f) for t, f in zip(leaves, flags)]
        out = _folded_layer(*leaves[:4], ctx.transpose, col, dst, deg.to(h.dtype), mask, *leaves[4:])
        wanted = [t for t, f in zip(leaves, flags) if f]
        got = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True) if wanted else ())
    grads = []
    for t, f in zip(leaves, flags):
        g = next(got) if f else None
        grads.append(torch.zeros_like(t) if f and g is None else g)
    return (*grads[:4], None, None, None, None, *grads[4:])


def _backward_cpu(transpose, grad, h, partner, P, other, rowptr, col, mask, weights):
    """The C++ kernel's per-node factors, then the weight gradients as node-level GEMMs and the chain rule
    through the kernel's folded weights (see csrc/align/isonet_layer_bwd_cpu.cpp)."""
    iw1, _ib1, iw2, ib2, mw1, _mb1, mw2, mb2, w_ih, _w_hh, _b_ih, _b_hh = weights
    n, d = h.shape
    hid, zd, m1, g3 = iw1.shape[0], iw2.shape[0], mw1.shape[0], 3 * h.shape[1]
    p = partner
    if P is not None:
        Pt = P.transpose(1, 2) if transpose else P
        other_v = other.view(Pt.shape[0], Pt.shape[2], d)
        p = torch.bmm(Pt, other_v).reshape(n, d)
    dh, dp, r, dx1, da, s, dgi, dgh = torch.ops.fastlayers.isonet_layer_bwd(
        grad, h, p, rowptr, col, mask, *weights)
    m1p = da.shape[1] // 2
    dh, dp, r, dx1, s = dh[:, :d], dp[:, :d], r[:, :hid], dx1[:, :hid], s[:, :m1]
    da_u, da_v = da[:, :m1], da[:, m1p:m1p + m1]
    dgi, dgh = dgi[:, :g3], dgh[:, :g3]
    deg = rowptr.diff().to(h.dtype)
    # Gradients of the folded weights (sums over nodes of outer products) ...
    d_iw1 = torch.cat([dx1.t() @ h, dx1.t() @ p if p is not None else torch.zeros_like(iw1[:, d:])], 1)
    dwa_u, dwa_v = da_u.t() @ r, da_v.t() @ r
    dba_u, dba_v = da_u.sum(0), da_v.sum(0)
    dwg, dbdeg = dgi.t() @ s, dgi.t() @ deg
    # ... and through the folding: a_u = W_u (W_i2 r + b_i2), a_v = W_v (W_i2 r + b_i2) + b_m1,
    # W_g = W_ih W_m2, b_deg = W_ih b_m2.
    wu, wv = mw1[:, :zd], mw1[:, zd:]
    d_mw1 = torch.cat([dwa_u @ iw2.t() + torch.outer(dba_u, ib2), dwa_v @ iw2.t() + torch.outer(dba_v, ib2)], 1)
    d_iw2 = wu.t() @ dwa_u + wv.t() @ dwa_v
    d_ib2 = wu.t() @ dba_u + wv.t() @ dba_v
    d_wih = dwg @ mw2.t() + torch.outer(dbdeg, mb2)
    wgrads = (d_iw1, dx1.sum(0), d_iw2, d_ib2, d_mw1, dba_v, w_ih.t() @ dwg, w_ih.t() @ dbdeg, d_wih,
              dgh.t() @ h, dgi.sum(0), dgh.sum(0))
    d_partner = d_P = d_other = None
    if P is not None:
        dp_v = dp.reshape(Pt.shape[0], Pt.shape[1], d)
        if transpose:
            d_P, d_other = torch.bmm(other_v, dp_v.transpose(1, 2)), torch.bmm(P, dp_v)
        else:
            d_P, d_other = torch.bmm(dp_v, other_v.transpose(1, 2)), torch.bmm(P.transpose(1, 2), dp_v)
        d_other = d_other.reshape(other.shape)
    elif partner is not None:
        d_partner = dp
    return (dh, d_partner, d_P, d_other, None, None, None, None, *wgrads)


torch.library.register_autograd("fastlayers::isonet_layer_fwd", _backward, setup_context=_setup)
