"""Hypernetwork ops: fused generate-and-apply of a generated linear layer.

Kernels: C++ on the CPU (csrc/hyper/), Triton on CUDA (kernels/hyper.py, as the triton ops
fastlayers::hyper_linear_triton_fwd/_bwd and hyper_abs_linear_triton_fwd/_bwd that torch.compile traces into).
Which one runs is fastlayers.ops._backend's answer. This module holds the public function, the fake kernels and
the autograd formulas.
"""

import torch

from .. import _validate as V
from ..reference import hyper as _reference
from . import _backend as B


def _check_linear(x, phi, weight, bias, base_weight, base_bias, xn="x", phin="phi"):
    """Validates hyper_linear's arguments, naming x and phi as the caller calls them (interval_hyper_linear
    passes x_c, phi_c). Returns (O, I)."""
    V.tensor(xn, x)
    V.tensor(phin, phi)
    V.tensor("weight", weight)
    if x.dim() not in (2, 3):
        raise ValueError(f"{xn} must be [B, I] or [B, T, I], got shape {tuple(x.shape)}")
    if phi.dim() != 2:
        raise ValueError(f"{phin} must be [B, h], got shape {tuple(phi.shape)}")
    if weight.dim() != 2:
        raise ValueError(f"weight must be [O*I + O, h], got shape {tuple(weight.shape)}")
    n_batch, n_in, h = x.shape[0], x.shape[-1], phi.shape[1]
    if phi.shape[0] != n_batch:
        raise ValueError(f"{phin} has {phi.shape[0]} rows but {xn} has batch {n_batch}: one {phin} row per sample")
    if weight.shape[1] != h:
        raise ValueError(f"weight must have h = {h} columns ({phin}'s width), got shape {tuple(weight.shape)}")
    rows = weight.shape[0]
    if rows == 0 or rows % (n_in + 1):
        raise ValueError(f"weight rows must be O*I + O with I = {n_in} (a multiple of {n_in + 1}), got {rows}")
    n_out = rows // (n_in + 1)
    named = {xn: x, phin: phi, "weight": weight}
    for name, t, shape in (("bias", bias, (rows,)), ("base_weight", base_weight, (n_out, n_in)),
                           ("base_bias", base_bias, (n_out,))):
        if t is not None:
            V.tensor(name, t)
            if tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {list(shape)}, got {tuple(t.shape)}")
            named[name] = t
    V.same_device(**named)
    for name, t in named.items():
        V.floating(name, t)
        if t.dtype != x.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {xn} has {x.dtype}; use one dtype")
    return n_out, n_in


def hyper_linear(x, phi, weight, bias=None, base_weight=None, base_bias=None):
    """A hypernetwork-generated linear layer, applied without materialising the per-sample weights.

    For each sample b, with O = weight.shape[0] // (I + 1):
    ``W_b = reshape(weight[:O*I] @ phi_b + bias[:O*I], [O, I]) + base_weight`` and
    ``y_b = x_b W_b^T + weight[O*I:] @ phi_b + bias[O*I:] + base_bias``.

    Args:
        x: [B, I] (one input per weight set) or [B, T, I] (T tokens share sample b's weights).
        phi: [B, h], the hypernetwork trunk's output for each sample.
        weight: [O*I + O, h], the hypernetwork's output layer: the first O*I rows generate W_b (row-major
            [O, I]), the last O rows the output bias.
        bias: optional [O*I + O], the output layer's bias (the generated weights' constant part).
        base_weight: optional [O, I], a learned weight added to every W_b (MIP's residual form).
        base_bias: optional [O].

    All tensors share one device and one floating dtype: float32/float64 on CPU, also float16/bfloat16 on CUDA
    (float32 accumulation). Returns [B, O] or [B, T, O]; differentiable in every tensor argument.
    First order only: a second derivative (double backward) raises DoubleBackwardError.
    """
    n_out, n_in = _check_linear(x, phi, weight, bias, base_weight, base_bias)
    backend = B.choose("hyper_linear", x)
    if backend == B.REFERENCE:
        return _reference.hyper_linear(x, phi, weight, bias, base_weight, base_bias)
    w0 = None if bias is None else bias[: n_out * n_in].reshape(n_out, n_in)
    b0 = None if bias is None else bias[n_out * n_in:]
    if base_weight is not None:
        w0 = base_weight if w0 is None else w0 + base_weight
    if base_bias is not None:
        b0 = base_bias if b0 is None else b0 + base_bias
    x3 = x.unsqueeze(1) if x.dim() == 2 else x
    ops = torch.ops.fastlayers
    fwd = ops.hyper_linear_triton_fwd if backend == B.TRITON else ops.hyper_linear_fwd
    y = fwd(x3, phi, weight, w0, b0)
    return y.squeeze(1) if x.dim() == 2 else y


@torch.library.register_fake("fastlayers::hyper_linear_fwd")
def _fwd_fake(x, phi, weight, w0, b0):
    return x.new_empty((x.shape[0], x.shape[1], weight.shape[0] // (x.shape[2] + 1)))


@torch.library.register_fake("fastlayers::hyper_linear_bwd")
def _bwd_fake(grad_y, x, phi, weight, w0, need_input, need_weight):
    n_out, n_in = weight.shape[0] // (x.shape[2] + 1), x.shape[2]
    return (x.new_empty(x.shape), phi.new_empty(phi.shape), weight.new_empty(weight.shape),
            x.new_empty((n_out, n_in)), x.new_empty((n_out,)))


from ._double_backward import first_order_only


def _setup_context(ctx, inputs, output):
    x, phi, weight, w0, _b0 = inputs
    ctx.save_for_backward(x, phi, weight, w0)


def _make_backward(bwd):
    def _backward(ctx, grad_y):
        x, phi, weight, w0 = ctx.saved_tensors
        need = ctx.needs_input_grad
        # The backward op has no derivative of its own: double backward is refused rather than computed.
        gx, gphi, gw, gw0, gb0 = first_order_only(
            "hyper_linear (and fastlayers.ops.interval_hyper_linear, built on it)",
            "fastlayers.reference.hyper_linear (or fastlayers.reference.interval_hyper_linear)",
            lambda g, xx, p, w, w0_: bwd()(g, xx, p, w, w0_, need[0] or need[1], need[2]),
            grad_y, x, phi, weight, w0)
        return (gx if need[0] else None, gphi if need[1] else None, gw if need[2] else None,
                gw0 if need[3] else None, gb0 if need[4] else None)

    return _backward


torch.library.register_autograd("fastlayers::hyper_linear_fwd",
                                _make_backward(lambda: torch.ops.fastlayers.hyper_linear_bwd),
                                setup_context=_setup_context)

# ---- interval propagation (HyperInterval) ----------------------------------------------------------------------



def interval_hyper_linear(x_c, x_r, phi_c, phi_r, weight, bias=None):
    """A generated linear layer applied to an interval input, its weights an interval too (HyperInterval).

    The hypernetwork's interval output [phi_c - phi_r, phi_c + phi_r] through its last layer (weight, bias) gives
    interval weights W_c = reshape(weight[:O*I] phi_c + bias[:O*I]), W_r = reshape(|weight[:O*I]| phi_r) and
    biases b_c = weight[O*I:] phi_c + bias[O*I:], b_r = |weight[O*I:]| phi_r. With the input interval (x_c, x_r):
    ``y_c = W_c x_c + b_c`` and ``y_r = |W_c| x_r + W_r (|x_c| + x_r) + b_r`` (spec formulas), per sample, and
    [y_c - y_r, y_c + y_r] contains the layer's output for every weight and input in the intervals.

    Args:
        x_c, x_r: [B, I] or [B, T, I]; x_r >= 0 (not checked).
        phi_c, phi_r: [B, h]; phi_r >= 0 (not checked).
        weight: [O*I + O, h]; bias: optional [O*I + O].
    Returns:
        (y_c, y_r), each [B, O] or [B, T, O]. Differentiable in every tensor argument (first order only: a
        second derivative raises DoubleBackwardError). Nothing of size B*O*I is materialised: y_c and the W_r
        term are hyper_linear calls, the |W_c| term a tiled op of its own.
    """
    n_out, n_in = _check_linear(x_c, phi_c, weight, bias, None, None, "x_c", "phi_c")
    backend = B.choose("interval_hyper_linear", x_c)
    V.tensor("x_r", x_r)
    V.tensor("phi_r", phi_r)
    if x_r.shape != x_c.shape:
        raise ValueError(f"x_r must have x_c's shape {tuple(x_c.shape)}, got {tuple(x_r.shape)}")
    if phi_r.shape != phi_c.shape:
        raise ValueError(f"phi_r must have phi_c's shape {tuple(phi_c.shape)}, got {tuple(phi_r.shape)}")
    V.same_device(x_c=x_c, x_r=x_r, phi_r=phi_r)
    for name, t in (("x_r", x_r), ("phi_r", phi_r)):
        if t.dtype != x_c.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but x_c has {x_c.dtype}; use one dtype")
    y_c = hyper_linear(x_c, phi_c, weight, bias)
    y_r = hyper_linear(x_c.abs() + x_r, phi_r, weight.abs())
    if n_in == 0:
        # No input features: |W_c| x_r is an empty sum (and its op could not tell O from weight's 0 rows).
        return y_c, y_r
    rows = weight[: n_out * n_in]
    w0 = None if bias is None else bias[: n_out * n_in].reshape(n_out, n_in)
    x3 = x_r.unsqueeze(1) if x_r.dim() == 2 else x_r
    if backend == B.TRITON:
        abs_term = torch.ops.fastlayers.hyper_abs_linear_triton_fwd(x3, phi_c, rows, w0)
    elif backend == B.CPP:
        abs_term = torch.ops.fastlayers.hyper_abs_linear_fwd(x3, phi_c, rows, w0)
    else:
        abs_term = _reference.hyper_abs_linear(x3, phi_c, rows, w0)
    return y_c, y_r + (abs_term.squeeze(1) if x_r.dim() == 2 else abs_term)


@torch.library.register_fake("fastlayers::hyper_abs_linear_fwd")
def _abs_fwd_fake(x, phi, weight, w0):
    return x.new_empty((x.shape[0], x.shape[1], weight.shape[0] // x.shape[2]))


@torch.library.register_fake("fastlayers::hyper_abs_linear_bwd")
def _abs_bwd_fake(grad_y, x, phi, weight, w0):
    n_out, n_in = weight.shape[0] // x.shape[2], x.shape[2]
    return x.new_empty(x.shape), phi.new_empty(phi.shape), weight.new_empty(weight.shape), x.new_empty((n_out, n_in))


def _abs_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _make_abs_backward(bwd):
    def _abs_backward(ctx, grad_y):
        x, phi, weight, w0 = ctx.saved_tensors
        # |W| has no useful second derivative and the backward op no derivative of its own: refused.
        grads = first_order_only("interval_hyper_linear", "fastlayers.reference.interval_hyper_linear",
                                 lambda *a: bwd()(*a), grad_y, x, phi, weight, w0)
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad))

    return _abs_backward


torch.library.register_autograd("fastlayers::hyper_abs_linear_fwd",
                                _make_abs_backward(lambda: torch.ops.fastlayers.hyper_abs_linear_bwd),
                                setup_context=_abs_setup_context)

try:
    from ..kernels import hyper as _triton_hyper
except ImportError:  # no Triton: CUDA tensors take the eager reference (the backend module says why)
    _triton_hyper = None
else:
    # Triton ops: their bodies launch the kernels through wrap_triton, so torch.compile/Inductor trace into them.
    for _name, _launcher, _schema in (
            ("hyper_linear_triton_fwd", _triton_hyper.hyper_linear_fwd,
             "(Tensor x, Tensor phi, Tensor weight, Tensor? w0, Tensor? b0) -> Tensor"),
            ("hyper_linear_triton_bwd", _triton_hyper.hyper_linear_bwd,
             ("(Tensor grad_y, Tensor x, Tensor phi, Tensor weight, Tensor? w0, bool need_input, "
              "bool need_weight) -> (Tensor, Tensor, Tensor, Tensor, Tensor)")),
            ("hyper_abs_linear_triton_fwd", _triton_hyper.hyper_abs_linear_fwd,
             "(Tensor x, Tensor phi, Tensor weight, Tensor? w0) -> Tensor"),
            ("hyper_abs_linear_triton_bwd", _triton_hyper.hyper_abs_linear_bwd,
             "(Tensor grad_y, Tensor x, Tensor phi, Tensor weight, Tensor? w0) -> (Tensor, Tensor, Tensor, Tensor)")):
        torch.library.triton_op(f"fastlayers::{_name}", _launcher, mutates_args=(), schema=_schema)
        # The C++-defined op of the same computation keeps a CUDA kernel for direct torch.ops calls.
        torch.library.register_kernel(f"fastlayers::{_name.replace('_triton', '')}", "cuda",
                                      lambda *a, _op=_name: getattr(torch.ops.fastlayers, _op)(*a))
    torch.library.register_autograd("fastlayers::hyper_linear_triton_fwd",
                                    _make_backward(lambda: torch.ops.fastlayers.hyper_linear_triton_bwd),
                                    setup_context=_setup_context)
    torch.library.register_autograd("fastlayers::hyper_abs_linear_triton_fwd",
                                    _make_abs_backward(lambda: torch.ops.fastlayers.hyper_abs_linear_triton_bwd),
                                    setup_context=_abs_setup_context)
    B.triton_registered("hyper", {"hyper_linear": ("hyper_linear_triton_fwd", "hyper_linear_triton_bwd"),
                                  "interval_hyper_linear": ("hyper_abs_linear_triton_fwd",
                                                            "hyper_abs_linear_triton_bwd")})
