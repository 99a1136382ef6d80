"""ECA (efficient channel attention) op: fused pool -> conv across channels -> sigmoid -> rescale.

Kernels: C++ on the CPU (csrc/eca/eca_cpu.cpp), Triton on CUDA (kernels/eca.py, as the triton ops
fastlayers::eca_triton_fwd/_bwd that torch.compile traces into). Which one runs is fastlayers.ops._backend's
answer. This module holds the public function, the fake kernels and the autograd formulas.
"""

import torch

from .. import _validate as V
from ..reference import eca as _reference_eca
from . import _backend as B


def eca(x: torch.Tensor, weight: torch.Tensor, circular: bool = False) -> torch.Tensor:
    """Efficient channel attention: ``x * sigmoid(conv1d_channels(mean_spatial(x), weight))``.

    Args:
        x: [N, C, *spatial] with 1, 2 or 3 spatial dims; contiguous or channels-last (the output keeps x's
            memory format). float32/float64 on CPU (float16/bfloat16 there take the eager reference);
            float16/bfloat16/float32/float64 on CUDA (pooling and gate in float32, or float64 for float64).
        weight: [k], k odd and positive: the 1D kernel shared by all channels (timm's ``conv.weight.view(-1)``).
            Promoted to the compute dtype; its gradient comes back in its own dtype.
        circular: wrap the channel convolution around (CecaModule) instead of zero padding (EcaModule).

    Returns:
        Tensor of x's shape, dtype and memory format. Differentiable in x and weight.
        First order only: a second derivative (double backward) raises DoubleBackwardError.
    """
    V.tensor("x", x)
    V.tensor("weight", weight)
    V.boolean("circular", circular)
    if x.dim() not in (3, 4, 5):
        raise ValueError(f"x must be [N, C, *spatial] with 1 to 3 spatial dims, got shape {tuple(x.shape)}")
    # The weight is checked before any path is chosen: the CPU half path below would otherwise take an integer
    # or 2-D weight through the reference without a word.
    if weight.dim() != 1:
        raise ValueError(f"weight must be 1-D [k], got shape {tuple(weight.shape)} (use conv.weight.view(-1))")
    if weight.numel() % 2 != 1:
        raise ValueError(f"weight length k must be odd and positive, got {weight.numel()}")
    if not weight.dtype.is_floating_point:
        raise TypeError(f"weight must have a floating dtype, got {weight.dtype}")
    V.same_device(x=x, weight=weight)
    V.floating("x", x)
    backend = B.choose("eca", x)  # CPU float16/bfloat16 (autocast): the reference, correct and unfused
    if backend == B.REFERENCE:
        return _reference_eca(x, weight, circular)
    if backend == B.TRITON:
        return torch.ops.fastlayers.eca_triton_fwd(x, weight, circular)[0]
    return torch.ops.fastlayers.eca_fwd(x, weight, circular)[0]


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.register_fake("fastlayers::eca_fwd")
def _eca_fwd_fake(x, weight, circular):
    n, c = x.shape[:2]
    side = _acc_dtype(x)
    return V.dense_like(x), x.new_empty((n, c), dtype=side), x.new_empty((n, c), dtype=side)


@torch.library.register_fake("fastlayers::eca_bwd")
def _eca_bwd_fake(grad_y, x, weight, pooled, gate, circular):
    return V.dense_like(x), torch.empty_like(weight, memory_format=torch.contiguous_format)


from ._double_backward import first_order_only


def _setup_context(ctx, inputs, output):
    x, weight, circular = inputs
    _, pooled, gate = output
    ctx.mark_non_differentiable(pooled, gate)
    ctx.save_for_backward(x, weight, pooled, gate)
    ctx.circular = circular


def _make_backward(bwd):
    def _backward(ctx, grad_y, _grad_pooled, _grad_gate):
        x, weight, pooled, gate = ctx.saved_tensors
        # The backward op has no derivative of its own (its formula runs through the sigmoid gate and the channel
        # conv): double backward is refused rather than computed.
        grad_x, grad_w = first_order_only(
            "eca", "fastlayers.reference.eca",
            lambda g, xx, w: bwd()(g, xx, w, pooled, gate, ctx.circular), grad_y, x, weight)
        return (grad_x if ctx.needs_input_grad[0] else None), (grad_w if ctx.needs_input_grad[1] else None), None

    return _backward


torch.library.register_autograd("fastlayers::eca_fwd", _make_backward(lambda: torch.ops.fastlayers.eca_bwd),
                                setup_context=_setup_context)

try:
    from ..kernels import eca as _triton_eca
except ImportError:  # no Triton: CUDA tensors take the eager reference (the backend module says why)
    _triton_eca = None
else:
    # Triton ops: their bodies launch the kernels through wrap_triton, so torch.compile/Inductor trace into them.
    @torch.library.triton_op("fastlayers::eca_triton_fwd", mutates_args=(),
                             schema="(Tensor x, Tensor weight, bool circular) -> (Tensor, Tensor, Tensor)")
    def _eca_triton_fwd(x, weight, circular):
        return _triton_eca.eca_fwd(x, weight, circular)

    @torch.library.triton_op("fastlayers::eca_triton_bwd", mutates_args=(),
                             schema="(Tensor grad_y, Tensor x, Tensor weight, Tensor pooled, Tensor gate, "
                                    "bool circular) -> (Tensor, Tensor)")
    def _eca_triton_bwd(grad_y, x, weight, pooled, gate, circular):
        return _triton_eca.eca_bwd(grad_y, x, weight, pooled, gate, circular)

    torch.library.register_autograd("fastlayers::eca_triton_fwd",
                                    _make_backward(lambda: torch.ops.fastlayers.eca_triton_bwd),
                                    setup_context=_setup_context)
    # The C++-defined ops keep a CUDA kernel for direct torch.ops calls: the same Triton ops.
    torch.library.register_kernel("fastlayers::eca_fwd", "cuda", lambda *a: torch.ops.fastlayers.eca_triton_fwd(*a))
    torch.library.register_kernel("fastlayers::eca_bwd", "cuda", lambda *a: torch.ops.fastlayers.eca_triton_bwd(*a))
    B.triton_registered("eca", {"eca": ("eca_triton_fwd", "eca_triton_bwd")})
