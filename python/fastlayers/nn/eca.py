import math
import warnings

import torch
from torch import nn

from .._optional import require
from ..ops.eca import eca


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """ECA-Net's adaptive kernel size: t = int(|log2(C) + beta| / gamma), made odd, at least 3 (timm's rule)."""
    t = int(abs(math.log2(channels) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


class ECA(nn.Module):
    """Efficient channel attention (ECA-Net), a drop-in for timm's ``EcaModule`` and ``CecaModule``.

    ``y = x * sigmoid(conv1d_over_channels(mean_spatial(x)))`` computed by one fused kernel (C++ on CPU, Triton on
    CUDA) in two passes over x, forward and backward.

    Args:
        channels: input channels; when given (and kernel_size is not), sets the kernel size by ECA-Net's rule.
        kernel_size: odd kernel size of the channel convolution; overrides the rule. Default 3 when neither is
            given (timm's default).
        gamma, beta: parameters of the kernel-size rule.
        circular: wrap the channel convolution around (timm's ``CecaModule``) instead of zero padding.

    Shapes: x [N, C, *spatial] with 1-3 spatial dims, contiguous or channels-last; output like x.
    State dict: ``conv.weight`` of shape [1, 1, k], as in timm, so timm checkpoints load unchanged.
    """

    def __init__(self, channels=None, kernel_size=None, gamma=2, beta=1, circular=False):
        super().__init__()
        if channels is not None and (not isinstance(channels, int) or channels < 1):
            raise ValueError(f"channels must be a positive int, got {channels!r}")
        if kernel_size is None:
            kernel_size = eca_kernel_size(channels, gamma, beta) if channels is not None else 3
        if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.circular = bool(circular)
        # Holds the parameter under timm's name and shape; the fused op reads conv.weight.view(-1).
        self.conv = nn.Conv1d(1, 1, kernel_size=kernel_size, padding=(kernel_size - 1) // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels is not None and x.dim() >= 2 and x.shape[1] != self.channels:
            raise ValueError(f"x has {x.shape[1]} channels, this ECA was built for {self.channels}")
        return eca(x, self.conv.weight.view(-1), self.circular)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kernel_size={self.kernel_size}, circular={self.circular}"


def _from_timm(module) -> "ECA | None":
    """The ECA equivalent of a timm EcaModule/CecaModule, or None when it uses options ECA does not fuse."""
    from timm.layers import CecaModule, EcaModule
    from timm.layers.activations import Sigmoid as TimmSigmoid

    circular = isinstance(module, CecaModule)
    if not isinstance(module, (EcaModule, CecaModule)):
        return None
    if getattr(module, "conv2", None) is not None or getattr(module, "act", None) is not None:
        return None  # timm's experimental MLP / activated variants
    if module.conv.bias is not None or not isinstance(module.gate, (nn.Sigmoid, TimmSigmoid)):
        return None
    k = module.conv.weight.shape[-1]
    new = ECA(kernel_size=k, circular=circular).to(device=module.conv.weight.device, dtype=module.conv.weight.dtype)
    new.conv.weight.data.copy_(module.conv.weight.data)
    new.train(module.training)
    return new


def convert_timm(model: nn.Module) -> nn.Module:
    """Replace every timm ``EcaModule``/``CecaModule`` in ``model`` (in place) by :class:`ECA`, keeping weights.

    Modules using timm's experimental options (MLP mode, an activation, a non-sigmoid gate) are left as they are
    with a warning. Returns ``model``; a bare EcaModule/CecaModule passed in is returned converted.
    """
    require("timm.layers", "fastlayers.nn.convert_timm")
    top = _from_timm(model)
    if top is not None:
        return top
    from timm.layers import CecaModule, EcaModule

    for name, child in list(model.named_modules()):
        for attr, sub in list(child.named_children()):
            if isinstance(sub, (EcaModule, CecaModule)):
                new = _from_timm(sub)
                if new is None:
                    warnings.warn(f"convert_timm: {name}.{attr} uses options ECA does not fuse; left unchanged")
                    continue
                setattr(child, attr, new)
    return model
