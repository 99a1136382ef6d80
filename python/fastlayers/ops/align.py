"""Alignment refinement ops: batched log-domain Sinkhorn, the asymmetric hinge score and partner transport.

Kernels: C++ on the CPU (csrc/align/), Triton on CUDA (kernels/align.py, as the triton ops
fastlayers::{sinkhorn,align_score,partner}_triton_fwd/_bwd that torch.compile traces into). Which one runs is
fastlayers.ops._backend's answer (the Triton kernels keep a pair on chip: sides up to 64). This module holds the
public functions, the fake kernels and the autograd formulas (backward ops, never autograd through the loop).
"""

import math

import torch

from .. import _validate as V
from ..reference import align as _ref
from . import _backend as B

_MODES = ("masked", "reference")
# The forward keeps [B, num_iters, N] lse vectors for its backward: beyond this the sizes overflow before memory
# runs out, which ATen reports as a SymInt conversion error naming nothing.
_MAX_ITERS = 1 << 24


def _mask(name, mask, b, n, device):
    if mask is None:
        return torch.ones(b, n, dtype=torch.bool, device=device)
    V.tensor(name, mask)
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = real node), got {mask.dtype}")
    if tuple(mask.shape) != (b, n):
        raise ValueError(f"{name} must have shape [{b}, {n}], got {tuple(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"{name} is on {mask.device} but logits is on {device}; move them to one device")
    return mask


def sinkhorn(logits: torch.Tensor, row_mask=None, col_mask=None, tau: float = 0.1, num_iters: int = 20,
             mode: str = "masked", noise: float = 0.0, generator=None) -> torch.Tensor:
    """Batched log-domain Sinkhorn: ``num_iters`` times subtract the row logsumexp, then the column logsumexp,
    of ``logits / tau``; returns ``P = exp(.)``.

    Args:
        logits: [B, N, M] float32/float64 (CPU; also float16/bfloat16 on CUDA, computed in float32).
        row_mask: bool [B, N], True for real rows (query nodes); None means all real.
        col_mask: bool [B, M], True for real columns (corpus nodes); None means all real.
        tau: temperature > 0. num_iters: >= 1 (each is a row and a column half-step).
        mode: "masked" (padded rows/columns excluded and returned as 0; a pair with no real row or column
            gives an all-zero P, never NaN) or "reference" (padded logits set to 0 and kept, reproducing the
            published IsoNet/IsoNet++ loop exactly).
        noise: scale of Gumbel noise added to the logits before dividing by tau (0 = off). In reference mode
            only real entries receive noise. generator: torch.Generator for the noise.

    Returns:
        P [B, N, M], logits' dtype. Differentiable in logits, first order only (a second derivative raises
        DoubleBackwardError). On CUDA, pairs larger than 64 x 64 run the eager reference (the Triton kernel
        keeps a pair on chip).
    """
    V.tensor("logits", logits)
    if logits.dim() != 3:
        raise ValueError(f"logits must be 3-D [B, N, M], got shape {tuple(logits.shape)}")
    V.floating("logits", logits)
    # inf or NaN scales would turn every P into NaN (or a 0 / 0 in the kernel): refused like negative ones.
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau < math.inf:
        raise ValueError(f"tau must be a finite number > 0, got {tau!r}")
    if isinstance(num_iters, bool) or not isinstance(num_iters, int) or not 1 <= num_iters <= _MAX_ITERS:
        raise ValueError(f"num_iters must be an int in [1, {_MAX_ITERS}], got {num_iters!r}")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < math.inf:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
    b, n, m = logits.shape
    rm = _mask("row_mask", row_mask, b, n, logits.device)
    cm = _mask("col_mask", col_mask, b, m, logits.device)
    backend = B.choose("sinkhorn", logits, side=(n, m))
    if backend == B.REFERENCE:
        return _ref.sinkhorn(logits, rm, cm, tau, num_iters, mode, noise, generator)
    if noise:
        logits = logits + noise * _ref.gumbel_noise(logits.shape, logits.dtype, logits.device, generator)
    fwd = torch.ops.fastlayers.sinkhorn_triton_fwd if backend == B.TRITON else torch.ops.fastlayers.sinkhorn_fwd
    return fwd(logits, rm, cm, float(tau), num_iters, mode == "reference")[0]


def _check_transport(hq, hc, P):
    for name, t in (("hq", hq), ("hc", hc), ("P", P)):
        V.tensor(name, t)
        if t.dim() != 3:
            raise ValueError(f"{name} must be 3-D, got shape {tuple(t.shape)}")
        V.floating(name, t)
    V.same_device(P=P, hq=hq, hc=hc)
    b, n, m = P.shape
    if hq.shape[:2] != (b, n):
        raise ValueError(f"hq must be [B, N, D] = [{b}, {n}, D] to match P {tuple(P.shape)}, got {tuple(hq.shape)}")
    if tuple(hc.shape) != (b, m, hq.shape[2]):
        raise ValueError(f"hc must be [B, M, D] = [{b}, {m}, {hq.shape[2]}], got {tuple(hc.shape)}")
    if not (hq.dtype == hc.dtype == P.dtype):
        raise TypeError(f"hq, hc and P must share a dtype, got {hq.dtype}, {hc.dtype}, {P.dtype}")


def align_score(hq: torch.Tensor, hc: torch.Tensor, P: torch.Tensor) -> torch.Tensor:
    """Asymmetric hinge score ``s[b] = -sum_{u,d} ReLU(hq - P hc)[b, u, d]`` (q must be covered by c).

    hq [B, N, D], hc [B, M, D], P [B, N, M], one float dtype. Returns s [B]; differentiable in all three.
    First order only: a second derivative (double backward) raises DoubleBackwardError.
    """
    _check_transport(hq, hc, P)
    backend = B.choose("align_score", P, side=(*P.shape[1:], hq.shape[2]))
    if backend == B.REFERENCE:
        return _ref.align_score(hq, hc, P)
    if backend == B.TRITON:
        return torch.ops.fastlayers.align_score_triton_fwd(hq, hc, P)
    return torch.ops.fastlayers.align_score_fwd(hq, hc, P)


def partner(P: torch.Tensor, hq: torch.Tensor, hc: torch.Tensor):
    """Partner features ``(P hc [B, N, D], P^T hq [B, M, D])`` for the early-interaction layers.

    P [B, N, M], hq [B, N, D], hc [B, M, D], one float dtype. Differentiable in all three.
    First order only: a second derivative (double backward) raises DoubleBackwardError.
    """
    _check_transport(hq, hc, P)
    backend = B.choose("partner", P, side=(*P.shape[1:], hq.shape[2]))
    if backend == B.REFERENCE:
        return _ref.partner(P, hq, hc)
    if backend == B.TRITON:
        return torch.ops.fastlayers.partner_triton_fwd(P, hq, hc)
    return torch.ops.fastlayers.partner_fwd(P, hq, hc)


# ---- fake kernels ----------------------------------------------------------------------------------------------


@torch.library.register_fake("fastlayers::sinkhorn_fwd")
def _sinkhorn_fwd_fake(logits, row_mask, col_mask, tau, num_iters, reference):
    b, n, m = logits.shape
    side = torch.float64 if logits.dtype == torch.float64 else torch.float32  # lse vectors: compute dtype
    return (logits.new_empty((b, n, m)), logits.new_empty((b, num_iters, n), dtype=side),
            logits.new_empty((b, num_iters, m), dtype=side))


@torch.library.register_fake("fastlayers::sinkhorn_bwd")
def _sinkhorn_bwd_fake(grad_P, logits, row_mask, col_mask, row_lse, col_lse, tau, reference):
    return logits.new_empty(logits.shape)


@torch.library.register_fake("fastlayers::align_score_fwd")
def _align_score_fwd_fake(hq, hc, P):
    return P.new_empty((P.shape[0],))


@torch.library.register_fake("fastlayers::align_score_bwd")
def _align_score_bwd_fake(grad_s, hq, hc, P):
    return hq.new_empty(hq.shape), hc.new_empty(hc.shape), P.new_empty(P.shape)


@torch.library.register_fake("fastlayers::partner_fwd")
def _partner_fwd_fake(P, hq, hc):
    return hq.new_empty(hq.shape), hc.new_empty(hc.shape)


@torch.library.register_fake("fastlayers::partner_bwd")
def _partner_bwd_fake(grad_qp, grad_cp, P, hq, hc):
    return P.new_empty(P.shape), hq.new_empty(hq.shape), hc.new_empty(hc.shape)


# ---- autograd --------------------------------------------------------------------------------------------------


from ._double_backward import first_order_only

# The backward kernels below have no derivatives of their own (sinkhorn's runs the iterations backwards from the
# saved log-sum-exps; align_score's hinge and partner's products are fused): double backward is refused.


def _sinkhorn_setup(ctx, inputs, output):
    logits, row_mask, col_mask, tau, _num_iters, reference = inputs
    _, row_lse, col_lse = output
    ctx.mark_non_differentiable(row_lse, col_lse)
    ctx.save_for_backward(logits, row_mask, col_mask, row_lse, col_lse)
    ctx.tau, ctx.reference = tau, reference


def _sinkhorn_backward_of(bwd):
    def _sinkhorn_backward(ctx, grad_P, _g_row, _g_col):
        logits, row_mask, col_mask, row_lse, col_lse = ctx.saved_tensors
        grad = first_order_only(
            "sinkhorn", "fastlayers.reference.sinkhorn",
            lambda g, lg: bwd()(g, lg, row_mask, col_mask, row_lse, col_lse, ctx.tau, ctx.reference), grad_P, logits)
        return grad, None, None, None, None, None

    return _sinkhorn_backward


torch.library.register_autograd("fastlayers::sinkhorn_fwd",
                                _sinkhorn_backward_of(lambda: torch.ops.fastlayers.sinkhorn_bwd),
                                setup_context=_sinkhorn_setup)


def _score_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _score_backward_of(bwd):
    def _score_backward(ctx, grad_s):
        hq, hc, P = ctx.saved_tensors
        return first_order_only("align_score", "fastlayers.reference.align_score", lambda *a: bwd()(*a),
                                grad_s, hq, hc, P)

    return _score_backward


torch.library.register_autograd("fastlayers::align_score_fwd",
                                _score_backward_of(lambda: torch.ops.fastlayers.align_score_bwd),
                                setup_context=_score_setup)


def _partner_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _partner_backward_of(bwd):
    def _partner_backward(ctx, grad_qp, grad_cp):
        P, hq, hc = ctx.saved_tensors
        # A partner output that did not reach the loss comes back as None.
        grad_qp = torch.zeros_like(hq) if grad_qp is None else grad_qp
        grad_cp = torch.zeros_like(hc) if grad_cp is None else grad_cp
        return first_order_only("partner", "fastlayers.reference.partner", lambda *a: bwd()(*a),
                                grad_qp, grad_cp, P, hq, hc)

    return _partner_backward


torch.library.register_autograd("fastlayers::partner_fwd",
                                _partner_backward_of(lambda: torch.ops.fastlayers.partner_bwd),
                                setup_context=_partner_setup)

try:
    from ..kernels import align as _triton_align
except ImportError:  # no Triton: CUDA tensors take the eager reference (the backend module says why)
    _triton_align = None
else:
    # Triton ops: their bodies launch the kernels through wrap_triton, so torch.compile/Inductor trace into them.
    for _name, _schema in (
            ("sinkhorn_fwd", ("(Tensor logits, Tensor row_mask, Tensor col_mask, float tau, int num_iters, "
                              "bool reference) -> (Tensor, Tensor, Tensor)")),
            ("sinkhorn_bwd", ("(Tensor grad_P, Tensor logits, Tensor row_mask, Tensor col_mask, Tensor row_lse, "
                              "Tensor col_lse, float tau, bool reference) -> Tensor")),
            ("align_score_fwd", "(Tensor hq, Tensor hc, Tensor P) -> Tensor"),
            ("align_score_bwd", "(Tensor grad_s, Tensor hq, Tensor hc, Tensor P) -> (Tensor, Tensor, Tensor)"),
            ("partner_fwd", "(Tensor P, Tensor hq, Tensor hc) -> (Tensor, Tensor)"),
            ("partner_bwd", ("(Tensor grad_qp, Tensor grad_cp, Tensor P, Tensor hq, Tensor hc) "
                             "-> (Tensor, Tensor, Tensor)"))):
        _triton_name = _name.replace("_fwd", "_triton_fwd").replace("_bwd", "_triton_bwd")
        torch.library.triton_op(f"fastlayers::{_triton_name}", getattr(_triton_align, _name), mutates_args=(),
                                schema=_schema)
        # The C++-defined op keeps a CUDA kernel for direct torch.ops calls: the same Triton op.
        torch.library.register_kernel(f"fastlayers::{_name}", "cuda",
                                      lambda *a, _op=_triton_name: getattr(torch.ops.fastlayers, _op)(*a))
    torch.library.register_autograd(
        "fastlayers::sinkhorn_triton_fwd", _sinkhorn_backward_of(lambda: torch.ops.fastlayers.sinkhorn_triton_bwd),
        setup_context=_sinkhorn_setup)
    torch.library.register_autograd(
        "fastlayers::align_score_triton_fwd", _score_backward_of(lambda: torch.ops.fastlayers.align_score_triton_bwd),
        setup_context=_score_setup)
    torch.library.register_autograd(
        "fastlayers::partner_triton_fwd", _partner_backward_of(lambda: torch.ops.fastlayers.partner_triton_bwd),
        setup_context=_partner_setup)
    B.triton_registered("align", {op: (f"{op}_triton_fwd", f"{op}_triton_bwd")
                                  for op in ("sinkhorn", "align_score", "partner")})
