"""Second derivatives through backward kernels that have no derivative of their own.

The backward ops (``torch.ops.fastlayers.*_bwd``) are plain kernels: called while a graph of the backward is being
built (``create_graph=True``), torch's autograd fallback would let a second derivative through them come out
silently wrong. An op whose backward kernel has no cheap derivative routes that call through
:func:`first_order_only`, which ties the kernel's outputs to its inputs with a node that raises as soon as a
second derivative actually reaches it.

Double backward, op by op (HEI/IRM-style gradient penalties need the first group):

- supported, to any order (checked by gradgradcheck and against the reference in tests/test_double_backward.py):
  scatter and segment (every reduce: their backward is linear in the incoming gradient), spmm sum/mean (its
  backward is spmm on the reversed graph plus an sddmm, both differentiable ops), sddmm (its backward is spmm),
  edge_softmax, block_spmm (their backward kernels carry derivative formulas in fastlayers.ops.mp).
- refused with :class:`DoubleBackwardError`: spmm min/max, eca, hyper_linear, interval_hyper_linear, sinkhorn,
  align_score, partner, isonet_layer. Their second derivatives need kernels of their own; the message names the
  fastlayers.reference function to use for such a term instead.
- not differentiable at all: the ncache ops (integer tables and detached stored values).
"""

from __future__ import annotations

import torch


class DoubleBackwardError(NotImplementedError):
    """A second derivative was requested through a fastlayers op that only supports first-order gradients."""


class _FirstOrderOnly(torch.autograd.Function):
    @staticmethod
    def forward(ctx, op, alternative, fn, *inputs):
        ctx.op, ctx.alternative = op, alternative
        return fn(*inputs)

    @staticmethod
    def backward(ctx, *grads):
        raise DoubleBackwardError(
            f"fastlayers.ops.{ctx.op}: double backward is not supported (a second derivative, e.g. a gradient "
            f"penalty: backward or autograd.grad with create_graph=True, then a backward through that gradient). "
            f"First-order gradients are exact. For the second-order term use the plain-PyTorch reference "
            f"{ctx.alternative}, which is differentiable to any order.")


def first_order_only(op: str, alternative: str, fn, *inputs):
    """``fn(*inputs)`` (a backward kernel call); when the backward is itself being recorded, the result carries a
    node that raises :class:`DoubleBackwardError` naming ``op`` and ``alternative`` once differentiated.

    Outside ``create_graph=True`` (grad mode is off while a backward runs) this is just the call: first-order
    backward pays nothing for it.
    """
    if not torch.is_grad_enabled():
        return fn(*inputs)
    return _FirstOrderOnly.apply(op, alternative, fn, *inputs)
